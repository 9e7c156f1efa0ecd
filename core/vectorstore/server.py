"""`ServerVectorStore`: the contract on a Qdrant server, through `qdrant-client`.

Each collection has a dense vector `dense` (cosine) and, when its spec asks, a sparse vector
`sparse` with the IDF modifier; the tenant key is a keyword index with `is_tenant`. Sparse
queries ask for IDF statistics over the live points (`IdfCorpusParams`), which needs
Qdrant 1.19 or later. In tests, `QdrantClient(":memory:")` (local mode) stands in for a
server: it has no payload indexes and raises `ValueError` where a server answers 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core.errors import NotFoundError, VectorStoreError
from core.vectorstore.base import (
    DENSE,
    HNSW_EF,
    RRF_K,
    SPARSE,
    CollectionSpec,
    Condition,
    Filter,
    Fusion,
    HasId,
    Hit,
    IndexType,
    IsEmpty,
    Match,
    MatchAny,
    MatchText,
    Point,
    Range,
    Record,
    SparseVector,
    VectorStore,
    top_hits_by_score_then_id,
)

# Points per request, well under the server's 32 MB request limit at 384 dims.
_UPSERT_BATCH = 256
_LIVE_IDF = models.SearchParams(idf=models.IdfCorpusParams(corpus=models.Filter()))
_DENSE_PARAMS = models.SearchParams(hnsw_ef=HNSW_EF)
_SCHEMA_TYPES = {
    IndexType.KEYWORD: models.PayloadSchemaType.KEYWORD,
    IndexType.INTEGER: models.PayloadSchemaType.INTEGER,
    IndexType.FLOAT: models.PayloadSchemaType.FLOAT,
    IndexType.BOOL: models.PayloadSchemaType.BOOL,
    IndexType.TEXT: models.PayloadSchemaType.TEXT,
    IndexType.DATETIME: models.PayloadSchemaType.DATETIME,
}


def _index_schema(index_type: IndexType, *, is_tenant: bool) -> Any:
    if index_type is IndexType.KEYWORD and is_tenant:
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    if index_type is IndexType.TEXT:
        # The word tokenizer, lowercased, no stemming or stopwords, as on the embedded engine.
        return models.TextIndexParams(type=models.TextIndexType.TEXT, tokenizer=models.TokenizerType.WORD, lowercase=True)
    return _SCHEMA_TYPES[index_type]


def _condition(condition: Condition) -> Any:
    if isinstance(condition, Match):
        return models.FieldCondition(key=condition.key, match=models.MatchValue(value=condition.value))
    if isinstance(condition, MatchAny):
        return models.FieldCondition(key=condition.key, match=models.MatchAny(any=list(condition.any)))
    if isinstance(condition, Range):
        bounds = models.Range(gte=condition.gte, gt=condition.gt, lte=condition.lte, lt=condition.lt)
        return models.FieldCondition(key=condition.key, range=bounds)
    if isinstance(condition, MatchText):
        return models.FieldCondition(key=condition.key, match=models.MatchText(text=condition.text))
    if isinstance(condition, HasId):
        return models.HasIdCondition(has_id=[str(uuid.UUID(point_id)) for point_id in condition.ids])
    if isinstance(condition, IsEmpty):
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=condition.key))
    if isinstance(condition, Filter):
        return _server_filter(condition)
    raise TypeError(f"unsupported filter condition: {condition!r}")


def _server_filter(filter: Filter) -> models.Filter:
    return models.Filter(
        must=[_condition(c) for c in filter.must] or None,
        should=[_condition(c) for c in filter.should] or None,
        must_not=[_condition(c) for c in filter.must_not] or None,
    )


def _optional_filter(filter: Filter | None) -> models.Filter | None:
    return None if filter is None else _server_filter(filter)


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


def _server_point(point: Point) -> models.PointStruct:
    vectors: dict[str, Any] = {DENSE: point.vector}
    if point.sparse is not None:
        vectors[SPARSE] = _sparse(point.sparse)
    # A malformed id is the caller's error (ValueError), as on the embedded engine.
    return models.PointStruct(id=str(uuid.UUID(point.id)), vector=vectors, payload=point.payload)


def _record(record: models.Record, with_vectors: bool) -> Record:
    vector = record.vector.get(DENSE) if with_vectors and isinstance(record.vector, dict) else None
    return Record(id=str(record.id), payload=record.payload or {}, vector=vector)


class ServerVectorStore(VectorStore):
    """Collections on the Qdrant server behind `client`. Thread-safe as the client is."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """Translate client errors: a missing collection to `NotFoundError`, the rest to
        `VectorStoreError`."""
        try:
            yield
        except UnexpectedResponse as e:
            if e.status_code == 404:
                raise NotFoundError(f"collection {name!r} does not exist") from e
            raise VectorStoreError(f"qdrant server, collection {name!r}: {e}") from e
        except (ResponseHandlingException, httpx.HTTPError) as e:
            raise VectorStoreError(f"qdrant server unreachable: {e}") from e
        except ValueError as e:  # local mode's way of answering
            if f"{name} not found" in str(e):
                raise NotFoundError(f"collection {name!r} does not exist") from e
            raise VectorStoreError(f"qdrant local, collection {name!r}: {e}") from e

    # ---- collections ----

    def ensure_collection(self, name: str, spec: CollectionSpec) -> None:
        with self._errors(name):
            if not self._client.collection_exists(name):
                try:
                    self._client.create_collection(
                        name,
                        vectors_config={DENSE: models.VectorParams(size=spec.dims, distance=models.Distance.COSINE)},
                        sparse_vectors_config=(
                            {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if spec.sparse else None
                        ),
                    )
                except (UnexpectedResponse, ValueError):
                    if not self._client.collection_exists(name):  # else: created concurrently
                        raise
            info = self._client.get_collection(name)
            vectors = info.config.params.vectors
            dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
            if dense is None or dense.size != spec.dims:
                held = "no dense vector" if dense is None else f"{dense.size}-dimensional vectors"
                raise VectorStoreError(f"collection {name!r} holds {held}, not {spec.dims}")
            if spec.sparse and SPARSE not in (info.config.params.sparse_vectors or {}):
                raise VectorStoreError(f"collection {name!r} has no sparse vectors")
            existing = info.payload_schema
            for key, index_type in spec.payload_indexes().items():
                if key in existing and existing[key].data_type == _SCHEMA_TYPES[index_type]:
                    continue
                self._client.create_payload_index(
                    name, key, field_schema=_index_schema(index_type, is_tenant=key == spec.tenant_key), wait=True
                )

    def collection_exists(self, name: str) -> bool:
        with self._errors(name):
            return self._client.collection_exists(name)

    def drop_collection(self, name: str) -> None:
        with self._errors(name):
            self._client.delete_collection(name)

    def list_collections(self) -> list[str]:
        with self._errors(""):
            return sorted(c.name for c in self._client.get_collections().collections)

    # ---- writes ----

    def upsert(self, name: str, points: list[Point]) -> None:
        server_points = [_server_point(point) for point in points]
        with self._errors(name):
            for start in range(0, len(server_points), _UPSERT_BATCH):
                self._client.upsert(name, points=server_points[start : start + _UPSERT_BATCH], wait=True)

    def set_payload(self, name: str, payload: dict[str, Any], filter: Filter) -> None:
        with self._errors(name):
            self._client.set_payload(name, payload=payload, points=models.FilterSelector(filter=_server_filter(filter)), wait=True)

    def delete(self, name: str, filter: Filter) -> None:
        with self._errors(name):
            self._client.delete(name, points_selector=models.FilterSelector(filter=_server_filter(filter)), wait=True)

    # ---- reads ----

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
        server_filter = _optional_filter(filter)
        rrf = models.RrfQuery(rrf=models.Rrf(k=RRF_K))
        fuse = rrf if fusion == "rrf" else models.FusionQuery(fusion=models.Fusion.DBSF)

        def candidate_lists(flt: models.Filter | None) -> list[models.Prefetch]:
            candidates = prefetch_limit or 4 * limit
            return [
                models.Prefetch(query=dense, using=DENSE, filter=flt, limit=candidates, params=_DENSE_PARAMS),
                models.Prefetch(query=_sparse(sparse), using=SPARSE, filter=flt, limit=candidates, params=_LIVE_IDF),
            ]

        def ranking(flt: models.Filter | None) -> models.Prefetch:
            if dense is not None and sparse is not None:
                return models.Prefetch(prefetch=candidate_lists(flt), query=fuse, limit=limit)
            if dense is not None:
                return models.Prefetch(query=dense, using=DENSE, filter=flt, limit=limit, params=_DENSE_PARAMS)
            return models.Prefetch(query=_sparse(sparse), using=SPARSE, filter=flt, limit=limit, params=_LIVE_IDF)

        # Filters go to the searches only, as on the embedded engine (see `EdgeVectorStore`).
        query: dict[str, Any]
        if prefer is not None:
            preferred = _optional_filter(prefer)
            query = {"prefetch": [ranking(server_filter), ranking(preferred)], "query": rrf}
        elif dense is not None and sparse is not None:
            query = {"prefetch": candidate_lists(server_filter), "query": fuse}
        elif dense is not None:
            query = {"query": dense, "using": DENSE, "search_params": _DENSE_PARAMS, "query_filter": server_filter}
        else:
            query = {"query": _sparse(sparse), "using": SPARSE, "search_params": _LIVE_IDF, "query_filter": server_filter}

        def fetch(n: int) -> list[Hit]:
            with self._errors(name):
                response = self._client.query_points(name, limit=n, with_payload=with_payload, **query)
            return [Hit(id=str(p.id), score=p.score, payload=p.payload or {}) for p in response.points]

        return top_hits_by_score_then_id(fetch, limit)

    def _similarities(self, name: str, vector: list[float], ids: list[str]) -> dict[str, float]:
        with self._errors(name):
            response = self._client.query_points(
                name, query=vector, using=DENSE, query_filter=models.Filter(must=[models.HasIdCondition(has_id=ids)]),
                search_params=models.SearchParams(exact=True), limit=len(ids), with_payload=False,
            )
        return {str(p.id): p.score for p in response.points}

    def scroll(
        self,
        name: str,
        *,
        filter: Filter | None = None,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        with self._errors(name):
            records, next_offset = self._client.scroll(
                name,
                scroll_filter=_optional_filter(filter),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=[DENSE] if with_vectors else False,
            )
        page = [_record(record, with_vectors) for record in records]
        return page, None if next_offset is None else str(next_offset)

    def retrieve(self, name: str, ids: list[str]) -> list[Record]:
        wanted = list(dict.fromkeys(str(uuid.UUID(point_id)) for point_id in ids))
        with self._errors(name):
            records = self._client.retrieve(name, ids=wanted, with_payload=True, with_vectors=False)
        by_id = {str(record.id): _record(record, with_vectors=False) for record in records}
        return [by_id[point_id] for point_id in wanted if point_id in by_id]

    def count(self, name: str, filter: Filter | None = None) -> int:
        with self._errors(name):
            return self._client.count(name, count_filter=_optional_filter(filter), exact=True).count

    def facet(self, name: str, key: str, *, filter: Filter | None = None, limit: int = 100) -> dict[str, int]:
        with self._errors(name):
            hits = self._client.facet(name, key=key, facet_filter=_optional_filter(filter), limit=limit, exact=True).hits
        return {str(hit.value): hit.count for hit in sorted(hits, key=lambda h: (-h.count, str(h.value)))}

    def close(self) -> None:
        self._client.close()
