"""Optimize jobs: build a collection's vector indexes and vacuum its deleted chunks.

The embedded engine builds no index by itself: until a collection is optimized, every
search scans all its vectors (20 ms at 100k chunks on two cores; a few ms once indexed).
An optimize job runs on the ingestion queue, after an ingestion job that wrote
`Settings.optimize_after_chunks` chunks or more, or when asked over REST. It runs in the
process that owns the embedded engine (the API's in-process worker), where the store
optimizes a copy in a child process: searches go on, writes to the collection wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from arq import ArqRedis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core import catalog, db
from ingest.jobs import QUEUE_NAME, set_job

log = logging.getLogger(__name__)

JOB_KIND = "optimize"
UNFINISHED = ("queued", "running")


async def request_optimize(engine: AsyncEngine, redis: ArqRedis, *, tenant: str, collection: str) -> str:
    """Queue an optimize job for the collection, or return the one already queued or running."""
    await catalog.get_collection(engine, tenant=tenant, name=collection)
    jobs = db.jobs
    async with engine.begin() as conn:
        pending = await conn.scalar(
            select(jobs.c.id).where(
                jobs.c.tenant == tenant, jobs.c.collection == collection, jobs.c.kind == JOB_KIND,
                jobs.c.state.in_(UNFINISHED),
            )
        )
        if pending:
            return pending
        job_id = "opt_" + uuid.uuid4().hex[:20]
        await conn.execute(
            insert(jobs).values(
                id=job_id, tenant=tenant, kind=JOB_KIND, collection=collection, state="queued", files_total=0,
                progress={}, created_at=db.utcnow(),
            )
        )
    await enqueue_optimize(redis, job_id)
    return job_id


async def unfinished_optimize_jobs(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (await conn.scalars(select(db.jobs.c.id).where(db.jobs.c.kind == JOB_KIND, db.jobs.c.state.in_(UNFINISHED)))).all()
        )


async def enqueue_optimize(redis: ArqRedis, job_id: str) -> None:
    await redis.enqueue_job("optimize_collection", job_id, _job_id=job_id, _queue_name=QUEUE_NAME)


async def optimize_collection(ctx: dict[str, Any], job_id: str) -> str:
    """arq job: optimize the collection of job `job_id`; returns the job's final state.

    `result`: whether anything changed, the chunks the collection holds, and the seconds it took."""
    resources = ctx["sieve"].resources
    engine: AsyncEngine = resources.db
    async with engine.connect() as conn:
        job = (await conn.execute(select(db.jobs).where(db.jobs.c.id == job_id))).first()
    if job is None or job.state not in UNFINISHED:
        return job.state if job else "missing"
    await set_job(engine, job_id, state="running", started_at=db.utcnow())
    began = time.perf_counter()
    try:
        record = await catalog.get_collection(engine, tenant=job.tenant, name=job.collection)
        changed = await asyncio.to_thread(resources.store.optimize, record.vector_name)
        chunks = await asyncio.to_thread(resources.store.count, record.vector_name)
    except Exception as e:  # recorded on the job; a later ingestion or request queues another
        log.exception("optimize job %s failed", job_id)
        await set_job(engine, job_id, state="failed", finished_at=db.utcnow(), error=repr(e),
                       result={"error": {"code": getattr(e, "code", "internal_error"), "message": str(e)}})
        return "failed"
    result = {"changed": changed, "chunks": chunks, "seconds": round(time.perf_counter() - began, 1)}
    await set_job(engine, job_id, state="done", finished_at=db.utcnow(), result=result)
    return "done"
