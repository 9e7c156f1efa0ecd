"""`CollectionSearch`: the index behind `DomainModule.fetch`, for one collection and tenant."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.embeddings import Embedder
from core.vectorstore import Filter, Hit, Match, VectorStore
from core.vectorstore.sparse import Bm25Encoder
from modules.base import Candidate, FetchContext


class FacetCache:
    """Facet counts (`known_values`) and counts shared by the requests of a process.

    A module resolves a question's entities against every value stored for a key (the
    parties of thousands of contracts): one facet over the collection, the largest cost of
    a fetch, and the same for every question until the collection changes. An entry holds
    while the store reports the same version of the collection; where the store cannot
    tell (a Qdrant server that workers write to), for `ttl_s` seconds."""

    def __init__(self, ttl_s: float = 30.0, max_entries: int = 256):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[tuple, tuple[int | None, float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def get(self, store: VectorStore, name: str, key: tuple, compute: Callable[[], dict[str, int]]) -> dict[str, int]:
        version = store.version(name)
        with self._lock:
            entry = self._entries.get((name, *key))
        if entry is not None:
            cached_version, at, values = entry
            if version is not None and cached_version == version:
                return values
            if version is None and time.monotonic() - at < self.ttl_s:
                return values
        values = compute()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[(name, *key)] = (version, time.monotonic(), values)
        return values


class CollectionSearch(FetchContext):
    """Hybrid search over the live chunks of one tenant's collection.

    Every search is restricted to the tenant and to live chunks (staged versions of
    documents being re-ingested are invisible). Question embeddings are memoised for the
    life of the instance, and the time spent computing them is summed in `embedding_ms`:
    build one per request; `facets` outlives it."""

    def __init__(
        self, *, store: VectorStore, embedder: Embedder, sparse: Bm25Encoder, vector_name: str, tenant: str,
        facets: FacetCache | None = None,
    ):
        self.store = store
        self.embedder = embedder
        self.sparse = sparse
        self.vector_name = vector_name
        self.tenant = tenant
        self.facets = facets or FacetCache()
        self._dense: dict[str, list[float]] = {}
        self.embedding_ms = 0.0

    def embed(self, text: str) -> list[float]:
        if text not in self._dense:
            start = time.perf_counter()
            self._dense[text] = self.embedder.embed_query(text)
            self.embedding_ms += (time.perf_counter() - start) * 1000
        return self._dense[text]

    def known_values(self, key: str, limit: int = 1000) -> dict[str, int]:
        if not self.store.collection_exists(self.vector_name):
            return {}
        return self.facets.get(
            self.store, self.vector_name, (self.tenant, key, limit),
            lambda: self.store.facet(self.vector_name, key, filter=self.scope(), limit=limit),
        )

    def count(self, filter: Filter) -> int:
        if not self.store.collection_exists(self.vector_name):
            return 0
        counted = self.facets.get(
            self.store, self.vector_name, (self.tenant, "count", filter.model_dump_json()),
            lambda: {"count": self.store.count(self.vector_name, self.scope(filter))},
        )
        return counted["count"]

    def scope(self, extra: Filter | None = None) -> Filter:
        base = Filter(must=[Match(key="tenant", value=self.tenant), Match(key="live", value=True)])
        return base.and_(extra) if extra else base

    def scope_holds_everywhere(self) -> bool:
        """Whether every point of the collection is a live chunk of this tenant, at the store's
        current version; never where the store cannot tell its version. Then searches leave the
        tenant and liveness conditions out of the engine's filter: the engine checks each
        condition for every point the rest of the filter admits, and at 100k chunks these two
        made a company-filtered search 1.5-3x slower. A store that knows its version (the
        embedded one) remembers the count until the collection's next write."""
        if self.store.version(self.vector_name) is None:
            return False
        return self.store.count(self.vector_name, Filter(must_not=[self.scope()])) == 0

    def in_scope(self, payload: dict) -> bool:
        return payload.get("tenant") == self.tenant and payload.get("live") is True

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
        if not self.store.collection_exists(self.vector_name):
            return []
        query_vector = self.embed(text)

        def hits(scoped: bool) -> list[Hit]:
            return self.store.search(
                self.vector_name,
                dense=query_vector if mode in ("hybrid", "dense") else None,
                sparse=self.sparse.embed_query(sparse_text or text) if mode in ("hybrid", "sparse") else None,
                filter=self.scope(filter) if scoped else filter,
                prefer=self.scope(prefer) if scoped and prefer else prefer,
                limit=limit,
                fusion=fusion,  # type: ignore[arg-type]
                similarity_to=query_vector,
            )

        found = hits(scoped=False) if self.scope_holds_everywhere() else None
        # A write since the check may have added points of another tenant, or staged ones:
        # such a hit is never returned, the search is run again with the full scope.
        if found is None or not all(self.in_scope(hit.payload) for hit in found):
            found = hits(scoped=True)
        candidates = []
        for rank, hit in enumerate(found):
            p = hit.payload
            candidates.append(
                Candidate(
                    id=hit.id, doc_id=p.get("doc_id", ""), filename=p.get("filename", ""), page=p.get("page"),
                    text=p.get("text", ""), payload=p, score=hit.score, similarity=hit.similarity or 0.0, rank=rank,
                )
            )
        return candidates
