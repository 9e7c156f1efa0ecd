"""`SieveVectorStore` inside llama-index: an `IngestionPipeline` writes through it, a
`VectorStoreIndex` retrieves through it, on both backends. `MockEmbedding` gives every
text the same vector, so ranking is checked with BM25 or with explicit embeddings."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from qdrant_client import QdrantClient

from core.vectorstore import CollectionSpec, Filter, IndexType, Match, VectorStore
from core.vectorstore.edge import EdgeVectorStore
from core.vectorstore.llama import SieveVectorStore
from core.vectorstore.server import ServerVectorStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),  # the HNSW ef: nothing to tune there
]

DIMS = 16
COLLECTION = "docs"
SPEC = CollectionSpec(dims=DIMS, indexes={"doc_id": IndexType.KEYWORD, "text": IndexType.TEXT})
DOCUMENTS = {
    "doc-rivers": "Rivers carry sediment to the sea. The delta grows where the river slows down and drops its load.",
    "doc-volcano": "A volcano erupts when magma rises through the crust. Lava cools into basalt on the slopes.",
    "doc-glacier": "Glaciers carve valleys as the ice moves downhill. Moraines mark where a glacier stopped.",
}


BACKENDS = ["edge", "server"]


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


def open_store(backend: str, root: Path) -> VectorStore:
    return EdgeVectorStore(root) if backend == "edge" else ServerVectorStore(QdrantClient(":memory:"))


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, scratch: Path) -> Iterator[VectorStore]:
    store = open_store(request.param, scratch)
    yield store
    store.close()


def documents(texts: dict[str, str] = DOCUMENTS) -> list[Document]:
    return [Document(id_=doc_id, text=text, metadata={"filename": f"{doc_id}.txt"}) for doc_id, text in texts.items()]


def pipeline(vector_store: SieveVectorStore, **kwargs: object) -> IngestionPipeline:
    transformations = [SentenceSplitter(chunk_size=24, chunk_overlap=0), MockEmbedding(embed_dim=DIMS)]
    return IngestionPipeline(transformations=transformations, vector_store=vector_store, **kwargs)


def test_ingestion_pipeline_writes_one_point_per_node(store: VectorStore) -> None:
    vector_store = SieveVectorStore(store, COLLECTION, "acme", SPEC)
    nodes = pipeline(vector_store).run(documents=documents())
    assert len(nodes) > len(DOCUMENTS)
    records = store.retrieve(COLLECTION, [node.node_id for node in nodes])
    assert [record.id for record in records] == [node.node_id for node in nodes]
    for node, record in zip(nodes, records):
        assert record.payload == {**node.metadata, "text": node.text, "doc_id": node.ref_doc_id, "tenant": "acme"}


def test_pipeline_with_a_docstore_replaces_a_changed_document(store: VectorStore) -> None:
    vector_store = SieveVectorStore(store, COLLECTION, "acme", SPEC)
    first = pipeline(vector_store, docstore=SimpleDocumentStore())
    first.run(documents=documents())
    changed = {**DOCUMENTS, "doc-volcano": "Volcanoes are quiet today."}
    first.run(documents=documents(changed))
    volcano = Filter(must=[Match(key="doc_id", value="doc-volcano")])
    records, _ = store.scroll(COLLECTION, filter=volcano)
    assert [record.payload["text"] for record in records] == ["Volcanoes are quiet today."]


@pytest.fixture(scope="module", params=BACKENDS)
def ingested(request: pytest.FixtureRequest, module_scratch: Path) -> Iterator[SieveVectorStore]:
    """DOCUMENTS run through a pipeline into a store, for tests that only read."""
    store = open_store(request.param, module_scratch / f"ingested-{request.param}")
    vector_store = SieveVectorStore(store, COLLECTION, "acme", SPEC)
    pipeline(vector_store).run(documents=documents())
    yield vector_store
    store.close()


@pytest.mark.parametrize("mode", ["default", "sparse", "hybrid"])
def test_index_retrieves_through_the_adapter(ingested: SieveVectorStore, mode: str) -> None:
    index = VectorStoreIndex.from_vector_store(ingested, embed_model=MockEmbedding(embed_dim=DIMS))
    retriever = index.as_retriever(similarity_top_k=2, vector_store_query_mode=mode)
    results = retriever.retrieve("Where does lava cool into basalt?")
    assert len(results) == (1 if mode == "sparse" else 2)  # one chunk holds the query's words
    if mode != "default":  # mock embeddings tie, so only BM25 ranks
        assert results[0].node.ref_doc_id == "doc-volcano"
        assert "basalt" in results[0].node.get_content()
    assert all(result.node.metadata["tenant"] == "acme" for result in results)


def _node(i: int, embedding: np.ndarray, **metadata: object) -> TextNode:
    return TextNode(
        id_=str(uuid.UUID(int=i + 1)),
        text=f"note {i} about {metadata.get('topic', 'nothing')}",
        embedding=embedding.tolist(),
        metadata=metadata,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % 3}")},
    )


def _notes(store: VectorStore) -> tuple[SieveVectorStore, list[TextNode]]:
    """Nodes with seeded embeddings and metadata of every type, added for tenant acme."""
    rng = np.random.default_rng(0)
    topics = ["tax", "rent", "salary"]
    nodes = [
        _node(i, rng.standard_normal(DIMS), topic=topics[i % 3], year=2018 + i % 6, ratio=i / 4, tags=["a", "b"][: i % 3])
        for i in range(24)
    ]
    vector_store = SieveVectorStore(store, COLLECTION, "acme", SPEC)
    assert vector_store.add(nodes) == [node.node_id for node in nodes]
    return vector_store, nodes


@pytest.fixture
def notes(store: VectorStore) -> tuple[SieveVectorStore, list[TextNode]]:
    return _notes(store)


@pytest.fixture(scope="module", params=BACKENDS)
def shared_notes(
    request: pytest.FixtureRequest, module_scratch: Path
) -> Iterator[tuple[SieveVectorStore, list[TextNode]]]:
    """The notes, for tests that only read."""
    store = open_store(request.param, module_scratch / f"notes-{request.param}")
    yield _notes(store)
    store.close()


def _ids(nodes: list[TextNode], keep: object) -> list[str]:
    return sorted(node.node_id for node in nodes if keep(node))  # type: ignore[operator]


FILTERS = [
    (MetadataFilter(key="topic", value="rent"), lambda n: n.metadata["topic"] == "rent"),
    (MetadataFilter(key="year", value=2020), lambda n: n.metadata["year"] == 2020),
    (MetadataFilter(key="ratio", value=1.5), lambda n: n.metadata["ratio"] == 1.5),
    (MetadataFilter(key="topic", value="tax", operator=FilterOperator.NE), lambda n: n.metadata["topic"] != "tax"),
    (MetadataFilter(key="year", value=[2019, 2023], operator=FilterOperator.IN), lambda n: n.metadata["year"] in (2019, 2023)),
    (MetadataFilter(key="topic", value=["tax"], operator=FilterOperator.NIN), lambda n: n.metadata["topic"] != "tax"),
    (MetadataFilter(key="year", value=2021, operator=FilterOperator.GT), lambda n: n.metadata["year"] > 2021),
    (MetadataFilter(key="year", value=2021, operator=FilterOperator.GTE), lambda n: n.metadata["year"] >= 2021),
    (MetadataFilter(key="ratio", value=2.0, operator=FilterOperator.LT), lambda n: n.metadata["ratio"] < 2.0),
    (MetadataFilter(key="ratio", value=2.0, operator=FilterOperator.LTE), lambda n: n.metadata["ratio"] <= 2.0),
    (MetadataFilter(key="text", value="Salary NOTE", operator=FilterOperator.TEXT_MATCH), lambda n: n.metadata["topic"] == "salary"),
    (MetadataFilter(key="tags", value="b", operator=FilterOperator.CONTAINS), lambda n: "b" in n.metadata["tags"]),
    (MetadataFilter(key="tags", value=["a", "b"], operator=FilterOperator.ALL), lambda n: {"a", "b"} <= set(n.metadata["tags"])),
    (MetadataFilter(key="tags", value=None, operator=FilterOperator.IS_EMPTY), lambda n: not n.metadata["tags"]),
    (
        MetadataFilters(
            filters=[MetadataFilter(key="topic", value="tax"), MetadataFilter(key="year", value=2018)],
            condition=FilterCondition.OR,
        ),
        lambda n: n.metadata["topic"] == "tax" or n.metadata["year"] == 2018,
    ),
    (
        MetadataFilters(filters=[MetadataFilter(key="topic", value="tax")], condition=FilterCondition.NOT),
        lambda n: n.metadata["topic"] != "tax",
    ),
]


@pytest.mark.parametrize(("metadata_filter", "keep"), FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_metadata_filters(shared_notes: tuple[SieveVectorStore, list[TextNode]], metadata_filter, keep) -> None:  # noqa: ANN001
    vector_store, nodes = shared_notes
    query = VectorStoreQuery(
        query_embedding=nodes[0].embedding, similarity_top_k=len(nodes), filters=MetadataFilters(filters=[metadata_filter])
    )
    result = vector_store.query(query)
    assert sorted(result.ids) == _ids(nodes, keep)


def test_dense_query_ranks_by_embedding(shared_notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    vector_store, nodes = shared_notes
    result = vector_store.query(VectorStoreQuery(query_embedding=nodes[7].embedding, similarity_top_k=3))
    assert result.ids[0] == nodes[7].node_id and result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    top = result.nodes[0]
    assert top.get_content() == nodes[7].text and top.ref_doc_id == "doc1" and top.metadata["topic"] == nodes[7].metadata["topic"]


def test_doc_and_node_ids_narrow_the_query(shared_notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    vector_store, nodes = shared_notes
    by_doc = vector_store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=50, doc_ids=["doc2"]))
    assert sorted(by_doc.ids) == _ids(nodes, lambda n: n.ref_doc_id == "doc2")
    wanted = [nodes[3].node_id, nodes[5].node_id]
    by_node = vector_store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=50, node_ids=wanted))
    assert sorted(by_node.ids) == sorted(wanted)


def test_sparse_and_hybrid_queries(shared_notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    vector_store, nodes = shared_notes
    sparse = vector_store.query(VectorStoreQuery(query_str="salary", mode=VectorStoreQueryMode.SPARSE, similarity_top_k=20))
    assert sorted(sparse.ids) == _ids(nodes, lambda n: n.metadata["topic"] == "salary")
    hybrid = vector_store.query(
        VectorStoreQuery(
            query_str="note 5 rent", query_embedding=nodes[5].embedding, mode=VectorStoreQueryMode.HYBRID, similarity_top_k=4
        )
    )
    assert hybrid.ids[0] == nodes[5].node_id and len(hybrid.ids) == 4
    with pytest.raises(ValueError, match="query_str"):
        vector_store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, mode=VectorStoreQueryMode.HYBRID))
    with pytest.raises(ValueError, match="unsupported query mode"):
        vector_store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, mode=VectorStoreQueryMode.MMR))


def test_tenants_do_not_see_or_delete_each_other(store: VectorStore, notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    acme, nodes = notes
    other = SieveVectorStore(store, COLLECTION, "globex", SPEC)
    theirs = [_node(100 + i, np.ones(DIMS), topic="rent") for i in range(3)]
    other.add(theirs)
    query = VectorStoreQuery(query_embedding=[1.0] * DIMS, similarity_top_k=100)
    assert sorted(other.query(query).ids) == sorted(node.node_id for node in theirs)
    assert len(acme.query(query).ids) == len(nodes)
    other.delete("doc1")  # acme has nodes of a doc1 too
    assert len(acme.get_nodes()) == len(nodes)
    other.clear()
    assert other.get_nodes() == [] and len(acme.get_nodes()) == len(nodes)


def test_get_and_delete_nodes(notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    vector_store, nodes = notes
    rent = MetadataFilters(filters=[MetadataFilter(key="topic", value="rent")])
    assert [node.node_id for node in vector_store.get_nodes(filters=rent)] == _ids(nodes, lambda n: n.metadata["topic"] == "rent")
    vector_store.delete_nodes(node_ids=[nodes[0].node_id, nodes[1].node_id])
    vector_store.delete_nodes(filters=rent)
    left = _ids(nodes[2:], lambda n: n.metadata["topic"] != "rent")
    assert [node.node_id for node in vector_store.get_nodes()] == left
    with pytest.raises(ValueError):
        vector_store.delete_nodes()


async def test_async_variants(notes: tuple[SieveVectorStore, list[TextNode]]) -> None:
    vector_store, nodes = notes
    result = await vector_store.aquery(VectorStoreQuery(query_embedding=nodes[2].embedding, similarity_top_k=1))
    assert result.ids == [nodes[2].node_id]
    await vector_store.adelete("doc2")
    assert len(await vector_store.aget_nodes()) == len(_ids(nodes, lambda n: n.ref_doc_id != "doc2"))
    await vector_store.async_add(nodes)
    await vector_store.adelete_nodes(node_ids=[nodes[0].node_id])
    assert len(await vector_store.aget_nodes()) == len(nodes) - 1
    await vector_store.aclear()
    assert await vector_store.aget_nodes() == []
