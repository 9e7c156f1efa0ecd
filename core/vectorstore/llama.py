"""`SieveVectorStore`: a llama-index vector store over any `VectorStore`, scoped to one
collection and one tenant, so that llama-index's `IngestionPipeline`, `VectorStoreIndex`
and retrievers read and write Sieve's collections.

Each node becomes one point: id = `node.node_id` (a UUID), dense vector = `node.embedding`,
sparse vector = BM25 of the node's text when the collection has sparse vectors, payload =
`node.metadata` plus `text`, `doc_id` (= `node.ref_doc_id`) and the tenant. Every read
and delete is confined to the tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from core.vectorstore.base import (
    CollectionSpec,
    Condition,
    Filter,
    HasId,
    Hit,
    IsEmpty,
    Match,
    MatchAny,
    MatchText,
    Point,
    Range,
    Record,
    VectorStore,
)
from core.vectorstore.sparse import Bm25Encoder

TEXT_KEY = "text"
DOC_ID_KEY = "doc_id"

_RANGES = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}


def _equals(key: str, value: Any) -> Condition:
    # Our Match takes str, int and bool; a float is matched as a one-point range.
    if isinstance(value, float):
        return Range(key=key, gte=value, lte=value)
    return Match(key=key, value=value)


def _metadata_condition(metadata_filter: MetadataFilter | MetadataFilters) -> Condition:
    if isinstance(metadata_filter, MetadataFilters):
        return metadata_filters_to_filter(metadata_filter)
    key, value, operator = metadata_filter.key, metadata_filter.value, metadata_filter.operator
    if operator in (FilterOperator.EQ, FilterOperator.CONTAINS):  # CONTAINS: an array holds the value
        return _equals(key, value)
    if operator == FilterOperator.NE:
        return Filter(must_not=[_equals(key, value)])
    if operator in _RANGES:
        return Range(key=key, **{_RANGES[operator]: value})
    if operator in (FilterOperator.IN, FilterOperator.ANY):
        return MatchAny(key=key, any=value)
    if operator == FilterOperator.NIN:
        return Filter(must_not=[MatchAny(key=key, any=value)])
    if operator == FilterOperator.ALL:
        return Filter(must=[_equals(key, item) for item in value])
    if operator == FilterOperator.TEXT_MATCH:
        return MatchText(key=key, text=value)
    if operator == FilterOperator.IS_EMPTY:
        return IsEmpty(key=key)
    raise ValueError(f"unsupported metadata filter operator: {operator.value}")


def metadata_filters_to_filter(filters: MetadataFilters) -> Filter:
    """llama-index metadata filters as our `Filter`: AND is `must`, OR is `should`, NOT is
    `must_not` (none of the filters may match)."""
    conditions = [_metadata_condition(f) for f in filters.filters]
    if filters.condition == FilterCondition.OR:
        return Filter(should=conditions)
    if filters.condition == FilterCondition.NOT:
        return Filter(must_not=conditions)
    return Filter(must=conditions)


class SieveVectorStore(BasePydanticVectorStore):
    """llama-index's view of one tenant's points in one collection of a `VectorStore`.

    Creating it ensures the collection exists with `spec` (whose `tenant_key` names the
    payload key that holds `tenant`). Query modes: DEFAULT (dense, `similarity_top_k`),
    SPARSE (BM25 of `query_str`, `sparse_top_k` or `similarity_top_k`) and HYBRID (both,
    fused by RRF: `hybrid_top_k` or `similarity_top_k` results from two candidate lists
    of `sparse_top_k` each, by default 4x as many). `alpha` is not used.
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    collection: str
    tenant: str

    _store: VectorStore = PrivateAttr()
    _spec: CollectionSpec = PrivateAttr()
    _tenant_key: str = PrivateAttr()
    _encoder: Bm25Encoder = PrivateAttr()

    def __init__(
        self,
        store: VectorStore,
        collection: str,
        tenant: str,
        spec: CollectionSpec,
        encoder: Bm25Encoder | None = None,
    ) -> None:
        if spec.tenant_key is None:
            raise ValueError("SieveVectorStore needs a spec with a tenant_key")
        super().__init__(collection=collection, tenant=tenant)
        self._store = store
        self._spec = spec
        self._tenant_key = spec.tenant_key
        self._encoder = encoder or Bm25Encoder()
        store.ensure_collection(collection, spec)

    @classmethod
    def class_name(cls) -> str:
        return "SieveVectorStore"

    @property
    def client(self) -> VectorStore:
        return self._store

    # ---- writes ----

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert `nodes` (each with an embedding) as points; returns their ids."""
        self._store.upsert(self.collection, [self._point(node) for node in nodes])
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document `ref_doc_id`."""
        self._store.delete(self.collection, self._scope(Match(key=DOC_ID_KEY, value=ref_doc_id)))

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete the nodes that are in `node_ids` and match `filters`; at least one is required."""
        if not node_ids and filters is None:
            raise ValueError("delete_nodes needs node_ids or filters; use clear() to delete everything")
        self._store.delete(self.collection, self._selection(node_ids, filters))

    def clear(self) -> None:
        """Delete every node of the tenant."""
        self._store.delete(self.collection, self._scope())

    # ---- reads ----

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The tenant's nodes that are in `node_ids` (when given) and match `filters`, in id order."""
        selection = self._selection(node_ids, filters)
        nodes: list[BaseNode] = []
        offset = None
        while True:
            records, offset = self._store.scroll(self.collection, filter=selection, offset=offset)
            nodes.extend(self._node(record) for record in records)
            if offset is None:
                return nodes

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Search in the mode `query.mode`, within the tenant and `query`'s filters."""
        conditions: list[Condition] = []
        if query.filters is not None:
            conditions.append(metadata_filters_to_filter(query.filters))
        if query.doc_ids:
            conditions.append(MatchAny(key=DOC_ID_KEY, any=list(query.doc_ids)))
        if query.node_ids:
            conditions.append(HasId(ids=list(query.node_ids)))
        scope = self._scope(*conditions)

        if query.mode == VectorStoreQueryMode.DEFAULT:
            hits = self._store.search(self.collection, dense=self._embedding(query), filter=scope, limit=query.similarity_top_k)
        elif query.mode == VectorStoreQueryMode.SPARSE:
            hits = self._store.search(
                self.collection,
                sparse=self._encoder.embed_query(self._query_text(query)),
                filter=scope,
                limit=query.sparse_top_k or query.similarity_top_k,
            )
        elif query.mode == VectorStoreQueryMode.HYBRID:
            hits = self._store.search(
                self.collection,
                dense=self._embedding(query),
                sparse=self._encoder.embed_query(self._query_text(query)),
                filter=scope,
                limit=query.hybrid_top_k or query.similarity_top_k,
                prefetch_limit=query.sparse_top_k,
            )
        else:
            raise ValueError(f"unsupported query mode: {query.mode.value}")
        return VectorStoreQueryResult(
            nodes=[self._node(hit) for hit in hits],
            similarities=[hit.score for hit in hits],
            ids=[hit.id for hit in hits],
        )

    # ---- async: the store is synchronous, so each call runs in a worker thread ----

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id)

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query)

    # ---- mapping ----

    def _scope(self, *conditions: Condition) -> Filter:
        return Filter(must=[Match(key=self._tenant_key, value=self.tenant), *conditions])

    def _selection(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> Filter:
        conditions: list[Condition] = []
        if node_ids:
            conditions.append(HasId(ids=list(node_ids)))
        if filters is not None:
            conditions.append(metadata_filters_to_filter(filters))
        return self._scope(*conditions)

    def _point(self, node: BaseNode) -> Point:
        if node.embedding is None:
            raise ValueError(f"node {node.node_id} has no embedding")
        text = node.get_content(metadata_mode=MetadataMode.NONE)
        payload = {**node.metadata, TEXT_KEY: text, DOC_ID_KEY: node.ref_doc_id, self._tenant_key: self.tenant}
        sparse = self._encoder.embed_document(text) if self._spec.sparse else None
        return Point(id=node.node_id, vector=node.embedding, payload=payload, sparse=sparse)

    @staticmethod
    def _node(point: Hit | Record) -> TextNode:
        metadata = {key: value for key, value in point.payload.items() if key != TEXT_KEY}
        doc_id = point.payload.get(DOC_ID_KEY)
        relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)} if doc_id else {}
        return TextNode(id_=point.id, text=point.payload.get(TEXT_KEY, ""), metadata=metadata, relationships=relationships)

    @staticmethod
    def _embedding(query: VectorStoreQuery) -> list[float]:
        if query.query_embedding is None:
            raise ValueError(f"{query.mode.value} search needs query_embedding")
        return query.query_embedding

    @staticmethod
    def _query_text(query: VectorStoreQuery) -> str:
        if query.query_str is None:
            raise ValueError(f"{query.mode.value} search needs query_str")
        return query.query_str
