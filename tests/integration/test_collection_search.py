"""`CollectionSearch`, what every module's fetch stage reads through, on the real embedded
engine and the real embedding model."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core.vectorstore import CollectionSpec, Filter, IndexType, Match, Point
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


def _chunks(store: EdgeVectorStore, embedder, texts: list[str], tenant: str, first_id: int, live: bool = True) -> None:
    encoder = Bm25Encoder()
    store.upsert(NAME, [
        Point(id=str(uuid.UUID(int=first_id + n)), vector=vector, sparse=encoder.embed_document(text),
              payload={"tenant": tenant, "live": live, "doc_id": f"{tenant}-doc{n}", "text": text})
        for n, (text, vector) in enumerate(zip(texts, embedder.embed(texts).tolist()))
    ])


@pytest.fixture
def single_tenant(tmp_path: Path, embedder):
    """A collection whose every point is a live chunk of tenant t1, and the filters the engine is sent."""
    store = EdgeVectorStore(tmp_path / "qdrant")
    indexes = {"tenant": IndexType.KEYWORD, "live": IndexType.BOOL, "doc_id": IndexType.KEYWORD}
    store.ensure_collection(NAME, CollectionSpec(dims=embedder.dims, sparse=True, indexes=indexes))
    _chunks(store, embedder, ["Revenue rose to $4.2 billion.", "The lease ends in 2031.", "Net loss narrowed."], "t1", 1)
    sent: list[Filter | None] = []
    real_search = store.search
    store.search = lambda name, **kwargs: sent.append(kwargs["filter"]) or real_search(name, **kwargs)  # type: ignore[method-assign]
    yield store, sent
    store.close()


def test_where_every_point_is_in_scope_the_engine_is_not_sent_the_scope(single_tenant, embedder) -> None:
    store, sent = single_tenant
    search = CollectionSearch(store=store, embedder=embedder, sparse=Bm25Encoder(), vector_name=NAME, tenant="t1")
    lease = Filter(must=[Match(key="doc_id", value="t1-doc1")])
    for mode in ("hybrid", "dense", "sparse"):
        assert [c.text for c in search.search("When does the lease end?", limit=3, mode=mode, filter=lease)] == [
            "The lease ends in 2031."
        ]
    assert sent == [lease] * 3
    unscoped = search.search("How much revenue?", limit=3)
    assert sent[-1] is None and len(unscoped) == 3

    _chunks(store, embedder, ["Revenue of the other tenant: $9 billion."], "t2", 10)  # a second tenant
    sent.clear()
    assert all(c.payload["tenant"] == "t1" for c in search.search("How much revenue?", limit=4))
    assert sent == [search.scope()]


def test_staged_chunks_keep_the_scope_in_the_engine_filter(single_tenant, embedder) -> None:
    store, sent = single_tenant
    _chunks(store, embedder, ["Revenue rose to $5.0 billion (restated)."], "t1", 20, live=False)
    search = CollectionSearch(store=store, embedder=embedder, sparse=Bm25Encoder(), vector_name=NAME, tenant="t1")
    assert all(c.payload["live"] is True for c in search.search("How much revenue?", limit=4))
    assert sent == [search.scope()]
    store.delete(NAME, Filter(must=[Match(key="live", value=False)]))
    store.version = lambda name: None  # type: ignore[method-assign]  # a store that cannot tell its version
    sent.clear()
    fresh = CollectionSearch(store=store, embedder=embedder, sparse=Bm25Encoder(), vector_name=NAME, tenant="t1")
    fresh.search("How much revenue?", limit=3)
    assert sent == [fresh.scope()]


def test_a_hit_outside_the_scope_is_never_returned(single_tenant, embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write between the check and the search (here: a check that missed it) can put another
    tenant's chunk among the hits: the search then runs again with the full scope."""
    store, sent = single_tenant
    _chunks(store, embedder, ["Revenue rose to $4.2 billion, the other tenant says."], "t2", 10)
    search = CollectionSearch(store=store, embedder=embedder, sparse=Bm25Encoder(), vector_name=NAME, tenant="t1")
    monkeypatch.setattr(search, "scope_holds_everywhere", lambda: True)
    candidates = search.search("How much revenue rose?", limit=4)
    assert [c.payload["tenant"] for c in candidates] == ["t1"] * 3
    assert sent == [None, search.scope()]
