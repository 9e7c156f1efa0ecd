"""The vector-store contract: one interface, two Qdrant backends.

`EdgeVectorStore` runs Qdrant's engine in-process (`qdrant-edge-py`, the embedded
default); `ServerVectorStore` talks to a Qdrant server through `qdrant-client`
(`SIEVE_QDRANT_URL`). Both store, per point, a dense vector named `dense`, an optional
sparse BM25 vector named `sparse` (IDF applied by Qdrant), and a JSON payload. The
congruence suite (tests/integration/test_vectorstore_congruence.py) runs the same
operations on both and requires the same results.

The interface is synchronous: the embedded engine is an in-process library, and the
service calls it from a thread (`asyncio.to_thread`), never on the event loop.
Backend errors are wrapped in `VectorStoreError`; an operation on a collection that does
not exist raises `NotFoundError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, Union

from pydantic import BaseModel, Field

DENSE = "dense"
SPARSE = "sparse"
# Reciprocal rank fusion constant, the same on both backends: a point ranked r (from 1) in a
# candidate list scores 1 / (RRF_K + r - 1). 60 is the value of the original RRF paper;
# Qdrant's own default (2) lets the top rank of one list dominate.
RRF_K = 60
# Candidates an HNSW search keeps while walking the graph. Contracts of one kind repeat each
# other's clauses, which makes the graph hard to walk: on CUAD's 45k chunks, dense-only
# gold-document recall@10 was 0.931 by exact search, 0.872 with Qdrant's default ef (100),
# 0.903 with 256, 0.922 with 512 and 0.928 with 1024 (p50 of the stages 10.0, 10.4, 12.9 ms).
HNSW_EF = 512


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass
class Point:
    """A point to write: `id` is a UUID string, deterministic for idempotent upserts."""

    id: str
    vector: list[float]
    payload: dict[str, Any]
    sparse: SparseVector | None = None


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    similarity: float | None = None  # cosine similarity to the search's `similarity_to` vector


@dataclass
class Record:
    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


class IndexType(str, Enum):
    KEYWORD = "keyword"
    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "bool"
    TEXT = "text"
    DATETIME = "datetime"


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection holds. `indexes` maps payload keys (dotted for nested) to index types;
    `tenant_key` names the keyword field that partitions data by tenant."""

    dims: int
    sparse: bool = True
    indexes: dict[str, IndexType] = field(default_factory=dict)
    tenant_key: str | None = "tenant"

    def payload_indexes(self) -> dict[str, IndexType]:
        """`indexes` plus the tenant key, a keyword index."""
        if self.tenant_key is None:
            return dict(self.indexes)
        return {**self.indexes, self.tenant_key: IndexType.KEYWORD}


# ---- filters: a small, backend-neutral subset of Qdrant's filter language ----


class Match(BaseModel):
    """`key` equals `value`."""

    key: str
    value: str | int | bool


class MatchAny(BaseModel):
    """`key` equals any of `any` (for array payloads: any element does)."""

    key: str
    any: list[str] | list[int]


class Range(BaseModel):
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


class MatchText(BaseModel):
    """Full-text match on a `text`-indexed key (all tokens of `text` present)."""

    key: str
    text: str


class HasId(BaseModel):
    ids: list[str]


class IsEmpty(BaseModel):
    """`key` is missing, null or an empty array."""

    key: str


class Filter(BaseModel):
    """All of `must`, none of `must_not`, and at least one of `should` when it is non-empty."""

    must: list[Condition] = Field(default_factory=list)
    must_not: list[Condition] = Field(default_factory=list)
    should: list[Condition] = Field(default_factory=list)

    def and_(self, *conditions: Condition) -> Filter:
        """A copy with `conditions` added to `must`."""
        return Filter(must=[*self.must, *conditions], must_not=list(self.must_not), should=list(self.should))


Condition = Union[Match, MatchAny, Range, MatchText, HasId, IsEmpty, Filter]
Filter.model_rebuild()

Fusion = Literal["rrf", "dbsf"]


def top_hits_by_score_then_id(fetch: Callable[[int], list[Hit]], limit: int) -> list[Hit]:
    """The top `limit` hits, best score first and equal scores in id order.

    `fetch(n)` returns an engine's top `n` hits, whose order among equal scores is the
    engine's own. Hits past the cut show whether a tie crosses it; while one does, fetch
    more, so that the points kept do not depend on the engine. The first fetch takes a
    quarter more than `limit`: rank fusion ties often, and a second query costs more than
    a few more hits.
    """
    if limit <= 0:
        return []
    n = limit + max(1, limit // 4)
    while True:
        hits = sorted(fetch(n), key=lambda hit: (-hit.score, hit.id))
        if len(hits) < n or hits[-1].score != hits[limit - 1].score:
            return hits[:limit]
        n *= 4


def _excluding(filter: Filter | None, excluded: Filter) -> Filter:
    """What `filter` admits and `excluded` does not, as one flat filter (which the engine
    plans better than a nested one)."""
    filter = filter or Filter()
    if len(excluded.must) == 1 and not excluded.should and not excluded.must_not:
        excluded = excluded.must[0]  # a lone condition is negated as itself, not as a nested filter
    return Filter(must=list(filter.must), must_not=[*filter.must_not, excluded], should=list(filter.should))


class VectorStore(ABC):
    """Storage and search of chunk points, by collection name."""

    indexes_in_background: bool = True
    """False where indexes are built only when `optimize` runs (the embedded engine)."""

    @abstractmethod
    def ensure_collection(self, name: str, spec: CollectionSpec) -> None:
        """Create the collection if missing and make sure every payload index of `spec` exists.
        Idempotent. Raises `VectorStoreError` if it exists with other dimensions, or without
        the sparse vectors `spec` asks for."""

    @abstractmethod
    def collection_exists(self, name: str) -> bool: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete the collection and all its points; no error if it does not exist."""

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def upsert(self, name: str, points: list[Point]) -> None:
        """Insert or overwrite points by id. Durable when it returns."""

    @abstractmethod
    def set_payload(self, name: str, payload: dict[str, Any], filter: Filter) -> None:
        """Merge `payload` into every point matching `filter`."""

    @abstractmethod
    def delete(self, name: str, filter: Filter) -> None:
        """Delete every point matching `filter`."""

    def search(
        self,
        name: str,
        *,
        dense: list[float] | None = None,
        sparse: SparseVector | None = None,
        filter: Filter | None = None,
        prefer: Filter | None = None,
        limit: int = 10,
        prefetch_limit: int | None = None,
        fusion: Fusion = "rrf",
        with_payload: bool = True,
        similarity_to: list[float] | None = None,
    ) -> list[Hit]:
        """Top `limit` points by dense similarity (cosine), by sparse BM25 score, or, when both
        are given, by fusing the two candidate lists (`prefetch_limit` each, default 4x limit;
        RRF with `RRF_K`, or DBSF). `filter` applies to both candidate lists. Sparse IDF
        statistics count the live points of the collection. Ties in the returned list are
        broken by point id so that both backends agree (ties inside a candidate list are
        ranked by the engine before fusion).

        With `prefer`, the points are ranked twice, among those matching `filter` and among
        those matching `prefer` (`limit` each), and the two rankings are fused by RRF: what
        `prefer` selects ranks first without excluding the rest. `prefer` must admit only
        points that `filter` admits; it is searched as given, not combined with `filter`, so
        that a condition implying one of `filter`'s (a company-and-year key, the company) need
        not be repeated: the engine checks each condition for every point the first admits. One engine query, or,
        where a count finds that every point `filter` admits matches `prefer` (a company whose
        only filing is of the year asked for), one ranking scored as its fusion with itself.

        With `similarity_to`, each hit carries its dense vector's cosine similarity to that
        vector, scored by the engine in one more exact search among the hits (cheaper than
        returning the vectors); a hit deleted in between is left out."""
        if dense is None and sparse is None:
            raise ValueError("search needs a dense or a sparse query vector, or both")
        query = dict(
            dense=dense, sparse=sparse, filter=filter, limit=limit, prefetch_limit=prefetch_limit, fusion=fusion,
            with_payload=with_payload,
        )
        if prefer is not None and self.count(name, _excluding(filter, prefer)) == 0:
            hits = self._search(name, prefer=None, **query)
            hits = [replace(hit, score=2 / (RRF_K + rank)) for rank, hit in enumerate(hits)]
        else:
            hits = self._search(name, prefer=prefer, **query)
        if similarity_to is None or not hits:
            return hits
        similarities = self._similarities(name, similarity_to, [hit.id for hit in hits])
        return [replace(hit, similarity=similarities[hit.id]) for hit in hits if hit.id in similarities]

    @abstractmethod
    def _search(
        self,
        name: str,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        filter: Filter | None,
        prefer: Filter | None,
        limit: int,
        prefetch_limit: int | None,
        fusion: Fusion,
        with_payload: bool,
    ) -> list[Hit]:
        """`search` in one engine query, `prefer` included; the query has a vector."""

    @abstractmethod
    def _similarities(self, name: str, vector: list[float], ids: list[str]) -> dict[str, float]:
        """Cosine similarity of `vector` to the dense vector of each of `ids` that exists."""

    @abstractmethod
    def scroll(
        self, name: str, *, filter: Filter | None = None, limit: int = 256, offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        """Points matching `filter` in id order, a page at a time; returns (page, next offset)."""

    @abstractmethod
    def retrieve(self, name: str, ids: list[str]) -> list[Record]:
        """The points of `ids` that exist, in the order of `ids`, each once."""

    @abstractmethod
    def count(self, name: str, filter: Filter | None = None) -> int: ...

    @abstractmethod
    def facet(self, name: str, key: str, *, filter: Filter | None = None, limit: int = 100) -> dict[str, int]:
        """Distinct values of a keyword-indexed payload `key` among points matching `filter`,
        with exact counts; the `limit` most frequent, ties by value."""

    def version(self, name: str) -> int | None:
        """A number that changes whenever the collection's points or payloads change, for
        caches of what is derived from them; None where the backend cannot tell (a server
        that other processes write to)."""
        return None

    def optimize(self, name: str) -> bool:
        """Build the vector indexes and vacuum deleted points now; True if anything changed.
        Does nothing where the backend does it in the background (a Qdrant server)."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Flush and release the storage (the embedded engine allows one owner per folder)."""
