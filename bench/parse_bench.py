"""PDF parsing speed: pages per second of each `ingest.parse` PDF strategy on real filings.

    python -m bench.parse_bench --strategy pdfium
    python -m bench.parse_bench --strategy fast --limit 5

Files are taken in name order. The spaCy model that classifies elements is loaded before
timing starts, so the first file does not pay for it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ingest.parse import PDF_STRATEGIES, BlockType, parse_file

DEFAULT_PDF_DIR = Path("/work/shared/eval/financebench/pdfs")


def warm_up() -> None:
    """Load unstructured and its spaCy model outside the timed region."""
    from ingest.parse import configure_offline

    configure_offline()
    from unstructured.partition.text import element_from_text

    element_from_text("Warm up the classifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=PDF_STRATEGIES, default="pdfium")
    parser.add_argument("--limit", type=int, default=None, help="parse only the first N PDFs")
    parser.add_argument("--pdf-dir", type=Path, default=DEFAULT_PDF_DIR)
    args = parser.parse_args()

    paths = sorted(args.pdf_dir.glob("*.pdf"))[: args.limit]
    if not paths:
        parser.error(f"no PDFs in {args.pdf_dir}")
    warm_up()

    total_pages = 0
    total_seconds = 0.0
    print(f"{'file':45} {'pages':>5} {'s':>7} {'pages/s':>8} {'blocks':>6} {'titles':>6} {'tables':>6}")
    for path in paths:
        start = time.perf_counter()
        parsed = parse_file(path, path.name, pdf_strategy=args.strategy)
        seconds = time.perf_counter() - start
        pages = parsed.page_count or 0
        total_pages += pages
        total_seconds += seconds
        titles = sum(block.type is BlockType.TITLE for block in parsed.blocks)
        tables = sum(block.type is BlockType.TABLE for block in parsed.blocks)
        print(
            f"{path.name[:45]:45} {pages:5d} {seconds:7.2f} {pages / seconds:8.1f} "
            f"{len(parsed.blocks):6d} {titles:6d} {tables:6d}",
            flush=True,
        )
    print(
        f"{args.strategy}: {len(paths)} PDFs, {total_pages} pages in {total_seconds:.1f} s = "
        f"{total_pages / total_seconds:.1f} pages/s"
    )


if __name__ == "__main__":
    main()
