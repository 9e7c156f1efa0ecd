"""Answer metrics per evaluation domain: is a generated answer right, given the gold answers?

Each metric returns a `Score`: `value` in [0, 1] (what accuracy averages) and `correct`
(what calibration labels use).

- biomedical (PubMedQA): the first yes / no / maybe in the answer against the gold label;
- legal (CUAD): Yes/No questions by their first yes / no; extractive ones by normalized
  match (equal, or the gold span inside the answer) or the same calendar date;
- finance (FinanceBench): gold answers opening with Yes/No by that label; numeric ones by the
  gold's first amount within a relative tolerance after scale and unit normalization
  ("$1,577 million" = "1.577 billion" = "1577" when the question is in millions); the rest
  (short names, free-text judgements) by normalized match or token F1;
- technical manuals (E-Manual) and anything else: token F1 (`correct` at `F1_CORRECT`).

An unanswerable question is right exactly when the answer abstains, and an answerable one
is never right when it abstains (`score_answer`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from modules.normalize import Amount, find_amounts, find_dates

REL_TOL = 0.01
F1_CORRECT = 0.4
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "’‘“”"})
_LABEL_WORD = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)
_CITATION = re.compile(r"\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")


@dataclass(frozen=True)
class Score:
    value: float
    correct: bool

    @classmethod
    def of(cls, ok: bool) -> Score:
        return cls(1.0 if ok else 0.0, ok)


def normalize_answer(text: str) -> str:
    """Lowercase, no citations, punctuation or articles, single spaces (SQuAD style)."""
    text = _CITATION.sub(" ", text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def label(text: str, labels: Sequence[str] = ("yes", "no", "maybe")) -> str | None:
    """The first of `labels` the answer says, as a word ("No, ..." -> "no")."""
    for m in _LABEL_WORD.finditer(_CITATION.sub(" ", text)):
        word = m.group(1).lower()
        if word in labels:
            return word
    return None


def normalized_match(prediction: str, gold: str) -> bool:
    """Equal after normalization, or the gold span inside the answer."""
    p, g = normalize_answer(prediction), normalize_answer(gold)
    return bool(g) and (p == g or f" {g} " in f" {p} ")


def same_date(prediction: str, gold: str) -> bool:
    gold_dates = {d.value for d in find_dates(gold)}
    return bool(gold_dates) and any(d.value in gold_dates for d in find_dates(prediction))


def _is_year(a: Amount, text: str) -> bool:
    raw = text[a.start : a.end].strip()
    return not (a.currency or a.percent or a.scaled) and raw.isdigit() and 1900 <= a.value <= 2100


def key_amounts(text: str) -> list[Amount]:
    """Amounts in an answer, leaving out bare years ("FY2022")."""
    return [a for a in find_amounts(text) if not _is_year(a, text)]


def numbers_match(pred: Amount, gold: Amount, rel_tol: float = REL_TOL) -> bool:
    """Equal within `rel_tol`, allowing a scale word on one side only ("1.577 billion" vs
    "1577" in a question asked in millions) and a percent written as a fraction."""
    candidates = [pred.value]
    if pred.scaled != gold.scaled:
        candidates += [pred.value * f for f in (1e3, 1e6, 1e9, 1e-3, 1e-6, 1e-9)]
    if pred.percent != gold.percent:
        candidates += [pred.value * 100, pred.value / 100]
    return any(abs(c - gold.value) <= rel_tol * max(abs(gold.value), 1e-9) for c in candidates)


def pubmedqa_score(prediction: str, golds: Sequence[str]) -> Score:
    return Score.of(label(prediction) in {g.strip().lower() for g in golds})


def cuad_score(prediction: str, golds: Sequence[str]) -> Score:
    wanted = {g.strip().lower() for g in golds}
    if wanted <= {"yes", "no"}:
        return Score.of(label(prediction, ("yes", "no")) in wanted)
    return Score.of(any(normalized_match(prediction, g) or same_date(prediction, g) for g in golds))


def financebench_score(prediction: str, golds: Sequence[str], rel_tol: float = REL_TOL) -> Score:
    gold = golds[0] if golds else ""
    first = normalize_answer(gold).split()[:1]
    if first and first[0] in ("yes", "no"):
        opening = first[0]
        return Score.of(label(prediction, ("yes", "no")) == opening)
    amounts = key_amounts(gold)
    if amounts:
        return Score.of(any(numbers_match(p, amounts[0], rel_tol) for p in key_amounts(prediction)))
    f1 = max(token_f1(prediction, g) for g in golds)
    return Score(f1, f1 >= F1_CORRECT or any(normalized_match(prediction, g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> Score:
    f1 = max((token_f1(prediction, g) for g in golds), default=0.0)
    return Score(f1, f1 >= F1_CORRECT)


METRICS = {
    "biomedical": pubmedqa_score,
    "legal": cuad_score,
    "finance": financebench_score,
    "technical_manuals": f1_score,
}
METRIC_NAMES = {
    "biomedical": "yes/no/maybe accuracy",
    "legal": "normalized match, Yes/No accuracy",
    "finance": f"numeric match (rel. tol. {REL_TOL:.0%}), Yes/No, token F1",
    "technical_manuals": "token F1",
}


def score_answer(item: dict, answer: str, decision: str) -> Score:
    """Score one answer to an evaluation item (`answerable`, `answers`, `domain`)."""
    abstained = decision == "abstained"
    if not item.get("answerable", True):
        return Score.of(abstained)
    if abstained:
        return Score.of(False)
    return METRICS.get(item.get("domain", ""), f1_score)(answer, item.get("answers") or [])
