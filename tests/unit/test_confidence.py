"""Confidence features, the logistic calibrator, and stored calibrations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core import db
from core.llm import ChatResult, TokenLogprob
from modules.base import Candidate, ModuleConfig
from retrieval.confidence import (
    DEFAULT_CALIBRATOR,
    Calibrator,
    StoredCalibration,
    answer_features,
    calibration_metrics,
    content_words,
    context_features,
    cross_validated,
    entities,
    load_calibration,
    numbers,
    save_calibration,
)
from retrieval.prompting import NO_ANSWER

pytestmark = pytest.mark.unit


def chunk(text: str, *, doc: str = "doc_a", similarity: float = 0.6, filename: str = "a.txt", meta=None) -> Candidate:
    return Candidate(
        id=f"{doc}-{hash(text)}", doc_id=doc, filename=filename, page=1, text=text, payload={"meta": meta or {}},
        score=similarity, similarity=similarity, rank=0,
    )


def chat(text: str, tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> ChatResult:
    return ChatResult(
        text=text, tokens=[TokenLogprob(t, lp, top) for t, lp, top in tokens], prompt_tokens=100,
        completion_tokens=len(tokens), latency_ms=5.0, model="m", finish_reason="stop",
    )


CONTEXT = [
    chunk("3M capital expenditures were $1,577 million in 2018, up from 2017.", similarity=0.71,
          filename="3M_2018_10K.txt", meta={"company": "3M"}),
    chunk("Purchases of property, plant and equipment (PP&E) in fiscal 2018.", similarity=0.52),
    chunk("Unrelated: dividends paid to shareholders.", doc="doc_b", similarity=0.31),
]


def test_question_parts_are_found_words_names_and_numbers() -> None:
    assert entities("What was 3M's FY2018 capital expenditure? Does Best Buy report it?") == {"3m", "best", "buy"}
    assert numbers("$1,577 million in FY2018 and 3.5%") == {"1577", "2018", "3.5"}
    # A two-digit fiscal year names the year a filing writes in full (a FinanceBench false abstention).
    assert numbers("AMD's quick ratio for FY22, and FY '21?") == {"2022", "2021"}
    assert numbers("revenue in 2Q23") == {"2023", "2"}
    assert content_words("What were the capital expenditures of the company?") == {"capital", "expenditure"}


def test_names_are_not_numerals_dashes_or_title_capitals() -> None:
    # Each of these once made the sufficiency check abstain on an answerable PubMedQA question.
    assert entities("Long-term significance of postictal psychotic episodes II. Are they predictive?") == set()
    assert entities("Lloyd-Davies position with Trendelenburg--a disaster waiting to happen?") == {"trendelenburg"}
    title = "Assessing Patient Reported Outcomes via Phone Interviews Versus Patient Self-Survey in a Clinic"
    assert entities(title) == set()
    # A title still names what is written in capitals; a sentence keeps its capitalized names.
    assert entities("What Was AMCOR's Adjusted Non GAAP EBITDA for FY 2023") == {"amcor", "gaap", "ebitda", "fy"}
    assert entities("Is the Capital Expenditure of Costco higher than Walmart's?") >= {"costco", "walmart"}


def test_a_demonym_is_found_by_its_country() -> None:
    france = [chunk("Lay people and health professionals in France were surveyed.", doc="d", similarity=0.6)]
    assert context_features("Do French lay people find it acceptable?", france)["entity_coverage"] == 1.0
    japan = [chunk("A cohort of Japan's hospitals.", doc="d", similarity=0.6)]
    assert context_features("Do Japanese hospitals differ?", japan)["entity_coverage"] == 1.0
    # A stem must start a word: "hospital" does not hold "Italian".
    assert context_features("Do Italian hospitals differ?", japan)["entity_coverage"] == 0.0
    assert context_features("Do Swedish hospitals differ?", japan)["entity_coverage"] == 0.0


def test_context_features_see_what_the_context_holds() -> None:
    held = context_features("What was 3M's capital expenditure in FY2018?", CONTEXT)
    assert held["top_similarity"] == pytest.approx(0.71)
    assert held["mean_similarity"] == pytest.approx((0.71 + 0.52 + 0.31) / 3)
    assert held["doc_agreement"] == pytest.approx(2 / 3)
    assert held["entity_coverage"] == 1.0 and held["number_coverage"] == 1.0
    assert held["sufficiency"] > 0.5

    missing = context_features("What was Best Buy's capital expenditure in FY2019?", CONTEXT)
    assert missing["entity_coverage"] == 0.0 and missing["number_coverage"] == 0.0
    assert missing["sufficiency"] == 0.0
    assert context_features("anything?", [])["sufficiency"] == 0.0


def test_answer_features_read_token_probabilities_and_grounding() -> None:
    confident = chat(
        "Capital expenditures were $1,577 million [1].",
        [("Capital", -0.05, [("Capital", -0.05), ("The", -3.05)]), ("1,577", -0.2, [("1,577", -0.2), ("1,5", -2.2)])],
    )
    f = answer_features(confident, CONTEXT, CONTEXT[:1])
    assert f["mean_logprob"] == pytest.approx(-0.125) and f["min_logprob"] == pytest.approx(-0.2)
    assert f["mean_margin"] == pytest.approx((3.0 + 2.0) / 2)
    assert f["mean_token_prob"] == pytest.approx(math.exp(-0.125))
    assert f["grounding"] == 1.0 and f["number_grounding"] == 1.0 and f["no_answer"] == 0.0

    invented = answer_features(chat("Revenue grew to $9,999 million in Paris.", [("R", -2.0, [])]), CONTEXT, CONTEXT[:1])
    assert invented["grounding"] < 0.5 and invented["number_grounding"] == 0.0
    assert answer_features(chat(NO_ANSWER, [("The", -0.1, [])]), CONTEXT, [])["no_answer"] == 1.0


def test_calibrator_fits_a_separable_set_and_is_monotone() -> None:
    rng = np.random.default_rng(0)
    good = [{"mean_token_prob": p, "grounding": g} for p, g in rng.uniform(0.7, 1.0, (30, 2))]
    bad = [{"mean_token_prob": p, "grounding": g} for p, g in rng.uniform(0.0, 0.4, (30, 2))]
    model = Calibrator.fit(good + bad, [1] * 30 + [0] * 30, features=["mean_token_prob", "grounding"], l2=0.1)
    assert all(model.predict(r) > 0.9 for r in good) and all(model.predict(r) < 0.1 for r in bad)
    ladder = [model.predict({"mean_token_prob": x, "grounding": 0.5}) for x in np.linspace(0, 1, 11)]
    assert ladder == sorted(ladder) and ladder[0] < ladder[-1]
    # The stored quantiles turn a target share of escalations into a threshold.
    assert model.threshold_for_share(0.5) == pytest.approx(np.median([model.predict(r) for r in good + bad]), abs=0.05)
    assert model.threshold_for_share(0.0) <= model.threshold_for_share(0.3) <= model.threshold_for_share(1.0)


def test_calibrator_round_trips_through_json() -> None:
    rows = [{"grounding": g, "sufficiency": s} for g, s in [(0.9, 0.8), (0.2, 0.9), (0.7, 0.1), (0.1, 0.2), (0.8, 0.9)]]
    model = Calibrator.fit(rows, [1, 0, 1, 0, 1], features=["grounding", "sufficiency"])
    again = Calibrator.from_json(json.loads(json.dumps(model.to_json())))
    assert again == model
    assert [again.predict(r) for r in rows] == [model.predict(r) for r in rows]
    with pytest.raises(ValueError):
        Calibrator.from_json({"kind": "isotonic"})


def test_default_calibrator_is_conservative() -> None:
    assert DEFAULT_CALIBRATOR.predict({"mean_token_prob": 1.0, "grounding": 0.0}) < 0.5
    assert DEFAULT_CALIBRATOR.predict({"mean_token_prob": 0.9, "grounding": 0.9}) > 0.6
    assert DEFAULT_CALIBRATOR.predict({"mean_token_prob": 0.3, "grounding": 0.3}) < 0.3


def test_metrics_and_cross_validation() -> None:
    perfect = calibration_metrics([1.0, 0.0, 1.0], [1, 0, 1])
    assert perfect["brier"] == pytest.approx(0.0, abs=1e-9) and perfect["ece"] == pytest.approx(0.0, abs=1e-5)
    hedged = calibration_metrics([0.5, 0.5], [1, 0])
    assert hedged["brier"] == pytest.approx(0.25) and hedged["ece"] == pytest.approx(0.0)
    overconfident = calibration_metrics([0.9] * 10, [1] * 5 + [0] * 5)
    assert overconfident["ece"] == pytest.approx(0.4)
    rows = [{"grounding": x} for x in np.linspace(0, 1, 20)]
    oof = cross_validated(rows, [x > 0.5 for x in np.linspace(0, 1, 20)])
    assert len(oof) == 20 and oof[0] < 0.5 < oof[-1]


async def test_calibrations_are_versioned_per_tenant_and_module(tmp_path) -> None:
    engine = db.create_engine_async(f"sqlite+aiosqlite:///{tmp_path / 'sieve.db'}")
    await db.create_schema(engine)
    try:
        assert await load_calibration(engine, tenant="t1", module="finance") is None
        first = await save_calibration(engine, tenant="t1", module="finance", calibrator=DEFAULT_CALIBRATOR,
                                       metrics={"brier": 0.2}, config=ModuleConfig())
        fitted = Calibrator.fit([{"grounding": 0.1}, {"grounding": 0.9}], [0, 1], features=["grounding"])
        second = await save_calibration(engine, tenant="t1", module="finance", calibrator=fitted, metrics={"brier": 0.1},
                                        config=ModuleConfig(adapter="finance-0123456789ab", max_chunks=3))
        assert (first.version, second.version) == (1, 2)
        latest = await load_calibration(engine, tenant="t1", module="finance")
        assert latest.version == 2 and latest.calibrator == fitted and latest.metrics["brier"] == 0.1
        # It holds for the small model with the adapter it was fitted with, not the base model or another.
        assert latest.applies_to("finance-0123456789ab")
        assert not latest.applies_to(None) and not latest.applies_to("finance-ba9876543210")
        assert first.applies_to(None) and not first.applies_to("finance-0123456789ab")
        # The other settings it was fitted with are compared, not those that only read the confidence.
        fitted_with = ModuleConfig(adapter="finance-0123456789ab", max_chunks=3)
        assert latest.settings_changed(fitted_with) == []
        assert latest.settings_changed(fitted_with.model_copy(update={"escalation_target": 0.3, "adapter": None})) == []
        assert latest.settings_changed(ModuleConfig(context_tokens=600)) == ["context_tokens", "max_chunks"]
        assert await load_calibration(engine, tenant="t2", module="finance") is None
        assert await load_calibration(engine, tenant="t1", module="legal") is None
    finally:
        await engine.dispose()


def test_a_calibration_stored_before_adapters_were_recorded_applies_to_any() -> None:
    stored = StoredCalibration(version=1, calibrator=DEFAULT_CALIBRATOR, metrics={"brier": 0.2})
    assert stored.applies_to(None) and stored.applies_to("legal-0123456789ab")
    assert stored.settings_changed(ModuleConfig(max_chunks=2)) == []
