"""Measuring the cascade (`sieve eval`) and fitting its calibration (`sieve calibrate`).

Both run in-process against the same `AskService` that serves `POST /v1/ask` (the CLI
builds the app and enters its lifespan), so nothing needs to be running; with the embedded
Qdrant engine, the data folder must then not be in use by a running `sieve serve`.

`ensure_corpus` ingests an evaluation corpus once through the REST API (an httpx client on
the in-process app): the collection is named after the corpus's content hash, so a
collection of that name holds exactly these files, and only the files it lacks are uploaded.

`evaluate` asks every question in each mode (`cascade`, `small_only`, `large_only`), scores
it with the domain's metric (`retrieval.metrics`) and writes `results.jsonl`,
`summary.json`, `summary.md` and plots (accuracy by mode and domain; the small model's
risk-coverage curve with the cascade and the large model beside it; and, with both single-tier
modes run, the escalation trade-off: `escalation_curve` replays the cascade at every
confidence threshold, so one run shows what each escalation share would cost and buy).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.errors import ServiceError, ValidationFailedError
from retrieval.ask import AskService
from retrieval.cascade import MODES
from retrieval.confidence import (
    Calibrator,
    StoredCalibration,
    calibration_metrics,
    cross_validated,
    save_calibration,
)
from retrieval.metrics import METRIC_NAMES, score_answer
from retrieval.traces import load_trace

log = logging.getLogger(__name__)

# The module that answers each evaluation set's domain.
DOMAIN_MODULES = {"finance": "finance", "biomedical": "biomedical", "legal": "legal", "technical_manuals": "manuals"}
UPLOAD_BATCH = 200
# Escalation shares at which summary.md reads the replayed cascade's accuracy.
TRADEOFF_POINTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0)
Progress = Callable[[str], None]


def load_questions(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Questions from a JSONL file (`id`, `question`, `answers`, `answerable`, `domain`), the
    first `limit` of them (the dev sets are shuffled already)."""
    items = []
    # Not `splitlines`: questions may hold U+2028 and the like, which it splits on.
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValidationFailedError(
                f"{path} line {number}: not JSON", details=[f"line {number}: {e.msg}"]
            ) from e
        if not isinstance(item, dict) or not item.get("question"):
            raise ValidationFailedError(
                f"{path} line {number}: not a question", details=[f"line {number}: needs 'question'"]
            )
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def module_for(items: Sequence[dict[str, Any]]) -> str:
    """The module of the questions' domain (the most common one), else `generic`."""
    domains = [i.get("domain") for i in items if i.get("domain")]
    return DOMAIN_MODULES.get(max(set(domains), key=domains.count), "generic") if domains else "generic"


# ---- ingesting the corpus once ----


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))


def corpus_collection_name(corpus: Path, files: Sequence[Path]) -> str:
    """`eval-<set>-<hash>`: the hash covers every file's name and content."""
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.relative_to(corpus)}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    label = (corpus.parent.name if corpus.name == "corpus" else corpus.name) or "corpus"
    label = "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in label)[:40]
    return f"eval-{label}-{digest.hexdigest()[:10]}"


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        request = response.request
        raise RuntimeError(f"{request.method} {request.url.path}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


async def ensure_corpus(
    http: httpx.AsyncClient, corpus: Path, *, domain: str, collection: str | None = None, progress: Progress = log.info
) -> str:
    """The collection holding `corpus`, created and ingested if needed; returns its name.
    Files it already holds with the same content are not uploaded again."""
    files = corpus_files(corpus)
    if not files:
        raise ValidationFailedError(f"{corpus} holds no files", details=[f"corpus: no files under {corpus}"])
    name = collection or corpus_collection_name(corpus, files)
    existing = {c["name"] for c in _json(await http.get("/v1/collections"))}
    if name not in existing:
        _json(await http.post("/v1/collections", json={"name": name, "domain": domain}))
        progress(f"created collection {name} ({domain})")
    held: dict[str, str] = {}
    while True:
        page = _json(await http.get(f"/v1/collections/{name}/documents", params={"limit": 1000, "offset": len(held)}))
        held.update({d["filename"]: d["content_hash"] for d in page})
        if len(page) < 1000:
            break
    missing = [
        p for p in files if held.get(str(p.relative_to(corpus))) != hashlib.sha256(p.read_bytes()).hexdigest()
    ]
    progress(f"collection {name}: {len(files) - len(missing)} of {len(files)} files already ingested")
    for start in range(0, len(missing), UPLOAD_BATCH):
        group = missing[start : start + UPLOAD_BATCH]
        upload = [("files", (str(p.relative_to(corpus)), p.read_bytes())) for p in group]
        job = _json(await http.post(f"/v1/collections/{name}/documents", files=upload))
        while (state := _json(await http.get(f"/v1/jobs/{job['job_id']}")))["state"] not in ("done", "failed"):
            await asyncio.sleep(1.0)
        progress(f"job {job['job_id']}: {state['state']}, {state['files_done']}/{state['files_total']} files")
        for error in state.get("errors") or []:
            progress(f"  failed: {error}")
    return name


# ---- asking ----


@dataclass
class QuestionResult:
    id: str
    mode: str
    domain: str
    answerable: bool
    question: str
    gold: list[str]
    answer: str
    decision: str
    confidence: float
    model: str
    degraded: bool
    score: float
    correct: bool
    latency_ms: float
    cost: float
    module: str | None = None
    trace_id: str | None = None
    error: str | None = None
    features: dict[str, float] = field(default_factory=dict)
    large_called: bool = False  # the large tier was asked, whatever it answered


async def ask_one(
    service: AskService, *, tenant: str, collection: str, module: str | None, item: dict[str, Any], mode: str
) -> QuestionResult:
    """Ask one question in one mode and score it; a failed request is a wrong answer with its error."""
    base = dict(
        id=str(item.get("id", "")), mode=mode, domain=item.get("domain", ""),
        answerable=bool(item.get("answerable", True)), question=item["question"], gold=list(item.get("answers") or []),
    )
    started = time.perf_counter()
    try:
        result = await service.ask(
            tenant=tenant, collection=collection, question=item["question"], module=module, mode=mode
        )
    except ServiceError as e:
        return QuestionResult(
            **base, answer="", decision="error", confidence=0.0, model="", degraded=False, score=0.0, correct=False,
            latency_ms=(time.perf_counter() - started) * 1000, cost=0.0, error=f"{e.code}: {e.message}",
        )
    latency = (time.perf_counter() - started) * 1000
    trace = await load_trace(service.resources.db, tenant=tenant, trace_id=result.trace_id)
    score = score_answer(item, result.answer, result.decision)
    return QuestionResult(
        **base, answer=result.answer, decision=result.decision, confidence=result.confidence, model=result.model,
        degraded=result.degraded, score=score.value, correct=score.correct, latency_ms=latency,
        cost=(trace.get("cost") or {}).get("total", 0.0), module=result.route.module if result.route else None,
        trace_id=result.trace_id, features=(trace.get("confidence") or {}).get("features", {}),
        large_called=any(call.get("tier") == "large" for call in trace.get("models") or []),
    )


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def summarize(results: Iterable[QuestionResult]) -> dict[str, Any]:
    """Per mode: accuracy, escalation rate (the share of answerable questions the large tier
    was asked, whether it answered or abstained), abstention recall and precision (on
    unanswerable ones), false abstention rate, latency p50/p95/mean, cost."""
    by_mode: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_mode[r.mode].append(r)
    summary: dict[str, Any] = {}
    for mode, rows in by_mode.items():
        answerable = [r for r in rows if r.answerable]
        unanswerable = [r for r in rows if not r.answerable]
        abstained = [r for r in rows if r.decision == "abstained"]
        latencies = [r.latency_ms for r in rows]
        domains: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            domains[r.domain].append(r.score)
        summary[mode] = {
            "n_questions": len(rows),
            "accuracy": sum(r.score for r in rows) / len(rows),
            "accuracy_answerable": _share(sum(r.score for r in answerable), len(answerable)),
            "escalation_rate": _share(sum(r.large_called for r in answerable), len(answerable)),
            "degraded_rate": _share(sum(r.degraded for r in rows), len(rows)),
            "abstention_recall": _share(sum(r.decision == "abstained" for r in unanswerable), len(unanswerable)),
            "abstention_precision": _share(sum(not r.answerable for r in abstained), len(abstained)),
            "false_abstention_rate": _share(sum(r.decision == "abstained" for r in answerable), len(answerable)),
            "latency_p50_ms": _percentile(latencies, 50),
            "latency_p95_ms": _percentile(latencies, 95),
            "latency_mean_ms": sum(latencies) / len(latencies),
            "cost": sum(r.cost for r in rows),
            "errors": sum(r.error is not None for r in rows),
            "accuracy_by_domain": {d: sum(v) / len(v) for d, v in sorted(domains.items())},
        }
    return summary


def risk_coverage(rows: Sequence[QuestionResult]) -> list[tuple[float, float]]:
    """(coverage, accuracy) when keeping the k most confident answers, k = 1..n."""
    ordered = sorted(rows, key=lambda r: -r.confidence)
    points, total = [], 0.0
    for k, r in enumerate(ordered, 1):
        total += r.score
        points.append((k / len(ordered), total / k))
    return points


def escalation_curve(
    results: Sequence[QuestionResult], abstain_below: Mapping[str | None, float]
) -> list[tuple[float, float]]:
    """The cascade replayed at every confidence threshold from the same questions'
    `small_only` and `large_only` answers: (share of answerable questions escalated,
    accuracy), from escalating nothing to escalating every answer the small model gave.

    As in `retrieval.cascade`: a context below its module's `abstain_below` sufficiency
    abstains without a model, a small-model "no answer" is final, and the least confident of
    the other answers go to the large tier first. What an `escalation_target` buys, read off
    one evaluation."""
    small = {r.id: r for r in results if r.mode == "small_only"}
    large = {r.id: r for r in results if r.mode == "large_only"}
    ids = [i for i in small if i in large]
    if not ids:
        return []
    n_answerable = sum(small[i].answerable for i in ids)
    fixed, movable = 0.0, []
    for i in ids:
        s = small[i]
        if s.features.get("sufficiency", 1.0) < abstain_below.get(s.module, 0.0):
            fixed += 0.0 if s.answerable else 1.0  # abstained: right only when the answer is not there
        elif s.decision == "abstained":
            fixed += s.score
        else:
            movable.append(s)
    movable.sort(key=lambda r: r.confidence)
    total = fixed + sum(r.score for r in movable)
    escalated = 0
    points = [(0.0, total / len(ids))]
    for s in movable:
        total += large[s.id].score - s.score
        escalated += s.answerable
        points.append((_share(escalated, n_answerable) or 0.0, total / len(ids)))
    return points


def accuracy_at(curve: Sequence[tuple[float, float]], escalation: float) -> float | None:
    """The replayed cascade's accuracy at the last threshold that escalates at most `escalation`
    of the answerable questions (what an `escalation_target` of that share would give)."""
    within = [acc for esc, acc in curve if esc <= escalation + 1e-9]
    return within[-1] if within else None


def escalation_for(curve: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """The least escalation at which the replayed cascade reaches `accuracy` (None: never)."""
    reached = [escalation for escalation, acc in curve if acc >= accuracy - 1e-9]
    return min(reached) if reached else None


def targets(summary: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (what, measured, met), met None when a mode is missing."""
    c, large = summary.get("cascade"), summary.get("large_only")
    rows: list[tuple[str, str, bool | None]] = []

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    if c and large:
        rows.append(("cascade accuracy >= 95% of large-only", f"{fmt(c['accuracy'])} vs {fmt(large['accuracy'])}",
                     c["accuracy"] >= 0.95 * large["accuracy"]))
        rows.append(("cascade mean latency <= 1/2 of large-only",
                     f"{c['latency_mean_ms']:.0f} ms vs {large['latency_mean_ms']:.0f} ms",
                     c["latency_mean_ms"] <= 0.5 * large["latency_mean_ms"]))
    if c:
        esc, rec, fa = c["escalation_rate"], c["abstention_recall"], c["false_abstention_rate"]
        rows.append(("escalated answerable questions <= 40%", fmt(esc), None if esc is None else esc <= 0.4))
        rows.append(("abstention recall >= 0.8", fmt(rec), None if rec is None else rec >= 0.8))
        rows.append(("false abstentions <= 10%", fmt(fa), None if fa is None else fa <= 0.1))
    return rows


def summary_markdown(
    summary: dict[str, Any], *, questions: Path, collection: str, domains: Sequence[str],
    curve: Sequence[tuple[float, float]] = (),
) -> str:
    keys = ["n_questions", "accuracy", "accuracy_answerable", "escalation_rate", "degraded_rate", "abstention_recall",
            "abstention_precision", "false_abstention_rate", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms",
            "cost", "errors"]
    modes = [m for m in MODES if m in summary]

    def cell(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = [f"# Evaluation: {questions.name}", "", f"Collection `{collection}`; metrics: "
             + "; ".join(f"{d}: {METRIC_NAMES.get(d, 'token F1')}" for d in domains), "",
             "| metric | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    lines += [f"| {k} | " + " | ".join(cell(summary[m][k]) for m in modes) + " |" for k in keys]
    for d in sorted({d for m in modes for d in summary[m]["accuracy_by_domain"]}):
        row = " | ".join(cell(summary[m]["accuracy_by_domain"].get(d)) for m in modes)
        lines.append(f"| accuracy ({d}) | {row} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {'n/a' if met is None else ('yes' if met else 'no')} |"
              for what, measured, met in targets(summary)]
    if curve:
        lines += ["", "## Escalation trade-off", "",
                  "The cascade replayed from the small-only and large-only answers at every confidence threshold "
                  "(`escalation_curve` in summary.json, `escalation_tradeoff.png`): its accuracy when up to this "
                  "share of answerable questions escalates, the least confident answers first, as an "
                  "`escalation_target` would send them.", "",
                  "| escalated, up to | " + " | ".join(f"{x:.0%}" for x in TRADEOFF_POINTS) + " |",
                  "|---|" + "---|" * len(TRADEOFF_POINTS),
                  "| accuracy | " + " | ".join(cell(accuracy_at(curve, x)) for x in TRADEOFF_POINTS) + " |"]
        if "large_only" in summary:
            goal = 0.95 * summary["large_only"]["accuracy"]
            lines += ["", f"Least escalation reaching 95% of large-only accuracy ({goal:.3f}): "
                      f"{cell(escalation_for(curve, goal))}."]
    plots = ["accuracy_by_mode.png", "risk_coverage.png"] + (["escalation_tradeoff.png"] if curve else [])
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots) + ". Per question: `results.jsonl`.", ""]
    return "\n".join(lines)


def plot(
    results: Sequence[QuestionResult], summary: dict[str, Any], out: Path, *, curve: Sequence[tuple[float, float]] = ()
) -> list[Path]:
    """Accuracy by mode (and domain), the small model's risk-coverage curve, and (given the
    replayed cascade's `curve`) accuracy against escalation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    modes = [m for m in MODES if m in summary]
    domains = sorted({d for m in modes for d in summary[m]["accuracy_by_domain"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(domains), 1)
    for i, d in enumerate(domains):
        xs = [j + i * width for j in range(len(modes))]
        ax.bar(xs, [summary[m]["accuracy_by_domain"].get(d, 0.0) for m in modes], width, label=d)
    ax.set_xticks([j + width * (len(domains) - 1) / 2 for j in range(len(modes))], modes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by mode")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "accuracy_by_mode.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    small = [r for r in results if r.mode == "small_only"]

    def risk(ax) -> None:
        if small:
            xs, ys = zip(*risk_coverage(small))
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label="small model, most confident first")

    paths.append(_curve_figure(
        plt, out / "risk_coverage.png", summary, risk, title="Risk-coverage", legend_loc="lower left",
        xlabel="coverage (share of questions kept)", ylabel="accuracy of kept questions",
        cascade_x=lambda c: 1 - c["escalation_rate"], cascade_label="cascade (x: share kept by the small model)",
    ))
    if curve:
        paths.append(_curve_figure(
            plt, out / "escalation_tradeoff.png", summary,
            lambda ax: ax.step(*zip(*curve), where="post", label="cascade, replayed at every threshold"),
            title="Escalation trade-off", legend_loc="lower right",
            xlabel="share of answerable questions escalated", ylabel="accuracy",
            cascade_x=lambda c: c["escalation_rate"], cascade_label="cascade as run",
        ))
    return paths


def _curve_figure(
    plt: Any, path: Path, summary: dict[str, Any], draw: Callable[[Any], object], *, title: str, legend_loc: str,
    xlabel: str, ylabel: str, cascade_x: Callable[[dict[str, Any]], float], cascade_label: str,
) -> Path:
    """A 0-1 by 0-1 plot of `draw`'s curve, with the large model's accuracy and the cascade's point."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    if "large_only" in summary:
        ax.axhline(summary["large_only"]["accuracy"], color="gray", linestyle="--", label="large model only")
    if "cascade" in summary and summary["cascade"]["escalation_rate"] is not None:
        c = summary["cascade"]
        ax.scatter([cascade_x(c)], [c["accuracy"]], color="red", zorder=3, label=cascade_label)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


async def evaluate(
    service: AskService, *, tenant: str, collection: str, module: str | None, items: Sequence[dict[str, Any]],
    modes: Sequence[str], out: Path, questions_path: Path, progress: Progress = log.info,
) -> dict[str, Any]:
    """Ask every item in every mode, write the results, summary and plots under `out`."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValidationFailedError(
            f"unknown modes {unknown}", details=[f"modes: {m} is not one of {list(MODES)}" for m in unknown]
        )
    out.mkdir(parents=True, exist_ok=True)
    results: list[QuestionResult] = []
    with (out / "results.jsonl").open("w") as sink:
        for n, item in enumerate(items, 1):
            for mode in modes:
                r = await ask_one(service, tenant=tenant, collection=collection, module=module, item=item, mode=mode)
                results.append(r)
                sink.write(json.dumps(asdict(r)) + "\n")
                sink.flush()
                progress(f"[{n}/{len(items)}] {mode:10} {r.decision:9} score {r.score:.2f} "
                         f"conf {r.confidence:.2f} {r.latency_ms:6.0f} ms  {r.id}")
    summary = summarize(results)
    floors = {}
    for key in {r.module for r in results if r.module}:
        floors[key] = (await service.module_for(tenant, key))[0].config.abstain_below
    curve = escalation_curve(results, floors)
    domains = sorted({r.domain for r in results})
    (out / "summary.json").write_text(json.dumps(
        {"questions": str(questions_path), "collection": collection, "modes": summary,
         "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(summary)],
         "escalation_curve": [{"escalation_rate": e, "accuracy": a} for e, a in curve]}, indent=2))
    markdown = summary_markdown(summary, questions=questions_path, collection=collection, domains=domains, curve=curve)
    (out / "summary.md").write_text(markdown)
    plot(results, summary, out, curve=curve)
    return summary


# ---- calibrating ----


@dataclass
class CalibrationReport:
    module: str
    stored: StoredCalibration | None
    metrics: dict[str, Any]
    skipped: str | None = None


async def calibrate(
    service: AskService, *, tenant: str, collection: str, module: str | None, items: Sequence[dict[str, Any]],
    l2: float = 1.0, progress: Progress = log.info,
) -> list[CalibrationReport]:
    """Ask the small model every item (as `/v1/ask` does, small tier forced), label each
    answer with the domain's metric, fit one calibration per module that answered, store it."""
    rows: dict[str, list[tuple[dict[str, float], bool]]] = defaultdict(list)
    for n, item in enumerate(items, 1):
        r = await ask_one(service, tenant=tenant, collection=collection, module=module, item=item, mode="small_only")
        if r.error or not r.module:
            progress(f"[{n}/{len(items)}] skipped {r.id}: {r.error}")
            continue
        rows[r.module].append((r.features, r.correct))
        progress(f"[{n}/{len(items)}] {r.decision:9} correct={r.correct!s:5} conf {r.confidence:.2f}  {r.id}")
    reports = []
    for key, labelled in sorted(rows.items()):
        features, labels = [f for f, _ in labelled], [y for _, y in labelled]
        if len(set(labels)) < 2:
            reports.append(CalibrationReport(key, None, {"n": len(labels)},
                                             skipped="needs both right and wrong answers; ask more questions"))
            continue
        calibrator = Calibrator.fit(features, labels, l2=l2)
        metrics: dict[str, Any] = {"in_sample": calibration_metrics([calibrator.predict(f) for f in features], labels)}
        if len(labels) >= 10:
            metrics["cross_validated"] = calibration_metrics(cross_validated(features, labels, l2=l2), labels)
        headline = metrics.get("cross_validated", metrics["in_sample"])
        metrics.update(n=len(labels), brier=headline["brier"], ece=headline["ece"])
        fitted, _ = await service.module_for(tenant, key)
        stored = await save_calibration(
            service.resources.db, tenant=tenant, module=key, calibrator=calibrator, metrics=metrics,
            config=fitted.config,
        )
        reports.append(CalibrationReport(key, stored, metrics))
    return reports
