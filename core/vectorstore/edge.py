"""`EdgeVectorStore`: Qdrant's engine in-process (`qdrant-edge-py`), one shard per collection.

Layout: `root/<name>/shard/` holds the engine's files, `root/<name>/collection.json` the
`CollectionSpec`; the latter is written last, so its presence marks a complete collection.

What the design rests on, measured on qdrant-edge-py 0.9.0:
- Every engine call holds the GIL until it returns (query, update, flush, optimize), so
  engine calls never overlap in one process and the engine needs no lock for reads. It
  also means a call stalls every other thread, the event loop included, for its duration.
- `update` appends to a memory-mapped write-ahead log without syncing it: the write
  survives a crash of the process (the log is replayed on load), not of the machine.
  `flush` fsyncs every segment file: after a 256-point write at 100k points it takes
  20 ms on a quiet disk and up to 170 ms on a busy one. Fsyncing the log's files takes
  2-20 ms, so that is how a write is made durable; the segments are flushed at most every
  `flush_interval_s`, as Qdrant's server does (the log is truncated only after a flush,
  and replayed on load until then).
- A shard folder can be opened once at a time, even within one process.
- Nothing builds HNSW indexes or vacuums deleted points in the background: until
  `optimize` runs, search scans every vector (10 ms per query at 100k x 384 dims).
  `optimize` holds the GIL for minutes, so the store runs it in a child process on a copy
  of the shard and swaps the copy in; writes wait meanwhile, searches do not.
- `ShardInfo.indexed_vectors_count` counts sparse vectors as indexed from the start, dense
  ones once an HNSW index holds them, and deleted points until they are vacuumed.
- `MatchValue(True)` is read as the integer 1 (bool is an int subclass): filters pass
  `numpy.bool_`, which the bindings read as a boolean.
- Global sparse IDF counts deleted and overwritten points until they are vacuumed. Statistics
  over the live points (`IdfParams(corpus=...)`) cost 1-1.5 ms per sparse candidate list at
  100k points, so sparse queries ask for them only while the shard may hold such points: from
  its first write after an `optimize` (whose settings vacuum every deleted point; the engine's
  default leaves segments under 20% deleted) until the next one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

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

T = TypeVar("T")

# Collection names become folder names.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SPEC_FILE = "collection.json"
SHARD_DIR = "shard"
# Beside the shard while it holds no deleted or overwritten points: written by `optimize`,
# removed before any write.
VACUUMED_FILE = "vacuumed"
_DROPPED_PREFIX = ".dropped-"
# Beside a collection's shard while `optimize` runs: the copy being optimized, the copy
# ready to swap in (its name is the commit point), the shard swapped out.
_OPTIMIZING_DIR = ".optimizing"
_OPTIMIZED_DIR = ".optimized"
_RETIRED_DIR = ".retired"
# Points per engine call: each call holds the GIL, so big writes are cut into slices that
# let request threads run in between.
_UPSERT_SLICE = 256
# Counts remembered per collection version (the oldest forgotten first).
_COUNTS_KEPT = 4096
_LIVE_IDF = qe.SearchParams(idf=qe.IdfParams(corpus=qe.Filter()))
# `optimize` vacuums every segment that holds a deleted point.
_VACUUM_ALL = {"deleted_threshold": 0.0, "vacuum_min_vector_number": 1}
_DENSE_PARAMS = qe.SearchParams(hnsw_ef=HNSW_EF)
_EXACT_PARAMS = qe.SearchParams(exact=True)
# Payloads stay on disk, memory-mapped and read into the page cache when a segment is loaded.
# The engine's default ("cold") reads a payload from disk the first time it is asked for: 50
# hits of questions not seen before cost 8-9 ms at 100k chunks instead of 3.5-4 ms. Applies
# to the segments written from now on (new collections, and those `optimize` rewrites).
_PAYLOAD_MEMORY = qe.Memory.Cached


def _index_schema(index_type: IndexType, *, is_tenant: bool) -> Any:
    if index_type is IndexType.KEYWORD:
        return qe.KeywordIndexParams(is_tenant=True) if is_tenant else qe.PayloadSchemaType.Keyword
    if index_type is IndexType.TEXT:
        # The word tokenizer, lowercased, no stemming or stopwords: what a server applies to
        # an unindexed field, so `MatchText` means the same on both backends.
        return qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True)
    return {
        IndexType.INTEGER: qe.PayloadSchemaType.Integer,
        IndexType.FLOAT: qe.PayloadSchemaType.Float,
        IndexType.BOOL: qe.PayloadSchemaType.Bool,
        IndexType.DATETIME: qe.PayloadSchemaType.Datetime,
    }[index_type]


_SCHEMA_TYPES = {
    IndexType.KEYWORD: qe.PayloadSchemaType.Keyword,
    IndexType.INTEGER: qe.PayloadSchemaType.Integer,
    IndexType.FLOAT: qe.PayloadSchemaType.Float,
    IndexType.BOOL: qe.PayloadSchemaType.Bool,
    IndexType.TEXT: qe.PayloadSchemaType.Text,
    IndexType.DATETIME: qe.PayloadSchemaType.Datetime,
}


def _condition(condition: Condition) -> Any:
    if isinstance(condition, Match):
        value = np.bool_(condition.value) if isinstance(condition.value, bool) else condition.value
        return qe.FieldCondition(key=condition.key, match=qe.MatchValue(value))
    if isinstance(condition, MatchAny):
        return qe.FieldCondition(key=condition.key, match=qe.MatchAny(list(condition.any)))
    if isinstance(condition, Range):
        bounds = qe.RangeFloat(gte=condition.gte, gt=condition.gt, lte=condition.lte, lt=condition.lt)
        return qe.FieldCondition(key=condition.key, range=bounds)
    if isinstance(condition, MatchText):
        return qe.FieldCondition(key=condition.key, match=qe.MatchText(condition.text))
    if isinstance(condition, HasId):
        return qe.HasIdCondition({str(uuid.UUID(point_id)) for point_id in condition.ids})
    if isinstance(condition, IsEmpty):
        return qe.IsEmptyCondition(key=condition.key)
    if isinstance(condition, Filter):
        return _engine_filter(condition)
    raise TypeError(f"unsupported filter condition: {condition!r}")


def _engine_filter(filter: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_condition(c) for c in filter.must] or None,
        should=[_condition(c) for c in filter.should] or None,
        must_not=[_condition(c) for c in filter.must_not] or None,
    )


def _optional_filter(filter: Filter | None) -> qe.Filter | None:
    return None if filter is None else _engine_filter(filter)


def _engine_point(point: Point) -> qe.Point:
    vectors: dict[str, Any] = {DENSE: point.vector}
    if point.sparse is not None:
        vectors[SPARSE] = qe.SparseVector(point.sparse.indices, point.sparse.values)
    return qe.Point(id=point.id, vector=vectors, payload=point.payload)


def _engine_config(spec: CollectionSpec, indexing_threshold_kb: int | None = None) -> qe.EdgeConfig:
    """The shard's settings; `indexing_threshold_kb` None keeps the shard's own."""
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=spec.dims, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if spec.sparse else None,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb, **_VACUUM_ALL),
        payload_memory=_PAYLOAD_MEMORY,
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_spec(path: Path, spec: CollectionSpec) -> None:
    """Write `spec` so that a crash leaves either the old file or the new one."""
    data = asdict(spec)
    data["indexes"] = {key: index_type.value for key, index_type in spec.indexes.items()}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(path.parent)


def _read_spec(path: Path) -> CollectionSpec:
    data = json.loads(path.read_text())
    data["indexes"] = {key: IndexType(value) for key, value in data["indexes"].items()}
    return CollectionSpec(**data)


@dataclass
class _Collection:
    """An open shard. `lock` serializes writes and closing; reads take no lock."""

    name: str
    path: Path
    shard: qe.EdgeShard
    spec: CollectionSpec
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_flush: float = field(default_factory=time.monotonic)
    closed: bool = False
    version: int = 0  # from the store's counter: changes with every write, never repeats
    vacuumed: bool = False  # no deleted or overwritten points: global IDF statistics are exact

    @property
    def wal_dir(self) -> Path:
        return self.path / SHARD_DIR / "wal"


class EdgeVectorStore(VectorStore):
    """Collections as qdrant-edge shards under `root`. Thread-safe; one instance per folder
    and per process (the engine locks a shard's folder while it is open)."""

    indexes_in_background = False

    def __init__(self, root: Path, *, flush_interval_s: float = 5.0, indexing_threshold_kb: int | None = None) -> None:
        """`indexing_threshold_kb`: for collections created from now on, the size of vectors in
        a segment above which `optimize` builds it an HNSW index (the engine's default, 10 MB,
        is about 6,500 vectors of 384 dims)."""
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        for leftover in self._root.glob(f"{_DROPPED_PREFIX}*"):  # a drop cut short by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        self._flush_interval_s = flush_interval_s
        self._indexing_threshold_kb = indexing_threshold_kb
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()  # guards `_collections`: opening, creating, dropping
        self._closed = False
        self._versions = itertools.count(1)
        self._counts: dict[tuple[str, int, str], int] = {}  # (name, version, filter): exact count

    # ---- collections ----

    def ensure_collection(self, name: str, spec: CollectionSpec) -> None:
        with self._lock:
            self._check_open()
            collection = self._collections.get(name) or self._open_or_create(name, spec)
            self._collections[name] = collection
        if collection.spec.dims != spec.dims:
            raise VectorStoreError(
                f"collection {name!r} holds {collection.spec.dims}-dimensional vectors, not {spec.dims}"
            )
        if spec.sparse and not collection.spec.sparse:
            raise VectorStoreError(f"collection {name!r} has no sparse vectors")
        with self._writing(collection):
            existing = self._call(collection, collection.shard.info).payload_schema
            missing = {
                key: index_type
                for key, index_type in spec.payload_indexes().items()
                if key not in existing or existing[key].data_type != _SCHEMA_TYPES[index_type]
            }
            for key, index_type in missing.items():
                schema = _index_schema(index_type, is_tenant=key == spec.tenant_key)
                self._call(collection, lambda: collection.shard.update(qe.UpdateOperation.create_field_index(key, schema)))
            if missing:
                merged = CollectionSpec(
                    dims=collection.spec.dims,
                    sparse=collection.spec.sparse,
                    indexes={**collection.spec.indexes, **missing},
                    tenant_key=spec.tenant_key or collection.spec.tenant_key,
                )
                _write_spec(collection.path / SPEC_FILE, merged)
                collection.spec = merged
                self._commit(collection)

    def collection_exists(self, name: str) -> bool:
        return bool(_NAME_PATTERN.fullmatch(name)) and (self._root / name / SPEC_FILE).is_file()

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._check_open()
            collection = self._collections.pop(name, None)
            if collection is not None:
                self._close_shard(collection, flush=False)
            path = self._root / name
            if _NAME_PATTERN.fullmatch(name) and path.exists():
                # Renamed first, so that a crash halfway through deleting leaves no collection.
                doomed = self._root / f"{_DROPPED_PREFIX}{name}-{uuid.uuid4().hex}"
                os.replace(path, doomed)
                shutil.rmtree(doomed)

    def version(self, name: str) -> int | None:
        """Every write goes through this store (one owner per folder), so it knows."""
        if not self.collection_exists(name):
            return None
        return self._get(name).version

    def list_collections(self) -> list[str]:
        return sorted(
            path.name
            for path in self._root.iterdir()
            if not path.name.startswith(".") and (path / SPEC_FILE).is_file()
        )

    # ---- writes ----

    def upsert(self, name: str, points: list[Point]) -> None:
        engine_points = [_engine_point(point) for point in points]
        collection = self._get(name)
        with self._writing(collection):
            self._soil(collection)
            for start in range(0, len(engine_points), _UPSERT_SLICE):
                operation = qe.UpdateOperation.upsert_points(engine_points[start : start + _UPSERT_SLICE])
                self._call(collection, lambda: collection.shard.update(operation))
            self._commit(collection)

    def set_payload(self, name: str, payload: dict[str, Any], filter: Filter) -> None:
        operation = qe.UpdateOperation.set_payload_by_filter(_engine_filter(filter), payload)
        collection = self._get(name)
        with self._writing(collection):
            self._soil(collection)
            self._call(collection, lambda: collection.shard.update(operation))
            self._commit(collection)

    def delete(self, name: str, filter: Filter) -> None:
        operation = qe.UpdateOperation.delete_points_by_filter(_engine_filter(filter))
        collection = self._get(name)
        with self._writing(collection):
            self._soil(collection)
            self._call(collection, lambda: collection.shard.update(operation))
            self._commit(collection)

    def optimize(self, name: str) -> bool:
        """Build HNSW indexes and vacuum deleted points (every segment that holds one is
        rewritten, so that sparse queries can use the global IDF statistics until the next
        write); True if anything changed.

        The engine holds the GIL while it optimizes (on two cores: 80-140 s for 100k chunks
        of 384 dims, 283 s for 100k random vectors), so a child process optimizes a copy of
        the shard and the copy is then swapped in: searches go on against the current shard
        meanwhile, writes to the collection wait until the swap. A crash at any point leaves
        the old shard or the optimized one. Needs free disk for a second copy of the shard.
        """
        collection = self._get(name)
        with self._writing(collection):
            self._call(collection, collection.shard.flush)
            collection.last_flush = time.monotonic()
            copy = collection.path / _OPTIMIZING_DIR
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(collection.path / SHARD_DIR, copy)
            try:
                changed = _optimize_in_child(copy)
            except BaseException:
                shutil.rmtree(copy, ignore_errors=True)
                raise
            if changed:
                os.replace(copy, collection.path / _OPTIMIZED_DIR)
                _fsync(collection.path)
                _finish_optimize(collection.path)
                # Searches that already hold the old shard finish on it; it closes when released.
                collection.shard = self._engine(lambda: qe.EdgeShard.load(str(collection.path / SHARD_DIR)))
                shutil.rmtree(collection.path / _RETIRED_DIR, ignore_errors=True)
            else:
                shutil.rmtree(copy)
            (collection.path / VACUUMED_FILE).touch()
            _fsync(collection.path)
            collection.vacuumed = True
            return changed

    def indexed_vectors(self, name: str) -> int:
        """The engine's count of indexed vectors: every sparse vector, and the dense ones an
        HNSW index holds; deleted points count until `optimize` vacuums them."""
        collection = self._get(name)
        return self._call(collection, collection.shard.info).indexed_vectors_count

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
        collection = self._get(name)
        engine_filter = _optional_filter(filter)
        dense_query = None if dense is None else qe.Query.Nearest(dense, using=DENSE)
        sparse_query = None if sparse is None else qe.Query.Nearest(qe.SparseVector(sparse.indices, sparse.values), using=SPARSE)
        hybrid = dense_query is not None and sparse_query is not None
        fuse = qe.Fusion.Rrf(k=RRF_K) if fusion == "rrf" else qe.Fusion.Dbsf()
        single_query = dense_query if dense_query is not None else sparse_query
        # Read once: a write that begins meanwhile soils the shard for the next search.
        sparse_params = None if collection.vacuumed else _LIVE_IDF
        single_params = _DENSE_PARAMS if dense_query is not None else sparse_params

        def candidate_lists(flt: qe.Filter | None) -> list[qe.Prefetch]:
            candidates = prefetch_limit or 4 * limit
            return [
                qe.Prefetch(limit=candidates, query=dense_query, filter=flt, params=_DENSE_PARAMS),
                qe.Prefetch(limit=candidates, query=sparse_query, filter=flt, params=sparse_params),
            ]

        # Filters go to the searches only: the engine passes a fusion's filter down to its
        # prefetches, where each repeated condition is checked again for every point admitted.
        def ranking(flt: qe.Filter | None) -> qe.Prefetch:
            if hybrid:
                return qe.Prefetch(limit=limit, prefetches=candidate_lists(flt), query=fuse)
            return qe.Prefetch(limit=limit, query=single_query, filter=flt, params=single_params)

        def request(n: int) -> qe.QueryRequest:
            common = dict(limit=n, with_payload=with_payload, with_vector=False)
            if prefer is not None:
                preferred = _optional_filter(prefer)
                return qe.QueryRequest(
                    prefetches=[ranking(engine_filter), ranking(preferred)], query=qe.Fusion.Rrf(k=RRF_K), **common
                )
            if hybrid:
                return qe.QueryRequest(prefetches=candidate_lists(engine_filter), query=fuse, **common)
            return qe.QueryRequest(query=single_query, params=single_params, filter=engine_filter, **common)

        def fetch(n: int) -> list[Hit]:
            points = self._call(collection, lambda: collection.shard.query(request(n)))
            return [Hit(id=str(point.id), score=point.score, payload=point.payload or {}) for point in points]

        return top_hits_by_score_then_id(fetch, limit)

    def _similarities(self, name: str, vector: list[float], ids: list[str]) -> dict[str, float]:
        collection = self._get(name)
        request = qe.QueryRequest(
            limit=len(ids), query=qe.Query.Nearest(vector, using=DENSE), filter=qe.Filter(must=[qe.HasIdCondition(set(ids))]),
            params=_EXACT_PARAMS, with_payload=False, with_vector=False,
        )
        return {str(point.id): point.score for point in self._call(collection, lambda: collection.shard.query(request))}

    def scroll(
        self,
        name: str,
        *,
        filter: Filter | None = None,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        collection = self._get(name)
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_optional_filter(filter),
            with_payload=True,
            with_vector=[DENSE] if with_vectors else False,
        )
        records, next_offset = self._call(collection, lambda: collection.shard.scroll(request))
        page = [self._record(record, with_vectors) for record in records]
        return page, None if next_offset is None else str(next_offset)

    def retrieve(self, name: str, ids: list[str]) -> list[Record]:
        unique_ids = list(dict.fromkeys(str(uuid.UUID(point_id)) for point_id in ids))
        collection = self._get(name)
        records = self._call(collection, lambda: collection.shard.retrieve(unique_ids, with_payload=True, with_vector=False))
        return [self._record(record, with_vectors=False) for record in records]

    def count(self, name: str, filter: Filter | None = None) -> int:
        """Exact, and remembered until the collection's next write (`search` counts what a
        preference leaves out, 1-7 ms at 100k points, for every question that has one)."""
        collection = self._get(name)
        # The version is read first: a count that a write overlaps is kept under the version
        # before the write, which no later lookup asks for.
        key = (name, collection.version, filter.model_dump_json() if filter is not None else "")
        if (known := self._counts.get(key)) is not None:
            return known
        request = qe.CountRequest(exact=True, filter=_optional_filter(filter))
        counted = self._call(collection, lambda: collection.shard.count(request))
        if len(self._counts) >= _COUNTS_KEPT:
            self._counts.pop(next(iter(self._counts)), None)
        self._counts[key] = counted
        return counted

    def facet(self, name: str, key: str, *, filter: Filter | None = None, limit: int = 100) -> dict[str, int]:
        collection = self._get(name)
        request = qe.FacetRequest(key=key, limit=limit, exact=True, filter=_optional_filter(filter))
        hits = self._call(collection, lambda: collection.shard.facet(request)).hits
        return {str(hit.value): hit.count for hit in sorted(hits, key=lambda h: (-h.count, str(h.value)))}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            collections, self._collections = list(self._collections.values()), {}
            errors = []
            for collection in collections:
                try:
                    self._close_shard(collection, flush=True)
                except VectorStoreError as e:
                    errors.append(e)
            if errors:
                raise errors[0]

    # ---- internals ----

    @staticmethod
    def _close_shard(collection: _Collection, *, flush: bool) -> None:
        with collection.lock:
            collection.closed = True
            try:
                if flush:
                    collection.shard.flush()
            except Exception as e:
                raise VectorStoreError(f"qdrant-edge, collection {collection.name!r}: {e}") from e
            finally:
                collection.shard.close()

    @staticmethod
    def _record(record: Any, with_vectors: bool) -> Record:
        vector = record.vector.get(DENSE) if with_vectors and record.vector else None
        return Record(id=str(record.id), payload=record.payload or {}, vector=vector)

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError("the vector store is closed")

    def _get(self, name: str) -> _Collection:
        collection = self._collections.get(name)
        if collection is not None:
            return collection
        with self._lock:
            self._check_open()
            collection = self._collections.get(name)
            if collection is None:
                collection = self._open(name)
                self._collections[name] = collection
            return collection

    def _open(self, name: str) -> _Collection:
        path = self._root / name
        if not _NAME_PATTERN.fullmatch(name) or not (path / SPEC_FILE).is_file():
            raise NotFoundError(f"collection {name!r} does not exist")
        spec = _read_spec(path / SPEC_FILE)
        _finish_optimize(path)  # an `optimize` cut short by a crash
        shutil.rmtree(path / _RETIRED_DIR, ignore_errors=True)
        # Loaded with the store's settings, so that a shard made by an earlier version is vacuumed alike.
        shard = self._engine(lambda: qe.EdgeShard.load(str(path / SHARD_DIR), _engine_config(spec)))
        return _Collection(
            name=name, path=path, shard=shard, spec=spec, version=next(self._versions),
            vacuumed=(path / VACUUMED_FILE).is_file(),
        )

    def _open_or_create(self, name: str, spec: CollectionSpec) -> _Collection:
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid collection name {name!r}: letters, digits, '_', '-', '.'; at most 128")
        path = self._root / name
        if (path / SPEC_FILE).is_file():
            return self._open(name)
        config = _engine_config(spec, self._indexing_threshold_kb)
        shard_path = path / SHARD_DIR
        if (shard_path / "segments").is_dir():
            # A creation cut short before the spec was written: loading with `config` checks
            # that the shard matches the spec.
            shard = self._engine(lambda: qe.EdgeShard.load(str(shard_path), config))
        else:
            path.mkdir(parents=True, exist_ok=True)
            shard = self._engine(lambda: qe.EdgeShard.create(str(shard_path), config))
        self._engine(shard.flush)
        stored = CollectionSpec(dims=spec.dims, sparse=spec.sparse, indexes={}, tenant_key=spec.tenant_key)
        _write_spec(path / SPEC_FILE, stored)
        _fsync(self._root)
        return _Collection(name=name, path=path, shard=shard, spec=stored, version=next(self._versions))

    @contextmanager
    def _writing(self, collection: _Collection) -> Iterator[None]:
        with collection.lock:
            if collection.closed:
                self._check_open()
                raise NotFoundError(f"collection {collection.name!r} does not exist")
            yield

    @staticmethod
    def _soil(collection: _Collection) -> None:
        """Before a write, which may leave deleted or overwritten points: forget `vacuumed`,
        on disk first. Call with `collection.lock` held."""
        if collection.vacuumed:
            collection.vacuumed = False
            (collection.path / VACUUMED_FILE).unlink(missing_ok=True)
            _fsync(collection.path)

    def _commit(self, collection: _Collection) -> None:
        """Make the writes so far durable. Call with `collection.lock` held."""
        collection.version = next(self._versions)
        if time.monotonic() - collection.last_flush >= self._flush_interval_s or not collection.wal_dir.is_dir():
            self._call(collection, collection.shard.flush)
            collection.last_flush = time.monotonic()
            return
        # The log is memory-mapped: fsync on its files writes back the pages `update` dirtied.
        for path in collection.wal_dir.iterdir():
            try:
                _fsync(path)
            except FileNotFoundError:  # a log segment retired since the listing
                pass
        _fsync(collection.wal_dir)

    def _call(self, collection: _Collection, operation: Callable[[], T]) -> T:
        """Run an engine call on `collection`, translating its errors."""
        try:
            return operation()
        except Exception as e:
            if collection.closed:
                self._check_open()
                raise NotFoundError(f"collection {collection.name!r} does not exist") from e
            raise VectorStoreError(f"qdrant-edge, collection {collection.name!r}: {e}") from e

    @staticmethod
    def _engine(operation: Callable[[], T]) -> T:
        try:
            return operation()
        except Exception as e:
            raise VectorStoreError(f"qdrant-edge: {e}") from e


def _finish_optimize(path: Path) -> None:
    """Swap an optimized copy of the shard in, if one is ready (the shard it replaces is
    left in `_RETIRED_DIR`), and remove a copy that was not ready. Writes waited while the
    copy was made and optimized, so a ready copy holds everything the shard does."""
    optimized = path / _OPTIMIZED_DIR
    if optimized.is_dir():
        shutil.rmtree(path / _RETIRED_DIR, ignore_errors=True)
        if (path / SHARD_DIR).exists():
            os.replace(path / SHARD_DIR, path / _RETIRED_DIR)
        os.replace(optimized, path / SHARD_DIR)
        _fsync(path)
    shutil.rmtree(path / _OPTIMIZING_DIR, ignore_errors=True)


def _optimize_in_child(shard_dir: Path) -> bool:
    """Optimize the closed shard at `shard_dir` in a child process; True if anything changed."""
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from core.vectorstore.edge import optimize_shard_folder as o; "
         "print('changed' if o(sys.argv[1]) else 'unchanged')", str(shard_dir)],
        capture_output=True, text=True,
    )
    if child.returncode != 0:
        raise VectorStoreError(f"qdrant-edge, optimizing {shard_dir}: {child.stderr.strip()[-500:]}")
    return child.stdout.split()[-1] == "changed"


def optimize_shard_folder(shard_dir: str) -> bool:
    """Build indexes and vacuum the shard at `shard_dir`, which no one else has open."""
    shard = qe.EdgeShard.load(shard_dir)
    try:
        changed = shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return changed
