"""The same operations on both vector-store backends must give the same results.

`EdgeVectorStore` runs the real embedded engine in a temporary folder; `ServerVectorStore`
runs over `QdrantClient(":memory:")`, qdrant-client's local mode, standing in for a server.
Results are checked against answers computed here from the data where that is simple
(filters, scroll order, dense ranking), and against each other elsewhere (BM25, fusion).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from core.errors import NotFoundError, VectorStoreError
from core.settings import Settings
from core.vectorstore import (
    RRF_K,
    CollectionSpec,
    Filter,
    HasId,
    Hit,
    IndexType,
    IsEmpty,
    Match,
    MatchAny,
    MatchText,
    Point,
    Range,
    VectorStore,
    open_vector_store,
)
import core.vectorstore.edge as edge_module
from core.vectorstore.edge import VACUUMED_FILE, EdgeVectorStore
from core.vectorstore.server import ServerVectorStore
from core.vectorstore.sparse import Bm25Encoder

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),  # the HNSW ef: nothing to tune there
    # open_vector_store's client checks the server version in a thread; no server is up here.
    pytest.mark.filterwarnings("ignore:Failed to obtain server version"),
]

DIMS = 8
COLLECTION = "chunks"
SPEC = CollectionSpec(
    dims=DIMS,
    indexes={
        "doc_id": IndexType.KEYWORD,
        "chunk_index": IndexType.INTEGER,
        "weight": IndexType.FLOAT,
        "live": IndexType.BOOL,
        "tags": IndexType.KEYWORD,
        "text": IndexType.TEXT,
        "meta.year": IndexType.INTEGER,
    },
)
BACKENDS = ["edge", "server"]
ENCODER = Bm25Encoder()


# The engine fsyncs on every flush and index creation; on a busy shared disk that is most of
# the suite's time. Engine folders go to tmpfs where there is one: fsync is free there, and
# nothing the tests check depends on the disk.
_SCRATCH_PARENT = "/dev/shm" if Path("/dev/shm").is_dir() else None


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=_SCRATCH_PARENT, prefix="sieve-vs-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def module_scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=_SCRATCH_PARENT, prefix="sieve-vs-") as path:
        yield Path(path)


def _vocabulary(size: int, seed: int) -> list[str]:
    """Made-up words, none of them an English stopword."""
    rng = np.random.default_rng(seed)
    consonants, vowels = list("bdfgklmnprtvz"), list("aeiou")
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(3)))
    return sorted(words)


VOCABULARY = _vocabulary(40, seed=7)


def make_points(n: int, seed: int = 0) -> list[Point]:
    """Seeded points with every payload shape the filters need. Texts have distinct
    lengths, so that no two points tie on a BM25 score by having the same length."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIMS)).astype(np.float32)
    points = []
    for i in range(n):
        text = " ".join(rng.choice(VOCABULARY, size=3 + i))
        payload: dict[str, Any] = {
            "tenant": f"t{i % 3}",
            "doc_id": f"doc{i % 7}",
            "chunk_index": i,
            "weight": round(i / 10, 1),
            "live": i % 4 != 0,
            "text": text,
            "meta": {"year": 2000 + i % 5},
        }
        if i % 5:  # every fifth point has no tags at all
            payload["tags"] = [["red"], ["red", "blue"], [], ["green"]][i % 4]
        if i % 6 == 0:
            payload["note"] = None
        elif i % 6 == 1:
            payload["note"] = "checked"
        points.append(
            Point(id=str(uuid.UUID(int=i + 1)), vector=vectors[i].tolist(), payload=payload, sparse=ENCODER.embed_document(text))
        )
    return points


POINTS = make_points(60)
BY_ID = {point.id: point for point in POINTS}


def open_store(backend: str, root: Path) -> VectorStore:
    if backend == "edge":
        return EdgeVectorStore(root)
    return ServerVectorStore(QdrantClient(":memory:"))


def loaded(store: VectorStore, points: list[Point] = POINTS) -> VectorStore:
    store.ensure_collection(COLLECTION, SPEC)
    store.upsert(COLLECTION, points)
    return store


def scroll_all(store: VectorStore, filter: Filter | None = None, page: int = 256) -> list[str]:
    ids: list[str] = []
    offset = None
    while True:
        records, offset = store.scroll(COLLECTION, filter=filter, limit=page, offset=offset)
        ids.extend(record.id for record in records)
        if offset is None:
            return ids


def ids_where(predicate: Callable[[Point], bool], points: list[Point] = POINTS) -> list[str]:
    return sorted(point.id for point in points if predicate(point))


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, scratch: Path) -> Iterator[VectorStore]:
    """An empty store."""
    store = open_store(request.param, scratch)
    yield store
    store.close()


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request: pytest.FixtureRequest, module_scratch: Path) -> Iterator[VectorStore]:
    """A store holding POINTS, for tests that only read."""
    store = loaded(open_store(request.param, module_scratch / request.param))
    yield store
    store.close()


@pytest.fixture
def both(scratch: Path) -> Iterator[tuple[VectorStore, VectorStore]]:
    """One empty store of each backend, for direct comparisons."""
    stores = (open_store("edge", scratch), open_store("server", scratch))
    yield stores
    for store in stores:
        store.close()


def assert_same_hits(edge: list[Hit], server: list[Hit], tolerance: float = 1e-4) -> None:
    assert [hit.id for hit in edge] == [hit.id for hit in server]
    assert [hit.score for hit in edge] == pytest.approx([hit.score for hit in server], rel=tolerance, abs=tolerance)


def test_open_vector_store_follows_the_settings(scratch: Path) -> None:
    embedded = open_vector_store(Settings(data_dir=scratch))
    assert isinstance(embedded, EdgeVectorStore)
    loaded(embedded, POINTS[:3])
    assert (scratch / "qdrant" / COLLECTION).is_dir()
    embedded.close()
    server = open_vector_store(Settings(data_dir=scratch, qdrant_url="http://127.0.0.1:1"))
    assert isinstance(server, ServerVectorStore)
    with pytest.raises(VectorStoreError, match="unreachable"):  # nothing listens on port 1
        server.list_collections()
    server.close()


# ---- collections ----


def test_ensure_collection_is_idempotent_and_checks_dims(store: VectorStore) -> None:
    assert not store.collection_exists(COLLECTION)
    store.ensure_collection(COLLECTION, SPEC)
    store.ensure_collection(COLLECTION, SPEC)
    store.ensure_collection(COLLECTION, CollectionSpec(dims=DIMS, indexes={"extra": IndexType.KEYWORD}))
    assert store.collection_exists(COLLECTION)
    assert store.list_collections() == [COLLECTION]
    with pytest.raises(VectorStoreError, match="8-dimensional vectors, not 9"):
        store.ensure_collection(COLLECTION, CollectionSpec(dims=DIMS + 1))


def test_a_missing_collection_is_not_found(store: VectorStore) -> None:
    with pytest.raises(NotFoundError):
        store.count("missing")
    with pytest.raises(NotFoundError):
        store.search("missing", dense=[1.0] * DIMS)
    with pytest.raises(NotFoundError):
        store.upsert("missing", POINTS[:1])
    store.drop_collection("missing")


def test_drop_and_list_collections(store: VectorStore) -> None:
    loaded(store)
    store.ensure_collection("other", CollectionSpec(dims=4, sparse=False))
    assert store.list_collections() == ["chunks", "other"]
    store.drop_collection(COLLECTION)
    assert store.list_collections() == ["other"]
    assert not store.collection_exists(COLLECTION)
    with pytest.raises(NotFoundError):
        store.count(COLLECTION)
    loaded(store, POINTS[:5])
    assert store.count(COLLECTION) == 5


# ---- writes ----


def test_upsert_overwrites_by_id(store: VectorStore) -> None:
    loaded(store)
    assert store.count(COLLECTION) == len(POINTS)
    changed = [Point(id=p.id, vector=p.vector, payload={**p.payload, "doc_id": "rewritten"}, sparse=p.sparse) for p in POINTS[:10]]
    store.upsert(COLLECTION, changed)
    assert store.count(COLLECTION) == len(POINTS)
    assert store.count(COLLECTION, Filter(must=[Match(key="doc_id", value="rewritten")])) == 10


def test_set_payload_merges_into_matching_points(store: VectorStore) -> None:
    loaded(store)
    store.set_payload(COLLECTION, {"reviewed": True, "live": True}, Filter(must=[Match(key="doc_id", value="doc1")]))
    doc1 = ids_where(lambda p: p.payload["doc_id"] == "doc1")
    assert scroll_all(store, Filter(must=[Match(key="reviewed", value=True)])) == doc1
    record = store.retrieve(COLLECTION, [doc1[0]])[0]
    assert record.payload == {**BY_ID[doc1[0]].payload, "reviewed": True, "live": True}


def test_delete_by_filter(store: VectorStore) -> None:
    loaded(store)
    gone = Filter(must=[Match(key="tenant", value="t1"), Match(key="live", value=False)])
    store.delete(COLLECTION, gone)
    kept = ids_where(lambda p: not (p.payload["tenant"] == "t1" and not p.payload["live"]))
    assert scroll_all(store) == kept
    assert store.count(COLLECTION, gone) == 0


# ---- filters ----

FILTER_CASES: list[tuple[str, Filter, Callable[[Point], bool]]] = [
    ("tenant", Filter(must=[Match(key="tenant", value="t2")]), lambda p: p.payload["tenant"] == "t2"),
    ("bool", Filter(must=[Match(key="live", value=True)]), lambda p: p.payload["live"] is True),
    ("integer", Filter(must=[Match(key="chunk_index", value=7)]), lambda p: p.payload["chunk_index"] == 7),
    ("array any", Filter(must=[MatchAny(key="tags", any=["blue", "green"])]), lambda p: bool({"blue", "green"} & set(p.payload.get("tags") or []))),
    ("integers any", Filter(must=[MatchAny(key="chunk_index", any=[1, 2, 50])]), lambda p: p.payload["chunk_index"] in (1, 2, 50)),
    ("float range", Filter(must=[Range(key="weight", gt=1.0, lte=2.5)]), lambda p: 1.0 < p.payload["weight"] <= 2.5),
    ("integer range", Filter(must=[Range(key="chunk_index", gte=10, lt=20)]), lambda p: 10 <= p.payload["chunk_index"] < 20),
    ("nested key", Filter(must=[Range(key="meta.year", gte=2003)]), lambda p: p.payload["meta"]["year"] >= 2003),
    (
        "text",
        Filter(must=[MatchText(key="text", text=f"{VOCABULARY[3].upper()} {VOCABULARY[5]}")]),
        lambda p: {VOCABULARY[3], VOCABULARY[5]} <= set(p.payload["text"].split()),
    ),
    ("has id", Filter(must=[HasId(ids=[POINTS[3].id, POINTS[9].id.upper()])]), lambda p: p.id in (POINTS[3].id, POINTS[9].id)),
    ("empty array or missing", Filter(must=[IsEmpty(key="tags")]), lambda p: not p.payload.get("tags")),
    ("null", Filter(must=[IsEmpty(key="note")]), lambda p: p.payload.get("note") is None),
    (
        "must_not",
        Filter(must=[Match(key="tenant", value="t0")], must_not=[Match(key="doc_id", value="doc0")]),
        lambda p: p.payload["tenant"] == "t0" and p.payload["doc_id"] != "doc0",
    ),
    (
        "nested filters",
        Filter(
            should=[
                Filter(must=[Match(key="doc_id", value="doc2"), Match(key="live", value=False)]),
                Filter(must=[Range(key="weight", gte=5.5)], must_not=[IsEmpty(key="tags")]),
            ]
        ),
        lambda p: (p.payload["doc_id"] == "doc2" and not p.payload["live"]) or (p.payload["weight"] >= 5.5 and bool(p.payload.get("tags"))),
    ),
    ("tenant and", Filter().and_(Match(key="tenant", value="t1"), Match(key="doc_id", value="doc3")), lambda p: p.payload["tenant"] == "t1" and p.payload["doc_id"] == "doc3"),
]


@pytest.mark.parametrize(("label", "filter", "predicate"), FILTER_CASES, ids=[case[0] for case in FILTER_CASES])
def test_filter(shared: VectorStore, label: str, filter: Filter, predicate: Callable[[Point], bool]) -> None:
    expected = ids_where(predicate)
    assert expected, f"{label}: the test data should match something"
    assert scroll_all(shared, filter) == expected
    assert shared.count(COLLECTION, filter) == len(expected)
    hits = shared.search(COLLECTION, dense=POINTS[0].vector, filter=filter, limit=len(POINTS))
    assert sorted(hit.id for hit in hits) == expected


# ---- reads ----


def test_scroll_pages_through_all_points_in_id_order(shared: VectorStore) -> None:
    records, offset = shared.scroll(COLLECTION, limit=7, with_vectors=True)
    assert len(records) == 7 and offset == POINTS[7].id
    expected = np.asarray(POINTS[0].vector) / np.linalg.norm(POINTS[0].vector)  # cosine stores unit vectors
    assert records[0].vector == pytest.approx(expected.tolist(), abs=1e-6)
    assert scroll_all(shared, page=7) == sorted(point.id for point in POINTS)
    assert shared.scroll(COLLECTION, limit=7)[0][0].vector is None


def test_retrieve_keeps_the_order_asked_for(shared: VectorStore) -> None:
    wanted = [POINTS[5].id, str(uuid.UUID(int=10_000)), POINTS[2].id, POINTS[5].id]
    records = shared.retrieve(COLLECTION, wanted)
    assert [record.id for record in records] == [POINTS[5].id, POINTS[2].id]
    assert records[0].payload == POINTS[5].payload


def test_dense_search_ranks_by_cosine(shared: VectorStore) -> None:
    query = np.random.default_rng(1).standard_normal(DIMS)
    matrix = np.asarray([point.vector for point in POINTS])
    cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    best = np.argsort(-cosine)[:10]
    hits = shared.search(COLLECTION, dense=query.tolist(), limit=10)
    assert [hit.id for hit in hits] == [POINTS[i].id for i in best]
    assert [hit.score for hit in hits] == pytest.approx(cosine[best].tolist(), abs=1e-5)
    assert hits[0].payload == POINTS[best[0]].payload
    assert shared.search(COLLECTION, dense=query.tolist(), limit=3, with_payload=False)[0].payload == {}


def test_facet_counts_distinct_keyword_values(shared: VectorStore) -> None:
    counts: dict[str, int] = {}
    for point in POINTS:
        counts[point.payload["doc_id"]] = counts.get(point.payload["doc_id"], 0) + 1
    assert shared.facet(COLLECTION, "doc_id") == dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    tenant = Filter(must=[Match(key="tenant", value="t1")])
    expected = {}
    for point in POINTS:
        if point.payload["tenant"] == "t1":
            expected[point.payload["doc_id"]] = expected.get(point.payload["doc_id"], 0) + 1
    assert shared.facet(COLLECTION, "doc_id", filter=tenant) == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert len(shared.facet(COLLECTION, "doc_id", limit=1)) == 1


def test_search_scores_each_hit_against_the_similarity_vector(shared: VectorStore) -> None:
    query = dict(dense=POINTS[3].vector, sparse=ENCODER.embed_query(" ".join(VOCABULARY[:6])))
    unit = {p.id: np.asarray(p.vector) / np.linalg.norm(p.vector) for p in POINTS}
    other = np.asarray(POINTS[7].vector)
    preferred = Filter(must=[Match(key="tenant", value="t1")])
    for vectors in ({"dense": query["dense"]}, {"sparse": query["sparse"]}, query, {**query, "prefer": preferred}):
        hits = shared.search(COLLECTION, limit=5, similarity_to=other.tolist(), **vectors)
        assert len(hits) == 5
        for hit in hits:
            assert hit.similarity == pytest.approx(float(unit[hit.id] @ other / np.linalg.norm(other)), abs=1e-5)
        assert all(hit.similarity is None for hit in shared.search(COLLECTION, limit=5, **vectors))


def test_sparse_search_finds_the_query_terms(shared: VectorStore) -> None:
    term = VOCABULARY[11]
    hits = shared.search(COLLECTION, sparse=ENCODER.embed_query(term), limit=len(POINTS))
    assert sorted(hit.id for hit in hits) == ids_where(lambda p: term in p.payload["text"].split())
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert shared.search(COLLECTION, sparse=ENCODER.embed_query("the of and"), limit=5) == []


def test_tenant_filter_confines_every_search_mode(shared: VectorStore) -> None:
    tenant = Filter(must=[Match(key="tenant", value="t1")])
    query = dict(dense=POINTS[4].vector, sparse=ENCODER.embed_query(" ".join(VOCABULARY[:6])))
    for vectors in ({"dense": query["dense"]}, {"sparse": query["sparse"]}, query):
        hits = shared.search(COLLECTION, filter=tenant, limit=15, **vectors)
        assert hits and all(hit.payload["tenant"] == "t1" for hit in hits)


def test_ties_are_broken_by_id(store: VectorStore) -> None:
    store.ensure_collection(COLLECTION, SPEC)
    rng = np.random.default_rng(3)
    ids = [str(uuid.UUID(int=int(i))) for i in rng.choice(10_000, size=30, replace=False)]
    store.upsert(COLLECTION, [Point(id=i, vector=[1.0] * DIMS, payload={"tenant": "t"}) for i in ids])
    hits = store.search(COLLECTION, dense=[1.0] * DIMS, limit=5)
    assert [hit.id for hit in hits] == sorted(ids)[:5]


def test_invalid_requests_are_the_callers_errors(store: VectorStore) -> None:
    store.ensure_collection(COLLECTION, SPEC)
    with pytest.raises(ValueError):
        store.search(COLLECTION, limit=3)
    with pytest.raises(ValueError):
        store.upsert(COLLECTION, [Point(id="not-a-uuid", vector=[1.0] * DIMS, payload={})])
    with pytest.raises(VectorStoreError):
        store.upsert(COLLECTION, [Point(id=POINTS[0].id, vector=[1.0] * (DIMS - 1), payload={})])


# ---- the two backends side by side ----


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_backends_rank_alike(both: tuple[VectorStore, VectorStore], fusion: str) -> None:
    points = make_points(120, seed=11)
    edge, server = (loaded(store, points) for store in both)
    rng = np.random.default_rng(5)
    filters = [None, Filter(must=[Match(key="tenant", value="t0"), Match(key="live", value=True)])]
    for _ in range(4):
        dense = rng.standard_normal(DIMS).tolist()
        sparse = ENCODER.embed_query(" ".join(rng.choice(VOCABULARY, size=3)))
        for filter in filters:
            for vectors in ({"dense": dense}, {"sparse": sparse}, {"dense": dense, "sparse": sparse}):
                kwargs = dict(filter=filter, limit=10, prefetch_limit=20, fusion=fusion, **vectors)
                assert_same_hits(edge.search(COLLECTION, **kwargs), server.search(COLLECTION, **kwargs))
    empty = ENCODER.embed_query("and the")
    kwargs = dict(dense=dense, sparse=empty, limit=10, fusion=fusion)
    assert_same_hits(edge.search(COLLECTION, **kwargs), server.search(COLLECTION, **kwargs))


def test_prefer_fuses_the_preferred_ranking_with_the_whole_one(both: tuple[VectorStore, VectorStore]) -> None:
    """`prefer` is two rankings, within `filter` and within `prefer` (a narrower filter, given
    whole), fused by reciprocal rank in one query:
    the same as fusing here the two searches it stands for, also where it prefers every point
    (which the store ranks once). Hybrid rankings are fused by DBSF here: an RRF-fused ranking
    ties often, and the engine orders ties inside a nested ranking its own way (as it does
    inside any candidate list)."""
    points = make_points(120, seed=12)
    stores = [loaded(store, points) for store in both]
    rng = np.random.default_rng(6)
    scope = Filter(must=[Match(key="tenant", value="t1")])
    narrowing = Filter(must=[MatchAny(key="doc_id", any=["doc2", "doc5"])])
    everywhere = Filter(must=[Range(key="chunk_index", gte=0)])
    for prefer in (narrowing, narrowing, narrowing, everywhere, everywhere):
        dense = rng.standard_normal(DIMS).tolist()
        sparse = ENCODER.embed_query(" ".join(rng.choice(VOCABULARY, size=3)))
        for vectors in ({"dense": dense}, {"dense": dense, "sparse": sparse}):
            results = []
            for store in stores:
                kwargs = dict(limit=10, prefetch_limit=20, fusion="dbsf", **vectors)
                fused = store.search(COLLECTION, filter=scope, prefer=scope.and_(*prefer.must), **kwargs)
                whole = store.search(COLLECTION, filter=scope, **kwargs)
                preferred = store.search(COLLECTION, filter=scope.and_(*prefer.must), **kwargs)
                expected: dict[str, float] = {}
                for ranking in (whole, preferred):
                    for rank, hit in enumerate(ranking):
                        expected[hit.id] = expected.get(hit.id, 0.0) + 1 / (RRF_K + rank)
                top = sorted(expected, key=lambda point_id: (-expected[point_id], point_id))[:10]
                assert [hit.id for hit in fused] == top
                assert [hit.score for hit in fused] == pytest.approx([expected[i] for i in top], rel=1e-4)
                assert {h.id for h in preferred} & {h.id for h in fused[:3]}, "the preferred rank first"
                results.append(fused)
            assert_same_hits(*results)


def test_sparse_idf_counts_live_points_only(both: tuple[VectorStore, VectorStore]) -> None:
    edge, server = (loaded(store) for store in both)
    for store in both:
        store.delete(COLLECTION, Filter(must=[Match(key="doc_id", value="doc4")]))
        store.upsert(COLLECTION, [Point(id=p.id, vector=p.vector, payload=p.payload, sparse=ENCODER.embed_document("zzz")) for p in POINTS[:8]])
    query = ENCODER.embed_query(" ".join(VOCABULARY[10:14]))
    assert_same_hits(edge.search(COLLECTION, sparse=query, limit=20), server.search(COLLECTION, sparse=query, limit=20))


def test_edge_sparse_idf_stays_exact_after_optimize(both: tuple[VectorStore, VectorStore], scratch: Path) -> None:
    """After `optimize` the engine's global IDF statistics serve sparse queries, which is exact
    only if the optimize vacuumed every deleted point: here 2 of 60, under the engine's default
    20% vacuum threshold."""
    _, server = both
    edge = loaded(EdgeVectorStore(scratch / "edge", indexing_threshold_kb=1))
    loaded(server)
    marker = scratch / "edge" / COLLECTION / VACUUMED_FILE
    query = ENCODER.embed_query(" ".join(VOCABULARY[10:14]))

    assert edge.optimize(COLLECTION) and marker.is_file()
    for store in (edge, server):
        overwritten = [Point(id=p.id, vector=p.vector, payload=p.payload, sparse=ENCODER.embed_document("zzz")) for p in POINTS[:2]]
        store.upsert(COLLECTION, overwritten)
    assert not marker.exists(), "a write forgets that the shard was vacuumed"
    expected = server.search(COLLECTION, sparse=query, limit=20)
    assert_same_hits(edge.search(COLLECTION, sparse=query, limit=20), expected)

    assert edge.optimize(COLLECTION) and marker.is_file()
    assert_same_hits(edge.search(COLLECTION, sparse=query, limit=20), expected)
    edge.close()
    reopened = EdgeVectorStore(scratch / "edge")
    assert_same_hits(reopened.search(COLLECTION, sparse=query, limit=20), expected)
    reopened.delete(COLLECTION, Filter(must=[Match(key="doc_id", value="doc4")]))
    assert not marker.exists()
    reopened.close()


# ---- the embedded engine ----


def test_edge_collections_persist_across_reopen(scratch: Path) -> None:
    store = loaded(EdgeVectorStore(scratch))
    query = {"dense": POINTS[1].vector, "sparse": ENCODER.embed_query(VOCABULARY[2]), "limit": 10}
    before = store.search(COLLECTION, **query)
    store.close()
    with pytest.raises(VectorStoreError, match="closed"):
        store.count(COLLECTION)
    reopened = EdgeVectorStore(scratch)
    assert reopened.list_collections() == [COLLECTION]
    assert reopened.count(COLLECTION) == len(POINTS)
    assert reopened.search(COLLECTION, **query) == before
    assert reopened.count(COLLECTION, Filter(must=[MatchText(key="text", text=VOCABULARY[3])])) > 0
    with pytest.raises(VectorStoreError):
        reopened.ensure_collection(COLLECTION, CollectionSpec(dims=DIMS * 2))
    reopened.close()


def test_edge_collection_names_stay_inside_the_root(scratch: Path) -> None:
    root = scratch / "qdrant"
    (scratch / "victim").mkdir()
    store = EdgeVectorStore(root)
    with pytest.raises(ValueError, match="invalid collection name"):
        store.ensure_collection("../victim", SPEC)
    store.drop_collection("../victim")
    assert (scratch / "victim").is_dir() and not store.collection_exists("../victim")
    with pytest.raises(NotFoundError):
        store.count("../victim")
    store.close()


_CRASH_SCRIPT = """
import os, sys
from pathlib import Path
from core.vectorstore import Filter, Match
from core.vectorstore.edge import EdgeVectorStore
from tests.integration.test_vectorstore_congruence import COLLECTION, POINTS, loaded
store = loaded(EdgeVectorStore(Path(sys.argv[1]), flush_interval_s=3600))
store.delete(COLLECTION, Filter(must=[Match(key="doc_id", value="doc0")]))
store.set_payload(COLLECTION, {"seen": 1}, Filter(must=[Match(key="doc_id", value="doc1")]))
os._exit(0)  # no close, no flush
"""


def test_edge_writes_survive_a_crash(scratch: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(scratch)], cwd=root, check=True, timeout=60)
    store = EdgeVectorStore(scratch)
    assert store.count(COLLECTION) == len(ids_where(lambda p: p.payload["doc_id"] != "doc0"))
    assert store.count(COLLECTION, Filter(must=[Match(key="seen", value=1)])) == len(ids_where(lambda p: p.payload["doc_id"] == "doc1"))
    store.close()


def test_edge_serves_reads_while_writing(scratch: Path) -> None:
    store = loaded(EdgeVectorStore(scratch), POINTS[:10])
    extra = make_points(200, seed=9)[10:]
    errors: list[BaseException] = []

    def write() -> None:
        for start in range(0, len(extra), 19):
            store.upsert(COLLECTION, extra[start : start + 19])

    def read() -> None:
        try:
            for i in range(30):
                hits = store.search(COLLECTION, dense=POINTS[i % 10].vector, sparse=ENCODER.embed_query(VOCABULARY[i]), limit=5)
                assert len(hits) == 5
                store.count(COLLECTION, Filter(must=[Match(key="tenant", value="t1")]))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count(COLLECTION) == 200
    store.close()


def _leftovers(root: Path) -> list[str]:
    return sorted(path.name for path in (root / COLLECTION).iterdir() if path.name.startswith("."))


def test_edge_optimize_indexes_every_vector_and_keeps_every_point(scratch: Path) -> None:
    store = loaded(EdgeVectorStore(scratch, indexing_threshold_kb=1))
    store.delete(COLLECTION, Filter(must=[Match(key="doc_id", value="doc0")]))
    live = len(ids_where(lambda p: p.payload["doc_id"] != "doc0"))
    queries = [
        {"dense": POINTS[1].vector},
        {"sparse": ENCODER.embed_query(VOCABULARY[2])},
        {"dense": POINTS[3].vector, "sparse": ENCODER.embed_query(VOCABULARY[4]), "filter": Filter(must=[Match(key="tenant", value="t1")])},
    ]
    before = [store.search(COLLECTION, limit=10, **query) for query in queries]
    assert store.indexed_vectors(COLLECTION) == len(POINTS)  # the sparse ones, deleted included

    errors: list[BaseException] = []
    searches_during = 0
    optimizing = threading.Thread(target=lambda: errors.append(None) if store.optimize(COLLECTION) else None)
    optimizing.start()
    while optimizing.is_alive():  # the child process optimizes; this process keeps serving
        assert [hit.id for hit in store.search(COLLECTION, limit=10, **queries[0])] == [hit.id for hit in before[0]]
        searches_during += 1
    optimizing.join()
    assert errors == [None], "optimize reports a change"
    assert searches_during > 0

    assert store.indexed_vectors(COLLECTION) == 2 * live  # dense and sparse, deleted vacuumed
    assert store.count(COLLECTION) == live
    assert [[hit.id for hit in store.search(COLLECTION, limit=10, **query)] for query in queries] == [
        [hit.id for hit in hits] for hits in before
    ]
    store.upsert(COLLECTION, make_points(70, seed=5)[60:])  # writes go to the swapped-in shard
    assert store.optimize(COLLECTION) is True
    store.close()
    assert _leftovers(scratch) == []
    reopened = EdgeVectorStore(scratch)
    assert reopened.count(COLLECTION) == live + 10
    assert reopened.indexed_vectors(COLLECTION) == 2 * (live + 10)
    reopened.close()


def _payload_storage(root: Path) -> list[str]:
    """How the engine stores each segment's payloads, as its segment files record it."""
    segments = root / COLLECTION / "shard" / "segments"
    return [json.loads((s / "segment.json").read_text())["config"]["payload_storage_type"]["type"] for s in segments.iterdir()]


def test_edge_payloads_are_read_into_memory(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Payloads are memory-mapped and pre-read ("in_ram_mmap"), not read from disk on first
    use ("mmap"): in new collections, and in older ones once `optimize` rewrites them."""
    import qdrant_edge as qe

    loaded(EdgeVectorStore(scratch / "new")).close()
    assert set(_payload_storage(scratch / "new")) == {"in_ram_mmap"}

    with monkeypatch.context() as patched:  # a collection written by an earlier version
        patched.setattr(edge_module, "_PAYLOAD_MEMORY", qe.Memory.Cold)
        loaded(EdgeVectorStore(scratch / "old", indexing_threshold_kb=1)).close()
    assert set(_payload_storage(scratch / "old")) == {"mmap"}
    reopened = EdgeVectorStore(scratch / "old")
    before = reopened.search(COLLECTION, dense=POINTS[1].vector, limit=10)
    assert reopened.optimize(COLLECTION) is True
    assert set(_payload_storage(scratch / "old")) == {"in_ram_mmap"}
    assert reopened.search(COLLECTION, dense=POINTS[1].vector, limit=10) == before
    reopened.close()


def test_edge_counts_are_remembered_until_the_next_write(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = loaded(EdgeVectorStore(scratch))
    engine_calls: list[Any] = []
    real_call = store._call
    monkeypatch.setattr(store, "_call", lambda collection, operation: engine_calls.append(1) or real_call(collection, operation))
    t1 = Filter(must=[Match(key="tenant", value="t1")])
    expected = len(ids_where(lambda p: p.payload["tenant"] == "t1"))
    assert store.count(COLLECTION, t1) == expected and store.count(COLLECTION, t1) == expected
    assert len(engine_calls) == 1
    assert store.count(COLLECTION) == len(POINTS) and len(engine_calls) == 2  # another filter, its own count
    for write, change in [
        (lambda: store.upsert(COLLECTION, [Point(id=str(uuid.UUID(int=10**6)), vector=[1.0] * DIMS, payload={"tenant": "t1"})]), 1),
        (lambda: store.set_payload(COLLECTION, {"tenant": "t9"}, Filter(must=[HasId(ids=[POINTS[0].id])])), -int(POINTS[0].payload["tenant"] == "t1")),
        (lambda: store.delete(COLLECTION, t1), None),
    ]:
        write()
        expected = 0 if change is None else expected + change
        assert store.count(COLLECTION, t1) == expected
    store.close()


@pytest.mark.parametrize("crash", ["before the swap", "between the renames", "while optimizing"])
def test_edge_optimize_cut_short_leaves_a_whole_collection(scratch: Path, crash: str) -> None:
    from core.vectorstore.edge import optimize_shard_folder

    store = loaded(EdgeVectorStore(scratch, indexing_threshold_kb=1))
    query = {"dense": POINTS[1].vector, "sparse": ENCODER.embed_query(VOCABULARY[2]), "limit": 10}
    before = [hit.id for hit in store.search(COLLECTION, **query)]
    store.close()
    folder = scratch / COLLECTION
    # The states a crash inside `optimize` can leave, made by hand.
    if crash == "while optimizing":
        shutil.copytree(folder / "shard", folder / ".optimizing")
    else:
        shutil.copytree(folder / "shard", folder / ".optimized")
        assert optimize_shard_folder(str(folder / ".optimized"))
        if crash == "between the renames":
            (folder / "shard").rename(folder / ".retired")

    reopened = EdgeVectorStore(scratch)
    assert reopened.count(COLLECTION) == len(POINTS)
    assert [hit.id for hit in reopened.search(COLLECTION, **query)] == before
    assert reopened.indexed_vectors(COLLECTION) == len(POINTS) * (1 if crash == "while optimizing" else 2)
    assert _leftovers(scratch) == []
    reopened.close()


def test_a_server_indexes_by_itself() -> None:
    store = loaded(ServerVectorStore(QdrantClient(":memory:")))
    assert store.optimize(COLLECTION) is False
    store.close()
