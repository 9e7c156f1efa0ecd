"""The client for generative models: OpenAI-compatible `/v1/chat/completions` over HTTP.

One `ChatClient` serves one `ModelTier`: the embedded llama.cpp server (`tier.url` is
None; `core/runtime.py` starts it and passes its URL) or any OpenAI-compatible
endpoint (vLLM, a hosted API). Every result carries per-token log-probabilities with
the top alternatives, which confidence scoring and escalation read.

Failures are wrapped in `ModelError`. Transient ones (connection errors, 429, 5xx) are
retried with exponential backoff; a `CircuitBreaker` makes a failing endpoint fail fast
for a cool-down, so callers degrade (answer without the model, or escalate) at once
instead of waiting on timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import PurePosixPath
from typing import Any, Literal

import httpx

from core.errors import ModelError
from core.settings import ModelTier

log = logging.getLogger(__name__)


class CircuitState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Fails fast after `failure_threshold` consecutive failures, for `reset_after_s`.

    Closed: every call is allowed. Open: calls are refused until the cool-down ends.
    Half-open: one probe call is allowed; its success closes the circuit, its failure
    opens it again. A probe whose outcome is never recorded (cancelled) does not wedge
    the breaker: another probe is allowed after a further cool-down. `clock` is
    injectable for tests (seconds, monotonic).
    """

    def __init__(
        self, failure_threshold: int = 5, reset_after_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def retry_after_s(self) -> float:
        """Seconds until the next call is allowed (0 when one is allowed now)."""
        if self._state is CircuitState.CLOSED:
            return 0.0
        return max(0.0, self._opened_at + self.reset_after_s - self._clock())

    def allow(self) -> bool:
        """Whether a call may go ahead now; moves an expired open circuit to half-open."""
        if self._state is CircuitState.CLOSED:
            return True
        now = self._clock()
        if now - self._opened_at < self.reset_after_s:
            return False
        self._state = CircuitState.HALF_OPEN
        self._opened_at = now  # the next probe waits a full cool-down unless this one succeeds
        return True

    def record_success(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()


@dataclass(frozen=True)
class AdapterRef:
    """A fine-tuned LoRA adapter to apply to one request.

    `name`: for the embedded llama-server, the stem of the adapter file it was started
    with (`finance-v3` for `finance-v3.gguf`); for other endpoints, the model name the
    adapter is served under (vLLM's `--lora-modules name=path`). `scale` is honoured by
    llama-server only.
    """

    name: str
    scale: float = 1.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its natural-log probability, and the top alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ChatResult:
    """A completed chat request. `timings` holds llama-server's own measurements
    (`prompt_per_second`, `predicted_per_second`, ...) and is empty for other endpoints."""

    text: str
    tokens: list[TokenLogprob]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    finish_reason: str | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelHealth:
    ok: bool
    detail: str
    circuit: CircuitState
    latency_ms: float


# Network failures worth a retry: nothing (or only part of a response) came back, so
# the request can be sent again; chat completions have no side effects.
_TRANSIENT_ERRORS = (httpx.ConnectTimeout, httpx.NetworkError, httpx.RemoteProtocolError)


class ChatClient:
    """Async client for one model tier. Use as `async with ChatClient(tier) as client`.

    `url` overrides `tier.url` (the embedded server's URL, ending in `/v1`).
    `adapters_via` says how an `AdapterRef` is selected: `"lora"` sends llama-server's
    per-request `lora` list, `"model"` sends the adapter name as `model` (vLLM);
    the default is `tier.adapters_via`, else `"lora"` for the embedded server (`tier.url`
    is None) and `"model"` for other endpoints.
    """

    def __init__(
        self,
        tier: ModelTier,
        *,
        url: str | None = None,
        adapters_via: Literal["lora", "model"] | None = None,
        breaker: CircuitBreaker | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        base = url or tier.url
        if not base:
            raise ValueError(f"tier {tier.model!r} has no url: start the embedded server and pass its url")
        self.tier = tier
        self.url = base.rstrip("/")
        # llama-server's own endpoints (/health, /tokenize, /lora-adapters) sit at the root.
        self.root_url = self.url.removesuffix("/v1")
        self.adapters_via = adapters_via or tier.adapters_via or ("lora" if tier.url is None else "model")
        self.breaker = breaker or CircuitBreaker()
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        headers = {"Authorization": f"Bearer {tier.api_key.get_secret_value()}"} if tier.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(tier.timeout_s, connect=min(tier.timeout_s, 5.0)),
            transport=transport,
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        logprobs: bool = True,
        top_logprobs: int = 5,
        adapter: AdapterRef | None = None,
        response_format: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        """One chat completion. `messages` are OpenAI-style `{"role", "content"}` dicts;
        `extra_body` adds endpoint-specific fields (llama-server: `cache_prompt`,
        `ignore_eos`, `seed`). Raises `ModelError`."""
        payload: dict[str, Any] = {
            "model": self.tier.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        if stop:
            payload["stop"] = list(stop)
        if logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = top_logprobs
        if response_format is not None:
            payload["response_format"] = dict(response_format)
        if self.adapters_via == "lora":
            payload.update(await self._llama_server_fields(adapter))
        elif adapter is not None:
            payload["model"] = adapter.name
        if extra_body:
            payload.update(extra_body)

        started = time.perf_counter()
        response = await self._request("POST", f"{self.url}/chat/completions", json=payload)
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            return _parse_chat(response.json(), latency_ms=latency_ms, requested_model=payload["model"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"{self.tier.model}: malformed chat response: {e}", code="model_bad_response") from e

    async def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's vocabulary (no special tokens added),
        from the endpoint's `/tokenize` (llama-server and vLLM both have one)."""
        if self.adapters_via == "lora":
            data = (await self._request("POST", f"{self.root_url}/tokenize", json={"content": text})).json()
            return len(data["tokens"])
        body = {"model": self.tier.model, "prompt": text, "add_special_tokens": False}
        data = (await self._request("POST", f"{self.root_url}/tokenize", json=body)).json()
        return int(data["count"])

    async def lora_adapters(self) -> dict[str, int]:
        """The adapters the embedded llama-server has loaded: name (file stem) -> id."""
        data = (await self._request("GET", f"{self.root_url}/lora-adapters")).json()
        return {PurePosixPath(a["path"]).stem: int(a["id"]) for a in data}

    async def health(self) -> ModelHealth:
        """Probe the endpoint (`/health`, else `/v1/models`). Never raises, and is not
        gated by the circuit breaker, so it shows the endpoint's real state."""
        started = time.perf_counter()
        detail = ""
        ok = False
        for probe in (f"{self.root_url}/health", f"{self.url}/models"):
            try:
                response = await self._http.get(probe)
            except httpx.HTTPError as e:
                detail = f"{type(e).__name__}: {e}"
                break
            ok = response.is_success
            detail = f"{probe}: HTTP {response.status_code}"
            if response.status_code != 404:
                break
        return ModelHealth(
            ok=ok,
            detail=detail,
            circuit=self.breaker.state,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def _llama_server_fields(self, adapter: AdapterRef | None) -> dict[str, Any]:
        """llama-server's `lora` and `cache_prompt` fields for one request.

        In llama-server 11434 a request without a `lora` list keeps the slot's cached
        prompt even if it was computed with another adapter, and a prompt read back
        from the cache gives log-probabilities up to ~0.08 off those of a fresh one.
        So the list is always explicit (every loaded adapter, the chosen one at its
        scale, the others at 0: a change clears the cache) and prompt reuse is off
        (`extra_body={"cache_prompt": True}` turns it back on): identical requests
        score identically. Adapters are looked up on every request, a local call of
        about a millisecond, so ids stay right after a restart with another set.
        """
        fields: dict[str, Any] = {"cache_prompt": False}
        ids = await self.lora_adapters()
        if adapter is not None and adapter.name not in ids:
            raise _not_retryable(
                ModelError(
                    f"{self.tier.model}: adapter {adapter.name!r} is not loaded (loaded: {sorted(ids) or 'none'})",
                    code="adapter_not_found",
                )
            )
        if ids:
            fields["lora"] = [
                {"id": i, "scale": adapter.scale if adapter and name == adapter.name else 0.0} for name, i in ids.items()
            ]
        return fields

    async def _request(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        attempts = 1 + max(0, self.tier.retries)
        failure = ""
        cause: Exception | None = None
        for attempt in range(attempts):
            if not self.breaker.allow():
                raise ModelError(
                    f"{self.tier.model} is unavailable after repeated failures (last: {failure or 'earlier calls'}); "
                    f"next try in {self.breaker.retry_after_s:.0f} s",
                    code="model_circuit_open",
                ) from cause
            delay = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
            try:
                response = await self._http.request(method, url, json=json)
            except _TRANSIENT_ERRORS as e:
                self.breaker.record_failure()
                failure, cause = f"{type(e).__name__}: {e}", e
            except httpx.TimeoutException as e:
                # A read timeout means the model is too slow for this request; sending it
                # again would only double the wait.
                self.breaker.record_failure()
                raise ModelError(
                    f"{self.tier.model} timed out after {self.tier.timeout_s:.0f} s", code="model_timeout"
                ) from e
            except httpx.HTTPError as e:
                self.breaker.record_failure()
                raise ModelError(f"{self.tier.model}: {type(e).__name__}: {e}") from e
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    self.breaker.record_failure()
                    failure, cause = f"HTTP {status}: {_error_text(response)}", None
                    delay = _retry_after(response) or delay
                elif status >= 400:
                    # The endpoint is up and refused this request (context too long, bad
                    # schema): not its health, and the same request would fail again.
                    self.breaker.record_success()
                    raise _not_retryable(
                        ModelError(
                            f"{self.tier.model} refused the request: HTTP {status}: {_error_text(response)}",
                            code="model_bad_request",
                        )
                    )
                else:
                    self.breaker.record_success()
                    return response
            if attempt + 1 < attempts:
                log.warning("%s %s failed (%s); retry %d/%d", method, url, failure, attempt + 1, attempts - 1)
                await asyncio.sleep(min(delay, self.max_backoff_s))
        raise ModelError(f"{self.tier.model}: {failure} (after {attempts} attempts)") from cause


async def chat_past_a_blank_opening(
    chat: Callable[[list[str]], Awaitable[ChatResult]], stops: Sequence[str]
) -> ChatResult:
    """`chat(stops)`, asked once more if its answer is empty because it opened with a stop.

    A base model sometimes opens its answer with a blank line, which a whitespace stop
    sequence (the small tier's "\\n\\n") ends at once: such an answer is asked for again
    without the whitespace stops and cut at the first stop after its text begins."""
    result = await chat(list(stops))
    blank = [s for s in stops if not s.strip()]
    if result.text.strip() or result.finish_reason != "stop" or not blank:
        return result
    return cut_at_stop(await chat([s for s in stops if s.strip()]), stops)


def cut_at_stop(result: ChatResult, stops: Sequence[str]) -> ChatResult:
    """`result` without leading whitespace, ended where the first of `stops` occurs after its
    text begins (what the server's stop sequences would do had the text not opened with one);
    its tokens are those that began before the cut, `completion_tokens` stays what was generated."""
    begin = len(result.text) - len(result.text.lstrip())
    cut = min((i for i in (result.text.find(s, begin) for s in stops if s) if i >= 0), default=len(result.text))
    tokens, offset = [], 0
    for token in result.tokens:
        if offset >= cut:
            break
        if offset + len(token.token) > begin:
            tokens.append(token)
        offset += len(token.token)
    return replace(result, text=result.text[begin:cut], tokens=tokens)


def _parse_chat(data: Mapping[str, Any], *, latency_ms: float, requested_model: str) -> ChatResult:
    choice = data["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = [
        TokenLogprob(
            token=t["token"],
            logprob=float(t["logprob"]),
            top=[(a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or []],
        )
        for t in content
    ]
    usage = data.get("usage") or {}
    return ChatResult(
        text=choice["message"].get("content") or "",
        tokens=tokens,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", len(tokens))),
        latency_ms=latency_ms,
        model=data.get("model") or requested_model,
        finish_reason=choice.get("finish_reason"),
        timings={k: float(v) for k, v in (data.get("timings") or {}).items() if isinstance(v, int | float)},
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message or response.text)[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def _not_retryable(error: ModelError) -> ModelError:
    # ModelError is retryable by default (an unavailable endpoint); a refused request
    # or an unknown adapter is not.
    error.retryable = False
    return error
