"""The ingestion worker: an arq `Worker` running the ingestion jobs.

`sieve worker` runs one as its own process (scale out by starting more, against a Qdrant
server and a shared Redis and database); in the embedded default `sieve serve` runs one
inside the API process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import func

from core.resources import Resources
from core.settings import Settings
from core import catalog
from ingest.jobs import QUEUE_NAME, enqueue_ingest, ingest_file, unfinished_ingest_files
from ingest.optimize import enqueue_optimize, optimize_collection, request_optimize, unfinished_optimize_jobs
from ingest.pipeline import DocumentIngestor, IngestConfig
from modules.registry import enrichment_for

log = logging.getLogger(__name__)

FILE_TIMEOUT_S = 3 * 3600  # one very large PDF on 2 cores can take an hour to embed
OPTIMIZE_TIMEOUT_S = 3 * 3600  # 80-140 s per 100k chunks on 2 cores (BENCHMARKS.md)


class IngestServices:
    """What ingestion and optimize jobs use: the process's resources, and a
    `DocumentIngestor` per collection."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self.db = resources.db

    async def job_finished(self, tenant: str, collection: str, chunks_written: int) -> None:
        """Queue an optimize job after a big enough ingestion, where the store needs one."""
        threshold = self.resources.settings.optimize_after_chunks
        if not self.resources.store.indexes_in_background and threshold and chunks_written >= threshold:
            await request_optimize(self.db, self.resources.redis, tenant=tenant, collection=collection)

    async def ingestor_for(self, tenant: str, collection: str) -> DocumentIngestor:
        record = await catalog.get_collection(self.db, tenant=tenant, name=collection)
        # The collection's module extracts the metadata its filters need.
        enrichment = enrichment_for(record.domain)
        r = self.resources
        return DocumentIngestor(
            store=r.store,
            embedder=r.embedder,
            kv=r.kv,
            tenant=tenant,
            collection=collection,
            vector_name=record.vector_name,
            config=IngestConfig(
                chunk_tokens=r.settings.chunk_tokens,
                chunk_overlap=r.settings.chunk_overlap,
                pdf_strategy=r.settings.pdf_strategy,
                embedding_model=record.embedding_model,
                module=enrichment.module,
                enrich_version=enrichment.version,
            ),
            enrich=enrichment.enrich,
            extra_indexes=enrichment.indexes,
        )


def build_worker(resources: Resources, *, burst: bool = False) -> Worker:
    """An arq worker for the ingestion queue sharing `resources` (not started)."""
    return Worker(
        functions=[
            func(ingest_file, name="ingest_file", timeout=FILE_TIMEOUT_S, max_tries=5),
            func(optimize_collection, name="optimize_collection", timeout=OPTIMIZE_TIMEOUT_S, max_tries=1),
        ],
        queue_name=QUEUE_NAME,
        # Its own connection pool: `Worker.close` closes the pool it uses.
        redis_settings=RedisSettings.from_dsn(resources.redis_url),
        ctx={"sieve": IngestServices(resources)},
        handle_signals=False,
        burst=burst,
        max_jobs=resources.settings.worker_concurrency,
        poll_delay=0.2,
        keep_result=3600,
    )


async def recover(resources: Resources, *, exclusive: bool) -> int:
    """Re-enqueue every unfinished file and optimize job (idempotent thanks to deterministic
    arq job ids).

    `exclusive`: this process is the only worker (the embedded default), so in-progress
    markers left by a previous, killed run are stale and are cleared to retry at once
    instead of after the job timeout."""
    pending = await unfinished_ingest_files(resources.db)
    if exclusive:
        keys = [in_progress_key_prefix + f"{job_id}:{position}" for job_id, position in pending]
        if keys:
            await resources.redis.delete(*keys)
    by_job: dict[str, list[int]] = {}
    for job_id, position in pending:
        by_job.setdefault(job_id, []).append(position)
    for job_id, positions in by_job.items():
        await enqueue_ingest(resources.redis, job_id, positions)
    if pending:
        log.info("re-enqueued %d unfinished file(s) from %d job(s)", len(pending), len(by_job))
    optimizing = await unfinished_optimize_jobs(resources.db)
    if exclusive and optimizing:
        await resources.redis.delete(*(in_progress_key_prefix + job_id for job_id in optimizing))
    for job_id in optimizing:
        await enqueue_optimize(resources.redis, job_id)
    return len(pending) + len(optimizing)


async def run_standalone(settings: Settings, start: Callable[[Resources], Awaitable[Worker]]) -> None:
    """Open the resources a worker process needs (no model tiers), build its worker with
    `start` (which may first recover interrupted jobs) and run it until cancelled or, in
    burst mode, until its queue is empty."""
    resources = await Resources.open(settings, models=False)
    try:
        worker = await start(resources)
        try:
            await worker.async_run()
        finally:
            await worker.close()
    finally:
        await resources.close()


async def run_worker(settings: Settings, *, burst: bool = False, exclusive: bool = False) -> None:
    """Run a standalone ingestion worker until cancelled (or, with `burst`, until the queue is empty)."""

    async def start(resources: Resources) -> Worker:
        await recover(resources, exclusive=exclusive)
        return build_worker(resources, burst=burst)

    await run_standalone(settings, start)


def worker_task(resources: Resources) -> tuple[Worker, asyncio.Task[Any]]:
    """Start an in-process worker on the running event loop."""
    worker = build_worker(resources)
    return worker, asyncio.create_task(worker.async_run(), name="sieve-ingest-worker")
