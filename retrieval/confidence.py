"""Confidence: cheap signals about an answer, and their calibration into a probability.

Signals (`context_features`, `answer_features`), each a float:

- the answer's token log-probabilities: mean, minimum, mean margin of each token over the
  runner-up in `top_logprobs`, and exp(mean) (`mean_token_prob`);
- the context's retrieval scores and sufficiency: best and mean cosine similarity of the
  kept chunks, agreement of the top chunks (share from the best chunk's document), and the
  share of the question's content words, named entities and numbers the context holds,
  combined into `sufficiency` (0-1), which abstention reads before any model is asked;
- grounding: the share of the answer's content words and numbers found in the context it
  cites, and whether the model gave the no-answer reply.

A `Calibrator` turns the signals into the probability that the answer is right: a logistic
regression on standardized features, fitted with numpy (L2-regularized, Newton steps) on
labelled questions by `sieve calibrate`, stored as a versioned artifact per (tenant,
module) in the `calibrations` table. Until a module has one, `DEFAULT_CALIBRATOR` applies:
a fixed, conservative logistic over the mean token probability and grounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.llm import ChatResult
from modules.base import Candidate, ModuleConfig
from modules.normalize import find_periods
from retrieval.prompting import NO_ANSWER, is_no_answer

# Every feature a calibration may use, in a fixed order.
FEATURES = (
    "mean_logprob", "min_logprob", "mean_margin", "mean_token_prob",
    "top_similarity", "mean_similarity", "doc_agreement",
    "question_coverage", "entity_coverage", "number_coverage", "sufficiency",
    "grounding", "number_grounding", "no_answer",
)
# A token whose runner-up is not listed is this many nats ahead (llama.cpp lists 5).
MAX_MARGIN = 10.0
AGREEMENT_TOP = 3

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either few for from further had has have
    having he her here hers him his how i if in into is it its itself just may me might more most must my no nor
    not now of off on once only or other our ours out over own per please same shall she should so some such
    than that the their theirs them then there these they this those through to too under until up upon us very
    was we were what when where whether which while who whom whose why will with within would yes you your
    based data state explain answer question company report""".split()
)
_WORD = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A word with inner hyphens ("Lloyd-Davies"), never across a dash ("Trendelenburg--a").
_TOKEN = re.compile(r"[A-Za-z0-9](?:[\w&.']|-(?=\w))*")
_ROMAN = re.compile(r"x{0,3}(?:ix|iv|v?i{0,3})")
# A demonym names its country by its stem ("Japanese" -> "Japan"), except these.
_DEMONYM = re.compile(r"(\w{4,}?)(?:ese|ian|ean|an|ish)")
_IRREGULAR_DEMONYMS = {
    "french": "france", "dutch": "netherlands", "british": "britain", "swiss": "switzerland",
    "welsh": "wales", "irish": "ireland", "scottish": "scotland", "danish": "denmark", "greek": "greece",
    "turkish": "turkey", "polish": "poland", "finnish": "finland", "norwegian": "norway",
}
_CITATION = re.compile(r"\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")


def content_words(text: str) -> set[str]:
    """Lowercased words of 3+ characters that are not stopwords, possessives and plural -s
    stripped ("expenditures" matches "expenditure")."""
    words = (w.removesuffix("'s") for w in _WORD.findall(text.lower()))
    return {_singular(w) for w in words if len(w) >= 3 and w not in _STOPWORDS}


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def numbers(text: str) -> set[str]:
    """Numbers as written without thousands separators: "1,577.5" -> "1577.5"; a fiscal period
    counts in its canonical form ("FY22" -> "2022", "2Q23" -> "2023" and "2"), as filings write it."""
    for period in reversed(find_periods(text, bare_years=False)):
        text = f"{text[: period.start]}{period.label}{text[period.end :]}"
    found = set()
    for raw in _NUMBER.findall(text):
        n = raw.replace(",", "").rstrip(".")
        if n:
            found.add(n)
    return found


def entities(text: str) -> set[str]:
    """Names in a question, lowercased: capitalized words not starting a sentence, all-caps
    words, and names like "3M". Stopwords, roman numerals and other words with digits are
    left out; in a title-cased question ("Phone Interviews Versus Self-Survey") capitals
    mark no names, so only all-caps words and names with digits count."""
    tokens = [m for m in _TOKEN.finditer(text)]
    title_case = _is_title_case([m.group(0) for m in tokens])
    found = set()
    sentence_start = True
    for m in tokens:
        raw = m.group(0).rstrip(".'").removesuffix("'s")
        word = raw.lower()
        capitalized = raw[:1].isupper() and not sentence_start and not title_case
        is_name = capitalized or (raw.isupper() and len(raw) > 1)
        if any(ch.isdigit() for ch in raw):
            is_name = bool(re.fullmatch(r"\d+[A-Z]+", raw))
        if is_name and word not in _STOPWORDS and len(word) > 1 and not _ROMAN.fullmatch(word):
            found.add(word)
        end = m.end()
        sentence_start = m.group(0).endswith((".", "?", "!")) or text[end : end + 1] in {".", "?", "!", ":"}
    return found


def _is_title_case(words: Sequence[str]) -> bool:
    """Whether every longer word after the first is capitalized, as in a title."""
    longer = [w for w in words[1:] if len(w) > 3 and w[:1].isalpha() and w.lower() not in _STOPWORDS]
    return len(longer) >= 4 and all(w[:1].isupper() for w in longer)


def _entity_found(entity: str, haystack: str) -> bool:
    """`entity` is in `haystack`, or its country is when it is a demonym ("French": "France")."""
    if entity in haystack:
        return True
    country = _IRREGULAR_DEMONYMS.get(entity)
    if country is None and (m := _DEMONYM.fullmatch(entity)):
        return re.search(rf"\b{re.escape(m.group(1))}", haystack) is not None
    return country is not None and country in haystack


def _share(needles: set[str], haystack: str | set[str]) -> float:
    """Share of `needles` found in `haystack` (1.0 when there are none to find)."""
    if not needles:
        return 1.0
    return sum(1 for n in needles if n in haystack) / len(needles)


def _haystack(context: Sequence[Candidate]) -> str:
    # Names may sit in a document's title or metadata rather than in the chunk itself.
    parts = []
    for c in context:
        parts += [c.model_text, c.text, c.filename.replace("_", " "), str(c.payload.get("meta") or "")]
    return "\n".join(parts).lower()


def context_features(question: str, context: Sequence[Candidate]) -> dict[str, float]:
    """Retrieval and sufficiency signals of the curated context for a question."""
    if not context:
        return {
            "top_similarity": 0.0, "mean_similarity": 0.0, "doc_agreement": 0.0, "question_coverage": 0.0,
            "entity_coverage": 0.0, "number_coverage": 0.0, "sufficiency": 0.0,
        }
    hay = _haystack(context)
    hay_words = content_words(hay)
    hay_numbers = numbers(hay)
    sims = [c.similarity for c in context]
    top = context[:AGREEMENT_TOP]
    qc = _share(content_words(question), hay_words)
    names = entities(question)
    ec = _share(names, {e for e in names if _entity_found(e, hay)})
    nc = _share(numbers(question), hay_numbers)
    return {
        "top_similarity": max(sims),
        "mean_similarity": sum(sims) / len(sims),
        "doc_agreement": sum(1 for c in top if c.doc_id == top[0].doc_id) / len(top),
        "question_coverage": qc,
        "entity_coverage": ec,
        "number_coverage": nc,
        "sufficiency": sufficiency(qc, ec, nc),
    }


def sufficiency(question_coverage: float, entity_coverage: float, number_coverage: float) -> float:
    """How likely the context is to hold the answer, 0-1, from what it holds of the question.

    A missing name or number weighs most (a question about a company whose filings are not
    there), so half of them found counts as enough; the words count softly (square root), since
    a passage that answers rarely repeats the whole question."""
    return math.sqrt(question_coverage) * min(1.0, 2 * entity_coverage) * min(1.0, 2 * number_coverage)


def answer_features(result: ChatResult, context: Sequence[Candidate], cited: Sequence[Candidate]) -> dict[str, float]:
    """Token-probability and grounding signals of one generated answer."""
    logprobs = [t.logprob for t in result.tokens]
    margins = []
    for t in result.tokens:
        others = [lp for tok, lp in t.top if tok != t.token]
        margins.append(max(-MAX_MARGIN, min(MAX_MARGIN, t.logprob - max(others))) if others else MAX_MARGIN)
    mean_lp = sum(logprobs) / len(logprobs) if logprobs else -MAX_MARGIN
    text = _CITATION.sub(" ", result.text)
    no_answer = is_no_answer(text)
    if no_answer:
        text = re.sub(re.escape(NO_ANSWER.rstrip(".")), " ", text, flags=re.IGNORECASE)
    hay = _haystack(cited or context)
    words, nums = content_words(text), numbers(text)
    return {
        "mean_logprob": mean_lp,
        "min_logprob": min(logprobs) if logprobs else -MAX_MARGIN,
        "mean_margin": sum(margins) / len(margins) if margins else 0.0,
        "mean_token_prob": math.exp(mean_lp),
        "grounding": _share(words, content_words(hay)) if words else 0.0,
        "number_grounding": _share(nums, numbers(hay)),
        "no_answer": 1.0 if no_answer else 0.0,
    }


# ---- calibration ----


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


@dataclass
class Calibrator:
    """P(answer right | features): a logistic regression over standardized features.

    `quantiles` holds the calibrated confidences of the calibration set at 0, 1, ..., 100 %,
    so a target share of escalations becomes a confidence threshold (RouteLLM style)
    without refitting."""

    features: list[str]
    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    l2: float = 1.0
    quantiles: list[float] = field(default_factory=list)

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array([[float(r.get(f, 0.0)) for f in self.features] for r in rows], dtype=float).reshape(
            len(rows), len(self.features)
        )

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.array(self.mean)) / np.array(self.scale)
        return _sigmoid(z @ np.array(self.coef) + self.intercept)

    def predict(self, features: Mapping[str, float]) -> float:
        """The probability that the answer with these features is right."""
        return float(self.predict_matrix(self.matrix([features]))[0])

    def threshold_for_share(self, share: float) -> float | None:
        """The confidence below which `share` of the calibration questions fall (None
        without stored quantiles)."""
        if not self.quantiles:
            return None
        return float(np.interp(min(max(share, 0.0), 1.0) * 100, np.arange(len(self.quantiles)), self.quantiles))

    @classmethod
    def fit(
        cls, rows: Sequence[Mapping[str, float]], labels: Sequence[bool | int], *,
        features: Sequence[str] = FEATURES, l2: float = 1.0, iterations: int = 50,
    ) -> Calibrator:
        """Fit on feature dicts and 0/1 labels (Newton steps on the L2-penalized log-loss;
        the intercept is not penalized)."""
        y = np.asarray(labels, dtype=float)
        if len(y) != len(rows) or len(y) < 2:
            raise ValueError("calibration needs at least two labelled rows")
        model = cls(features=list(features), coef=[], intercept=0.0, mean=[], scale=[], l2=l2)
        x = model.matrix(rows)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0  # a constant feature stays at 0 after centring
        z = np.hstack([np.ones((len(y), 1)), (x - mean) / scale])
        w = np.zeros(z.shape[1])
        w[0] = math.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))
        penalty = np.full(z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(iterations):
            p = _sigmoid(z @ w)
            gradient = z.T @ (p - y) + penalty * w
            hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        model.coef, model.intercept = w[1:].tolist(), float(w[0])
        model.mean, model.scale = mean.tolist(), scale.tolist()
        model.quantiles = np.quantile(model.predict_matrix(x), np.linspace(0, 1, 101)).tolist()
        return model

    def to_json(self) -> dict[str, Any]:
        return {"kind": "logistic", **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibrator:
        if data.get("kind") != "logistic":
            raise ValueError(f"unknown calibration kind {data.get('kind')!r}")
        return cls(**{k: v for k, v in data.items() if k != "kind"})


# Before a module is calibrated: logit = -3.5 + 3 * mean_token_prob + 2 * grounding. It
# reaches 0.5 only for an answer both likely under the model and mostly found in its sources
# (e.g. 0.8 and 0.6); a fluent but unsupported answer stays below (1.0 and 0 give 0.38).
DEFAULT_CALIBRATOR = Calibrator(
    features=["mean_token_prob", "grounding"], coef=[3.0, 2.0], intercept=-3.5, mean=[0.0, 0.0], scale=[1.0, 1.0],
    l2=0.0,
)


def calibration_metrics(
    probabilities: Sequence[float], labels: Sequence[bool | int], bins: int = 10
) -> dict[str, float]:
    """Brier score, expected calibration error (equal-width bins), log-loss and accuracy at 0.5."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-6, 1 - 1e-6)
    y = np.asarray(labels, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = sum(
        abs(p[which == b].mean() - y[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any()
    )
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(ece / len(y)),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "accuracy": float(np.mean((p >= 0.5) == (y == 1))),
    }


def cross_validated(
    rows: Sequence[Mapping[str, float]], labels: Sequence[bool | int], *, folds: int = 5, l2: float = 1.0
) -> list[float]:
    """Out-of-fold probabilities (each row predicted by a model fitted without it), for
    honest metrics on a small calibration set."""
    n = len(rows)
    out = [0.0] * n
    for k in range(folds):
        test = [i for i in range(n) if i % folds == k]
        train = [i for i in range(n) if i % folds != k]
        if not test or len(train) < 2:
            continue
        model = Calibrator.fit([rows[i] for i in train], [labels[i] for i in train], l2=l2)
        for i in test:
            out[i] = model.predict(rows[i])
    return out


# ---- stored calibrations ----


# Keys of a stored calibration's metrics: the small-model adapter its answers came from, and
# the module's other settings when it was fitted.
FITTED_WITH_ADAPTER = "fitted_with_adapter"
FITTED_WITH_SETTINGS = "fitted_with_settings"
# Settings that only read the confidence (escalation thresholds), never shift it.
_CONFIDENCE_READERS = frozenset({"escalate_below", "escalation_target"})


@dataclass(frozen=True)
class StoredCalibration:
    version: int
    calibrator: Calibrator
    metrics: dict[str, Any]
    created_at: datetime | None = None

    def applies_to(self, adapter: str | None) -> bool:
        """Whether the calibration was fitted on answers of the small model with `adapter` (None:
        the base model). Another adapter answers with other confidences, so a calibration holds
        only for the one it was fitted with; one stored before adapters were recorded, for any."""
        return FITTED_WITH_ADAPTER not in self.metrics or self.metrics[FITTED_WITH_ADAPTER] == adapter

    def settings_changed(self, config: ModuleConfig) -> list[str]:
        """The module settings that differ from those the calibration was fitted with: what the
        model is given (chunks, token budget, retrieval) shifts its confidences, so the
        calibration may no longer be calibrated. Escalation thresholds, which only read the
        confidence, and the adapter (see `applies_to`) are not compared; nor is anything for a
        calibration stored before settings were recorded."""
        fitted = self.metrics.get(FITTED_WITH_SETTINGS) or {}
        current = _compared_settings(config)
        return sorted(key for key, value in fitted.items() if key in current and current[key] != value)


def _compared_settings(config: ModuleConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude={"adapter", *_CONFIDENCE_READERS})


async def save_calibration(
    engine: AsyncEngine, *, tenant: str, module: str, calibrator: Calibrator, metrics: dict[str, Any],
    config: ModuleConfig,
) -> StoredCalibration:
    """Store a new version of the module's calibration, fitted on answers the module gave with
    `config` (its adapter, None for the base model, and its other settings); it applies from
    the next question the module's small model answers with that adapter."""
    metrics = {**metrics, FITTED_WITH_ADAPTER: config.adapter, FITTED_WITH_SETTINGS: _compared_settings(config)}
    table = db.calibrations
    async with engine.begin() as conn:
        latest = await conn.scalar(
            select(func.max(table.c.version)).where(table.c.tenant == tenant, table.c.module == module)
        )
        version = (latest or 0) + 1
        created = db.utcnow()
        await conn.execute(
            insert(table).values(
                tenant=tenant, module=module, version=version, model=calibrator.to_json(), metrics=metrics,
                brier=metrics.get("brier"), created_at=created,
            )
        )
    return StoredCalibration(version=version, calibrator=calibrator, metrics=metrics, created_at=created)


async def load_calibration(engine: AsyncEngine, *, tenant: str, module: str) -> StoredCalibration | None:
    """The module's latest calibration for the tenant, or None."""
    table = db.calibrations
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(table)
                .where(table.c.tenant == tenant, table.c.module == module)
                .order_by(table.c.version.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return StoredCalibration(
        version=row.version, calibrator=Calibrator.from_json(row.model), metrics=row.metrics, created_at=row.created_at
    )
