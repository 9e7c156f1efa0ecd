"""Jobs: follow asynchronous work: ingestion (per file), fine-tuning (phase, step, loss, ETA) and optimizing a collection."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep, TenantDep
from api.schemas import FileError, JobFileOut, JobOut
from ingest.jobs import get_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
async def read_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobOut:
    """State (queued, running, done, failed), files and chunks done out of total, and
    per-file errors. A job is `done` when every file was processed, even if some failed
    (they are listed in `errors`); `failed` when none could be ingested."""
    job = await get_job(services.resources.db, tenant=tenant, job_id=job_id)
    files = [
        JobFileOut(
            filename=f.filename, state=f.state, doc_id=f.doc_id, chunks_total=f.chunks_total,
            chunks_done=f.chunks_done,
            error=FileError(filename=f.filename, code=f.error_code or "error", message=f.error or "")
            if f.state == "failed" else None,
        )
        for f in job.files
    ]
    return JobOut(
        job_id=job.id, kind=job.kind, collection=job.collection, state=job.state, files_total=job.files_total,
        files_done=job.files_done, chunks_total=job.chunks_total, chunks_done=job.chunks_done,
        errors=[f.error for f in files if f.error], files=files, progress=job.progress, result=job.result,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )
