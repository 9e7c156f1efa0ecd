"""Questions: cited answers, and the traces behind them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ServicesDep, TenantDep
from api.schemas import AskRequest, AskResponse, Citation, RouteOut
from retrieval.traces import load_trace

router = APIRouter(tags=["ask"])


@router.post("/v1/ask", response_model=AskResponse)
async def ask(body: AskRequest, services: ServicesDep, tenant: TenantDep) -> AskResponse:
    """Answer a question from the collection's documents, with citations, a confidence,
    the decision taken and a trace id."""
    result = await services.ask.ask(tenant=tenant, collection=body.collection, question=body.question, module=body.module)
    return AskResponse(
        answer=result.answer,
        citations=[Citation(doc_id=c.doc_id, filename=c.filename, page=c.page, text=c.text) for c in result.citations],
        confidence=result.confidence,
        decision=result.decision,
        model=result.model,
        trace_id=result.trace_id,
        degraded=result.degraded,
        route=RouteOut(**result.route.as_dict()) if result.route else None,
    )


@router.get("/v1/traces/{trace_id}")
async def read_trace(trace_id: str, services: ServicesDep, tenant: TenantDep) -> dict[str, Any]:
    """Everything recorded for one answer: route, module stages with kept and dropped
    chunks, models called, tokens, latency per stage, confidence features."""
    return await load_trace(services.resources.db, tenant=tenant, trace_id=trace_id)
