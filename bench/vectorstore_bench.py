"""Write and search speed of the embedded vector store (`EdgeVectorStore`) at N points.

Points are random unit vectors with the BM25 vector of a synthetic chunk of text (80-160
words drawn from a Zipf-distributed vocabulary) and a chunk-like payload: 10 tenants,
documents of 100 chunks. Writes go through `upsert` in batches, each made durable before
the next (see `core/vectorstore/edge.py`). Searches ask for the top 10, dense or hybrid
(RRF over 40 + 40 candidates), without a filter and with a tenant + document filter; the
query vectors are random, the query texts 3-6 vocabulary words.

    python -m bench.vectorstore_bench                      # 100k points, 384 dims
    python -m bench.vectorstore_bench --points 10000 --optimize

`--optimize` then builds the HNSW indexes (`EdgeVectorStore.optimize`) and searches again;
without it every search scans all vectors, as the store does until something optimizes it.
Prints one JSON line and one markdown table row per pass; the row's columns:

| points | dims | index | upsert points/s | dense p50 / p95 ms | dense + filter | sparse | hybrid | hybrid + filter |
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.vectorstore import CollectionSpec, Filter, IndexType, Match, Point
from core.vectorstore.edge import EdgeVectorStore
from core.vectorstore.sparse import Bm25Encoder

COLLECTION = "bench"
TENANTS = 10
CHUNKS_PER_DOC = 100
SPEC = CollectionSpec(dims=384, indexes={"doc_id": IndexType.KEYWORD, "chunk_index": IndexType.INTEGER})


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghiklmnoprstuvwy"))
    words = {"".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(size * 2)}
    return sorted(words)[:size]


class Corpus:
    """Deterministic synthetic points, generated a batch at a time to bound memory."""

    def __init__(self, dims: int, seed: int) -> None:
        self.dims = dims
        self.rng = np.random.default_rng(seed)
        self.words = np.array(vocabulary(5000, self.rng))
        ranks = np.arange(1, len(self.words) + 1)
        self.word_p = (1 / ranks) / (1 / ranks).sum()  # Zipf: a few words are very common
        self.encoder = Bm25Encoder()
        self.encode_s = 0.0

    def unit_vectors(self, n: int) -> np.ndarray:
        vectors = self.rng.standard_normal((n, self.dims)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(self.words, size=self.rng.integers(low, high), p=self.word_p))

    def points(self, start: int, n: int) -> list[Point]:
        vectors = self.unit_vectors(n)
        points = []
        for offset in range(n):
            i = start + offset
            text = self.text(80, 160)
            began = time.perf_counter()
            sparse = self.encoder.embed_document(text)
            self.encode_s += time.perf_counter() - began
            payload = {
                "tenant": f"tenant{i % TENANTS}",
                "doc_id": f"doc{i // CHUNKS_PER_DOC}",
                "chunk_index": i % CHUNKS_PER_DOC,
                "live": True,
                "text": text,
            }
            points.append(Point(id=str(uuid.UUID(int=i + 1)), vector=vectors[offset].tolist(), payload=payload, sparse=sparse))
        return points


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
    }


def timed(call: Callable[[], Any], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return samples


def measure_searches(store: EdgeVectorStore, corpus: Corpus, points: int, queries: int) -> dict[str, dict[str, float]]:
    dense = corpus.unit_vectors(queries)
    sparse = [corpus.encoder.embed_query(corpus.text(3, 7)) for _ in range(queries)]
    # A tenant + document pair that exists: document d holds chunks d*100 .. d*100+99,
    # spread over all tenants (tenant = point index mod 10).
    docs = max(1, points // CHUNKS_PER_DOC)
    filters = [
        Filter(must=[Match(key="tenant", value=f"tenant{q % TENANTS}"), Match(key="doc_id", value=f"doc{q % docs}")])
        for q in range(queries)
    ]
    cases: dict[str, Callable[[int], Any]] = {
        "dense": lambda q: store.search(COLLECTION, dense=dense[q].tolist(), limit=10),
        "dense_filtered": lambda q: store.search(COLLECTION, dense=dense[q].tolist(), filter=filters[q], limit=10),
        "sparse": lambda q: store.search(COLLECTION, sparse=sparse[q], limit=10),
        "hybrid": lambda q: store.search(COLLECTION, dense=dense[q].tolist(), sparse=sparse[q], limit=10),
        "hybrid_filtered": lambda q: store.search(
            COLLECTION, dense=dense[q].tolist(), sparse=sparse[q], filter=filters[q], limit=10
        ),
    }
    results = {}
    for name, search in cases.items():
        for q in range(min(10, queries)):  # warm the page cache
            search(q)
        counter = iter(range(queries))
        results[name] = percentiles(timed(lambda: search(next(counter)), queries))
    return results


def markdown_row(result: dict[str, Any]) -> str:
    search = result["search"]
    cells = [
        f"{result['points']:,}",
        str(result["dims"]),
        result["index"],
        f"{result['upsert_points_per_s']:,.0f}",
        *(f"{search[case]['p50_ms']} / {search[case]['p95_ms']}" for case in ("dense", "dense_filtered", "sparse", "hybrid", "hybrid_filtered")),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--batch", type=int, default=256, help="points per upsert call")
    parser.add_argument("--queries", type=int, default=200, help="timed searches per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimize", action="store_true", help="also build HNSW indexes and search again")
    parser.add_argument("--root", type=Path, help="store folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sieve-vs-bench-") as temporary:
        root = args.root or Path(temporary)
        store = EdgeVectorStore(root)
        store.ensure_collection(COLLECTION, CollectionSpec(dims=args.dims, indexes=SPEC.indexes))
        corpus = Corpus(args.dims, args.seed)

        upsert_s = 0.0
        batch_s: list[float] = []
        for start in range(0, args.points, args.batch):
            batch = corpus.points(start, min(args.batch, args.points - start))
            began = time.perf_counter()
            store.upsert(COLLECTION, batch)
            batch_s.append(time.perf_counter() - began)
            upsert_s += batch_s[-1]
        one_point = corpus.points(0, 1)  # overwrites point 0: the count stays `--points`
        single_s = timed(lambda: store.upsert(COLLECTION, one_point), 20)

        base = {
            "backend": "edge",
            "points": store.count(COLLECTION),
            "dims": args.dims,
            "batch": args.batch,
            "upsert_points_per_s": round(args.points / upsert_s),
            "upsert_batch": percentiles(batch_s),
            "upsert_one_point": percentiles(single_s),
            "bm25_documents_per_s": round(args.points / corpus.encode_s),
        }
        for index in ["plain", "hnsw"] if args.optimize else ["plain"]:
            result = dict(base, index=index)
            if index == "hnsw":
                began = time.perf_counter()
                store.optimize(COLLECTION)
                result["optimize_s"] = round(time.perf_counter() - began, 1)
            result["search"] = measure_searches(store, corpus, args.points, args.queries)
            print(json.dumps(result))
            print(markdown_row(result))
        store.close()


if __name__ == "__main__":
    main()
