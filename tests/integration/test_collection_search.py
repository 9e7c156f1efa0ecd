"""`CollectionSearch`, what every module's fetch stage reads through, on the real embedded
engine and the real embedding model."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core.vectorstore import CollectionSpec, IndexType, Point
from core.vectorstore.edge import EdgeVectorStore
from core.vectorstore.sparse import Bm25Encoder
from modules.fetch import CollectionSearch

pytestmark = pytest.mark.integration

NAME = "chunks"


def test_search_gives_each_candidate_its_cosine_to_the_question(tmp_path: Path, embedder) -> None:
    texts = ["Revenue rose to $4.2 billion.", "The lease ends in 2031.", "Restart the router.", "Net loss narrowed."]
    vectors = embedder.embed(texts).tolist()
    store = EdgeVectorStore(tmp_path / "qdrant")
    indexes = {"tenant": IndexType.KEYWORD, "live": IndexType.BOOL}
    store.ensure_collection(NAME, CollectionSpec(dims=len(vectors[0]), sparse=True, indexes=indexes))
    encoder = Bm25Encoder()
    store.upsert(NAME, [
        Point(id=str(uuid.UUID(int=n + 1)), vector=vector, sparse=encoder.embed_document(text),
              payload={"tenant": "t1", "live": True, "doc_id": f"doc{n}", "text": text})
        for n, (text, vector) in enumerate(zip(texts, vectors))
    ])
    search = CollectionSearch(store=store, embedder=embedder, sparse=encoder, vector_name=NAME, tenant="t1")
    question = "How much revenue was there?"
    candidates = search.search(question, limit=4)
    by_text = dict(zip(texts, vectors))
    q = embedder.embed_query(question)
    assert [c.rank for c in candidates] == [0, 1, 2, 3]
    for c in candidates:
        assert c.similarity == pytest.approx(sum(a * b for a, b in zip(q, by_text[c.text])), abs=1e-5)
    store.close()


def test_each_text_is_embedded_once_and_its_time_counted(tmp_path: Path, embedder) -> None:
    calls: list[str] = []

    class Counting:
        def embed_query(self, text: str) -> list[float]:
            calls.append(text)
            return embedder.embed_query(text)

    store = EdgeVectorStore(tmp_path / "qdrant")
    store.ensure_collection(NAME, CollectionSpec(dims=embedder.dims, sparse=True, indexes={"tenant": IndexType.KEYWORD}))
    search = CollectionSearch(store=store, embedder=Counting(), sparse=Bm25Encoder(), vector_name=NAME, tenant="t1")
    assert search.embedding_ms == 0.0
    search.search("Which law governs?", limit=3)
    first = search.embedding_ms
    search.search("Which law governs?", limit=3)
    assert calls == ["Which law governs?"] and first > 0 and search.embedding_ms == first
    search.search("governed by the laws of", limit=3)
    assert len(calls) == 2 and search.embedding_ms > first
    store.close()
