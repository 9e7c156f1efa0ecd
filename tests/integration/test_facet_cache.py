"""Facet counts and counts shared across requests (`FacetCache`), on the real embedded
engine: reused while the collection is unchanged, recomputed after any write, kept apart per
tenant; and for a store that cannot tell its version, for the cache's time to live."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from core.vectorstore import CollectionSpec, Filter, IndexType, Match, Point
from core.vectorstore.edge import EdgeVectorStore
from core.vectorstore.sparse import Bm25Encoder
from modules.fetch import CollectionSearch, FacetCache

pytestmark = pytest.mark.integration

NAME = "chunks"
KEY = "meta.parties"
SPEC = CollectionSpec(dims=4, indexes={"tenant": IndexType.KEYWORD, "live": IndexType.BOOL, KEY: IndexType.KEYWORD})


def point(n: int, party: str, tenant: str = "t1") -> Point:
    payload = {"tenant": tenant, "live": True, "doc_id": f"doc{n}", "meta": {"parties": [party]}}
    return Point(id=str(uuid.UUID(int=n)), vector=[1.0, float(n), 0.0, 1.0], payload=payload)


@pytest.fixture
def store(tmp_path: Path):
    s = EdgeVectorStore(tmp_path / "qdrant")
    s.ensure_collection(NAME, SPEC)
    s.upsert(NAME, [point(1, "acme"), point(2, "acme"), point(3, "globex")])
    yield s
    s.close()


@pytest.fixture
def facet_calls(store: EdgeVectorStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every facet the store computes (the cost the cache saves)."""
    calls: list[str] = []
    real: Callable = store.facet

    def counted(name, key, **kwargs):
        calls.append(key)
        return real(name, key, **kwargs)

    monkeypatch.setattr(store, "facet", counted)
    return calls


def request(store: EdgeVectorStore, cache: FacetCache, tenant: str = "t1") -> CollectionSearch:
    """What the service builds per request (no question is embedded here: no embedder)."""
    return CollectionSearch(store=store, embedder=None, sparse=Bm25Encoder(), vector_name=NAME, tenant=tenant,  # type: ignore[arg-type]
                            facets=cache)


def test_requests_share_facets_until_the_collection_changes(store: EdgeVectorStore, facet_calls: list[str]) -> None:
    cache = FacetCache()
    assert request(store, cache).known_values(KEY) == {"acme": 2, "globex": 1}
    assert request(store, cache).known_values(KEY) == {"acme": 2, "globex": 1}
    assert len(facet_calls) == 1
    assert request(store, cache, tenant="t2").known_values(KEY) == {}  # another tenant: its own entry
    assert len(facet_calls) == 2

    version = store.version(NAME)
    store.upsert(NAME, [point(4, "initech")])
    assert store.version(NAME) != version
    assert request(store, cache).known_values(KEY) == {"acme": 2, "globex": 1, "initech": 1}
    store.delete(NAME, Filter(must=[Match(key="doc_id", value="doc3")]))
    assert request(store, cache).known_values(KEY) == {"acme": 2, "initech": 1}
    assert len(facet_calls) == 4
    store.search(NAME, dense=[1.0, 0.0, 0.0, 0.0], limit=2)  # reads change nothing
    assert request(store, cache).known_values(KEY) == {"acme": 2, "initech": 1} and len(facet_calls) == 4


def test_without_a_version_entries_live_for_their_time_to_live(
    store: EdgeVectorStore, facet_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "version", lambda name: None)  # as a Qdrant server written by other processes
    lasting, expiring = FacetCache(ttl_s=3600), FacetCache(ttl_s=0)
    for cache in (lasting, expiring):
        assert request(store, cache).known_values(KEY) == {"acme": 2, "globex": 1}
    store.upsert(NAME, [point(4, "initech")])
    assert request(store, lasting).known_values(KEY) == {"acme": 2, "globex": 1}  # stale until it expires
    assert request(store, expiring).known_values(KEY) == {"acme": 2, "globex": 1, "initech": 1}
    assert len(facet_calls) == 3


def test_counts_are_of_the_tenants_live_chunks_and_follow_writes(store: EdgeVectorStore) -> None:
    cache = FacetCache()
    acme = Filter(must=[Match(key=KEY, value="acme")])
    store.upsert(NAME, [point(4, "acme", tenant="t2")])
    assert request(store, cache).count(acme) == 2
    assert request(store, cache, tenant="t2").count(acme) == 1
    store.set_payload(NAME, {"live": False}, Filter(must=[Match(key="doc_id", value="doc1")]))
    assert request(store, cache).count(acme) == 1  # a staged chunk is not counted
