"""BM25 sparse vectors, computed in-process with Qdrant's own tokenizer and weighting.

Documents get term-frequency weights and queries get 1.0 per distinct token; the IDF
factor is applied by Qdrant at search time (the `sparse` vector has the IDF modifier), so
the same vectors serve the embedded engine and a Qdrant server.
"""

from __future__ import annotations

from qdrant_edge import Bm25, Bm25Config

from core.vectorstore.base import SparseVector


class Bm25Encoder:
    """English BM25 (Qdrant's defaults: k=1.2, b=0.75, average length 256 tokens, stemming
    and stopwords). Stateless: one instance serves every thread."""

    def __init__(self, language: str = "english") -> None:
        self._model = Bm25(Bm25Config(language=language))

    def embed_document(self, text: str) -> SparseVector:
        """The sparse vector to store with a chunk."""
        vector = self._model.embed_document(text)
        return SparseVector(indices=vector.indices, values=vector.values)

    def embed_query(self, text: str) -> SparseVector:
        """The sparse vector to search with; empty when `text` holds only stopwords."""
        vector = self._model.embed_query(text)
        return SparseVector(indices=vector.indices, values=vector.values)
