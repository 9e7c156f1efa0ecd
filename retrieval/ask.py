"""The query path: question -> module stages -> small model -> cited answer with a trace."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from core.errors import ModelError
from core.llm import ChatResult
from core.resources import ModelTierClient, Resources
from core.vectorstore.sparse import Bm25Encoder
from core import catalog
from modules import module_class
from modules.base import Candidate, DomainModule
from modules.fetch import CollectionSearch
from retrieval.curate import Curated, curate
from retrieval.prompting import (
    build_messages,
    cited_sources,
    renumber_citations,
    supporting_sources,
)
from retrieval.traces import Trace, candidate_summary, new_trace_id, save_trace

ANSWER_MAX_TOKENS = 160


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


class AskService:
    """Answers questions over a collection (one instance per process, shared by requests)."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self.sparse = Bm25Encoder()

    def module_for(self, key: str) -> DomainModule:
        return module_class(key)()

    def search_context(self, vector_name: str, tenant: str) -> CollectionSearch:
        r = self.resources
        return CollectionSearch(
            store=r.store, embedder=r.embedder, sparse=self.sparse, vector_name=vector_name, tenant=tenant
        )

    def curate(self, module: DomainModule, question: str, vector_name: str, tenant: str, trace: Trace) -> Curated:
        """Run the module's stages, recording them in `trace` (blocking: call from a thread)."""
        search = self.search_context(vector_name, tenant)
        with trace.timed("embed_question"):
            search.embed(question)
        curated = curate(module, question, search)
        trace.data["latency_ms"].update(curated.latency_ms)
        query = curated.query
        trace.stage("analyze", {"entities": query.entities, "periods": query.periods, "doc_types": query.doc_types})
        trace.stage("candidates", [candidate_summary(c) for c in curated.candidates])
        return curated

    async def ask(self, *, tenant: str, collection: str, question: str, module: str | None = None) -> AskResult:
        r = self.resources
        record = await catalog.get_collection(r.db, tenant=tenant, name=collection)
        domain_module = self.module_for(module or record.domain)
        trace = Trace(id=new_trace_id(), tenant=tenant, collection=collection, question=question)
        trace.set("route", {"module": domain_module.key, "by": "request" if module else "collection"})
        curated = await asyncio.to_thread(self.curate, domain_module, question, record.vector_name, tenant, trace)
        context = curated.kept

        tier = r.small
        if tier is None:
            raise ModelError("no small model is configured", code="model_unavailable")
        with trace.timed("generate"):
            result = await tier.client.chat(
                build_messages(question, context), max_tokens=ANSWER_MAX_TOKENS, stop=tier.tier.stop or None
            )
        self._record_call(trace, tier, result)

        cited = cited_sources(result.text, context) or supporting_sources(result.text, context)
        answer = renumber_citations(result.text, context, cited)
        confidence = mean_token_probability(result)
        decision = "answered"
        trace.set("confidence", {"value": confidence, "features": {"mean_token_prob": confidence}})
        await save_trace(r.db, trace, decision)
        return AskResult(
            answer=answer, citations=cited, confidence=confidence, decision=decision, model=result.model,
            trace_id=trace.id, context=context,
        )

    @staticmethod
    def _record_call(trace: Trace, tier: ModelTierClient, result: ChatResult) -> None:
        trace.model_call(
            tier=tier.name, model=result.model, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, latency_ms=round(result.latency_ms, 1),
        )


def mean_token_probability(result: ChatResult) -> float:
    """exp(mean log-probability) of the generated tokens: a first, uncalibrated confidence."""
    logprobs = [t.logprob for t in result.tokens]
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0
