"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("SIEVE_EVAL_DIR", REPO.parent / "shared" / "eval"))
RESULTS_DIR = REPO / "bench" / "results"


@contextmanager
def valkey(data_dir: Path) -> Iterator[str]:
    """A bundled Valkey for the duration of a benchmark; yields its URL."""
    from core.runtime import ValkeyServer

    server = ValkeyServer(data_dir=data_dir / "valkey")
    asyncio.run(server.start(timeout_s=30))
    try:
        yield server.url
    finally:
        asyncio.run(server.stop())


def markdown_row(result: dict) -> str:
    return "| " + " | ".join(str(v) for v in result.values()) + " |"
