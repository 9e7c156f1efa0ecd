"""The fine-tuning worker: an arq `Worker` on its own queue, so that an hour of training
never holds up ingestion, and the hook that loads registered adapters into the embedded
small-model server.

In the embedded default the API process runs it next to the ingestion worker (it shares
the process's resources: the database, the vector store, the small tier's server).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import func
from sqlalchemy import select

from core import db
from core.resources import Resources
from core.settings import Settings
from finetune.jobs import JOB_KIND, JOB_TIMEOUT_S, QUEUE_NAME, finetune
from finetune.registry import all_adapter_files
from ingest.worker import run_standalone
from retrieval.search import SearchService

log = logging.getLogger(__name__)


class FinetuneServices:
    """What fine-tuning jobs use: the process's resources and its module search."""

    def __init__(self, resources: Resources, search: SearchService):
        self.resources = resources
        self.search = search
        self._reload_lock = asyncio.Lock()

    async def reload_adapters(self) -> list[str]:
        """Restart the embedded small-model server with every registered adapter if its set
        changed (a second or two for a small model); returns the loaded adapter names.
        Endpoints Sieve does not run load adapters themselves (vLLM `--lora-modules`)."""
        return await reload_adapters(self.resources, self._reload_lock)


async def reload_adapters(resources: Resources, lock: asyncio.Lock | None = None) -> list[str]:
    """See `FinetuneServices.reload_adapters`."""
    small = resources.small
    if small is None or small.server is None:
        return []
    async with lock or asyncio.Lock():
        files = await all_adapter_files(resources.db, base_model=small.tier.model)
        server = small.server
        if sorted(map(str, files)) != sorted(map(str, server.adapters)):
            log.info("loading %d LoRA adapter(s) into the small model server", len(files))
            await server.restart(adapters=files)
        return [p.stem for p in server.adapters]


def build_finetune_worker(services: FinetuneServices, *, burst: bool = False) -> Worker:
    """An arq worker for the fine-tuning queue (not started); one job at a time."""
    return Worker(
        functions=[func(finetune, name="finetune", timeout=JOB_TIMEOUT_S, max_tries=1)],
        queue_name=QUEUE_NAME,
        redis_settings=RedisSettings.from_dsn(services.resources.redis_url),
        ctx={"sieve": services},
        handle_signals=False,
        burst=burst,
        max_jobs=1,
        poll_delay=0.5,
        keep_result=3600,
    )


async def recover_finetune_jobs(resources: Resources) -> int:
    """Re-enqueue fine-tuning jobs left queued or running by a previous process (a running
    one starts again; the arq job id makes this idempotent). Call it only from the one
    process that runs the fine-tuning worker."""
    async with resources.db.connect() as conn:
        ids = (
            await conn.scalars(
                select(db.jobs.c.id).where(db.jobs.c.kind == JOB_KIND, db.jobs.c.state.in_(("queued", "running")))
            )
        ).all()
    if ids:
        # This process is the only fine-tuning worker: in-progress markers are stale.
        await resources.redis.delete(*(in_progress_key_prefix + job_id for job_id in ids))
    for job_id in ids:
        await resources.redis.enqueue_job("finetune", job_id, _job_id=job_id, _queue_name=QUEUE_NAME)
    return len(ids)


def finetune_worker_task(services: FinetuneServices) -> tuple[Worker, asyncio.Task[Any]]:
    """Start an in-process fine-tuning worker on the running event loop."""
    worker = build_finetune_worker(services)
    return worker, asyncio.create_task(worker.async_run(), name="sieve-finetune-worker")


async def run_finetune_worker(settings: Settings, *, burst: bool = False) -> None:
    """Run a standalone fine-tuning worker until cancelled (or, with `burst`, until the
    queue is empty). Its adapters are read by the small tier's server from the shared data
    folder; an external server loads them itself."""

    async def start(resources: Resources) -> Worker:
        await recover_finetune_jobs(resources)
        return build_finetune_worker(FinetuneServices(resources, SearchService(resources)), burst=burst)

    await run_standalone(settings, start)
