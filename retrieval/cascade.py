"""Small first, escalate when needed: who answers a question from its curated context.

For each question (`Cascade.answer`, mode `cascade`):

1. **abstained** at once, without a model, when the context's sufficiency is below the
   module's `abstain_below` (the corpus does not hold what the question names);
2. otherwise the small model answers; **abstained** if it gives the no-answer reply;
3. its calibrated confidence (`retrieval.confidence`) is compared with the module's threshold
   (`escalation_target` turned into a threshold by the module's calibration, else
   `escalate_below`); above it: **answered**;
4. below it, the large model answers from the same context: **escalated** (or abstained if
   it gives the no-answer reply). When the large tier is missing or fails (timeouts, retries
   and the circuit breaker live in `core.llm`), the small answer is returned with
   `degraded=True`: a missing large model is never an error of the request.

Modes `small_only` and `large_only` ask one tier and apply no threshold (the baselines
that `sieve eval` compares with, and how `sieve calibrate` collects small-model answers).
Every step goes into the trace: models called with tokens (and the adapter, if any),
latency per stage, features, calibrated confidence, threshold, decision and reason, and
cost by tier.

The small model answers with the module's fine-tuned LoRA adapter when its config names
one (`ModuleConfig.adapter`). If the model server has not loaded it (`adapter_not_found`),
`on_missing_adapter` is awaited once (the API reloads the registered adapters into the
embedded server) and the call retried; if the adapter is still missing, the base model
answers, the answer is `degraded` and the trace records `adapter_missing`: a question is
not refused because an adapter file went missing, and the trace shows it did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import ModelError
from core.llm import AdapterRef, ChatResult, chat_past_a_blank_opening
from core.resources import ModelTierClient
from core.settings import ModelTier
from modules.base import Candidate, ModuleConfig
from retrieval.confidence import (
    DEFAULT_CALIBRATOR,
    FITTED_WITH_ADAPTER,
    StoredCalibration,
    answer_features,
    context_features,
)
from retrieval.prompting import NO_ANSWER, build_messages, cited_sources, is_no_answer, supporting_sources
from retrieval.traces import Trace

log = logging.getLogger(__name__)

AnswerMode = Literal["cascade", "small_only", "large_only"]
Decision = Literal["answered", "escalated", "abstained"]
MODES: tuple[str, ...] = ("cascade", "small_only", "large_only")
LARGE_MAX_TOKENS = 256
NO_MODEL = "none"


@dataclass
class CascadeAnswer:
    """The answer text (with [n] markers numbered by context position), who gave it, and why."""

    text: str
    decision: Decision
    confidence: float
    model: str
    degraded: bool = False
    reason: str = ""


def tier_cost(tier: ModelTier, prompt_tokens: int, completion_tokens: int) -> float:
    """Cost of one call at the tier's prices per 1k tokens."""
    return prompt_tokens / 1000 * tier.price_in_per_1k + completion_tokens / 1000 * tier.price_out_per_1k


def _small_model(adapter: str | None) -> str:
    return f"adapter {adapter}" if adapter else "the base model"


def escalation_threshold(config: ModuleConfig, calibration: StoredCalibration | None) -> float:
    """The confidence below which the small answer is escalated: the module's target share
    of escalations converted by its calibration when both exist, else `escalate_below`."""
    if config.escalation_target is not None and calibration is not None:
        threshold = calibration.calibrator.threshold_for_share(config.escalation_target)
        if threshold is not None:
            return threshold
    return config.escalate_below


class Cascade:
    """Answers from curated context with the small tier, escalating to the large one.

    `on_missing_adapter`: awaited when the small tier has not loaded the module's adapter,
    before one retry (see the module docstring)."""

    def __init__(
        self,
        small: ModelTierClient | None,
        large: ModelTierClient | None,
        on_missing_adapter: Callable[[], Awaitable[object]] | None = None,
    ):
        self.small = small
        self.large = large
        self.on_missing_adapter = on_missing_adapter

    async def answer(
        self,
        *,
        question: str,
        context: Sequence[Candidate],
        config: ModuleConfig,
        calibration: StoredCalibration | None,
        trace: Trace,
        mode: AnswerMode = "cascade",
    ) -> CascadeAnswer:
        if mode not in MODES:
            raise ValueError(f"unknown answer mode {mode!r}")
        record: dict = {}
        if calibration is not None and not calibration.applies_to(config.adapter):
            record["calibration_skipped"] = (
                f"version {calibration.version} was fitted on answers of "
                f"{_small_model(calibration.metrics[FITTED_WITH_ADAPTER])}, the module now uses "
                f"{_small_model(config.adapter)}: recalibrate"
            )
            calibration = None
        if calibration is not None and (changed := calibration.settings_changed(config)):
            record["calibration_stale"] = (
                f"version {calibration.version} was fitted with other {', '.join(changed)}: "
                "its confidences may be off, recalibrate"
            )
        calibrator = calibration.calibrator if calibration else DEFAULT_CALIBRATOR
        started = time.perf_counter()
        ctx_features = context_features(question, context)
        confidence_ms = (time.perf_counter() - started) * 1000
        record.update(features=ctx_features, calibration_version=calibration.version if calibration else None)
        trace.set("cost", {"small": 0.0, "large": 0.0, "total": 0.0})

        missing_adapter: str | None = None

        def finish(outcome: CascadeAnswer, **extra) -> CascadeAnswer:
            if missing_adapter:
                outcome.degraded = True
                outcome.reason += f"; adapter {missing_adapter} not loaded, the base model answered"
            trace.data["latency_ms"]["confidence"] = round(confidence_ms, 2)
            trace.set("confidence", {**record, "value": outcome.confidence, **extra})
            trace.set("decision", {"decision": outcome.decision, "reason": outcome.reason, "mode": mode,
                                   "degraded": outcome.degraded})
            return outcome

        if mode == "cascade" and ctx_features["sufficiency"] < config.abstain_below:
            return finish(
                CascadeAnswer(
                    NO_ANSWER, "abstained", 1.0 - ctx_features["sufficiency"], NO_MODEL,
                    reason=f"context sufficiency {ctx_features['sufficiency']:.2f} below {config.abstain_below:.2f}",
                )
            )

        if mode == "large_only":
            if self.large is None:
                raise ModelError("no large model is configured", code="model_unavailable")
            result = await self._generate(self.large, question, context, LARGE_MAX_TOKENS, trace)
            started = time.perf_counter()
            features = {**ctx_features, **answer_features(result, context, _sources(result.text, context))}
            confidence = calibrator.predict(features)
            confidence_ms += (time.perf_counter() - started) * 1000
            record["features"] = features
            decision: Decision = "abstained" if is_no_answer(result.text) else "escalated"
            return finish(CascadeAnswer(result.text, decision, confidence, result.model, reason="large model only"))

        if self.small is None:
            raise ModelError("no small model is configured", code="model_unavailable")
        small, missing_adapter = await self._generate_small(question, context, config, trace)
        started = time.perf_counter()
        features = {**ctx_features, **answer_features(small, context, _sources(small.text, context))}
        confidence = calibrator.predict(features)
        confidence_ms += (time.perf_counter() - started) * 1000
        record["features"] = features

        if is_no_answer(small.text):
            return finish(
                CascadeAnswer(small.text, "abstained", confidence, small.model, reason="small model: no answer")
            )
        if mode == "small_only":
            return finish(CascadeAnswer(small.text, "answered", confidence, small.model, reason="small model only"))

        threshold = escalation_threshold(config, calibration)
        if confidence >= threshold:
            return finish(
                CascadeAnswer(small.text, "answered", confidence, small.model,
                              reason=f"confidence {confidence:.2f} >= {threshold:.2f}"),
                threshold=threshold,
            )
        why = f"confidence {confidence:.2f} < {threshold:.2f}"
        if self.large is None:
            return finish(
                CascadeAnswer(small.text, "answered", confidence, small.model, degraded=True,
                              reason=f"{why}; no large model is configured"),
                threshold=threshold,
            )
        try:
            large = await self._generate(self.large, question, context, LARGE_MAX_TOKENS, trace)
        except ModelError as e:
            # The small answer, flagged, rather than an error: the circuit breaker makes
            # further calls fail fast while the large tier is down.
            log.warning("large tier failed, answering with the small model: %s", e.message)
            return finish(
                CascadeAnswer(small.text, "answered", confidence, small.model, degraded=True,
                              reason=f"{why}; large model failed ({e.code})"),
                threshold=threshold,
            )
        started = time.perf_counter()
        large_features = {**ctx_features, **answer_features(large, context, _sources(large.text, context))}
        # The calibration is fitted on small-model answers: for the large model's answer it is
        # an estimate, not a calibrated probability.
        large_confidence = calibrator.predict(large_features)
        confidence_ms += (time.perf_counter() - started) * 1000
        decision = "abstained" if is_no_answer(large.text) else "escalated"
        return finish(
            CascadeAnswer(large.text, decision, large_confidence, large.model, reason=why),
            threshold=threshold, small_confidence=confidence, large_features=large_features,
        )

    async def _generate_small(
        self, question: str, context: Sequence[Candidate], config: ModuleConfig, trace: Trace
    ) -> tuple[ChatResult, str | None]:
        """The small tier's answer, with the module's adapter when it names one, and the
        adapter's name if it was not loaded (the base model answered instead)."""
        small = self.small
        assert small is not None
        if config.adapter is None:
            return await self._generate(small, question, context, config.small_max_tokens, trace), None
        adapter = AdapterRef(config.adapter)

        async def with_adapter() -> ChatResult | None:
            try:
                return await self._generate(small, question, context, config.small_max_tokens, trace, adapter)
            except ModelError as e:
                if e.code != "adapter_not_found":
                    raise
                return None

        result = await with_adapter()
        if result is None and self.on_missing_adapter is not None:
            await self.on_missing_adapter()
            result = await with_adapter()
        if result is not None:
            return result, None
        log.warning("the small model server has not loaded adapter %s; the base model answers", adapter.name)
        trace.set("adapter_missing", adapter.name)
        return await self._generate(small, question, context, config.small_max_tokens, trace), adapter.name

    async def _generate(
        self,
        tier: ModelTierClient,
        question: str,
        context: Sequence[Candidate],
        max_tokens: int,
        trace: Trace,
        adapter: AdapterRef | None = None,
    ) -> ChatResult:
        """One answer from a tier, its calls (and adapter), latency and cost recorded in the
        trace; an empty answer that opened with a stop is asked for once more
        (`chat_past_a_blank_opening`)."""
        messages = build_messages(question, list(context), tier.tier.system_prompt)
        with trace.timed(f"generate_{tier.name}"):
            return await chat_past_a_blank_opening(
                lambda stops: self._call(tier, messages, max_tokens, stops, adapter, trace), tier.tier.stop
            )

    async def _call(
        self,
        tier: ModelTierClient,
        messages: list[dict],
        max_tokens: int,
        stops: Sequence[str],
        adapter: AdapterRef | None,
        trace: Trace,
    ) -> ChatResult:
        """One chat call, recorded in the trace with its tokens and cost (or its error)."""
        name = adapter.name if adapter else None
        started = time.perf_counter()
        try:
            result = await tier.client.chat(messages, max_tokens=max_tokens, stop=stops or None, adapter=adapter)
        except ModelError as e:
            trace.model_call(
                tier=tier.name, model=tier.tier.model, adapter=name, error=e.code,
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            raise
        cost = tier_cost(tier.tier, result.prompt_tokens, result.completion_tokens)
        trace.model_call(
            tier=tier.name, model=result.model, adapter=name, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, latency_ms=round(result.latency_ms, 1), cost=cost,
        )
        costs = trace.data["cost"]
        costs[tier.name] = costs.get(tier.name, 0.0) + cost
        costs["total"] += cost
        return result


def _sources(answer: str, context: Sequence[Candidate]) -> list[Candidate]:
    context = list(context)
    return cited_sources(answer, context) or supporting_sources(answer, context)
