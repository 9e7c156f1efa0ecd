"""Running a module's stages on one question: the curated context, and how long each took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from modules import module_class
from modules.base import Candidate, DomainModule, FetchContext, Query

# `search` returns up to k results with no token budget: it shows what the module keeps.
UNBOUNDED_TOKENS = 32_000


@dataclass
class Curated:
    module: DomainModule
    query: Query
    candidates: list[Candidate]
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> list[Candidate]:
        return [c for c in sorted(self.candidates, key=lambda c: c.rank) if c.kept]

    @property
    def dropped(self) -> list[Candidate]:
        return [c for c in sorted(self.candidates, key=lambda c: c.rank) if not c.kept]


def for_search(module: DomainModule, k: int) -> DomainModule:
    """The same module, configured to return up to `k` results without a token budget."""
    config = module.config.model_copy(
        update={"max_chunks": k, "context_tokens": UNBOUNDED_TOKENS, "top_k": max(module.config.top_k, k)}
    )
    return module_class(module.key)(config)


def curate(module: DomainModule, question: str, ctx: FetchContext) -> Curated:
    """analyze -> fetch -> normalize -> filter. CPU and I/O bound: call it from a thread.
    The fetch stage's time leaves out what `ctx` spent embedding (its `embedding_ms`): the
    question's embedding, whatever text the module embedded, is not a module stage."""
    timings: dict[str, float] = {}

    def timed(stage: str, start: float) -> float:
        now = time.perf_counter()
        timings[stage] = round((now - start) * 1000, 3)
        return now

    start = time.perf_counter()
    query = module.analyze(question)
    start = timed("analyze", start)
    embedded_before = ctx.embedding_ms
    candidates = module.fetch(query, ctx)
    start = timed("fetch", start)
    timings["fetch"] = round(timings["fetch"] - (ctx.embedding_ms - embedded_before), 3)
    candidates = module.normalize(query, candidates)
    start = timed("normalize", start)
    candidates = module.filter(query, candidates)
    timed("filter", start)
    return Curated(module=module, query=query, candidates=candidates, latency_ms=timings)
