"""The metadata database: collections, documents, jobs, config revisions, traces, adapters.

SQLite in the data folder by default, PostgreSQL when `SIEVE_DATABASE_URL` says so; the
same SQLAlchemy Core tables serve both. Every row that belongs to a user carries a
`tenant`, and every query filters by it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _created() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow)


collections = Table(
    "collections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("domain", String(64), nullable=False),
    Column("embedding_model", String(256), nullable=False),
    Column("dims", Integer, nullable=False),
    Column("vector_name", String(256), nullable=False, doc="The collection's name in the vector store."),
    _created(),
    UniqueConstraint("tenant", "name"),
)

documents = Table(
    "documents",
    metadata,
    Column("doc_id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("collection", String(128), nullable=False),
    Column("filename", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("pages", Integer),
    Column("chunks", Integer, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("meta", JSON, nullable=False, default=dict),
    Column("ingested_at", DateTime(timezone=True), nullable=False, default=utcnow),
    Index("ix_documents_collection", "tenant", "collection"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("collection", String(128)),
    Column("state", String(16), nullable=False),
    Column("files_total", Integer, nullable=False, default=0),
    Column("files_done", Integer, nullable=False, default=0),
    Column("chunks_total", Integer, nullable=False, default=0),
    Column("chunks_done", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("progress", JSON, nullable=False, default=dict, doc="Kind-specific progress (e.g. step, loss)."),
    Column("result", JSON, doc="Kind-specific outcome, set when the job ends."),
    Column("error", Text),
    _created(),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)

job_files = Table(
    "job_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("filename", Text, nullable=False),
    Column("staged_path", Text, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("state", String(16), nullable=False, doc="queued, running, done, unchanged, failed"),
    Column("doc_id", String(64)),
    Column("chunks_total", Integer, nullable=False, default=0),
    Column("chunks_done", Integer, nullable=False, default=0),
    Column("error_code", String(64)),
    Column("error", Text),
    Index("ix_job_files_job", "job_id", "position"),
)

config_revisions = Table(
    "config_revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("module", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("config", JSON, nullable=False),
    Column("author", String(128), nullable=False),
    Column("comment", Text),
    _created(),
    UniqueConstraint("tenant", "module", "revision"),
)

traces = Table(
    "traces",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("collection", String(128)),
    Column("question", Text, nullable=False),
    Column("decision", String(16)),
    Column("data", JSON, nullable=False),
    _created(),
)

adapters = Table(
    "adapters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("module", String(64), nullable=False),
    Column("base_model", String(256), nullable=False),
    Column("path", Text, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    _created(),
)

calibrations = Table(
    "calibrations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("module", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("brier", Float),
    _created(),
    UniqueConstraint("tenant", "module", "version"),
)


def sync_url(url: str) -> str:
    """The synchronous-driver twin of an async URL (for code that runs in threads)."""
    u = make_url(url)
    driver = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}.get(u.drivername, u.drivername)
    return u.set(drivername=driver).render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers proceed while the worker writes; the busy timeout rides out short locks.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _prepare_sqlite(url: str) -> bool:
    u = make_url(url)
    if not u.drivername.startswith("sqlite"):
        return False
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    return True


def create_engine_async(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_pre_ping=True)
    if _prepare_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_engine_sync(url: str) -> Engine:
    from sqlalchemy import create_engine

    url = sync_url(url)
    engine = create_engine(url, pool_pre_ping=True)
    if _prepare_sqlite(url):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
