"""The cascade's decisions with scripted model tiers: abstain, answer, escalate, degrade,
and the module's fine-tuned adapter on the small tier."""

from __future__ import annotations

import pytest

from core.errors import ModelError
from core.llm import AdapterRef, ChatResult, TokenLogprob, cut_at_stop
from core.resources import ModelTierClient
from core.settings import ModelTier
from modules.base import Candidate, ModuleConfig
from retrieval.cascade import Cascade, escalation_threshold, tier_cost
from retrieval.confidence import Calibrator, StoredCalibration
from retrieval.prompting import NO_ANSWER, SYSTEM_PROMPT
from retrieval.traces import Trace

pytestmark = pytest.mark.unit

CONTEXT = [
    Candidate(id="c1", doc_id="doc_a", filename="acme_2023.txt", page=2,
              text="Acme Corp reported revenue of $4.2 billion in fiscal 2023.", payload={}, score=0.7,
              similarity=0.7, rank=0),
]
QUESTION = "What was Acme Corp's revenue in fiscal 2023?"


class ScriptedClient:
    """Answers every chat with one text at one log-probability per token, or raises.

    `loaded`: the adapters it serves; a request for another raises `adapter_not_found`, as
    `ChatClient` does for an adapter llama-server has not loaded."""

    def __init__(
        self, text: str = "", logprob: float = -0.05, error: ModelError | None = None, loaded: set[str] | None = None
    ):
        self.text, self.logprob, self.error = text, logprob, error
        self.loaded = loaded if loaded is not None else set()
        self.calls: list[int] = []
        self.adapters: list[str | None] = []
        self.system_prompts: list[str] = []

    async def chat(self, messages, *, max_tokens: int, stop=None, adapter: AdapterRef | None = None) -> ChatResult:
        self.calls.append(max_tokens)
        self.adapters.append(adapter.name if adapter else None)
        self.system_prompts.append(messages[0]["content"])
        if self.error:
            raise self.error
        if adapter is not None and adapter.name not in self.loaded:
            raise ModelError(f"adapter {adapter.name!r} is not loaded", code="adapter_not_found")
        tokens = [TokenLogprob(w, self.logprob, [(w, self.logprob), ("x", self.logprob - 2)]) for w in self.text.split()]
        return ChatResult(text=self.text, tokens=tokens, prompt_tokens=1000, completion_tokens=len(tokens),
                          latency_ms=3.0, model=f"{self.text[:3]}-model", finish_reason="stop")


def tier(
    name: str, client: ScriptedClient, price_in: float = 0.0, price_out: float = 0.0, system_prompt: str | None = None
) -> ModelTierClient:
    settings = ModelTier(url="http://x/v1", model=f"{name}-model", price_in_per_1k=price_in,
                         price_out_per_1k=price_out, system_prompt=system_prompt)
    return ModelTierClient(name=name, tier=settings, client=client)  # type: ignore[arg-type]


def new_trace() -> Trace:
    return Trace(id="tr_test", tenant="t", collection="c", question=QUESTION)


GOOD = "Acme Corp reported revenue of $4.2 billion in fiscal 2023 [1]."
UNSURE = "Maybe about nine dollars."


async def answer(small, large, config=None, calibration=None, mode="cascade", trace=None, on_missing_adapter=None):
    return await Cascade(small, large, on_missing_adapter).answer(
        question=QUESTION, context=CONTEXT, config=config or ModuleConfig(), calibration=calibration,
        trace=trace or new_trace(), mode=mode,
    )


async def test_a_confident_grounded_small_answer_is_answered() -> None:
    small, large = ScriptedClient(GOOD), ScriptedClient("never")
    trace = new_trace()
    out = await answer(tier("small", small, 0.1, 0.2), tier("large", large), trace=trace)
    assert out.decision == "answered" and out.text == GOOD and not out.degraded
    assert out.confidence >= ModuleConfig().escalate_below
    assert large.calls == [] and small.calls == [ModuleConfig().small_max_tokens]
    assert {"generate_small", "confidence"} <= set(trace.data["latency_ms"])
    assert trace.data["decision"]["decision"] == "answered"
    assert trace.data["confidence"]["features"]["grounding"] == 1.0
    assert trace.data["cost"]["small"] == pytest.approx(tier_cost(tier("s", small, 0.1, 0.2).tier, 1000, 11))
    assert trace.data["models"][0]["tier"] == "small" and trace.data["models"][0]["prompt_tokens"] == 1000


async def test_low_confidence_escalates_to_the_large_model() -> None:
    small, large = ScriptedClient(UNSURE, logprob=-2.5), ScriptedClient(GOOD)
    trace = new_trace()
    out = await answer(tier("small", small), tier("large", large, 1.0, 2.0), trace=trace)
    assert out.decision == "escalated" and out.text == GOOD and out.model == "Acm-model"
    assert small.calls and large.calls
    assert [m["tier"] for m in trace.data["models"]] == ["small", "large"]
    assert "generate_large" in trace.data["latency_ms"]
    assert trace.data["cost"]["large"] == pytest.approx(1.0 + 11 / 1000 * 2.0)
    assert trace.data["confidence"]["small_confidence"] < trace.data["confidence"]["threshold"]


async def test_each_tier_is_sent_its_own_instructions() -> None:
    small, large = ScriptedClient(UNSURE, logprob=-2.5), ScriptedClient(GOOD)
    await answer(tier("small", small), tier("large", large, system_prompt="Answer Yes or No first."))
    assert small.system_prompts == [SYSTEM_PROMPT] and large.system_prompts == ["Answer Yes or No first."]


async def test_the_small_models_no_answer_reply_abstains() -> None:
    large = ScriptedClient(GOOD)
    out = await answer(tier("small", ScriptedClient(NO_ANSWER)), tier("large", large))
    assert out.decision == "abstained" and large.calls == []


async def test_insufficient_context_abstains_without_asking_a_model() -> None:
    small = ScriptedClient(GOOD)
    trace = new_trace()
    out = await Cascade(tier("small", small), None).answer(
        question="What was Globex's revenue in fiscal 2019?", context=CONTEXT, config=ModuleConfig(),
        calibration=None, trace=trace,
    )
    assert out.decision == "abstained" and out.text == NO_ANSWER and small.calls == []
    assert trace.data["models"] == [] and "sufficiency" in trace.data["decision"]["reason"]
    # Turned off by the module's config, the same question goes to the model.
    off = await Cascade(tier("small", small), None).answer(
        question="What was Globex's revenue in fiscal 2019?", context=CONTEXT,
        config=ModuleConfig(abstain_below=0.0), calibration=None, trace=new_trace(),
    )
    assert off.decision != "abstained" and small.calls


async def test_a_failing_large_tier_degrades_to_the_small_answer() -> None:
    broken = ScriptedClient(error=ModelError("down", code="model_circuit_open"))
    trace = new_trace()
    out = await answer(tier("small", ScriptedClient(UNSURE, logprob=-2.5)), tier("large", broken), trace=trace)
    assert out.decision == "answered" and out.degraded and out.text == UNSURE
    assert broken.calls and trace.data["models"][-1]["error"] == "model_circuit_open"
    assert "model_circuit_open" in trace.data["decision"]["reason"]


async def test_a_missing_large_tier_degrades_when_escalation_is_needed() -> None:
    out = await answer(tier("small", ScriptedClient(GOOD)), None, config=ModuleConfig(escalate_below=1.0))
    assert out.decision == "answered" and out.degraded
    fine = await answer(tier("small", ScriptedClient(GOOD)), None, config=ModuleConfig(escalate_below=0.0))
    assert not fine.degraded


async def test_forced_modes_ask_one_tier_only() -> None:
    small, large = ScriptedClient(UNSURE, logprob=-2.5), ScriptedClient(GOOD)
    only_small = await answer(tier("small", small), tier("large", large), mode="small_only")
    assert only_small.decision == "answered" and large.calls == []
    only_large = await answer(tier("small", small), tier("large", large), mode="large_only")
    assert only_large.decision == "escalated" and len(small.calls) == 1 and len(large.calls) == 1
    with pytest.raises(ModelError):
        await answer(tier("small", small), None, mode="large_only")


def test_a_target_share_becomes_a_threshold_only_with_a_calibration() -> None:
    calibrator = Calibrator(features=["grounding"], coef=[1.0], intercept=0.0, mean=[0.0], scale=[1.0],
                            quantiles=[i / 100 for i in range(101)])
    stored = StoredCalibration(version=3, calibrator=calibrator, metrics={})
    config = ModuleConfig(escalate_below=0.5, escalation_target=0.3)
    assert escalation_threshold(config, stored) == pytest.approx(0.3)
    assert escalation_threshold(config, None) == 0.5
    assert escalation_threshold(ModuleConfig(escalate_below=0.7), stored) == 0.7


ADAPTER = "generic-0123456789ab"


async def test_a_calibration_fitted_with_another_adapter_is_not_used() -> None:
    # Fitted to give every answer confidence ~1: applied, it would answer without escalating.
    trusting = Calibrator(features=["grounding"], coef=[0.0], intercept=20.0, mean=[0.0], scale=[1.0],
                          quantiles=[i / 100 for i in range(101)])
    stored = StoredCalibration(version=4, calibrator=trusting, metrics={"fitted_with_adapter": ADAPTER})
    config = ModuleConfig(escalate_below=0.5)
    small, large = ScriptedClient(UNSURE, logprob=-2.5, loaded={ADAPTER}), ScriptedClient(GOOD)
    used = new_trace()
    out = await answer(tier("small", small), tier("large", large), config=config.model_copy(update={"adapter": ADAPTER}),
                       calibration=stored, trace=used)
    assert out.decision == "answered" and used.data["confidence"]["calibration_version"] == 4
    # The module switched back to the base model: the default confidence model decides, and the trace says why.
    skipped = new_trace()
    out = await answer(tier("small", small), tier("large", large), config=config, calibration=stored, trace=skipped)
    record = skipped.data["confidence"]
    assert out.decision == "escalated" and record["calibration_version"] is None
    assert record["calibration_skipped"] == (
        "version 4 was fitted on answers of adapter generic-0123456789ab, the module now uses the base model: recalibrate"
    )


async def test_a_calibration_fitted_with_other_settings_is_used_and_the_trace_says_so() -> None:
    trusting = Calibrator(features=["grounding"], coef=[0.0], intercept=20.0, mean=[0.0], scale=[1.0],
                          quantiles=[i / 100 for i in range(101)])
    fitted_with = {"max_chunks": 6, "context_tokens": 1200, "retrieval": "hybrid"}
    stored = StoredCalibration(version=5, calibrator=trusting,
                               metrics={"fitted_with_adapter": None, "fitted_with_settings": fitted_with})
    small, large = ScriptedClient(UNSURE, logprob=-2.5), ScriptedClient(GOOD)
    for config, stale in [
        (ModuleConfig(escalation_target=0.3), None),  # thresholds only read the confidence
        (ModuleConfig(max_chunks=2, context_tokens=600), "version 5 was fitted with other context_tokens, max_chunks: "
                                                         "its confidences may be off, recalibrate"),
    ]:
        trace = new_trace()
        out = await answer(tier("small", small), tier("large", large), config=config, calibration=stored, trace=trace)
        record = trace.data["confidence"]
        assert out.decision == "answered" and record["calibration_version"] == 5
        assert record.get("calibration_stale") == stale


async def test_the_small_model_answers_with_the_modules_adapter_and_the_trace_names_it() -> None:
    small, large = ScriptedClient(UNSURE, logprob=-2.5, loaded={ADAPTER}), ScriptedClient(GOOD)
    trace = new_trace()
    out = await answer(tier("small", small), tier("large", large), config=ModuleConfig(adapter=ADAPTER), trace=trace)
    assert small.adapters == [ADAPTER] and large.adapters == [None]
    assert [(m["tier"], m["adapter"]) for m in trace.data["models"]] == [("small", ADAPTER), ("large", None)]
    assert out.decision == "escalated" and not out.degraded and "adapter_missing" not in trace.data
    # Without an adapter in the config, the base model answers.
    base = ScriptedClient(GOOD, loaded={ADAPTER})
    plain = new_trace()
    await answer(tier("small", base), None, trace=plain)
    assert base.adapters == [None] and plain.data["models"][0]["adapter"] is None


async def test_a_missing_adapter_is_reloaded_once_and_the_question_retried() -> None:
    small = ScriptedClient(GOOD)
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)
        small.loaded.add(ADAPTER)

    trace = new_trace()
    out = await answer(tier("small", small), None, config=ModuleConfig(adapter=ADAPTER), trace=trace,
                       on_missing_adapter=reload)
    assert reloads == [1] and small.adapters == [ADAPTER, ADAPTER]
    assert [m.get("error") for m in trace.data["models"]] == ["adapter_not_found", None]
    assert out.decision == "answered" and out.text == GOOD and not out.degraded


async def test_an_adapter_still_missing_after_a_reload_leaves_the_base_model_answering_degraded() -> None:
    for reload_hook in (True, False):
        small = ScriptedClient(GOOD)
        reloads: list[int] = []

        async def reload() -> None:
            reloads.append(1)

        trace = new_trace()
        out = await answer(tier("small", small), None, config=ModuleConfig(adapter=ADAPTER), trace=trace,
                           on_missing_adapter=reload if reload_hook else None)
        tries = [ADAPTER, ADAPTER] if reload_hook else [ADAPTER]
        assert reloads == ([1] if reload_hook else []) and small.adapters == [*tries, None]
        assert out.decision == "answered" and out.text == GOOD and out.degraded
        assert trace.data["adapter_missing"] == ADAPTER and trace.data["decision"]["degraded"]
        assert ADAPTER in trace.data["decision"]["reason"]
        assert [m["adapter"] for m in trace.data["models"]] == [*tries, None]


async def test_other_model_errors_with_an_adapter_are_not_retried() -> None:
    small = ScriptedClient(error=ModelError("down", code="model_timeout"), loaded={ADAPTER})
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)

    with pytest.raises(ModelError) as raised:
        await answer(tier("small", small), None, config=ModuleConfig(adapter=ADAPTER), on_missing_adapter=reload)
    assert raised.value.code == "model_timeout" and reloads == [] and small.adapters == [ADAPTER]


class BlankFirstClient(ScriptedClient):
    """A base model that opens with a blank line: empty under a "\\n\\n" stop, rambling without."""

    def __init__(self, text: str):
        super().__init__(text)
        self.stops: list[list[str]] = []

    async def chat(self, messages, *, max_tokens: int, stop=None, adapter: AdapterRef | None = None) -> ChatResult:
        self.stops.append(list(stop or []))
        if "\n\n" in (stop or []):
            return ChatResult(text="", tokens=[TokenLogprob("\n\n", -0.4)], prompt_tokens=1000, completion_tokens=1,
                              latency_ms=3.0, model="small-model", finish_reason="stop")
        pieces = ["\n\n", *self.text.split(" "), "\n\n", "More", " text"]
        tokens = [TokenLogprob(p if i < 2 else " " + p, -0.05) for i, p in enumerate(pieces)]
        return ChatResult(text="".join(t.token for t in tokens), tokens=tokens, prompt_tokens=1000,
                          completion_tokens=len(tokens), latency_ms=3.0, model="small-model", finish_reason="length")


async def test_an_answer_a_blank_line_stopped_is_asked_again_and_cut_at_the_next_stop() -> None:
    small = BlankFirstClient(GOOD)
    trace = new_trace()
    settings = ModelTier(url="http://x/v1", model="small-model", stop=["\n\n", "\nQuestion:"])
    out = await answer(ModelTierClient(name="small", tier=settings, client=small), None, trace=trace)  # type: ignore[arg-type]
    assert small.stops == [["\n\n", "\nQuestion:"], ["\nQuestion:"]]
    assert out.text.strip() == GOOD and out.decision == "answered"
    assert trace.data["confidence"]["features"]["grounding"] == 1.0
    assert [m["completion_tokens"] for m in trace.data["models"]] == [1, len(GOOD.split(" ")) + 4]


def test_cut_at_stop_drops_leading_whitespace_and_what_follows_the_first_stop() -> None:
    tokens = [TokenLogprob(t, -0.1) for t in ["\n", "\n", "Yes", " [1].", "\n\n", "Question", ":"]]
    result = ChatResult(text="".join(t.token for t in tokens), tokens=tokens, prompt_tokens=5, completion_tokens=7,
                        latency_ms=1.0, model="m", finish_reason="length")
    cut = cut_at_stop(result, ["\n\n", "\nQuestion:"])
    assert cut.text == "Yes [1]." and [t.token for t in cut.tokens] == ["Yes", " [1]."]
    assert cut.completion_tokens == 7
    assert cut_at_stop(result, ["nowhere"]).text == result.text.lstrip()
