"""How well the first answer token separates the labels of yes/no/maybe questions.

The small tier answers a PubMedQA question with its label first ("Yes [1]."). For a
`bench.finetune_bench` run, this reads the log-probabilities of "yes", "no" and "maybe" as the
first generated token, from the base model (adapter at scale 0) and the fine-tuned one, on the
run's training and held-out examples, and reports on the held-out part: the accuracy of the
label ranked first, of the label after per-label offsets fitted on the training part (what a
calibrated label decision could reach), and the yes-vs-no AUC of log P(yes) - log P(no).
Unanswerable questions count as wrong: a label is never an abstention.

    python -m bench.label_scores bench/.data/finetune/adapters/biomedical-a15e60ccd44f

`--base-only` scores the small tier's model without the adapter, on the answerable examples:
with `SIEVE_SMALL__*` settings, another model on the same examples (does a larger model read
the evidence?):

    SIEVE_SMALL__GGUF=qwen2.5-coder-1.5b-instruct SIEVE_SMALL__CHAT_TEMPLATE= \
        python -m bench.label_scores bench/.data/finetune/adapters/legal-45f6f1d7ec7d --base-only
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR
from bench.finetune_bench import WORK_DIR

LABELS = ("yes", "no", "maybe")
OFFSETS = [x / 5 for x in range(-30, 31)]  # -6.0 .. 6.0 nats


async def first_token_scores(adapter_dir: Path, models: tuple[str, ...] = ("base", "tuned")) -> list[dict[str, Any]]:
    """Per example: part (train/held), gold label, and label log-probabilities per model."""
    from core.llm import AdapterRef, ChatClient
    from core.models import resolve_gguf
    from core.runtime import LlamaServer, chat_template_path
    from core.settings import ModelTier, Settings
    from finetune.data import read_examples, split_examples

    meta = json.loads((adapter_dir / "adapter.json").read_text())
    lora = meta["hyperparameters"]
    examples = read_examples(WORK_DIR / "data" / f"{meta['data_hash']}.jsonl")
    train, held = split_examples(examples, eval_fraction=lora["eval_fraction"], seed=lora["seed"])
    with_adapter = "tuned" in models
    if not with_adapter:  # another model's label signal: the unanswerable questions hold none
        train, held = ([e for e in part if e.answerable] for part in (train, held))
    settings = Settings()
    adapter = adapter_dir / f"{adapter_dir.name}.gguf"
    scale = {"base": 0.0, "tuned": 1.0}
    server = LlamaServer(
        resolve_gguf(settings.small.gguf, settings.resolved_models_dir),
        data_dir=adapter_dir / "label_scores", alias="label-scores", ctx_tokens=2048, threads=2,
        adapters=[adapter] if with_adapter else [], chat_template=chat_template_path(settings.small.chat_template),
    )  # fmt: skip
    await server.start()
    rows = []
    try:
        async with ChatClient(ModelTier(model="label-scores", timeout_s=600, retries=0), url=server.url,
                              adapters_via="lora") as client:  # fmt: skip
            for part, items in (("train", train), ("held", held)):
                for example in items:
                    row: dict[str, Any] = {"id": example.id, "part": part, "gold": _gold(example)}
                    for model in models:
                        ref = AdapterRef(adapter.stem, scale=scale[model]) if with_adapter else None
                        reply = await client.chat(example.messages, max_tokens=1, top_logprobs=20, adapter=ref)
                        row[model] = _label_logprobs(reply.tokens[0].top if reply.tokens else [])
                    rows.append(row)
    finally:
        await server.stop()
    return rows


def _gold(example) -> str:
    return example.answers[0].strip().lower().rstrip(".") if example.answerable else "unanswerable"


def _label_logprobs(top: list[tuple[str, float]]) -> list[float]:
    found: dict[str, float] = {}
    for token, logprob in top:
        found.setdefault(token.strip().lower().rstrip(".,"), logprob)
    floor = min((lp for _, lp in top), default=-30.0) - 1.0  # below every listed alternative
    return [found.get(label, floor) for label in LABELS]


def accuracy(rows: list[dict], model: str, offsets: tuple[float, ...] = (0.0, 0.0, 0.0)) -> float:
    def label(scores: list[float]) -> str:
        shifted = [s + o for s, o in zip(scores, offsets, strict=True)]
        return LABELS[shifted.index(max(shifted))]

    return sum(label(r[model]) == r["gold"] for r in rows) / len(rows)


def fit_offsets(rows: list[dict], model: str) -> tuple[float, ...]:
    """Offsets for "no" and "maybe" (yes fixed at 0) that maximize accuracy, the smallest on ties."""
    candidates = [(0.0, no, maybe) for no in OFFSETS for maybe in OFFSETS]
    return max(candidates, key=lambda o: (accuracy(rows, model, o), -abs(o[1]) - abs(o[2])))


def yes_no_auc(rows: list[dict], model: str) -> float:
    margin = {r["id"]: r[model][0] - r[model][1] for r in rows}
    yes = [margin[r["id"]] for r in rows if r["gold"] == "yes"]
    no = [margin[r["id"]] for r in rows if r["gold"] == "no"]
    return sum((y > n) + 0.5 * (y == n) for y in yes for n in no) / (len(yes) * len(no))


def summarize(rows: list[dict], models: tuple[str, ...] = ("base", "tuned")) -> dict[str, Any]:
    train = [r for r in rows if r["part"] == "train"]
    held = [r for r in rows if r["part"] == "held"]
    out: dict[str, Any] = {
        "n_train": len(train), "n_held": len(held),
        "held_gold": {g: sum(r["gold"] == g for r in held) for g in (*LABELS, "unanswerable")},
        "always_yes": round(sum(r["gold"] == "yes" for r in held) / len(held), 3),
    }  # fmt: skip
    for model in models:
        offsets = fit_offsets(train, model)
        out[model] = {
            "first_label_accuracy": round(accuracy(held, model), 3),
            "offsets_fitted_on_train": offsets,
            "offset_label_accuracy": round(accuracy(held, model, offsets), 3),
            "yes_no_auc": round(yes_no_auc(held, model), 3),
        }
    # The base model never saw the training part: its AUC over every example is the steadier one.
    out["base"]["yes_no_auc_all_examples"] = round(yes_no_auc(rows, "base"), 3)
    return out


def main() -> None:
    from core.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter_dir", type=Path, help="A run's adapter directory (holds adapter.json).")
    parser.add_argument("--base-only", action="store_true", help="The small tier's model alone, no adapter.")
    args = parser.parse_args()
    models = ("base",) if args.base_only else ("base", "tuned")
    rows = asyncio.run(first_token_scores(args.adapter_dir, models))
    name = f"{args.adapter_dir.name}_{Settings().small.gguf}" if args.base_only else args.adapter_dir.name
    result = {"adapter": args.adapter_dir.name, "model": Settings().small.gguf, **summarize(rows, models)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"label_scores_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
