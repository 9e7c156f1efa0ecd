"""Ingestion jobs: their records, and the arq job that ingests one file of a job.

An upload becomes one job (a database row with per-file rows) and one arq job per file,
enqueued with a deterministic `_job_id` so enqueueing twice is harmless. Files are
independent: workers can be scaled out, a crashed file is retried by arq, and a retry
converges because `DocumentIngestor` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from arq import ArqRedis, Retry
from sqlalchemy import Integer, and_, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.errors import DocumentError, NotFoundError, ServiceError
from core import catalog
from ingest.pipeline import DocumentIngestor, FileResult

log = logging.getLogger(__name__)

QUEUE_NAME = "sieve:ingest"
TERMINAL_FILE_STATES = ("done", "unchanged", "failed")


@dataclass(frozen=True)
class StagedFile:
    """A file received with an upload, written to the staging folder."""

    filename: str
    path: Path
    bytes: int


@dataclass
class FileStatus:
    filename: str
    state: str
    bytes: int
    doc_id: str | None
    chunks_total: int
    chunks_done: int
    error_code: str | None
    error: str | None


@dataclass
class Job:
    id: str
    kind: str
    collection: str | None
    state: str
    files_total: int
    files_done: int
    chunks_total: int
    chunks_done: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    files: list[FileStatus] = field(default_factory=list)

    @property
    def errors(self) -> list[FileStatus]:
        return [f for f in self.files if f.state == "failed"]


def ingest_arq_job_id(job_id: str, position: int) -> str:
    return f"{job_id}:{position}"


async def create_ingest_job(engine: AsyncEngine, *, tenant: str, collection: str, files: list[StagedFile]) -> str:
    job_id = "job_" + uuid.uuid4().hex[:20]
    async with engine.begin() as conn:
        await conn.execute(
            insert(db.jobs).values(
                id=job_id, tenant=tenant, kind="ingest", collection=collection, state="queued",
                files_total=len(files), progress={}, created_at=db.utcnow(),
            )
        )
        if files:
            await conn.execute(
                insert(db.job_files),
                [
                    dict(job_id=job_id, position=i, filename=f.filename, staged_path=str(f.path), bytes=f.bytes,
                         state="queued")
                    for i, f in enumerate(files)
                ],
            )
    return job_id


async def enqueue_ingest(redis: ArqRedis, job_id: str, positions: list[int]) -> None:
    for position in positions:
        await redis.enqueue_job(
            "ingest_file", job_id, position, _job_id=ingest_arq_job_id(job_id, position), _queue_name=QUEUE_NAME
        )


async def set_job(engine: AsyncEngine, job_id: str, **values: Any) -> None:
    """Write `values` into a job's record (state, progress, result, times)."""
    async with engine.begin() as conn:
        await conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**values))


async def get_job(engine: AsyncEngine, *, tenant: str, job_id: str) -> Job:
    async with engine.connect() as conn:
        row = (await conn.execute(select(db.jobs).where(db.jobs.c.id == job_id, db.jobs.c.tenant == tenant))).first()
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist", code="job_not_found")
        files = (
            await conn.execute(
                select(db.job_files).where(db.job_files.c.job_id == job_id).order_by(db.job_files.c.position)
            )
        ).all()
    return Job(
        id=row.id, kind=row.kind, collection=row.collection, state=row.state, files_total=row.files_total,
        files_done=row.files_done, chunks_total=row.chunks_total, chunks_done=row.chunks_done,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at, error=row.error,
        progress=row.progress or {}, result=row.result,
        files=[
            FileStatus(
                filename=f.filename, state=f.state, bytes=f.bytes, doc_id=f.doc_id, chunks_total=f.chunks_total,
                chunks_done=f.chunks_done, error_code=f.error_code, error=f.error,
            )
            for f in files
        ],
    )


async def unfinished_ingest_files(engine: AsyncEngine) -> list[tuple[str, int]]:
    """(job id, position) of every file not yet ingested, for re-enqueueing at start-up."""
    f = db.job_files
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(f.c.job_id, f.c.position).where(f.c.state.not_in(TERMINAL_FILE_STATES)).order_by(f.c.job_id, f.c.position)
        )
        return [(r.job_id, r.position) for r in rows]


# ---- the worker side ----


class IngestContext(Protocol):
    """What the ingestion job needs from the process it runs in."""

    db: AsyncEngine

    async def ingestor_for(self, tenant: str, collection: str) -> DocumentIngestor: ...

    async def job_finished(self, tenant: str, collection: str, chunks_written: int) -> None:
        """Called when an ingestion job's last file is done (follow-up maintenance)."""


async def _update_file(engine: AsyncEngine, job_id: str, position: int, **values: Any) -> None:
    f = db.job_files
    async with engine.begin() as conn:
        await conn.execute(update(f).where(f.c.job_id == job_id, f.c.position == position).values(**values))


async def _refresh_job(engine: AsyncEngine, job_id: str) -> None:
    """Recompute a job's totals and state from its files (idempotent; safe with many workers)."""
    f = db.job_files
    async with engine.begin() as conn:
        totals = (
            await conn.execute(
                select(
                    func.count().label("files"),
                    func.sum(cast(f.c.state.in_(TERMINAL_FILE_STATES), Integer)).label("terminal"),
                    func.sum(cast(f.c.state == "failed", Integer)).label("failed"),
                    func.sum(cast(f.c.state == "queued", Integer)).label("queued"),
                    func.coalesce(func.sum(f.c.chunks_total), 0).label("chunks_total"),
                    func.coalesce(func.sum(f.c.chunks_done), 0).label("chunks_done"),
                ).where(f.c.job_id == job_id)
            )
        ).one()
        files, terminal, failed = totals.files, totals.terminal or 0, totals.failed or 0
        values: dict[str, Any] = dict(
            files_done=terminal, chunks_total=totals.chunks_total, chunks_done=totals.chunks_done
        )
        if files and terminal == files:
            values.update(state="failed" if failed == files else "done", finished_at=db.utcnow())
        elif (totals.queued or 0) < files:
            values.update(state="running")
        jobs = db.jobs
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        await conn.execute(
            update(jobs).where(and_(jobs.c.id == job_id, jobs.c.started_at.is_(None))).values(started_at=db.utcnow())
        )


class _Progress:
    """Chunk counters written by the ingestion thread and flushed by the event loop."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def add_total(self, n: int) -> None:
        self.total += n

    def add_done(self, n: int) -> None:
        self.done += n


async def _while_running(work: Awaitable[FileResult], flush: Callable[[], Awaitable[None]], every_s: float = 0.5):
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=every_s)
        if done:
            return task.result()
        await flush()


async def ingest_file(ctx: dict[str, Any], job_id: str, position: int) -> str:
    """arq job: ingest file `position` of ingestion job `job_id`; returns the file's state."""
    sieve: IngestContext = ctx["sieve"]
    engine = sieve.db
    async with engine.connect() as conn:
        job = (await conn.execute(select(db.jobs).where(db.jobs.c.id == job_id))).first()
        file = (
            await conn.execute(
                select(db.job_files).where(db.job_files.c.job_id == job_id, db.job_files.c.position == position)
            )
        ).first()
    if job is None or file is None:
        log.warning("ingest_file: job %s file %s not found; dropping", job_id, position)
        return "missing"
    if file.state in TERMINAL_FILE_STATES:
        return file.state

    await _update_file(engine, job_id, position, state="running", chunks_done=0)
    await _refresh_job(engine, job_id)
    progress = _Progress()

    async def flush() -> None:
        await _update_file(engine, job_id, position, chunks_total=progress.total, chunks_done=progress.done)
        await _refresh_job(engine, job_id)

    try:
        ingestor = await sieve.ingestor_for(job.tenant, job.collection)
        known = await catalog.get_document(
            engine, tenant=job.tenant, collection=job.collection,
            doc_id=ingestor.doc_id(file.filename),
        )
        result = await _while_running(
            asyncio.to_thread(
                ingestor.ingest,
                Path(file.staged_path),
                file.filename,
                known=(known.content_hash, known.config_hash) if known else None,
                on_chunks_total=progress.add_total,
                on_chunks_done=progress.add_done,
            ),
            flush,
        )
    except DocumentError as e:
        await _update_file(engine, job_id, position, state="failed", error_code=e.code, error=e.message)
    except ServiceError as e:
        if e.retryable and ctx.get("job_try", 1) < ctx.get("max_tries", 5):
            await _update_file(engine, job_id, position, state="queued", error_code=e.code, error=e.message)
            raise Retry(defer=2 * ctx.get("job_try", 1)) from e
        await _update_file(engine, job_id, position, state="failed", error_code=e.code, error=e.message)
    except Exception as e:  # a bug or an unexpected library error: record it, do not retry forever
        log.exception("ingest_file %s/%s failed", job_id, position)
        await _update_file(engine, job_id, position, state="failed", error_code="internal_error", error=repr(e))
    else:
        state = result.state
        if state == "done":
            await catalog.save_document(
                engine, tenant=job.tenant, collection=job.collection,
                record=catalog.DocumentRecord(
                    doc_id=result.doc_id, filename=file.filename, content_hash=result.content_hash,
                    kind=result.kind or "unknown", bytes=file.bytes, pages=result.pages,
                    chunks=result.chunks, config_hash=ingestor.config_hash, meta=result.meta or {},
                    ingested_at=db.utcnow(),
                ),
            )
        await _update_file(
            engine, job_id, position, state=state, doc_id=result.doc_id,
            chunks_total=result.chunks, chunks_done=result.chunks, error_code=None, error=None,
        )
        Path(file.staged_path).unlink(missing_ok=True)
    await _refresh_job(engine, job_id)
    if await _cleanup_if_finished(engine, job_id):
        await sieve.job_finished(job.tenant, job.collection, await _chunks_written(engine, job_id))
    async with engine.connect() as conn:
        return await conn.scalar(
            select(db.job_files.c.state).where(db.job_files.c.job_id == job_id, db.job_files.c.position == position)
        )


async def _cleanup_if_finished(engine: AsyncEngine, job_id: str) -> bool:
    """Remove the job's staging folder once every file is terminal; True if they all are."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(db.jobs.c.state).where(db.jobs.c.id == job_id))).first()
        first = await conn.scalar(select(db.job_files.c.staged_path).where(db.job_files.c.job_id == job_id).limit(1))
    finished = bool(row and row.state in ("done", "failed"))
    if finished and first:
        shutil.rmtree(Path(first).parent, ignore_errors=True)
    return finished


async def _chunks_written(engine: AsyncEngine, job_id: str) -> int:
    """Chunks of the job's files that were (re-)ingested, not found unchanged."""
    f = db.job_files
    async with engine.connect() as conn:
        return await conn.scalar(
            select(func.coalesce(func.sum(f.c.chunks_done), 0)).where(f.c.job_id == job_id, f.c.state == "done")
        )
