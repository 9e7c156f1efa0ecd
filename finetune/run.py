"""One fine-tune, start to finish, in its own process: `python -m finetune.run SPEC.json`.

Reads a `FinetuneSpec`, and writes one JSON object a line on stdout: `progress` events
(phase, step, loss, examples/s, ETA), then one `result` (metrics before and after, the
training's cost) or one `error` (a bad-input code and message, before training starts).

1. the base checkpoint (the GGUF dequantized once, `finetune.checkpoint`);
2. every example tokenized as the server will see it; one longer than `lora.max_tokens`
   refuses the whole run;
3. a seeded split: `lora.eval_fraction` of the examples are held out;
4. LoRA training (`finetune.train`), the peft adapter saved in `out_dir/peft`;
5. conversion to `out_dir/<adapter_id>.gguf`;
6. evaluation of the held-out examples through llama-server, the way answers are served:
   the base model (adapter at scale 0) and the fine-tuned one, same prompts, same stop;
7. `out_dir/adapter.json`: the adapter's manifest (lineage, metrics, cost), which makes the
   folder self-describing: `POST /v1/adapters/import` registers it on another machine.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.errors import ServiceError
from finetune.checkpoint import base_checkpoint
from finetune.data import Example, read_examples, split_examples
from finetune.gguf_adapter import write_gguf_adapter
from finetune.registry import MANIFEST, AdapterManifest
from finetune.train import LoraSettings, Tokenized, add_lora, load_model, seed_everything, summarize, tokenize, train


class FinetuneSpec(BaseModel):
    """Everything one run needs, as plain paths (written by the job, read by the child)."""

    model_config = ConfigDict(extra="forbid")

    adapter_id: str
    module: str
    base_gguf: str
    base_sha256: str
    data_hash: str
    checkpoints_dir: str
    chat_template: str | None
    examples_file: str
    out_dir: str
    lora: LoraSettings
    stop: list[str]
    server_context_tokens: int = 4096


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(spec: FinetuneSpec) -> dict[str, Any]:
    """Train, convert and evaluate; returns the result (also what `emit("result")` sends)."""
    lora = spec.lora
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emit("progress", phase="loading_model")
    started = time.perf_counter()
    checkpoint = base_checkpoint(Path(spec.base_gguf), Path(spec.checkpoints_dir))
    tokenizer, model = load_model(checkpoint.path, lora.threads)
    template = Path(spec.chat_template).read_text() if spec.chat_template else None
    examples = read_examples(Path(spec.examples_file))
    items = tokenize(tokenizer, examples, lora.max_tokens, template)
    by_id = {item.example.id: item for item in items}
    train_examples, eval_examples = split_examples(examples, eval_fraction=lora.eval_fraction, seed=lora.seed)
    train_items = [by_id[e.id] for e in train_examples]

    seed_everything(lora.seed)
    model = add_lora(model, lora)
    emit("progress", phase="training", step=0, total_steps=None, n_train=len(train_items), n_eval=len(eval_examples))
    train_started = time.perf_counter()
    losses = train(model, train_items, lora, on_progress=lambda p: emit("progress", phase="training", **p.__dict__))
    train_seconds = time.perf_counter() - train_started
    peft_dir = out_dir / "peft"
    model.save_pretrained(peft_dir)
    gguf = write_gguf_adapter(
        peft_dir, out_dir / f"{spec.adapter_id}.gguf", architecture=checkpoint.architecture,
        n_layers=model.config.num_hidden_layers,
    )
    del model

    emit("progress", phase="evaluating", answered=0, n_eval=len(eval_examples))
    metrics = asyncio.run(evaluate_served(spec, Path(spec.base_gguf), gguf, [by_id[e.id] for e in eval_examples]))
    manifest = AdapterManifest(
        adapter_id=spec.adapter_id, module=spec.module, base_gguf_sha256=spec.base_sha256, data_hash=spec.data_hash,
        hyperparameters=lora.model_dump(), metrics=metrics,
        examples={"train": len(train_items), "eval": len(eval_examples)},
        training={
            "steps": len(losses), "losses": [round(x, 4) for x in losses],
            "seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(1, len(losses)), 2),
            "total_seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": peak_rss_mib(),
            "mean_tokens": round(sum(i.length for i in train_items) / max(1, len(train_items)), 1),
        },
    )
    (out_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return {"gguf": str(gguf), "n_train": len(train_items), "n_eval": len(eval_examples), **manifest.model_dump()}


async def evaluate_served(spec: FinetuneSpec, base_gguf: Path, adapter_gguf: Path, items: list[Tokenized]) -> dict[str, Any]:
    """Held-out accuracy of the base model and the fine-tuned one through llama-server."""
    from core.llm import AdapterRef, ChatClient, chat_past_a_blank_opening
    from core.runtime import LlamaServer
    from core.settings import ModelTier
    from retrieval.metrics import score_answer
    from retrieval.prompting import is_no_answer

    if not items:
        return {"base": None, "tuned": None}
    server = LlamaServer(
        base_gguf, data_dir=Path(spec.out_dir), alias="finetune-eval", ctx_tokens=spec.server_context_tokens,
        threads=spec.lora.threads, adapters=[adapter_gguf],
        chat_template=Path(spec.chat_template) if spec.chat_template else None, log_name="finetune-eval",
    )
    await server.start()
    tier = ModelTier(model="finetune-eval", timeout_s=600, retries=0)
    results: dict[str, Any] = {}
    try:
        async with ChatClient(tier, url=server.url, adapters_via="lora") as client:
            for name, adapter in (("base", AdapterRef(adapter_gguf.stem, scale=0.0)), ("tuned", AdapterRef(adapter_gguf.stem))):
                answers = []
                for i, item in enumerate(items, 1):
                    example: Example = item.example
                    reply = await chat_past_a_blank_opening(  # as the cascade answers
                        lambda stops: client.chat(
                            example.messages, max_tokens=spec.lora.eval_max_new_tokens, stop=stops or None,
                            adapter=adapter, logprobs=False,
                        ),
                        spec.stop,
                    )
                    text = reply.text.strip()
                    decision = "abstained" if is_no_answer(text) else "answered"
                    answers.append({
                        "id": example.id, "answer": text, "decision": decision, "answerable": example.answerable,
                        "correct": score_answer(example.item(), text, decision).correct,
                    })
                    emit("progress", phase=f"evaluating_{name}", answered=i, n_eval=len(items))
                summary = summarize(answers)
                results[name] = summary.summary()
                (Path(spec.out_dir) / f"eval_{name}.jsonl").write_text(
                    "".join(json.dumps(a) + "\n" for a in summary.answers)
                )
    finally:
        await server.stop()
    return results


def main(argv: list[str]) -> int:
    spec = FinetuneSpec.model_validate_json(Path(argv[1]).read_text())
    try:
        result = run(spec)
    except ServiceError as e:
        emit("error", code=e.code, message=e.message, details=e.details)
        return 2
    emit("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
