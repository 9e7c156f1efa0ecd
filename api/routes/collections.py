"""Collections: named sets of documents, each with a default domain module."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status

from api.deps import ServicesDep, TenantDep
from api.schemas import CollectionCreate, CollectionOut, OptimizeAccepted
from core.errors import ValidationFailedError
from core import catalog
from ingest.jobs import get_job
from ingest.optimize import request_optimize
from modules import registry

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _out(c: catalog.Collection) -> CollectionOut:
    return CollectionOut(
        name=c.name, domain=c.domain, embedding_model=c.embedding_model, documents=c.documents, chunks=c.chunks,
        created_at=c.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
async def create_collection(body: CollectionCreate, services: ServicesDep, tenant: TenantDep) -> CollectionOut:
    """Create an empty collection whose questions go to the `domain` module by default
    (`auto`: a router picks the module for each question)."""
    domains = [*registry.module_keys(), registry.AUTO_DOMAIN]
    if body.domain not in domains:
        raise ValidationFailedError(f"unknown domain {body.domain!r}", details=[f"domain: one of {', '.join(domains)}"])
    resources = services.resources
    created = await catalog.create_collection(
        resources.db, tenant=tenant, name=body.name, domain=body.domain,
        embedding_model=resources.settings.embedding_model, dims=resources.embedder.dims,
    )
    return _out(created)


@router.get("", response_model=list[CollectionOut])
async def list_collections(services: ServicesDep, tenant: TenantDep) -> list[CollectionOut]:
    return [_out(c) for c in await catalog.list_collections(services.resources.db, tenant=tenant)]


@router.get("/{name}", response_model=CollectionOut)
async def get_collection(name: str, services: ServicesDep, tenant: TenantDep) -> CollectionOut:
    return _out(await catalog.get_collection(services.resources.db, tenant=tenant, name=name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_collection(name: str, services: ServicesDep, tenant: TenantDep) -> None:
    """Delete the collection with all its documents and chunks."""
    ingestor = await services.ingest.ingestor_for(tenant, name)
    await asyncio.to_thread(ingestor.drop)
    await catalog.delete_collection_record(services.resources.db, tenant=tenant, name=name)


@router.post("/{name}/optimize", status_code=status.HTTP_202_ACCEPTED, response_model=OptimizeAccepted)
async def optimize_collection(name: str, response: Response, services: ServicesDep, tenant: TenantDep) -> OptimizeAccepted:
    """Build the collection's vector indexes and vacuum its deleted chunks, as a job.

    The embedded engine indexes only when optimized (Sieve does it after every ingestion of
    `optimize_after_chunks` chunks or more); until then each search scans every vector.
    Searches go on while it runs; writes to the collection wait for it. Asking again while
    one is queued or running returns that job. With a Qdrant server the job changes nothing:
    the server indexes by itself."""
    r = services.resources
    job_id = await request_optimize(r.db, r.redis, tenant=tenant, collection=name)
    job = await get_job(r.db, tenant=tenant, job_id=job_id)
    status_url = f"/v1/jobs/{job_id}"
    response.headers["Location"] = status_url
    return OptimizeAccepted(job_id=job_id, state=job.state, status_url=status_url)
