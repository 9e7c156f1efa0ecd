"""Request and response models of the REST API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectionCreate(_Request):
    name: str = Field(description="1-64 characters: letters, digits, '_' or '-'.", examples=["filings"])
    domain: str = Field("generic", description="Key of the domain module the collection uses by default.")


class CollectionOut(BaseModel):
    name: str
    domain: str
    embedding_model: str
    documents: int
    chunks: int
    created_at: datetime


class UploadAccepted(BaseModel):
    job_id: str
    files: int = Field(description="Files accepted for ingestion (archives count by their members).")
    status_url: str


class FileError(BaseModel):
    filename: str
    code: str
    message: str


class JobFileOut(BaseModel):
    filename: str
    state: Literal["queued", "running", "done", "unchanged", "failed"]
    doc_id: str | None
    chunks_total: int
    chunks_done: int
    error: FileError | None = None


class JobOut(BaseModel):
    job_id: str
    kind: str
    collection: str | None
    state: Literal["queued", "running", "done", "failed"]
    files_total: int
    files_done: int
    chunks_total: int
    chunks_done: int
    errors: list[FileError]
    files: list[JobFileOut]
    progress: dict[str, Any] = Field(default_factory=dict, description="Kind-specific progress (e.g. step, loss).")
    result: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DocumentOut(BaseModel):
    doc_id: str
    filename: str
    content_hash: str
    kind: str
    bytes: int
    pages: int | None
    chunks: int
    ingested_at: datetime
    meta: dict[str, Any]


class AskRequest(_Request):
    collection: str
    question: str = Field(min_length=1, max_length=4000)
    module: str | None = Field(None, description="Domain module to use; default: the collection's.")


class Citation(BaseModel):
    doc_id: str
    filename: str
    page: int | None
    text: str


class AskResponse(BaseModel):
    answer: str
    citations: list[Citation]
    confidence: float = Field(description="Estimated probability that the answer is right.")
    decision: Literal["answered", "escalated", "abstained"]
    model: str
    trace_id: str
    degraded: bool = Field(False, description="The large tier was needed but unavailable; the small answer is returned.")
