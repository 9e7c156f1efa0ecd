"""Dev questions by id, as JSONL for `sieve eval` / `sieve calibrate`: the splits used in
BENCHMARKS.md are id lists in `bench/splits/`, so every run can be repeated exactly.

    python -m bench.select_questions --set pubmedqa --ids bench/splits/pubmedqa_evaluation.ids > eval.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import EVAL_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", required=True, help="Evaluation set (a folder of ../shared/eval).")
    parser.add_argument("--ids", type=Path, required=True, help="One question id a line, in the order wanted.")
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


if __name__ == "__main__":
    main()
