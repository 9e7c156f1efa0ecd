"""Ingestion throughput: the whole pipeline against the bare embedding model.

Runs Sieve in-process as `make run` does (API, in-process arq worker on the bundled Valkey,
embedded Qdrant engine), uploads a corpus over REST into a collection of the corpus's domain module (which enriches
the chunks at ingestion) and waits for the job. Every text the
pipeline embeds is recorded, then embedded again by the bare sentence-transformers model
with the same batch size: the ratio is the pipeline's overhead over the hardware limit.
Both are reported in wall time and in this process's CPU time (all its threads: the API, the
in-process worker, parsing and embedding); on a machine busy with other work, the CPU-time
ratio is the one to trust.

With `--ask N`, the embedded small model is started too, and the first N answerable dev
questions of the corpus's evaluation set are asked over `POST /v1/ask` once ingestion is
done; their traces give the query latency per stage at that collection size (p50 / p95).

    python -m bench.ingest_bench --corpus financebench-pdfs --ask 20
    python -m bench.ingest_bench --corpus cuad --ask 20
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from bench.common import EVAL_DIR, RESULTS_DIR, markdown_row, valkey
from bench.retrieval_eval import SETS

CORPORA = {
    "financebench-pdfs": (EVAL_DIR / "financebench" / "pdfs", "*.pdf"),
    "cuad": (EVAL_DIR / "cuad" / "corpus", "*.txt"),
    "pubmedqa": (EVAL_DIR / "pubmedqa" / "corpus", "*.txt"),
    "emanual": (EVAL_DIR / "emanual" / "corpus", "*.txt"),
}
# The evaluation set whose dev questions `--ask` uses, per corpus.
QUESTION_SETS = {"financebench-pdfs": "financebench", "cuad": "cuad", "pubmedqa": "pubmedqa", "emanual": "emanual"}
# Trace stages reported by `--ask`, in the order a question goes through them.
QUERY_STAGES = ("embed_question", "analyze", "fetch", "normalize", "filter", "generate_small", "generate_large")


def cpu_s() -> float:
    """CPU seconds used by this process so far, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(int(share * len(ordered)), len(ordered) - 1)], 1)


def ask_questions(client, corpus: str, files: list[Path], count: int) -> dict:
    """Ask `count` answerable dev questions whose gold documents were ingested; per-stage latency."""
    from retrieval.evaluation import load_questions

    ingested = {p.stem for p in files}
    rows = load_questions(EVAL_DIR / QUESTION_SETS[corpus] / "dev.jsonl")
    questions = [q for q in rows if q["answerable"] and set(q["doc_ids"]) <= ingested][:count]
    stages: dict[str, list[float]] = {stage: [] for stage in (*QUERY_STAGES, "total")}
    cited_gold = 0
    for q in questions:
        start = time.perf_counter()
        answer = client.post("/v1/ask", json={"collection": "bench", "question": q["question"]}).json()
        stages["total"].append((time.perf_counter() - start) * 1000)
        trace = client.get(f"/v1/traces/{answer['trace_id']}").json()
        for stage in QUERY_STAGES:
            if stage in trace["latency_ms"]:
                stages[stage].append(trace["latency_ms"][stage])
        cited_gold += any(Path(c["filename"]).stem in q["doc_ids"] for c in answer["citations"])
    return {
        "questions": len(questions),
        "answers_citing_a_gold_document": cited_gold,
        "latency_ms": {s: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95)} for s, v in stages.items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), required=True)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N files.")
    parser.add_argument("--batch", type=int, default=100, help="Files per upload request.")
    parser.add_argument("--ask", type=int, default=0, help="Then ask N dev questions with the small model.")
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
        with TestClient(create_app(settings, models=args.ask > 0)) as client:
            domain = SETS[QUESTION_SETS[args.corpus]]
            client.post("/v1/collections", json={"name": "bench", "domain": domain})
            start, start_cpu = time.perf_counter(), cpu_s()
            jobs = []
            for i in range(0, len(files), args.batch):
                group = files[i : i + args.batch]
                response = client.post(
                    "/v1/collections/bench/documents", files=[("files", (p.name, p.read_bytes())) for p in group]
                )
                jobs.append(response.json()["job_id"])
            results = [wait_for_job(client, job_id, timeout_s=6 * 3600) for job_id in jobs]
            wall_s, pipeline_cpu_s = time.perf_counter() - start, cpu_s() - start_cpu
            docs = client.get("/v1/collections/bench/documents", params={"limit": 100_000}).json()
            embedder = client.app.state.services.resources.embedder
            queries = ask_questions(client, args.corpus, files, args.ask) if args.ask else None
    Embedder.embed = original_embed  # type: ignore[method-assign]

    pages = sum(d["pages"] or 0 for d in docs)
    chunks = sum(d["chunks"] for d in docs)
    failed = sum(len(r["errors"]) for r in results)
    # The hardware limit: the same texts through the bare model, same batch size.
    start, start_cpu = time.perf_counter(), cpu_s()
    embedder._model.encode(embedded_texts, batch_size=embedder.batch_size, normalize_embeddings=True)
    bare_s, bare_cpu_s = time.perf_counter() - start, cpu_s() - start_cpu

    result = {
        "corpus": args.corpus,
        "domain": domain,
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
        "pipeline_cpu_s": round(pipeline_cpu_s, 1),
        "bare_embedding_cpu_s": round(bare_cpu_s, 1),
        "cpu_overhead_vs_bare": round(pipeline_cpu_s / bare_cpu_s - 1, 3),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    if queries:
        result["query"] = queries
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"ingest_{args.corpus}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(markdown_row({k: v for k, v in result.items() if k != "query"}))


if __name__ == "__main__":
    main()
