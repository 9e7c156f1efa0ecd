"""Request and response models of the REST API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from finetune.train import LoraSettings


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectionCreate(_Request):
    name: str = Field(description="1-64 characters: letters, digits, '_' or '-'.", examples=["filings"])
    domain: str = Field(
        "generic",
        description="Key of the domain module the collection uses by default, or `auto`: a router picks the "
        "module for each question (documents then get no domain-specific metadata at ingestion).",
    )


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


class OptimizeAccepted(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed"]
    status_url: str = Field(
        description="Follow the job here; when it is done, `result` says whether anything changed, the chunks "
        "the collection holds and the seconds it took."
    )


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


class RouteOut(BaseModel):
    module: str = Field(description="Key of the domain module that took the question.")
    by: Literal["request", "collection", "router"] = Field(
        description="Named by the request, the collection's domain, or chosen by the router (`auto` collections)."
    )
    score: float | None = Field(None, description="The router's similarity score for the module (router only).")


class AskResponse(BaseModel):
    answer: str
    citations: list[Citation]
    confidence: float = Field(
        description="Calibrated probability that the answer is right (`sieve calibrate`); for an abstention "
        "decided before any model was asked, 1 - the context's sufficiency."
    )
    decision: Literal["answered", "escalated", "abstained"]
    model: str
    trace_id: str
    degraded: bool = Field(
        False,
        description="The large tier was needed but unavailable, so the small answer is returned; or the small "
        "model has not loaded the module's adapter, so the base model answered (the trace says which).",
    )
    route: RouteOut | None = Field(None, description="Which module answered, and why.")


# ---- search ----


class SearchRequest(_Request):
    collection: str
    question: str = Field(min_length=1, max_length=4000)
    module: str | None = Field(None, description="Domain module to use; default: the collection's.")
    k: int = Field(10, ge=1, le=100, description="Most chunks returned.")
    explain: bool = Field(False, description="Also return the candidates the module dropped, each with its reason.")


class SearchHit(BaseModel):
    doc_id: str
    filename: str
    page: int | None
    text: str
    score: float = Field(description="Retrieval score (fused rank score for hybrid retrieval).")
    similarity: float = Field(description="Cosine similarity of the chunk to the question.")
    kept: bool
    reason: str | None = Field(None, description="Why the module dropped the chunk.")


class SearchResponse(BaseModel):
    results: list[SearchHit] = Field(description="The chunks the module keeps, best first.")
    dropped: list[SearchHit] | None = Field(None, description="With `explain`: the candidates dropped, with reasons.")
    module: str
    route: RouteOut
    config_revision: int = Field(description="Revision of the module's config that was used (0: defaults).")
    config_hash: str
    latency_ms: dict[str, float] = Field(description="Milliseconds per stage, and `total`.")


# ---- modules and their configs ----


class ModuleOut(BaseModel):
    key: str
    description: str
    config_schema: dict[str, Any] = Field(description="JSON Schema of the module's config: every setting, documented.")
    revision: int = Field(description="Current config revision (0: the defaults).")
    config_hash: str


class ModuleConfigOut(BaseModel):
    module: str
    revision: int = Field(description="0: the module's defaults, never changed.")
    config: dict[str, Any]
    config_hash: str = Field(description="sha256 of the config's canonical JSON (16 hex digits), as traces record it.")
    author: str | None = None
    comment: str | None = None
    created_at: datetime | None = None


class ConfigUpdate(_Request):
    config: dict[str, Any] = Field(description="Settings of the module's config (see its JSON Schema).")
    comment: str | None = Field(None, max_length=2000, description="Why the change is made; shown in the history.")
    base_revision: int | None = Field(
        None, ge=0,
        description="The revision the change was made from; if another change was saved since, the request "
        "fails with 409 `stale_revision` instead of overwriting it.",
    )


class ConfigCheck(_Request):
    config: dict[str, Any]


class ConfigValid(BaseModel):
    valid: Literal[True] = True


class ConfigChangeOut(BaseModel):
    path: str = Field(description="The setting, nested settings joined with dots.")
    old: Any
    new: Any


class ConfigRevisionOut(ModuleConfigOut):
    changes: list[ConfigChangeOut] = Field(description="What this revision changed from the previous one.")


class RollbackRequest(_Request):
    revision: int = Field(ge=0, description="The revision whose config becomes current again (0: the defaults).")


class PreviewRequest(_Request):
    collection: str
    question: str = Field(min_length=1, max_length=4000)
    config: dict[str, Any] = Field(
        default_factory=dict, description="Settings to change, merged onto the current config (nothing is saved)."
    )
    k: int | None = Field(
        None, ge=1, le=100, description="Curate as `/v1/search` with this k; default: as `/v1/ask` does."
    )


class PreviewCandidate(BaseModel):
    id: str
    doc_id: str
    filename: str
    page: int | None
    rank: int
    similarity: float
    kept: bool
    reason: str | None


class PreviewSide(BaseModel):
    config_hash: str
    revision: int | None = Field(description="The current revision; null for the proposed config.")
    candidates: list[PreviewCandidate]


class PreviewDifference(BaseModel):
    id: str
    doc_id: str
    filename: str
    page: int | None
    reason: str = Field(description="Why the other config does not keep the chunk.")


class PreviewSummary(BaseModel):
    kept_only_current: list[PreviewDifference] = Field(description="Chunks the proposed config would drop.")
    kept_only_proposed: list[PreviewDifference] = Field(description="Chunks the proposed config would add.")


class PreviewResponse(BaseModel):
    module: str
    changes: list[ConfigChangeOut]
    current: PreviewSide
    proposed: PreviewSide
    summary: PreviewSummary


# ---- fine-tuning and adapters ----

PAIRS_DESCRIPTION = (
    "Training data as JSONL, one object a line: `question`, `answers` (a list of strings, the first is the "
    "reference) and optionally `id`, `answerable` (false: the documents do not hold the answer, and the model "
    "learns to abstain), `doc_ids`, `evidence`, `label`, `long_answer`, `domain`."
)


class FinetuneRequest(_Request):
    collection: str = Field(description="Collection whose documents give each question its context.")
    module: str = Field(
        description="Key of the domain module the adapter is for: its current config curates each question's "
        "context exactly as at query time, and only this module's config can name the adapter."
    )
    pairs: str = Field(description=PAIRS_DESCRIPTION)
    settings: LoraSettings = Field(
        default_factory=LoraSettings, description="LoRA hyper-parameters; those left out take their defaults."
    )


class FinetuneAccepted(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed"]
    pairs: int = Field(description="Question/answer pairs accepted (training and held-out evaluation together).")
    status_url: str = Field(
        description="Follow the job here: `progress` holds the phase, step, loss and ETA; when it is done, "
        "`result` holds the adapter id and the held-out metrics of the base and the fine-tuned model."
    )


class AdapterOut(BaseModel):
    id: str = Field(
        description="What a module config's `adapter` setting names. Content-addressed: the module, base model, "
        "training data and hyper-parameters determine it."
    )
    module: str = Field(description="The module it was trained for; only that module's config can use it.")
    base_model: str = Field(description="The small model it adapts.")
    created_at: datetime
    meta: dict[str, Any] = Field(
        description="Lineage, quality and cost: `metrics` (`base` and `tuned`, each with n, accuracy, "
        "abstention_recall and false_abstention_rate on the held-out pairs), `hyperparameters`, `data_hash` "
        "(sha256 of the training examples), `base_gguf_sha256`, `collection`, `examples` (train and eval "
        "counts), `training` (steps, losses, seconds, peak memory) and `job_id`."
    )
