"""Search: the chunks a domain module keeps for a question, without generating an answer."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep, TenantDep
from api.schemas import RouteOut, SearchHit, SearchRequest, SearchResponse
from modules.base import Candidate

router = APIRouter(tags=["search"])


def _hit(c: Candidate) -> SearchHit:
    return SearchHit(
        doc_id=c.doc_id, filename=c.filename, page=c.page, text=c.text, score=c.score, similarity=c.similarity,
        kept=c.kept, reason=c.reason,
    )


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, services: ServicesDep, tenant: TenantDep) -> SearchResponse:
    """The `k` best chunks the module keeps for the question (its filters applied, no token
    budget), with the module, route and config revision used and the latency per stage;
    with `explain`, also every candidate it dropped and why."""
    result = await services.search.search(
        tenant=tenant, collection=body.collection, question=body.question, module=body.module, k=body.k
    )
    selection = result.selection
    return SearchResponse(
        results=[_hit(c) for c in result.curated.kept],
        dropped=[_hit(c) for c in result.curated.dropped] if body.explain else None,
        module=selection.module.key,
        route=RouteOut(**selection.route.as_dict()),
        config_revision=selection.revision.revision,
        config_hash=selection.revision.config_hash,
        latency_ms=result.latency_ms,
    )
