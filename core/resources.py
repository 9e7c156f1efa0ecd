"""Process-wide handles to everything Sieve talks to, opened once and closed once.

`Resources.open` starts what the embedded default needs (a bundled Valkey when no Redis
answers, llama.cpp servers for model tiers without a URL) and connects to the rest.
The API process and a standalone worker both build one; in the embedded default the
worker runs inside the API process and shares it (the embedded Qdrant engine allows one
owning process per folder).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.embeddings import Embedder, get_embedder
from core.kvstore import SqlKVStore
from core.llm import ChatClient
from core.runtime import LlamaServer, ValkeyServer, ensure_redis, start_embedded_model
from core.settings import ModelTier, Settings
from core.vectorstore import VectorStore, open_vector_store

log = logging.getLogger(__name__)


@dataclass
class ModelTierClient:
    """A tier's client, and the embedded server behind it if Sieve started one."""

    name: str
    tier: ModelTier
    client: ChatClient
    server: LlamaServer | None = None


@dataclass
class Resources:
    settings: Settings
    db: AsyncEngine
    sync_db: Engine
    kv: SqlKVStore
    store: VectorStore
    embedder: Embedder
    redis: ArqRedis
    redis_url: str
    small: ModelTierClient | None = None
    large: ModelTierClient | None = None
    _valkey: ValkeyServer | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings, *, models: bool = True) -> Resources:
        """Connect to (or start) every dependency. `models=False` skips the generative tiers."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.create_engine_async(settings.resolved_database_url())
        await db.create_schema(engine)
        sync_engine = db.create_engine_sync(settings.resolved_database_url())
        redis = await ensure_redis(settings.redis_url, settings.data_dir)
        log.info("loading embedding model %s", settings.embedding_model)
        embedder = await asyncio.to_thread(
            get_embedder, settings.embedding_model, settings.embed_batch_size, settings.torch_threads
        )
        resources = cls(
            settings=settings,
            db=engine,
            sync_db=sync_engine,
            kv=SqlKVStore(sync_engine),
            store=open_vector_store(settings),
            embedder=embedder,
            redis=await create_pool(RedisSettings.from_dsn(redis.url)),
            redis_url=redis.url,
            _valkey=redis.server,
        )
        if models:
            try:
                resources.small = await _open_tier("small", settings.small, settings)
                if settings.serve_large or settings.large.url:
                    resources.large = await _open_tier("large", settings.large, settings)
            except BaseException:
                await resources.close()
                raise
        return resources

    async def close(self) -> None:
        for tier in (self.small, self.large):
            if tier:
                await tier.client.aclose()
                if tier.server:
                    await tier.server.stop()
        await self.redis.aclose()
        await asyncio.to_thread(self.store.close)
        await self.db.dispose()
        self.sync_db.dispose()
        if self._valkey:
            await self._valkey.stop()


async def _open_tier(name: str, tier: ModelTier, settings: Settings) -> ModelTierClient:
    server = None
    if not tier.url:
        log.info("starting the embedded %s model %s", name, tier.model)
        server = await start_embedded_model(
            tier, settings.data_dir, name=name, models_dir=settings.resolved_models_dir
        )
    client = ChatClient(tier, url=server.url if server else None)
    return ModelTierClient(name=name, tier=tier, client=client, server=server)
