"""What the small tier's context allows on CUAD's yes/no questions: evidence recall, and the
accuracy of a perfect reader.

A "Yes" to "does this contract have such a clause?" can be read only when the annotated clause
reaches the context the legal module curates; a "No" (the contract has none) is an absence
judgement, right from any context. For each module config given, every yes/no dev question
goes through the module's stages as at query time (the set's index in `bench/.data`, built by
`bench.retrieval_eval`; gold contracts missing from it are added), and this reports the share
of "Yes" questions whose clause is in the context, the accuracy of a reader that says "Yes"
exactly when it is (the most any model answering from that context can score, short of
guessing), and that of always saying "Yes".

    python -m bench.evidence_ceiling --configs '{"max_chunks": 2, "context_tokens": 600}' \\
        '{"max_chunks": 5, "context_tokens": 1100}' '{"max_chunks": 8, "context_tokens": 2400}'

A clause counts as present when 60% of one of its annotated spans' word 4-grams are in the
context: spans cross chunk boundaries, and chunks are normalized (whitespace) for the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from bench.common import EVAL_DIR, RESULTS_DIR
from bench.finetune_bench import load_pairs
from bench.retrieval_eval import EvalIndex, domain_module_key
from finetune.data import holds_evidence

SET = "cuad"
PRESENT = 0.6  # of a span's word 4-grams, in the whole context


def measure(pairs, overrides: dict[str, Any], index: EvalIndex) -> dict[str, Any]:
    from modules import module_class
    from modules.base import approx_tokens
    from retrieval.curate import curate

    key = domain_module_key(SET)
    module = module_class(key)(module_class(key).config_model(**overrides))
    search = index.search_context()
    readable, present, tokens = 0, 0, []
    for pair in pairs:
        context = "\n\n".join(c.model_text for c in curate(module, pair.question, search).kept)
        tokens.append(approx_tokens(context))
        if pair.answers[0] == "Yes":
            found = holds_evidence(context, pair.evidence, share=PRESENT)
            present += found
            readable += found
        else:
            readable += 1
    yes = sum(p.answers[0] == "Yes" for p in pairs)
    return {
        "config": overrides,
        "questions": len(pairs),
        "yes_questions": yes,
        "clause_in_context": round(present / yes, 3),
        "perfect_reader_accuracy": round(readable / len(pairs), 3),
        "always_yes_accuracy": round(yes / len(pairs), 3),
        "mean_context_tokens": round(statistics.mean(tokens)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", type=json.loads, required=True,
                        help="Legal module config overrides, one JSON object a row.")  # fmt: skip
    args = parser.parse_args()
    pairs = [p for p in load_pairs(SET, ["yes_no"]) if p.answers[0] in ("Yes", "No")]
    corpus = EVAL_DIR / SET / "corpus"
    index = EvalIndex(SET, threads=2)
    try:
        # What the index holds stays (the fine-tuning runs' distractors); missing gold contracts are added.
        held = json.loads(index.manifest_path.read_text()) if index.manifest_path.exists() else {}
        gold = {corpus / f"{d}.txt" for p in pairs for d in p.doc_ids}
        index.ensure_ingested(sorted({*(corpus / name for name in held), *gold}))
        rows = [measure(pairs, overrides, index) for overrides in args.configs]
    finally:
        index.close()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "evidence_ceiling.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
