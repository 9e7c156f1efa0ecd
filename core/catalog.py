"""Collections and their documents, as recorded in the metadata database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.errors import ConflictError, NotFoundError, ValidationFailedError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Collection:
    tenant: str
    name: str
    domain: str
    embedding_model: str
    dims: int
    vector_name: str
    created_at: datetime
    documents: int = 0
    chunks: int = 0


def vector_collection_name(tenant: str, name: str) -> str:
    """The collection's name in the vector store; one per Sieve collection and tenant."""
    return f"sieve__{tenant}__{name}"


def check_name(name: str, what: str = "name") -> None:
    if not NAME_PATTERN.match(name):
        raise ValidationFailedError(
            f"invalid {what} {name!r}",
            details=[f"{what}: 1-64 characters, letters, digits, '_' or '-', not starting with '_' or '-'"],
        )


async def create_collection(
    engine: AsyncEngine, *, tenant: str, name: str, domain: str, embedding_model: str, dims: int
) -> Collection:
    check_name(name)
    vector_name = vector_collection_name(tenant, name)
    async with engine.begin() as conn:
        exists = await conn.scalar(
            select(func.count()).select_from(db.collections).where(
                db.collections.c.tenant == tenant, db.collections.c.name == name
            )
        )
        if exists:
            raise ConflictError(f"collection {name!r} already exists", code="collection_exists")
        await conn.execute(
            insert(db.collections).values(
                tenant=tenant, name=name, domain=domain, embedding_model=embedding_model, dims=dims,
                vector_name=vector_name, created_at=db.utcnow(),
            )
        )
    return await get_collection(engine, tenant=tenant, name=name)


def _collection(row: Any, documents: int = 0, chunks: int = 0) -> Collection:
    return Collection(
        tenant=row.tenant, name=row.name, domain=row.domain, embedding_model=row.embedding_model, dims=row.dims,
        vector_name=row.vector_name, created_at=row.created_at, documents=documents, chunks=chunks,
    )


def _with_counts():
    """Collections joined with their document and chunk counts."""
    d = db.documents
    counts = (
        select(
            d.c.tenant,
            d.c.collection,
            func.count().label("documents"),
            func.coalesce(func.sum(d.c.chunks), 0).label("chunks"),
        )
        .group_by(d.c.tenant, d.c.collection)
        .subquery()
    )
    c = db.collections
    return select(c, counts.c.documents, counts.c.chunks).outerjoin(
        counts, (counts.c.collection == c.c.name) & (counts.c.tenant == c.c.tenant)
    )


async def get_collection(engine: AsyncEngine, *, tenant: str, name: str) -> Collection:
    async with engine.connect() as conn:
        row = (
            await conn.execute(_with_counts().where(db.collections.c.tenant == tenant, db.collections.c.name == name))
        ).first()
    if row is None:
        raise NotFoundError(f"collection {name!r} does not exist", code="collection_not_found")
    return _collection(row, row.documents or 0, row.chunks or 0)


async def list_collections(engine: AsyncEngine, *, tenant: str) -> list[Collection]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(_with_counts().where(db.collections.c.tenant == tenant).order_by(db.collections.c.name))
        ).all()
    return [_collection(r, r.documents or 0, r.chunks or 0) for r in rows]


async def delete_collection_record(engine: AsyncEngine, *, tenant: str, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(db.documents).where(db.documents.c.tenant == tenant, db.documents.c.collection == name))
        await conn.execute(delete(db.collections).where(db.collections.c.tenant == tenant, db.collections.c.name == name))


# ---- documents ----


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    filename: str
    content_hash: str
    kind: str
    bytes: int
    pages: int | None
    chunks: int
    config_hash: str
    meta: dict[str, Any]
    ingested_at: datetime


def _document(row: Any) -> DocumentRecord:
    return DocumentRecord(
        doc_id=row.doc_id, filename=row.filename, content_hash=row.content_hash, kind=row.kind, bytes=row.bytes,
        pages=row.pages, chunks=row.chunks, config_hash=row.config_hash, meta=row.meta or {},
        ingested_at=row.ingested_at,
    )


async def list_documents(
    engine: AsyncEngine, *, tenant: str, collection: str, limit: int = 1000, offset: int = 0
) -> list[DocumentRecord]:
    d = db.documents
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(d)
                .where(d.c.tenant == tenant, d.c.collection == collection)
                .order_by(d.c.filename)
                .limit(limit)
                .offset(offset)
            )
        ).all()
    return [_document(r) for r in rows]


async def get_document(engine: AsyncEngine, *, tenant: str, collection: str, doc_id: str) -> DocumentRecord | None:
    d = db.documents
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(d).where(d.c.tenant == tenant, d.c.collection == collection, d.c.doc_id == doc_id)
            )
        ).first()
    return _document(row) if row else None


async def get_documents(engine: AsyncEngine, *, tenant: str, doc_ids: list[str]) -> dict[str, DocumentRecord]:
    d = db.documents
    async with engine.connect() as conn:
        rows = (await conn.execute(select(d).where(d.c.tenant == tenant, d.c.doc_id.in_(doc_ids)))).all()
    return {r.doc_id: _document(r) for r in rows}


async def save_document(
    engine: AsyncEngine, *, tenant: str, collection: str, record: DocumentRecord
) -> None:
    """Insert or replace the record of a document's live version."""
    d = db.documents
    values = dict(record.__dict__, tenant=tenant, collection=collection)
    async with engine.begin() as conn:
        updated = await conn.execute(
            update(d).where(d.c.doc_id == record.doc_id, d.c.tenant == tenant).values(**values)
        )
        if updated.rowcount == 0:
            await conn.execute(insert(d).values(**values))


async def delete_document_record(engine: AsyncEngine, *, tenant: str, doc_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(db.documents).where(db.documents.c.tenant == tenant, db.documents.c.doc_id == doc_id))
