"""The FastAPI application: one router per resource, one error handler, one lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import AppServices
from api.errors import install_error_handlers
from api.routes import adapters, ask, collections, documents, finetune, jobs, modules, search
from core.resources import Resources
from core.settings import Settings, get_settings
from finetune.worker import FinetuneServices, finetune_worker_task, recover_finetune_jobs
from ingest.worker import IngestServices, recover, worker_task
from retrieval.ask import AskService

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, models: bool = True) -> FastAPI:
    """Build the app. `models=False` starts it without generative tiers (tests of the
    ingestion path); `/v1/ask` then answers 503."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        resources = await Resources.open(settings, models=models)
        worker = task = finetune_worker = finetune_task = None
        try:
            # One service answers and searches: one router and one module cache.
            answering = AskService(resources)
            finetuning = FinetuneServices(resources, answering)
            answering.on_missing_adapter = finetuning.reload_adapters
            await finetuning.reload_adapters()
            if settings.run_worker_in_api:
                # The embedded engine has one owner, so this worker is the only one.
                await recover(resources, exclusive=settings.qdrant_url is None)
                worker, task = worker_task(resources)
                await recover_finetune_jobs(resources)
                finetune_worker, finetune_task = finetune_worker_task(finetuning)
            app.state.services = AppServices(
                resources=resources, ingest=IngestServices(resources), ask=answering, search=answering,
                configs=answering.configs, finetune=finetuning,
            )
            log.info("Sieve is ready on http://%s:%s (API docs at /docs)", settings.host, settings.port)
            yield
        finally:
            for running, running_task in ((worker, task), (finetune_worker, finetune_task)):
                if running:
                    await running.close()
                    running_task.cancel()
            await resources.close()

    app = FastAPI(
        title="Sieve",
        version="0.1.0",
        description="Answers questions over your documents with small, specialised models, "
        "escalating to a large one only when needed.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (
        collections.router, documents.router, jobs.router, ask.router, search.router, modules.router,
        finetune.router, adapters.router,
    ):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
