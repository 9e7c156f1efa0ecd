"""Data shapes shared by ingestion, retrieval and the API."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from pydantic import BaseModel, Field

# Namespace for deterministic point ids: the same chunk of the same document version
# always gets the same id, which makes upserts idempotent.
POINT_NAMESPACE = uuid.UUID("5d1c3f5e-6a3b-4c1e-9a57-3f1f0e6b2a10")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def document_id(tenant: str, collection: str, filename: str) -> str:
    """A document's identity: its (relative) filename inside a tenant's collection, hashed.
    Uploading a file of the same name again replaces that document."""
    return "doc_" + sha256_hex(f"{tenant}\x00{collection}\x00{filename}")[:24]


def point_id(doc_id: str, content_hash: str, chunk_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}:{content_hash}:{chunk_index}"))


class ChunkPayload(BaseModel):
    """The payload stored with every chunk point. Keys are indexed as listed in
    `ingest.index.CHUNK_INDEXES`; module-specific metadata goes in `meta`."""

    tenant: str
    collection: str
    doc_id: str
    filename: str
    chunk_index: int
    text: str
    page: int | None = Field(None, description="1-based page where the chunk starts, when the format has pages.")
    page_end: int | None = Field(None, description="1-based page where the chunk ends.")
    section_path: list[str] = Field(default_factory=list, description="Titles from the document root to the chunk.")
    element_type: str = Field("text", description="Kind of content: text, table, list, title, email.")
    content_hash: str = Field(description="sha256 of the source file's bytes (the document version).")
    chunk_hash: str = Field(description="sha256 of the chunk text.")
    config_hash: str = Field(description="Hash of the ingestion settings that produced the chunk.")
    live: bool = Field(False, description="False while a new document version is being written.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Metadata extracted by the domain module.")
