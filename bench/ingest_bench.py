"""Ingestion throughput: the whole pipeline against the bare embedding model.

Runs Sieve in-process as `make run` does (API, in-process arq worker on the bundled Valkey,
embedded Qdrant engine), uploads a corpus over REST and waits for the job. Every text the
pipeline embeds is recorded, then embedded again by the bare sentence-transformers model
with the same batch size: the ratio is the pipeline's overhead over the hardware limit.

    python -m bench.ingest_bench --corpus financebench-pdfs
    python -m bench.ingest_bench --corpus cuad
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from bench.common import EVAL_DIR, RESULTS_DIR, markdown_row, valkey

CORPORA = {
    "financebench-pdfs": (EVAL_DIR / "financebench" / "pdfs", "*.pdf"),
    "cuad": (EVAL_DIR / "cuad" / "corpus", "*.txt"),
    "pubmedqa": (EVAL_DIR / "pubmedqa" / "corpus", "*.txt"),
    "emanual": (EVAL_DIR / "emanual" / "corpus", "*.txt"),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), required=True)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N files.")
    parser.add_argument("--batch", type=int, default=100, help="Files per upload request.")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.embeddings import Embedder
    from tests.conftest import make_settings, wait_for_job

    folder, pattern = CORPORA[args.corpus]
    files = sorted(folder.glob(pattern))[: args.limit]
    embedded_texts: list[str] = []
    original_embed = Embedder.embed

    def recording_embed(self, texts, on_batch=None):
        embedded_texts.extend(texts)
        return original_embed(self, texts, on_batch)

    Embedder.embed = recording_embed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp, valkey(Path(tmp)) as redis_url:
        settings = make_settings(Path(tmp) / "data", redis_url)
        with TestClient(create_app(settings, models=False)) as client:
            client.post("/v1/collections", json={"name": "bench"})
            start = time.perf_counter()
            jobs = []
            for i in range(0, len(files), args.batch):
                group = files[i : i + args.batch]
                response = client.post(
                    "/v1/collections/bench/documents", files=[("files", (p.name, p.read_bytes())) for p in group]
                )
                jobs.append(response.json()["job_id"])
            results = [wait_for_job(client, job_id, timeout_s=6 * 3600) for job_id in jobs]
            wall_s = time.perf_counter() - start
            docs = client.get("/v1/collections/bench/documents", params={"limit": 100_000}).json()
            embedder = client.app.state.services.resources.embedder
    Embedder.embed = original_embed  # type: ignore[method-assign]

    pages = sum(d["pages"] or 0 for d in docs)
    chunks = sum(d["chunks"] for d in docs)
    failed = sum(len(r["errors"]) for r in results)
    # The hardware limit: the same texts through the bare model, same batch size.
    start = time.perf_counter()
    embedder._model.encode(embedded_texts, batch_size=embedder.batch_size, normalize_embeddings=True)
    bare_s = time.perf_counter() - start

    result = {
        "corpus": args.corpus,
        "files": len(files),
        "failed_files": failed,
        "pages": pages,
        "chunks": chunks,
        "embedded_texts": len(embedded_texts),
        "wall_s": round(wall_s, 1),
        "pages_per_s": round(pages / wall_s, 2) if pages else None,
        "chunks_per_s": round(chunks / wall_s, 2),
        "bare_embedding_s": round(bare_s, 1),
        "bare_chunks_per_s": round(len(embedded_texts) / bare_s, 2),
        "overhead_vs_bare": round(wall_s / bare_s - 1, 3),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"ingest_{args.corpus}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(markdown_row(result))


if __name__ == "__main__":
    main()
