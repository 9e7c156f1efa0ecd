"""Answer metrics per domain, on gold answers taken from the dev sets."""

from __future__ import annotations

import pytest

from retrieval.metrics import (
    cuad_score,
    f1_score,
    financebench_score,
    label,
    normalize_answer,
    pubmedqa_score,
    score_answer,
    token_f1,
)
from retrieval.prompting import NO_ANSWER

pytestmark = pytest.mark.unit


def test_normalization_and_token_f1() -> None:
    assert normalize_answer("The  Agreement [1], governed by Kansas law.") == "agreement governed by kansas law"
    assert token_f1("tap Add city", "To add a city to the list, tap Add city.") == pytest.approx(2 * (3 / 8) / (1 + 3 / 8))
    assert token_f1("", "anything") == 0.0 and token_f1("same words", "same words") == 1.0


def test_labels_are_the_first_one_said() -> None:
    assert label("Yes, the study shows no difference [1].") == "yes"
    assert label("No. Maybe later.") == "no"
    assert label("Notably, nothing is known.") is None
    assert label("Maybe, but yes", ("yes", "no")) == "yes"


def test_pubmedqa_yes_no_maybe() -> None:
    # pubmedqa_10135926: "Is oral endotracheal intubation efficacy impaired in the helicopter environment?" -> yes
    assert pubmedqa_score("Yes, intubation took about twice as long in flight [1].", ["yes"]).correct
    assert not pubmedqa_score("No, it was not impaired.", ["yes"]).correct
    assert pubmedqa_score("The evidence is mixed, so maybe.", ["maybe"]).value == 1.0


def test_cuad_yes_no_extractive_and_dates() -> None:
    # Audit rights in the 2TheMart / i-Escrow co-branding agreement: "Yes"
    assert cuad_score("Yes. 2TheMart may inspect and audit such records [1].", ["Yes"]).correct
    assert not cuad_score("No, there is no audit clause.", ["Yes"]).correct
    # Governing law of the Tom Watson / Adams Golf endorsement agreement
    golds = ["Kansas", "This Agreement shall be governed and construed according to the laws of the State of Kansas."]
    assert cuad_score("The agreement is governed by the laws of the State of Kansas [1].", golds).correct
    assert not cuad_score("It is governed by Texas law.", golds).correct
    # Agreement date of the M. D. Anderson / Adaptimmune agreement
    assert cuad_score("It was signed on September 23, 2016.", ["9/23/2016", "23rd day of  September, 2016"]).correct
    assert not cuad_score("It was signed on September 24, 2016.", ["9/23/2016"]).correct
    assert cuad_score("Notice must be given 120 days before renewal.", ["120 days"]).correct


def test_financebench_numbers_with_scale_and_tolerance() -> None:
    # "How much does Pfizer expect to pay to spin off Upjohn in the future in USD million?" -> 77.78
    assert financebench_score("Pfizer expects to pay about $77.8 million [1].", ["77.78"]).correct
    assert financebench_score("About $0.0778 billion.", ["77.78"]).correct
    assert not financebench_score("Pfizer expects to pay $91 million.", ["77.78"]).correct
    # "$1,577 million" = "1.577 billion"
    assert financebench_score("Capital expenditure was 1.577 billion dollars.", ["$1,577 million"]).correct
    # Years in the gold are not the answer: the first amount is.
    gold = ["The effective tax rate for American Express has changed/dropped from 24.6% in FY 2021 to 21.6% in FY 2022."]
    assert financebench_score("It fell from 24.6% in 2021 to 21.6% in 2022.", gold).correct
    assert not financebench_score("It was 2021 and 2022.", gold).correct
    # Negative amounts keep their sign.
    gold = ["Corporate. Its net revenue was -$473 million."]
    assert financebench_score("Corporate had the lowest, at -$473 million.", gold).correct


def test_financebench_yes_no_and_free_text() -> None:
    gold = ["Yes. Corning had a positive working capital amount of $831 million by FY 2022 close."]
    assert financebench_score("Yes, working capital was positive at $831 million.", gold).correct
    assert not financebench_score("No, it was negative.", gold).correct
    assert financebench_score("The segment was Data Center.", ["Data Center"]).correct
    assert not financebench_score("Gaming grew the most.", ["Data Center"]).correct


def test_manuals_token_f1() -> None:
    gold = ["From Clock, tap World clock. Tap More options > Time zone converter."]
    good = f1_score("From Clock, tap World clock, then More options > Time zone converter.", gold)
    assert good.correct and 0.7 < good.value < 1.0
    assert not f1_score("Restart the phone.", gold).correct


def test_abstention_is_right_only_on_unanswerable_questions() -> None:
    unanswerable = {"answerable": False, "answers": [], "domain": "finance"}
    assert score_answer(unanswerable, NO_ANSWER, "abstained").correct
    assert not score_answer(unanswerable, "$5 million", "answered").correct
    answerable = {"answerable": True, "answers": ["yes"], "domain": "biomedical"}
    assert not score_answer(answerable, NO_ANSWER, "abstained").correct
    assert score_answer(answerable, "Yes [1].", "escalated").correct
