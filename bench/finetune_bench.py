"""Fine-tuning the small model on a domain's dev questions: base vs fine-tuned, and the cost.

The same code path as a `POST /v1/finetune` job (`finetune.run.run`): every dev question of
the set gets the domain module's curated context from the set's index in `bench/.data`
(built by `bench.retrieval_eval`, reused; missing gold documents are ingested), a seeded
split holds part of the questions out, LoRA trains on the rest, and both the base model
and the fine-tuned one answer the held-out questions through llama-server, scored by
`retrieval.metrics` (PubMedQA: yes/no/maybe accuracy; CUAD: Yes/No accuracy, normalized
match, abstention on "not in document" questions).

    python -m bench.finetune_bench --set pubmedqa --train 160 --eval 80
    python -m bench.finetune_bench --set cuad --pools yes_no not_in_document --seeds 0 1

`--max-chunks` and `--context-tokens` configure the module for the small tier (fewer,
shorter sources: a 270M model reads a 600-token prompt 2x faster than a 1,200-token one).
Results go to `bench/results/finetune_<set>.json`, one entry per seed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import EVAL_DIR, REPO, RESULTS_DIR
from bench.retrieval_eval import EvalIndex, domain_module_key

WORK_DIR = REPO / "bench" / ".data" / "finetune"


def load_pairs(set_name: str, pools: list[str] | None):
    from finetune.data import parse_pairs
    from retrieval.evaluation import load_questions

    rows = load_questions(EVAL_DIR / set_name / "dev.jsonl")
    if pools:
        rows = [r for r in rows if r.get("pool") in pools]
    return parse_pairs("\n".join(json.dumps(r) for r in rows), source=f"{set_name}/dev.jsonl")


def pick(pairs, n_train: int, n_eval: int, seed: int):
    """A seeded sample of n_train + n_eval pairs (`finetune.run` splits it, stratified)."""
    rng = random.Random(f"pick:{seed}")
    shuffled = sorted(pairs, key=lambda p: p.id)
    rng.shuffle(shuffled)
    return shuffled[: n_train + n_eval]


def build(set_name: str, pairs, max_chunks: int | None, context_tokens: int | None, threads: int = 2):
    from core.settings import Settings
    from finetune.data import build_examples
    from modules import module_class
    from retrieval.curate import curate

    index = EvalIndex(set_name, threads=threads)
    try:
        manifest = json.loads(index.manifest_path.read_text()) if index.manifest_path.exists() else {}
        corpus = EVAL_DIR / set_name / "corpus"
        wanted = sorted({*manifest, *(f"{d}.txt" for p in pairs for d in p.doc_ids)})
        files = [corpus / name for name in wanted if (corpus / name).is_file()]
        ingestion = index.ensure_ingested(files)
        key = domain_module_key(set_name)
        overrides = {k: v for k, v in {"max_chunks": max_chunks, "context_tokens": context_tokens}.items() if v}
        module = module_class(key)(module_class(key).config_model(**overrides))
        search = index.search_context()
        started = time.perf_counter()
        examples = build_examples(pairs, lambda p: curate(module, p.question, search).kept, Settings().small.system_prompt)
        return examples, {"ingestion": ingestion, "curate_seconds": round(time.perf_counter() - started, 1),
                          "module": key, "module_overrides": overrides}
    finally:
        index.close()


def run_seed(args, seed: int) -> dict[str, Any]:
    from core.settings import Settings
    from finetune.data import examples_hash, write_examples
    from finetune.jobs import plan_run
    from finetune.run import run
    from finetune.train import LoraSettings

    pairs = pick(load_pairs(args.set, args.pools), args.train, args.eval, seed)
    examples, prep = build(args.set, pairs, args.max_chunks, args.context_tokens, args.threads)
    if args.prepare_only:
        return {"seed": seed, **prep, "targets": _target_mix(examples)}
    eval_fraction = args.eval / (args.train + args.eval)
    lora = LoraSettings(
        rank=args.rank, alpha=2.0 * args.rank, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.lr, eval_fraction=eval_fraction, seed=seed, threads=args.threads,
        eval_max_new_tokens=args.eval_tokens, **({"target_modules": args.target_modules} if args.target_modules else {}),
    )
    data_hash = examples_hash(examples)
    data_file = WORK_DIR / "data" / f"{data_hash}.jsonl"
    write_examples(examples, data_file)
    spec = plan_run(
        Settings(), module=domain_module_key(args.set), examples_file=data_file, data_hash=data_hash, lora=lora,
        adapters_root=WORK_DIR / "adapters",
    )
    ident = spec.adapter_id
    result = run(spec)
    return {"seed": seed, "adapter_id": ident, "data_hash": data_hash, **prep, "lora": lora.model_dump(),
            "targets": _target_mix(examples), **result}


def _target_mix(examples) -> dict[str, int]:
    from retrieval.prompting import NO_ANSWER

    abstain = sum(e.completion == NO_ANSWER for e in examples)
    return {"examples": len(examples), "no_answer_targets": abstain, "unanswerable": sum(not e.answerable for e in examples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["pubmedqa", "cuad", "financebench", "emanual"], required=True)
    parser.add_argument("--pools", nargs="*", help="Only dev questions of these pools (CUAD: yes_no, extractive, not_in_document).")
    parser.add_argument("--train", type=int, default=160, help="Training questions.")
    parser.add_argument("--eval", type=int, default=80, help="Held-out questions.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-chunks", type=int, help="Module config override for the small tier.")
    parser.add_argument("--context-tokens", type=int, help="Module config override for the small tier.")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", nargs="+", help="Linear layers that get adapters (default: attention).")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=32)
    parser.add_argument("--prepare-only", action="store_true", help="Index the documents and build the examples only.")
    args = parser.parse_args()

    runs = [run_seed(args, seed) for seed in args.seeds]
    if args.prepare_only:
        print(json.dumps(runs, indent=2))
        return
    report: dict[str, Any] = {"set": args.set, "args": vars(args), "runs": runs}
    for which in ("base", "tuned"):
        accuracies = [r["metrics"][which]["accuracy"] for r in runs if r["metrics"].get(which)]
        if accuracies:
            report[f"{which}_accuracy_mean"] = round(statistics.mean(accuracies), 4)
            report[f"{which}_accuracy_stdev"] = round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0
    out = RESULTS_DIR / f"finetune_{args.set}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in runs:
        print(json.dumps({"seed": r["seed"], "base": r["metrics"]["base"], "tuned": r["metrics"]["tuned"],
                          "training": {k: v for k, v in r["training"].items() if k != "losses"}}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
