"""`CollectionSearch`: the index behind `DomainModule.fetch`, for one collection and tenant."""

from __future__ import annotations

import numpy as np

from core.embeddings import Embedder
from core.vectorstore import Filter, Match, VectorStore
from core.vectorstore.sparse import Bm25Encoder
from modules.base import Candidate, FetchContext


class CollectionSearch(FetchContext):
    """Hybrid search over the live chunks of one tenant's collection.

    Every search is restricted to the tenant and to live chunks (staged versions of
    documents being re-ingested are invisible). Question embeddings are memoised for the
    life of the instance: build one per request."""

    def __init__(self, *, store: VectorStore, embedder: Embedder, sparse: Bm25Encoder, vector_name: str, tenant: str):
        self.store = store
        self.embedder = embedder
        self.sparse = sparse
        self.vector_name = vector_name
        self.tenant = tenant
        self._dense: dict[str, list[float]] = {}
        self._values: dict[str, dict[str, int]] = {}

    def embed(self, text: str) -> list[float]:
        if text not in self._dense:
            self._dense[text] = self.embedder.embed_query(text)
        return self._dense[text]

    def known_values(self, key: str, limit: int = 1000) -> dict[str, int]:
        if key not in self._values:
            exists = self.store.collection_exists(self.vector_name)
            self._values[key] = self.store.facet(self.vector_name, key, filter=self.scope(), limit=limit) if exists else {}
        return self._values[key]

    def scope(self, extra: Filter | None = None) -> Filter:
        base = Filter(must=[Match(key="tenant", value=self.tenant), Match(key="live", value=True)])
        return base.and_(extra) if extra else base

    def search(
        self,
        text: str,
        *,
        limit: int,
        mode: str = "hybrid",
        fusion: str = "rrf",
        filter: Filter | None = None,
        sparse_text: str | None = None,
    ) -> list[Candidate]:
        if not self.store.collection_exists(self.vector_name):
            return []
        query_vector = self.embed(text)
        hits = self.store.search(
            self.vector_name,
            dense=query_vector if mode in ("hybrid", "dense") else None,
            sparse=self.sparse.embed_query(sparse_text or text) if mode in ("hybrid", "sparse") else None,
            filter=self.scope(filter),
            limit=limit,
            fusion=fusion,  # type: ignore[arg-type]
            with_vectors=True,
        )
        q = np.asarray(query_vector, dtype=np.float32)
        candidates = []
        for rank, hit in enumerate(hits):
            p = hit.payload
            similarity = float(np.dot(q, np.asarray(hit.vector, dtype=np.float32))) if hit.vector is not None else 0.0
            candidates.append(
                Candidate(
                    id=hit.id, doc_id=p.get("doc_id", ""), filename=p.get("filename", ""), page=p.get("page"),
                    text=p.get("text", ""), payload=p, score=hit.score, similarity=similarity, rank=rank,
                )
            )
        return candidates
