"""The circuit breaker, and how `ChatClient` retries, fails fast and degrades."""

from __future__ import annotations

import time

import httpx
import pytest

from core.errors import ModelError
from core.llm import ChatClient, CircuitBreaker, CircuitState
from core.runtime import free_port
from core.settings import ModelTier

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_after_s=30.0, clock=clock)


def test_closed_until_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_open_refuses_until_cool_down_then_allows_one_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(29.9)
    assert not breaker.allow()
    assert breaker.retry_after_s == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow(), "only one probe while half-open"


def test_probe_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_probe_failure_reopens_for_a_full_cool_down(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(30)
    assert breaker.allow()
    clock.advance(5)
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_lost_probe_does_not_wedge_the_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(30)
    assert breaker.allow()  # the probe is cancelled and never reports
    clock.advance(30)
    assert breaker.allow()


# ChatClient's failure handling ------------------------------------------------------

OK_BODY = {
    "model": "m",
    "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def tier(url: str, retries: int = 1) -> ModelTier:
    return ModelTier(url=url, model="m", retries=retries, timeout_s=5.0)


def scripted(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


async def test_closed_port_fails_fast_and_opens_the_breaker() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    async with ChatClient(tier(url, retries=1), breaker=breaker, backoff_s=0.01) as client:
        started = time.monotonic()
        with pytest.raises(ModelError) as first:
            await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
        assert time.monotonic() - started < 2.0
        assert first.value.retryable
        assert breaker.state is CircuitState.OPEN

        started = time.monotonic()
        with pytest.raises(ModelError) as second:
            await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
        assert second.value.code == "model_circuit_open"
        assert time.monotonic() - started < 0.05

        health = await client.health()
        assert not health.ok and health.circuit is CircuitState.OPEN


async def test_5xx_is_retried_then_succeeds() -> None:
    transport, seen = scripted(
        httpx.Response(503, json={"error": {"message": "Loading model"}}), httpx.Response(200, json=OK_BODY)
    )
    async with ChatClient(tier("http://x/v1"), transport=transport, backoff_s=0.01) as client:
        result = await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert result.text == "hi" and result.prompt_tokens == 3
    assert len(seen) == 2


async def test_4xx_is_not_retried_and_not_retryable() -> None:
    transport, seen = scripted(httpx.Response(400, json={"error": {"message": "exceeds the context size"}}))
    breaker = CircuitBreaker(failure_threshold=1)
    async with ChatClient(tier("http://x/v1"), transport=transport, breaker=breaker, backoff_s=0.01) as client:
        with pytest.raises(ModelError) as err:
            await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert err.value.code == "model_bad_request" and not err.value.retryable
    assert "context size" in err.value.message
    assert len(seen) == 1
    assert breaker.state is CircuitState.CLOSED, "a refused request says nothing about the endpoint's health"
