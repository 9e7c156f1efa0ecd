"""A llama-index key-value store on the metadata database.

llama-index's document store (content-hash de-duplication) and ingestion cache (transform
caching) both sit on a `BaseKVStore`; this one keeps them in the same SQLite/PostgreSQL
database as the rest of Sieve's metadata, so they survive restarts and are shared by all
workers. Synchronous: the ingestion pipeline runs in worker threads.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import JSON, Column, MetaData, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from llama_index.core.storage.kvstore.types import DEFAULT_COLLECTION, BaseKVStore

_metadata = MetaData()
kv_table = Table(
    "llama_kv",
    _metadata,
    Column("collection", String(256), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", JSON, nullable=False),
)


class SqlKVStore(BaseKVStore):
    """`BaseKVStore` over one SQL table keyed by (collection, key)."""

    def __init__(self, engine: Engine):
        self._engine = engine
        _metadata.create_all(engine)

    def _upsert(self, rows: list[dict]) -> None:
        dialect = self._engine.dialect.name
        insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[dialect]
        stmt = insert(kv_table).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=["collection", "key"], set_={"value": stmt.excluded.value})
        with self._engine.begin() as conn:
            conn.execute(stmt)

    def put(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self._upsert([{"collection": collection, "key": key, "value": val}])

    def put_all(self, kv_pairs, collection: str = DEFAULT_COLLECTION, batch_size: int = 500) -> None:
        pairs = list(kv_pairs)
        for start in range(0, len(pairs), batch_size):
            self._upsert([{"collection": collection, "key": k, "value": v} for k, v in pairs[start : start + batch_size]])

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        with self._engine.connect() as conn:
            return conn.execute(
                select(kv_table.c.value).where(kv_table.c.collection == collection, kv_table.c.key == key)
            ).scalar_one_or_none()

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(kv_table.c.key, kv_table.c.value).where(kv_table.c.collection == collection))
            return {key: value for key, value in rows}

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(kv_table).where(kv_table.c.collection == collection, kv_table.c.key == key)
            )
            return result.rowcount > 0

    def delete_collection(self, collection: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(kv_table).where(kv_table.c.collection == collection))

    # The async variants run the synchronous driver in a thread, off the event loop.
    async def aput(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        await asyncio.to_thread(self.put, key, val, collection)

    async def aput_all(self, kv_pairs, collection: str = DEFAULT_COLLECTION, batch_size: int = 500) -> None:
        await asyncio.to_thread(self.put_all, kv_pairs, collection, batch_size)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        return await asyncio.to_thread(self.get, key, collection)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return await asyncio.to_thread(self.get_all, collection)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return await asyncio.to_thread(self.delete, key, collection)
