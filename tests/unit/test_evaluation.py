"""`sieve eval`'s bookkeeping: questions, corpus naming, the summary, risk-coverage, plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import ValidationFailedError
from retrieval.evaluation import (
    QuestionResult,
    accuracy_at,
    corpus_collection_name,
    corpus_files,
    escalation_curve,
    escalation_for,
    load_questions,
    module_for,
    plot,
    risk_coverage,
    summarize,
    summary_markdown,
    targets,
)

pytestmark = pytest.mark.unit


def result(mode: str, decision: str, score: float, *, answerable: bool = True, latency: float = 100.0,
           confidence: float = 0.5, cost: float = 0.0, large: bool | None = None) -> QuestionResult:
    return QuestionResult(
        id="q", mode=mode, domain="finance", answerable=answerable, question="?", gold=[], answer="a",
        decision=decision, confidence=confidence, model="m", degraded=False, score=score, correct=score >= 0.5,
        latency_ms=latency, cost=cost, large_called=decision == "escalated" if large is None else large,
    )


def test_questions_load_with_a_limit_and_bad_lines_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "domain": "legal"}) for i in range(5)) + "\n\n")
    assert [q["question"] for q in load_questions(path, limit=2)] == ["q0", "q1"]
    assert module_for(load_questions(path)) == "legal" and module_for([{"question": "x"}]) == "generic"
    path.write_text('{"question": "ok"}\n{"answers": []}\n')
    with pytest.raises(ValidationFailedError):
        load_questions(path)


def test_collection_name_follows_the_content(tmp_path: Path) -> None:
    corpus = tmp_path / "pubmedqa" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("one")
    (corpus / ".hidden").write_text("skip")
    first = corpus_collection_name(corpus, corpus_files(corpus))
    assert first.startswith("eval-pubmedqa-") and corpus_files(corpus) == [corpus / "a.txt"]
    assert corpus_collection_name(corpus, corpus_files(corpus)) == first
    (corpus / "a.txt").write_text("changed")
    assert corpus_collection_name(corpus, corpus_files(corpus)) != first


def test_summary_counts_escalations_abstentions_and_latency() -> None:
    rows = [
        result("cascade", "answered", 1.0, latency=100),
        result("cascade", "escalated", 1.0, latency=300),
        result("cascade", "abstained", 0.0, latency=10, large=True),        # escalated, the large model abstained
        result("cascade", "abstained", 1.0, answerable=False, latency=10),  # rightly abstained
        result("cascade", "answered", 0.0, answerable=False, latency=100, cost=0.5),
        result("large_only", "escalated", 1.0, latency=1000, cost=2.0),
    ]
    s = summarize(rows)
    c = s["cascade"]
    assert c["n_questions"] == 5 and c["accuracy"] == pytest.approx(3 / 5)
    assert c["escalation_rate"] == pytest.approx(2 / 3)  # the large tier was asked, answer or not
    assert c["abstention_recall"] == pytest.approx(1 / 2) and c["abstention_precision"] == pytest.approx(1 / 2)
    assert c["false_abstention_rate"] == pytest.approx(1 / 3)
    assert c["latency_p50_ms"] == 100 and c["latency_p95_ms"] == pytest.approx(260)
    assert c["cost"] == 0.5 and s["large_only"]["cost"] == 2.0
    assert s["large_only"]["abstention_recall"] is None
    met = {what: ok for what, _, ok in targets(s)}
    assert met["cascade mean latency <= 1/2 of large-only"] is True
    assert met["cascade accuracy >= 95% of large-only"] is False
    assert met["abstention recall >= 0.8"] is False
    markdown = summary_markdown(s, questions=Path("dev.jsonl"), collection="c", domains=["finance"])
    assert "| accuracy | 0.600 | 1.000 |" in markdown


def test_risk_coverage_keeps_the_most_confident_first() -> None:
    rows = [result("small_only", "answered", s, confidence=c) for s, c in [(0.0, 0.1), (1.0, 0.9), (1.0, 0.6), (0.0, 0.3)]]
    assert risk_coverage(rows) == [(0.25, 1.0), (0.5, 1.0), (0.75, pytest.approx(2 / 3)), (1.0, 0.5)]


def _replay_rows() -> list[QuestionResult]:
    """Small-only and large-only answers to five questions (module `finance`)."""
    def pair(qid, small_decision, small_score, confidence, large_score, *, answerable=True, sufficiency=0.9):
        small = result("small_only", small_decision, small_score, confidence=confidence, answerable=answerable)
        large = result("large_only", "escalated", large_score, answerable=answerable)
        return [replace(r, id=qid, module="finance", features={"sufficiency": sufficiency}) for r in (small, large)]

    return [
        *pair("sure", "answered", 1.0, 0.9, 1.0),
        *pair("unsure-wrong", "answered", 0.0, 0.2, 1.0),
        *pair("unsure-right", "answered", 1.0, 0.5, 0.0),
        # Below the sufficiency floor: abstains without a model, right because there is no answer.
        *pair("not-there", "answered", 0.0, 0.1, 0.0, answerable=False, sufficiency=0.1),
        # The small model's "no answer" is final, never escalated.
        *pair("declined", "abstained", 0.0, 0.05, 1.0),
    ]


def test_escalation_curve_replays_the_cascade_least_confident_first() -> None:
    curve = escalation_curve(_replay_rows(), {"finance": 0.2})
    # 4 answerable questions; escalating "unsure-wrong" (0.2) fixes it, "unsure-right" (0.5) breaks it.
    assert curve == [(0.0, 0.6), (0.25, 0.8), (0.5, 0.6), (0.75, 0.6)]
    assert escalation_for(curve, 0.8) == 0.25 and escalation_for(curve, 0.9) is None
    assert accuracy_at(curve, 0.3) == 0.8 and accuracy_at(curve, 1.0) == 0.6
    # Without the floor the unanswerable question is answered by the small model, and wrong.
    assert escalation_curve(_replay_rows(), {})[0] == (0.0, 0.4)
    assert escalation_curve([r for r in _replay_rows() if r.mode == "small_only"], {}) == []


def test_plots_are_written(tmp_path: Path) -> None:
    rows = [result(m, "answered", 1.0, confidence=0.7) for m in ("cascade", "small_only", "large_only")]
    paths = plot(rows, summarize(rows), tmp_path)
    assert [p.name for p in paths] == ["accuracy_by_mode.png", "risk_coverage.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    rows = _replay_rows()
    paths = plot(rows, summarize(rows), tmp_path, curve=escalation_curve(rows, {"finance": 0.2}))
    assert paths[-1].name == "escalation_tradeoff.png" and paths[-1].read_bytes()[:4] == b"\x89PNG"
    markdown = summary_markdown(summarize(rows), questions=Path("q.jsonl"), collection="c", domains=["finance"],
                                curve=escalation_curve(rows, {"finance": 0.2}))
    assert "| accuracy | 0.600 | 0.600 | 0.600 | 0.800 | 0.800 | 0.600 | 0.600 |" in markdown
    assert "Least escalation reaching 95% of large-only accuracy (0.570): 0.000." in markdown
