"""Answer traces: what happened for one question, stored for `GET /v1/traces/{id}`."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.errors import NotFoundError
from modules.base import Candidate


def new_trace_id() -> str:
    return "tr_" + uuid.uuid4().hex[:20]


@dataclass
class Trace:
    """Accumulates a question's route, stages, model calls and timings."""

    id: str
    tenant: str
    collection: str
    question: str
    data: dict[str, Any] = field(default_factory=lambda: {"stages": {}, "latency_ms": {}, "models": []})

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data["latency_ms"][stage] = round((time.perf_counter() - start) * 1000, 2)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def stage(self, name: str, value: Any) -> None:
        self.data["stages"][name] = value

    def model_call(self, **call: Any) -> None:
        self.data["models"].append(call)


def candidate_summary(c: Candidate, *, with_text: bool = False) -> dict[str, Any]:
    row = {
        "id": c.id, "doc_id": c.doc_id, "filename": c.filename, "page": c.page, "rank": c.rank,
        "score": round(c.score, 5), "similarity": round(c.similarity, 4), "kept": c.kept, "reason": c.reason,
    }
    if c.notes:
        row["notes"] = c.notes
    if with_text:
        row["text"] = c.text
    return row


async def save_trace(engine: AsyncEngine, trace: Trace, decision: str | None) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(db.traces).values(
                id=trace.id, tenant=trace.tenant, collection=trace.collection, question=trace.question,
                decision=decision, data=trace.data, created_at=db.utcnow(),
            )
        )


async def load_trace(engine: AsyncEngine, *, tenant: str, trace_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(db.traces).where(db.traces.c.id == trace_id, db.traces.c.tenant == tenant))
        ).first()
    if row is None:
        raise NotFoundError(f"trace {trace_id!r} does not exist", code="trace_not_found")
    return {
        "trace_id": row.id, "collection": row.collection, "question": row.question, "decision": row.decision,
        "created_at": row.created_at.isoformat(), **row.data,
    }
