"""Vector storage for chunks: the contract (`base`), its two Qdrant backends, BM25 sparse
vectors, and the llama-index adapter (`core.vectorstore.llama`, imported on demand)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.vectorstore.base import (
    DENSE,
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
)

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "DENSE",
    "RRF_K",
    "SPARSE",
    "CollectionSpec",
    "Condition",
    "Filter",
    "Fusion",
    "HasId",
    "Hit",
    "IndexType",
    "IsEmpty",
    "Match",
    "MatchAny",
    "MatchText",
    "Point",
    "Range",
    "Record",
    "SparseVector",
    "VectorStore",
    "open_vector_store",
]


def open_vector_store(settings: Settings) -> VectorStore:
    """The Qdrant server at `settings.qdrant_url` when set, else the embedded engine in
    `settings.data_dir / "qdrant"`. Backends are imported here, so that importing the
    contract loads neither engine."""
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from core.vectorstore.server import ServerVectorStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerVectorStore(QdrantClient(url=settings.qdrant_url, api_key=api_key))
    from core.vectorstore.edge import EdgeVectorStore

    return EdgeVectorStore(settings.data_dir / "qdrant")
