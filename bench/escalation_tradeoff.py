"""What a small model costs in escalations: the cascade replayed for several small models
against one set of large-model answers to the same questions.

Each `--small NAME=RESULTS` is a `sieve eval` results file holding `small_only` answers (one
small model, adapter or none, with its own calibration); `--large` is one holding the
`large_only` answers. For each small model the cascade is replayed at every confidence
threshold (`retrieval.evaluation.escalation_curve`), giving its accuracy at each escalation
share and the least escalation that reaches a given accuracy:

    python -m bench.escalation_tradeoff --large OUT/results.jsonl \\
        --small tuned=OUT/results.jsonl base=BASE/results.jsonl --abstain-below 0.2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from retrieval.evaluation import TRADEOFF_POINTS, QuestionResult, accuracy_at, escalation_curve, escalation_for


def load(path: Path, mode: str) -> list[QuestionResult]:
    names = {f.name for f in fields(QuestionResult)}
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    return [QuestionResult(**{k: v for k, v in row.items() if k in names}) for row in rows if row["mode"] == mode]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=Path, required=True, help="Results with the large_only answers.")
    parser.add_argument("--small", nargs="+", required=True, help="NAME=RESULTS with small_only answers.")
    parser.add_argument("--abstain-below", type=float, default=0.2, help="The module's sufficiency floor.")
    parser.add_argument("--out", type=Path, help="Write the curves as JSON here.")
    args = parser.parse_args()

    large = load(args.large, "large_only")
    large_accuracy = sum(r.score for r in large) / len(large)
    header = "| small model | " + " | ".join(f"{x:.0%}" for x in TRADEOFF_POINTS) + " | to reach 95% of large | to reach the best |"
    print(f"large only: accuracy {large_accuracy:.3f} on {len(large)} questions\n")
    print(header + "\n|---|" + "---|" * (len(TRADEOFF_POINTS) + 2))
    curves = {}
    for spec in args.small:
        name, _, path = spec.partition("=")
        small = load(Path(path), "small_only")
        common = {r.id for r in small} & {r.id for r in large}
        rows = [r for r in small + large if r.id in common]
        curve = curves[name] = escalation_curve(rows, {r.module: args.abstain_below for r in rows})
        best = max(acc for _, acc in curve)
        cells = [f"{accuracy_at(curve, x):.3f}" for x in TRADEOFF_POINTS]
        reach = escalation_for(curve, 0.95 * large_accuracy)
        print(f"| {name} ({len(common)} q) | " + " | ".join(cells)
              + f" | {'never' if reach is None else f'{reach:.2f}'} | {best:.3f} at {escalation_for(curve, best):.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"large_accuracy": large_accuracy, "curves": curves}, indent=2))


if __name__ == "__main__":
    main()
