"""Dev questions by id, as JSONL for `sieve eval` / `sieve calibrate`: the splits used in
BENCHMARKS.md are id lists in `bench/splits/`, so every run can be repeated exactly.

    python -m bench.select_questions --set pubmedqa --ids bench/splits/pubmedqa_evaluation.ids > eval.jsonl

`--corpus-out DIR` also links the questions' gold documents into DIR, with `--distractors`
other documents of the set (seeded), as a corpus for `sieve eval` that costs minutes, not
hours, to ingest.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bench.common import EVAL_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", required=True, help="Evaluation set (a folder of ../shared/eval).")
    parser.add_argument("--ids", type=Path, required=True, help="One question id a line, in the order wanted.")
    parser.add_argument("--corpus-out", type=Path, help="Link the gold documents (and distractors) here.")
    parser.add_argument("--distractors", type=int, default=0, help="Other documents to link, seeded.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = {}
    for line in (EVAL_DIR / args.set / "dev.jsonl").read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
        if line.strip():
            row = json.loads(line)
            rows[row["id"]] = row
    ids = [i.strip() for i in args.ids.read_text().splitlines() if i.strip()]
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SystemExit(f"not in {args.set}/dev.jsonl: {', '.join(missing[:5])}")
    for i in ids:
        print(json.dumps(rows[i]))
    if args.corpus_out:
        link_corpus(args.set, [rows[i] for i in ids], args.corpus_out, distractors=args.distractors, seed=args.seed)


def link_corpus(eval_set: str, questions: list[dict], out: Path, *, distractors: int, seed: int) -> None:
    """Symlink the questions' gold documents, and `distractors` others, into `out`."""
    corpus = EVAL_DIR / eval_set / "corpus"
    files = {f.stem: f for f in sorted(corpus.iterdir()) if f.is_file()}
    gold = {doc for q in questions for doc in q.get("doc_ids", []) if doc in files}
    others = sorted(set(files) - gold)
    chosen = gold | set(random.Random(f"distractors:{seed}").sample(others, min(distractors, len(others))))
    out.mkdir(parents=True, exist_ok=True)
    for doc in sorted(chosen):
        link = out / files[doc].name
        if not link.exists():
            link.symlink_to(files[doc].resolve())


if __name__ == "__main__":
    main()
