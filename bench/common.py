"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
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


def machine_check_ms(repeats: int = 7) -> float:
    """Median ms of a fixed pure-Python workload: steady on a quiet machine, higher when the
    machine is slowed down (other work, a busy host). Reported beside latencies, so that runs
    on a slow machine can be told apart from slow code."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        timings.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(timings), 2)


def markdown_row(result: dict) -> str:
    return "| " + " | ".join(str(v) for v in result.values()) + " |"
