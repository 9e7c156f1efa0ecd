"""How well the legal module's enrichment names contracts: the title it extracts against the
document name CUAD's annotators gave, for every contract a dev question is about.

    python -m bench.legal_titles [--misses]

Exact: the same name key (case, punctuation and spacing ignored). Close: a similarity of the
name keys of at least 0.85 (a company name before the title, a missing "FORM OF"). The title
is what the legal module's title filter and preference match a question's contract name
against, and what sources show.
"""

from __future__ import annotations

import argparse
import json
from difflib import SequenceMatcher

from bench.common import EVAL_DIR
from modules.legal import extract_contract, name_key


def dev_contracts() -> list[dict]:
    """The corpus manifest's entries of the contracts CUAD's dev questions are about."""
    cuad = EVAL_DIR / "cuad"
    asked = {d for line in (cuad / "dev.jsonl").open() for d in json.loads(line)["doc_ids"]}
    entries = (json.loads(line) for line in (cuad / "corpus_manifest.jsonl").open())
    return sorted((e for e in entries if e["doc_id"] in asked), key=lambda e: e["doc_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--misses", action="store_true", help="List the contracts whose title is not exact.")
    args = parser.parse_args()
    exact = close = 0
    contracts = dev_contracts()
    for entry in contracts:
        path = EVAL_DIR / "cuad" / entry["file"]
        title = extract_contract(path.read_text(errors="replace"), path.name).get("title", "")
        got, want = name_key(title), name_key(entry["document_name"])
        exact += got == want
        close += SequenceMatcher(None, got, want).ratio() >= 0.85
        if args.misses and got != want:
            print(f"{entry['document_name']!r:70.70} extracted {title!r:.70}")
    n = len(contracts)
    print(json.dumps({"contracts": n, "exact": round(exact / n, 3), "close": round(close / n, 3)}))


if __name__ == "__main__":
    main()
