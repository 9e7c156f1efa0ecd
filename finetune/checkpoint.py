"""The small model as a trainable checkpoint: its GGUF file dequantized once into a
transformers folder, cached by the GGUF's sha256.

transformers reads GGUF files (`gguf_file=`) but takes 1-3 minutes to dequantize one on
2 cores, so the result is saved with `save_pretrained` next to the GGUF and reused: every
fine-tune of the same base starts in seconds. The folder is written under a temporary
name and renamed, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError
from core.models import gguf_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseCheckpoint:
    """A transformers folder made from a GGUF file; `gguf_sha256` names the base model."""

    path: Path
    gguf: Path
    gguf_sha256: str
    architecture: str


def base_checkpoint(gguf: Path, cache_dir: Path) -> BaseCheckpoint:
    """The transformers checkpoint of `gguf`, converted on first use into `cache_dir`."""
    sha = gguf_sha256(gguf)
    target = cache_dir / f"{gguf.stem}-{sha[:12]}"
    info_file = target / "sieve-base.json"
    if not info_file.is_file():
        _convert(gguf, target, sha)
    info = json.loads(info_file.read_text())
    return BaseCheckpoint(path=target, gguf=gguf, gguf_sha256=sha, architecture=info["architecture"])


def _convert(gguf: Path, target: Path, sha: str) -> None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - transformers is a dependency
        raise ModelError(f"fine-tuning needs transformers: {e}", code="finetune_unavailable") from e

    log.info("converting %s into a trainable checkpoint (once; 1-3 minutes on 2 cores)", gguf)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        # Dequantized weights are plain float32: drop the GGUF quantizer so that the saved
        # folder loads as an ordinary checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        architecture = gguf_architecture(gguf)
        (tmp / "sieve-base.json").write_text(
            json.dumps({"gguf": gguf.name, "gguf_sha256": sha, "architecture": architecture})
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_architecture(gguf: Path) -> str:
    """`general.architecture` of a GGUF file, read from its header (gguf's `GGUFReader`
    parses the whole vocabulary first, minutes for a 262k-token one)."""
    scalar_sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with gguf.open("rb") as f:
        magic, _version, _tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ModelError(f"{gguf} is not a GGUF file", code="model_not_found")

        def read_str() -> bytes:
            (length,) = struct.unpack("<Q", f.read(8))
            return f.read(length)

        def skip(kind: int) -> None:
            if kind == 8:
                read_str()
            elif kind == 9:
                item, count = struct.unpack("<IQ", f.read(12))
                if item in scalar_sizes:
                    f.seek(scalar_sizes[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(scalar_sizes[kind], 1)

        for _ in range(kv_count):
            key = read_str()
            (kind,) = struct.unpack("<I", f.read(4))
            if key == b"general.architecture" and kind == 8:
                return read_str().decode()
            skip(kind)
    raise ModelError(f"{gguf} names no architecture", code="model_not_found")
