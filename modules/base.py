"""The domain-module contract.

A domain module turns a question into the curated context a model answers from, in three
query-time stages, plus one ingest-time stage:

- `fetch(query, ctx)`: candidate chunks for the question: hybrid retrieval (dense +
  sparse BM25, fused by Qdrant) from the collection, restricted by the payload filters
  that `analyze` derived from the question, plus any curated source the module declares.
- `normalize(query, candidates)`: make each candidate comparable and unambiguous for the
  model (numbers, currencies, scales, units, dates, fiscal periods, entity aliases,
  abbreviations); the normalized text is what the model sees, the stored text is what
  citations show.
- `filter(query, candidates)`: keep or drop each candidate, every drop with a reason
  (wrong entity or period, wrong document type, below the score floor, near-duplicate,
  over the token budget). Dropped candidates stay in the list, marked, so traces and
  previews can show them.
- `enrich(document)` at ingestion: extract the metadata the filters need (company,
  fiscal period, document type, parties, product, ...) and return it; it is stored in
  each chunk's payload under `meta` and indexed per `payload_indexes`.

`analyze(question)` runs first and extracts what the other stages use (entities,
periods, document types, payload filters).

Each module has a typed config (a `ModuleConfig` subclass: unknown keys rejected, every
field described, so its JSON Schema documents it for analysts) and registers under a key
with `@register`, which checks the contract when the class is defined. Construction is
cheap; a module instance is built per config revision and must be safe to share between
concurrent requests (stages take all request state as arguments).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.vectorstore import Filter, IndexType


class ModuleConfig(BaseModel):
    """Settings every module has. Subclasses add their own, each with a description."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    top_k: int = Field(40, ge=1, le=500, description="Candidates fetched from the collection before filtering.")
    retrieval: Literal["hybrid", "dense", "sparse"] = Field(
        "hybrid", description="hybrid: dense and BM25 results fused; dense or sparse: one of them alone."
    )
    fusion: Literal["rrf", "dbsf"] = Field(
        "rrf", description="How hybrid results are fused: reciprocal rank (rrf) or distribution-based score (dbsf)."
    )
    use_question_filters: bool = Field(
        True, description="Restrict retrieval with the payload filters derived from the question (entity, period, ...)."
    )
    score_floor: float = Field(
        0.0, ge=0.0, le=1.0, description="Drop candidates whose cosine similarity to the question is below this."
    )
    near_duplicate_threshold: float = Field(
        0.85, ge=0.0, le=1.0,
        description="Drop a candidate whose word-shingle overlap (Jaccard) with a better one reaches this.",
    )
    max_chunks: int = Field(6, ge=1, le=50, description="Most candidates kept for the model.")
    context_tokens: int = Field(
        1200, ge=64, le=32000, description="Token budget of the context given to the model (approximate)."
    )
    # ---- answering: small first, escalate when needed (retrieval/cascade.py) ----
    escalate_below: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Escalate to the large model when the calibrated confidence of the small model's answer "
        "is below this (0: never escalate, 1: always). Ignored when escalation_target applies.",
    )
    escalation_target: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Target share of questions escalated (e.g. 0.3), turned into a confidence threshold from "
        "the module's calibration (`sieve calibrate`); without a calibration, escalate_below applies.",
    )
    abstain_below: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Abstain, without asking a model, when the context's sufficiency (how much of the "
        "question's words, names and numbers it holds, 0-1) is below this; 0 turns it off.",
    )
    small_max_tokens: int = Field(
        160, ge=8, le=2048, description="Most tokens the small model may generate for an answer."
    )
    adapter: str | None = Field(
        None, min_length=1, max_length=64,
        description="LoRA adapter (an id from GET /v1/adapters, fine-tuned for this module) the small model "
        "answers with; None: the base model.",
    )


ConfigT = TypeVar("ConfigT", bound=ModuleConfig)


@dataclass
class Query:
    """A question as a module understands it."""

    text: str
    entities: list[str] = field(default_factory=list)
    periods: list[str] = field(default_factory=list)
    doc_types: list[str] = field(default_factory=list)
    filter: Filter | None = None
    #: What `analyze` found, for the later stages and the trace. `notes["search_text"]`, where a
    #: module sets it, is what the BM25 side of the search reads instead of `text`.
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """A chunk proposed as context; `kept`/`reason` record the filter stage's verdict."""

    id: str
    doc_id: str
    filename: str
    page: int | None
    text: str
    payload: dict[str, Any]
    score: float
    similarity: float
    rank: int
    source: str = "index"
    normalized: str | None = None
    kept: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    # A normalizer whose work waits for the first read of `model_text` (see `defer_normalization`).
    deferred: Callable[[Candidate], tuple[str, list[str]]] | None = field(default=None, repr=False)

    @property
    def model_text(self) -> str:
        """What the model sees: the normalized text when there is one."""
        if self.normalized is None and self.deferred is not None:
            self.normalized, notes = self.deferred(self)
            self.notes += notes
            self.deferred = None
        return self.normalized if self.normalized is not None else self.text

    def defer_normalization(self, normalizer: Callable[[Candidate], tuple[str, list[str]]]) -> None:
        """Normalize on first use: `normalizer(candidate) -> (text, notes)` runs when the filter
        first measures the candidate (or anything else reads `model_text`), so an expensive
        normalization is spent only on candidates that can still fit the token budget. A
        deferred normalizer must only annotate (add text), never shorten it."""
        self.deferred = normalizer

    def drop(self, reason: str) -> None:
        self.kept = False
        self.reason = reason


class DomainModule(ABC, Generic[ConfigT]):
    """Base of all domain modules; the default stages are the generic behaviour."""

    key: ClassVar[str]
    description: ClassVar[str]
    config_model: ClassVar[type[ModuleConfig]] = ModuleConfig
    payload_indexes: ClassVar[dict[str, IndexType]] = {}
    # Bump when `enrich` changes what it extracts: stored chunks are then re-stamped
    # (without being embedded again) the next time their document is ingested.
    enrich_version: ClassVar[str] = "1"
    # Example questions, used by the router to recognise the module's domain.
    route_examples: ClassVar[list[str]] = []

    def __init__(self, config: ConfigT | None = None):
        self.config: ConfigT = config or self.config_model()  # type: ignore[assignment]

    # ---- ingest time ----

    def enrich(self, text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Metadata for the filters, extracted from a whole document (text and file metadata)."""
        return {}

    # ---- query time ----

    def analyze(self, question: str) -> Query:
        return Query(text=question)

    def fetch(self, query: Query, ctx: FetchContext) -> list[Candidate]:
        cfg = self.config
        return ctx.search(
            query.text,
            limit=cfg.top_k,
            mode=cfg.retrieval,
            fusion=cfg.fusion,
            filter=query.filter if cfg.use_question_filters else None,
            sparse_text=query.notes.get("search_text"),
        )

    def normalize(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        for c in candidates:
            c.normalized = collapse_whitespace(c.text)
        return candidates

    def filter(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        return apply_generic_filters(candidates, self.config, count_tokens=approx_tokens)


class FetchContext(ABC):
    """Retrieval from one collection for one tenant, as modules see it (`modules.fetch`)."""

    #: Time spent embedding question texts so far, in ms: not a module stage (`retrieval.curate`).
    embedding_ms: float = 0.0

    @abstractmethod
    def search(
        self,
        text: str,
        *,
        limit: int,
        mode: str = "hybrid",
        fusion: str = "rrf",
        filter: Filter | None = None,
        prefer: Filter | None = None,
        sparse_text: str | None = None,
    ) -> list[Candidate]:
        """Top `limit` live chunks for `text`, ranked, each with its cosine similarity to it.
        `prefer` ranks the chunks it matches first without excluding the others (a period, a
        contract title): the ranking within `filter` and within `prefer`, fused by reciprocal
        rank in one engine query. `prefer` is the narrower filter whole: it must admit only
        chunks that `filter` admits. `sparse_text` replaces `text` for the BM25
        side only: a module can add keywords (clause terminology, synonyms) without paying for
        a second embedding of the question."""

    @abstractmethod
    def known_values(self, key: str, limit: int = 1000) -> dict[str, int]:
        """Distinct values of a keyword-indexed payload key (e.g. `meta.company`) in the
        collection, with chunk counts: what a question's entities can be matched against."""

    @abstractmethod
    def count(self, filter: Filter) -> int:
        """How many chunks of the collection match `filter`. Like `known_values`, remembered
        until the collection changes."""


# ---- shared stage helpers ----

_WS = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def collapse_whitespace(text: str) -> str:
    return _BLANK_LINES.sub("\n\n", _WS.sub(" ", text)).strip()


def approx_tokens(text: str) -> int:
    """Token estimate for budgets: ~0.75 words per token for English subword models."""
    return int(len(_WORD.findall(text)) / 0.75) + 1


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def near_duplicate(a: set, b: set, threshold: float) -> bool:
    """jaccard(a, b) >= threshold; sets whose sizes alone rule it out are not intersected."""
    if a and b and min(len(a), len(b)) < threshold * max(len(a), len(b)):
        return False
    return jaccard(a, b) >= threshold


def apply_generic_filters(candidates: list[Candidate], cfg: ModuleConfig, *, count_tokens) -> list[Candidate]:
    """Score floor, near-duplicates, chunk cap and token budget, in rank order."""
    kept_shingles: list[set] = []
    used_tokens = 0
    kept = 0
    for c in sorted(candidates, key=lambda c: c.rank):
        if not c.kept:
            continue
        if c.similarity < cfg.score_floor:
            c.drop(f"score {c.similarity:.2f} below floor {cfg.score_floor:.2f}")
            continue
        if kept >= cfg.max_chunks:
            c.drop(f"beyond the {cfg.max_chunks}-chunk limit")
            continue
        sh = shingles(c.text)
        if any(near_duplicate(sh, other, cfg.near_duplicate_threshold) for other in kept_shingles):
            c.drop("near-duplicate of a better candidate")
            continue
        # A deferred normalization only adds to the text: when the stored text alone is over
        # the budget, the candidate is dropped without being normalized.
        over = kept > 0 and c.deferred is not None and used_tokens + count_tokens(c.text) > cfg.context_tokens
        tokens = 0 if over else count_tokens(c.model_text)
        if over or used_tokens + tokens > cfg.context_tokens and kept > 0:
            c.drop(f"over the {cfg.context_tokens}-token budget")
            continue
        kept_shingles.append(sh)
        used_tokens += tokens
        kept += 1
    return candidates
