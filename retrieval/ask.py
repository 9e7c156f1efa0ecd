"""The query path: question -> module stages -> small model (escalating to the large one
when needed, `retrieval.cascade`) -> cited answer with a trace."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from core import catalog
from modules.base import Candidate
from retrieval.cascade import AnswerMode, Cascade
from retrieval.confidence import load_calibration
from retrieval.prompting import (
    cited_sources,
    renumber_citations,
    supporting_sources,
)
from retrieval.search import Route, SearchService
from retrieval.traces import Trace, new_trace_id, save_trace


@dataclass
class AskResult:
    answer: str
    citations: list[Candidate]
    confidence: float
    decision: str
    model: str
    trace_id: str
    degraded: bool = False
    context: list[Candidate] = field(default_factory=list)
    route: Route | None = None


class AskService(SearchService):
    """Answers questions over a collection (one instance per process, shared by requests);
    module selection, configs and curation come from `SearchService`.

    `on_missing_adapter`: awaited when the small model has not loaded the adapter a module's
    config names, before one retry (the API sets it to reload the registered adapters into
    the embedded server; see `retrieval.cascade`)."""

    on_missing_adapter: Callable[[], Awaitable[object]] | None = None

    async def ask(
        self, *, tenant: str, collection: str, question: str, module: str | None = None, mode: AnswerMode = "cascade"
    ) -> AskResult:
        """Answer `question`; `mode` forces one tier (`small_only`, `large_only`) for
        calibration and evaluation."""
        r = self.resources
        record = await catalog.get_collection(r.db, tenant=tenant, name=collection)
        trace = Trace(id=new_trace_id(), tenant=tenant, collection=collection, question=question)
        search = self.search_context(record.vector_name, tenant)
        selection = await self.select(
            tenant=tenant, collection=record, question=question, requested=module, search=search, trace=trace
        )
        curated = await asyncio.to_thread(self.curate, selection.module, question, search, trace)
        context = curated.kept

        calibration = await load_calibration(r.db, tenant=tenant, module=selection.module.key)
        outcome = await Cascade(r.small, r.large, self.on_missing_adapter).answer(
            question=question, context=context, config=selection.module.config, calibration=calibration,
            trace=trace, mode=mode,
        )
        cited = [] if outcome.decision == "abstained" else (
            cited_sources(outcome.text, context) or supporting_sources(outcome.text, context)
        )
        answer = renumber_citations(outcome.text, context, cited)
        await save_trace(r.db, trace, outcome.decision)
        return AskResult(
            answer=answer, citations=cited, confidence=outcome.confidence, decision=outcome.decision,
            model=outcome.model, trace_id=trace.id, degraded=outcome.degraded, context=context, route=selection.route,
        )
