"""Documents of a collection: upload (asynchronous ingestion), list, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, UploadFile, status

from api.deps import ServicesDep, TenantDep
from api.schemas import DocumentOut, UploadAccepted
from core.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from core import catalog
from ingest.archive import ArchiveLimits
from ingest.jobs import create_ingest_job, enqueue_ingest
from ingest.uploads import UploadLimits, UploadStager

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"])


async def _chunks(upload: UploadFile, size: int = 1024 * 1024):
    while chunk := await upload.read(size):
        yield chunk


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted)
async def upload_documents(
    name: str, files: list[UploadFile], request: Request, services: ServicesDep, tenant: TenantDep
) -> UploadAccepted:
    """Upload one or many files, or zip archives of them, for ingestion.

    Answers at once with a job id; follow it at `GET /v1/jobs/{job_id}`. A file whose name
    is already in the collection replaces that document when its content differs and is
    skipped when it is identical."""
    settings = services.resources.settings
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes:
        raise PayloadTooLargeError(f"upload exceeds {settings.max_upload_bytes} bytes", code="upload_too_large")
    await catalog.get_collection(services.resources.db, tenant=tenant, name=name)
    if not files:
        raise BadRequestError("no files in the upload", code="no_files")
    stager = UploadStager(
        settings.data_dir / "uploads",
        UploadLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_file_bytes=settings.max_file_bytes,
            archive=ArchiveLimits.from_settings(settings),
        ),
    )
    try:
        for upload in files:
            await stager.add(upload.filename, _chunks(upload))
        if not stager.files:
            raise BadRequestError("the upload holds no files to ingest", code="no_files")
        job_id = await create_ingest_job(services.resources.db, tenant=tenant, collection=name, files=stager.files)
    except BaseException:
        stager.discard()
        raise
    await enqueue_ingest(services.resources.redis, job_id, list(range(len(stager.files))))
    return UploadAccepted(job_id=job_id, files=len(stager.files), status_url=f"/v1/jobs/{job_id}")


def _out(d: catalog.DocumentRecord) -> DocumentOut:
    return DocumentOut(
        doc_id=d.doc_id, filename=d.filename, content_hash=d.content_hash, kind=d.kind, bytes=d.bytes, pages=d.pages,
        chunks=d.chunks, ingested_at=d.ingested_at, meta=d.meta,
    )


@router.get("", response_model=list[DocumentOut])
async def list_documents(
    name: str, services: ServicesDep, tenant: TenantDep, limit: int = 1000, offset: int = 0
) -> list[DocumentOut]:
    await catalog.get_collection(services.resources.db, tenant=tenant, name=name)
    docs = await catalog.list_documents(services.resources.db, tenant=tenant, collection=name, limit=limit, offset=offset)
    return [_out(d) for d in docs]


async def _document(services: ServicesDep, tenant: str, name: str, doc_id: str) -> catalog.DocumentRecord:
    await catalog.get_collection(services.resources.db, tenant=tenant, name=name)
    doc = await catalog.get_document(services.resources.db, tenant=tenant, collection=name, doc_id=doc_id)
    if doc is None:
        raise NotFoundError(f"document {doc_id!r} is not in collection {name!r}", code="document_not_found")
    return doc


@router.get("/{doc_id}", response_model=DocumentOut)
async def get_document(name: str, doc_id: str, services: ServicesDep, tenant: TenantDep) -> DocumentOut:
    return _out(await _document(services, tenant, name, doc_id))


@router.delete("/{doc_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(name: str, doc_id: str, services: ServicesDep, tenant: TenantDep) -> None:
    """Remove the document and every chunk of it."""
    await _document(services, tenant, name, doc_id)
    ingestor = await services.ingest.ingestor_for(tenant, name)
    await asyncio.to_thread(ingestor.remove, doc_id)
    await catalog.delete_document_record(services.resources.db, tenant=tenant, doc_id=doc_id)
