"""The bundled Valkey: starts, answers PING, persists across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.errors import QueueError
from core.runtime import ValkeyServer, ensure_redis, find_valkey_server, free_port, ping_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def valkey_binary() -> Path:
    try:
        return find_valkey_server()
    except QueueError as e:
        pytest.skip(str(e))


async def test_valkey_answers_ping_and_persists_across_restart(tmp_path: Path) -> None:
    server = ValkeyServer(data_dir=tmp_path)
    await server.start(timeout_s=30)
    try:
        assert server.running and await ping_redis(server.url)
        client = aioredis.from_url(server.url)
        await client.set("sieve:test", "kept")
        await client.aclose()
    finally:
        await server.stop()
    assert not server.running
    assert not await ping_redis(server.url)
    assert (tmp_path / "logs" / "valkey.log").read_text().strip()

    again = ValkeyServer(data_dir=tmp_path)  # a new port, the same append-only file
    await again.start(timeout_s=30)
    try:
        client = aioredis.from_url(again.url)
        assert await client.get("sieve:test") == b"kept"
        await client.aclose()
    finally:
        await again.stop()


async def test_ensure_redis_prefers_a_live_url_and_falls_back_to_valkey(tmp_path: Path) -> None:
    embedded = await ensure_redis(None, tmp_path)
    try:
        assert embedded.server is not None and await ping_redis(embedded.url)
        external = await ensure_redis(embedded.url, tmp_path / "unused")
        assert external.server is None and external.url == embedded.url
    finally:
        await embedded.server.stop()

    dead = f"redis://127.0.0.1:{free_port()}/0"
    fallback = await ensure_redis(dead, tmp_path)
    try:
        assert fallback.server is not None and fallback.url != dead
    finally:
        await fallback.server.stop()
