"""Generative models: GGUF resolution, and `ChatClient` against a real llama-server.

The integration tests start llama-server on Gemma 3 270M (assembled from its PyPI
packages into `.cache/models`, kept between runs) with a synthetic LoRA adapter, and
are skipped when llama-server is not built. The unit tests here use a fake model
registry and a mocked HTTP transport.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from core import models
from core.errors import ModelError
from core.llm import AdapterRef, ChatClient
from core.models import ModelSpec, resolve_gguf
from core.runtime import LlamaServer, find_llama_server
from core.settings import ModelTier

MODEL_CACHE = Path(os.environ.get("SIEVE_TEST_MODEL_CACHE", Path(__file__).parents[2] / ".cache" / "models"))

RAG_MESSAGES = [
    {"role": "system", "content": "Answer the question using only the context. Be brief."},
    {
        "role": "user",
        "content": "Context:\n[1] Acme Corp reported revenue of $4.2 billion in fiscal 2023, up 8% from 2022.\n"
        "[2] Acme's headquarters are in Denver, Colorado.\n\n"
        "Question: What was Acme Corp's revenue in fiscal 2023?",
    },
]


# resolve_gguf on a fake registry entry ------------------------------------------------


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    parts = []
    for i in range(3):
        part = tmp_path / "pkg" / f"part{i:02d}.bin"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(os.urandom(100_000 + i))
        parts.append(part)
    whole = b"".join(p.read_bytes() for p in parts)
    spec = ModelSpec(
        key="fake",
        filename="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=lambda: parts,
        packages="fake-parts",
    )
    monkeypatch.setitem(models.MODELS, "fake", spec)
    return spec


def _forbid(name: str):
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} must not run")

    return fail


@pytest.mark.unit
def test_resolve_assembles_once_then_skips_hashing(
    fake_model: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    path = resolve_gguf("fake", cache)
    assert path == cache / "fake.gguf" and path.stat().st_size == fake_model.size
    assert {p.name for p in cache.iterdir()} == {"fake.gguf", "fake.gguf.verified"}  # no temp file left

    monkeypatch.setattr(models, "_sha256", _forbid("hashing"))
    monkeypatch.setattr(models, "_assemble", _forbid("assembly"))
    assert resolve_gguf("fake", cache) == path


@pytest.mark.unit
def test_resolve_rehashes_a_changed_file_and_repairs_it(fake_model: ModelSpec, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = resolve_gguf("fake", cache)
    path.write_bytes(b"\0" * fake_model.size)  # same size, new mtime, wrong content
    assert resolve_gguf("fake", cache) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_model.sha256


@pytest.mark.unit
def test_resolve_refuses_a_hash_mismatch_and_leaves_no_file(
    fake_model: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = ModelSpec(**{**fake_model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(models.MODELS, "fake", wrong)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as err:
        resolve_gguf("fake", cache)
    assert err.value.code == "model_checksum_mismatch" and "expected 000" in err.value.message
    assert list(cache.iterdir()) == []


@pytest.mark.unit
def test_resolve_takes_a_path_and_rejects_unknown_keys(tmp_path: Path) -> None:
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert resolve_gguf(str(own), tmp_path / "cache") == own
    with pytest.raises(ModelError, match="neither a model key"):
        resolve_gguf("no-such-model", tmp_path / "cache")


# adapter selection against a mocked endpoint ------------------------------------------

CHAT_BODY = {
    "model": "m",
    "choices": [
        {
            "message": {"role": "assistant", "content": "4.2"},
            "finish_reason": "stop",
            "logprobs": {
                "content": [
                    {
                        "token": "4",
                        "logprob": -0.1,
                        "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": "$", "logprob": -2.5}],
                    },
                    {"token": ".2", "logprob": -0.2, "top_logprobs": [{"token": ".2", "logprob": -0.2}]},
                ]
            },
        }
    ],
    "usage": {"prompt_tokens": 30, "completion_tokens": 2},
}


def _recording_transport(lora_adapters: list[dict[str, object]]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/lora-adapters":
            return httpx.Response(200, json=lora_adapters)
        return httpx.Response(200, json=CHAT_BODY)

    return httpx.MockTransport(handle), seen


@pytest.mark.unit
async def test_embedded_server_gets_a_per_request_lora_list() -> None:
    adapters = [{"id": 0, "path": "/d/finance-v1.gguf", "scale": 0.0}, {"id": 1, "path": "/d/legal.gguf", "scale": 0.0}]
    transport, seen = _recording_transport(adapters)
    tier = ModelTier(model="m", gguf="x")
    async with ChatClient(tier, url="http://127.0.0.1:9/v1", transport=transport) as client:
        result = await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("legal", scale=0.5))
        await client.chat(RAG_MESSAGES, max_tokens=8)
        with pytest.raises(ModelError) as err:
            await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("medical"))
    assert [r.url.path for r in seen] == ["/lora-adapters", "/v1/chat/completions"] * 2 + ["/lora-adapters"]
    tuned, base = json.loads(seen[1].content), json.loads(seen[3].content)
    assert tuned["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.5}]
    assert base["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}], "the base model, explicitly"
    assert tuned["cache_prompt"] is False
    assert tuned["model"] == "m" and tuned["logprobs"] is True and tuned["top_logprobs"] == 5
    assert err.value.code == "adapter_not_found" and not err.value.retryable
    assert result.text == "4.2" and [t.token for t in result.tokens] == ["4", ".2"]
    assert result.tokens[0].top == [("4", -0.1), ("$", -2.5)]


@pytest.mark.unit
async def test_other_endpoints_get_the_adapter_as_model_name() -> None:
    transport, seen = _recording_transport([])
    tier = ModelTier(url="http://vllm:8000/v1", model="base")
    async with ChatClient(tier, transport=transport) as client:
        await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("finance-v1"))
    assert len(seen) == 1 and seen[0].url.path == "/v1/chat/completions"
    body = json.loads(seen[0].content)
    assert body["model"] == "finance-v1" and "lora" not in body and "cache_prompt" not in body


# a real llama-server -------------------------------------------------------------------


def write_lora_gguf(path: Path, tensors: dict[str, np.ndarray], *, arch: str, alpha: float) -> None:
    """A minimal GGUF v3 LoRA adapter (F32 tensors), as convert_lora_to_gguf.py writes one."""

    def text(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    def pad(n: int) -> int:
        return -n % 32  # GGUF's default alignment

    kv = [
        text("general.architecture") + struct.pack("<I", 8) + text(arch),
        text("general.type") + struct.pack("<I", 8) + text("adapter"),
        text("adapter.type") + struct.pack("<I", 8) + text("lora"),
        text("adapter.lora.alpha") + struct.pack("<I", 6) + struct.pack("<f", alpha),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        dims = list(reversed(array.shape))  # GGUF lists ne0 (the contiguous axis) first
        head += text(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", 0, offset)  # type 0 = F32
        blobs.append(data + b"\0" * pad(len(data)))
        offset += len(blobs[-1])
    path.write_bytes(head + b"\0" * pad(len(head)) + b"".join(blobs))


def gemma_probe_adapter(path: Path) -> Path:
    """Random rank-8 deltas on every attention query projection of Gemma 3 270M
    (hidden 640, 4 heads x 256), strong enough to change the answer."""
    rng = np.random.default_rng(0)
    rank = 8
    tensors = {}
    for layer in range(18):
        tensors[f"blk.{layer}.attn_q.weight.lora_a"] = rng.normal(0, 0.2, (rank, 640))
        tensors[f"blk.{layer}.attn_q.weight.lora_b"] = rng.normal(0, 0.2, (1024, rank))
    write_lora_gguf(path, tensors, arch="gemma3", alpha=rank)
    return path


@pytest.fixture(scope="module")
def gemma_gguf() -> Path:
    try:
        find_llama_server()
    except ModelError as e:
        pytest.skip(e.message)
    return resolve_gguf("gemma3-270m", MODEL_CACHE)


@pytest_asyncio.fixture(scope="module")
async def llama(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaServer]:
    data_dir = tmp_path_factory.mktemp("llama")
    adapter = gemma_probe_adapter(data_dir / "probe.gguf")
    server = LlamaServer(
        gemma_gguf, data_dir=data_dir, alias="gemma-3-270m", ctx_tokens=2048, threads=1, adapters=[adapter]
    )
    await server.start(timeout_s=180)
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def client(llama: LlamaServer) -> AsyncIterator[ChatClient]:
    tier = ModelTier(model="gemma-3-270m", gguf="gemma3-270m", timeout_s=120.0)
    async with ChatClient(tier, url=llama.url) as c:
        yield c


@pytest.mark.integration
def test_second_resolve_of_the_real_model_is_fast(gemma_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_sha256", _forbid("hashing"))
    started = time.perf_counter()
    assert resolve_gguf("gemma3-270m", MODEL_CACHE) == gemma_gguf
    assert time.perf_counter() - started < 0.5


@pytest.mark.integration
async def test_chat_returns_logprobs_for_every_generated_token(client: ChatClient) -> None:
    result = await client.chat(RAG_MESSAGES, max_tokens=24)
    assert result.text.strip()
    assert result.model == "gemma-3-270m"
    assert result.completion_tokens == len(result.tokens) > 0
    assert result.prompt_tokens > 40
    assert result.finish_reason in {"stop", "length"}
    for token in result.tokens:
        assert token.logprob <= 0.0
        assert 1 <= len(token.top) <= 5
        logprobs = [lp for _, lp in token.top]
        assert logprobs == sorted(logprobs, reverse=True)
        # Greedy decoding picks the most likely token.
        assert token.token == token.top[0][0]
    assert result.timings["predicted_n"] == result.completion_tokens


@pytest.mark.integration
async def test_temperature_zero_is_deterministic(client: ChatClient) -> None:
    first = await client.chat(RAG_MESSAGES, max_tokens=24)
    second = await client.chat(RAG_MESSAGES, max_tokens=24)
    assert first.text == second.text
    assert [t.token for t in first.tokens] == [t.token for t in second.tokens]
    assert [t.logprob for t in first.tokens] == [t.logprob for t in second.tokens]


@pytest.mark.integration
async def test_count_tokens(client: ChatClient) -> None:
    short = await client.count_tokens("Acme Corp reported revenue")
    assert 3 <= short <= 8
    assert await client.count_tokens("Acme Corp reported revenue " * 10) > 8 * short
    assert await client.count_tokens("") == 0


@pytest.mark.integration
async def test_health(client: ChatClient) -> None:
    health = await client.health()
    assert health.ok, health.detail


@pytest.mark.integration
async def test_lora_adapter_is_applied_per_request(client: ChatClient) -> None:
    assert await client.lora_adapters() == {"probe": 0}
    base = await client.chat(RAG_MESSAGES, max_tokens=8)
    tuned = await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("probe"))
    off = await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("probe", scale=0.0))
    after = await client.chat(RAG_MESSAGES, max_tokens=8)
    assert [t.logprob for t in tuned.tokens] != pytest.approx([t.logprob for t in base.tokens], abs=1e-3)
    assert [t.logprob for t in off.tokens] == [t.logprob for t in base.tokens], "scale 0 is the base model"
    assert [t.logprob for t in after.tokens] == [t.logprob for t in base.tokens], "no adapter state leaks"
    with pytest.raises(ModelError, match="not loaded"):
        await client.chat(RAG_MESSAGES, max_tokens=8, adapter=AdapterRef("missing"))


@pytest.mark.integration
async def test_restart_loads_another_adapter_set_on_the_same_url(llama: LlamaServer, client: ChatClient) -> None:
    url = llama.url
    await llama.restart(adapters=[])
    assert llama.url == url
    assert await client.lora_adapters() == {}
    assert (await client.chat(RAG_MESSAGES, max_tokens=4)).tokens


@pytest.mark.integration
async def test_a_server_that_cannot_start_raises_with_its_log(gemma_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    server = LlamaServer(broken, data_dir=tmp_path)
    with pytest.raises(ModelError, match="exited with code") as err:
        await server.start(timeout_s=60)
    assert str(server.log_path) in err.value.message
    assert not server.running
