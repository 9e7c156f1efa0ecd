"""Choosing and configuring the module for a question, and curated search (`/v1/search`).

This is the part of the query path that answering shares (`retrieval.ask.AskService`
extends `SearchService`): pick the module (named by the request, else the collection's
domain, else, for an `auto` collection, by the router), build it from the tenant's current
config revision, and run its stages. It also previews what a config change would do to a
question before the change is saved.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from core import catalog
from core.resources import Resources
from core.vectorstore.sparse import Bm25Encoder
from modules import module_class
from modules.base import Candidate, DomainModule, ModuleConfig
from modules.configs import Change, ConfigStore, Revision, config_hash, diff, merge
from modules.fetch import CollectionSearch, FacetCache
from modules.registry import AUTO_DOMAIN
from retrieval.curate import Curated, curate, for_search
from retrieval.routing import ModuleRouter
from retrieval.traces import Trace, candidate_summary, new_trace_id

# Module instances kept for reuse; one per (module, config) in use, so a few suffice.
MODULE_CACHE_SIZE = 128


@dataclass(frozen=True)
class Route:
    """Which module takes a question, and why: named by the request, the collection's
    domain, or chosen by the router (with its score)."""

    module: str
    by: Literal["request", "collection", "router"]
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "by": self.by, "score": self.score}


@dataclass(frozen=True)
class Selection:
    """The module for one question, built from the tenant's config `revision`."""

    module: DomainModule
    revision: Revision
    route: Route


@dataclass
class SearchResult:
    selection: Selection
    curated: Curated
    latency_ms: dict[str, float]


@dataclass
class Preview:
    """One question curated with a module's current config and with a proposed one."""

    module: str
    current: Revision
    proposed: ModuleConfig
    changes: list[Change]
    before: Curated
    after: Curated

    @property
    def proposed_hash(self) -> str:
        return config_hash(self.proposed)

    @staticmethod
    def kept_only_by(side: Curated, other: Curated) -> list[tuple[Candidate, str]]:
        """Chunks `side` keeps and `other` does not, each with why `other` does not."""
        others = {c.id: c for c in other.candidates}
        only = []
        for c in side.kept:
            theirs = others.get(c.id)
            if theirs is None:
                only.append((c, "not retrieved"))
            elif not theirs.kept:
                only.append((c, theirs.reason or "dropped"))
        return only


class SearchService:
    """Module selection and curated search (one instance per process, shared by requests).

    Modules are built per config revision and reused; the router for `auto` collections
    is built on first use (it embeds every module's example questions once)."""

    def __init__(self, resources: Resources, configs: ConfigStore | None = None):
        self.resources = resources
        self.configs = configs or ConfigStore(resources.db)
        self.sparse = Bm25Encoder()
        self.facets = FacetCache()
        self._modules: OrderedDict[tuple[str, str], DomainModule] = OrderedDict()
        self._router: ModuleRouter | None = None
        self._router_lock = asyncio.Lock()

    # ---- choosing the module ----

    async def module_for(self, tenant: str, key: str) -> tuple[DomainModule, Revision]:
        """Module `key` built from the tenant's current config revision, and that revision."""
        revision = await self.configs.current(tenant, key)
        return self.build(revision), revision

    def build(self, revision: Revision) -> DomainModule:
        # Keyed by config hash rather than revision number: revision numbers are per tenant,
        # and a rollback returns to an instance already built.
        key = (revision.module, revision.config_hash)
        module = self._modules.get(key)
        if module is None:
            module = self._modules[key] = module_class(revision.module)(revision.config)
            if len(self._modules) > MODULE_CACHE_SIZE:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(key)
        return module

    async def router(self) -> ModuleRouter:
        async with self._router_lock:
            if self._router is None:
                embedder = self.resources.embedder
                self._router = await asyncio.to_thread(ModuleRouter, lambda texts: embedder.embed(texts).tolist())
        return self._router

    async def select(
        self,
        *,
        tenant: str,
        collection: catalog.Collection,
        question: str,
        requested: str | None,
        search: CollectionSearch,
        trace: Trace,
    ) -> Selection:
        """Pick the question's module and build it; the route and the module's config
        revision and hash go into `trace`. The question is embedded here only to route it:
        otherwise the module embeds what it searches with (see `curate`)."""
        key = requested or collection.domain
        if key != AUTO_DOMAIN:
            route = Route(key, "request" if requested else "collection")
            trace.set("route", route.as_dict())
        else:
            vector = await asyncio.to_thread(search.embed, question)
            router = await self.router()
            with trace.timed("route"):
                choice = await asyncio.to_thread(router.route, question, vector)
            route = Route(choice.module, "router", choice.score)
            trace.set("route", {**route.as_dict(), "scores": choice.scores})
        module, revision = await self.module_for(tenant, route.module)
        trace.set("module", {"key": module.key, "config_revision": revision.revision, "config_hash": revision.config_hash})
        return Selection(module=module, revision=revision, route=route)

    # ---- running it ----

    def search_context(self, vector_name: str, tenant: str) -> CollectionSearch:
        r = self.resources
        return CollectionSearch(
            store=r.store, embedder=r.embedder, sparse=self.sparse, vector_name=vector_name, tenant=tenant,
            facets=self.facets,
        )

    def curate(self, module: DomainModule, question: str, search: CollectionSearch, trace: Trace) -> Curated:
        """Run the module's stages, recording them in `trace` (blocking: call from a thread),
        with the question's embedding (the module's and the routing one) as `embed_question`."""
        curated = curate(module, question, search)
        trace.data["latency_ms"].update(curated.latency_ms, embed_question=round(search.embedding_ms, 3))
        query = curated.query
        trace.stage("analyze", {"entities": query.entities, "periods": query.periods, "doc_types": query.doc_types})
        trace.stage("candidates", [candidate_summary(c) for c in curated.candidates])
        return curated

    async def search(
        self, *, tenant: str, collection: str, question: str, module: str | None = None, k: int = 10
    ) -> SearchResult:
        """Up to `k` chunks the module keeps for `question`, ranked, with the dropped ones."""
        start = time.perf_counter()
        record = await catalog.get_collection(self.resources.db, tenant=tenant, name=collection)
        # Searches are not stored; the trace collects the stage timings of the response.
        trace = Trace(id=new_trace_id(), tenant=tenant, collection=collection, question=question)
        search = self.search_context(record.vector_name, tenant)
        selection = await self.select(
            tenant=tenant, collection=record, question=question, requested=module, search=search, trace=trace
        )
        curated = await asyncio.to_thread(self.curate, for_search(selection.module, k), question, search, trace)
        latency = dict(trace.data["latency_ms"], total=round((time.perf_counter() - start) * 1000, 2))
        return SearchResult(selection=selection, curated=curated, latency_ms=latency)

    async def preview(
        self, *, tenant: str, collection: str, module: str, question: str, changes: dict[str, Any], k: int | None = None
    ) -> Preview:
        """`question` curated by `module` with the current config and with `changes` merged
        onto it; nothing is saved. With `k`, as `search` curates; without, as `ask` does."""
        current = await self.configs.current(tenant, module)
        proposed = self.configs.validate(module, merge(current.values, changes))
        record = await catalog.get_collection(self.resources.db, tenant=tenant, name=collection)
        search = self.search_context(record.vector_name, tenant)
        before, after = self.build(current), module_class(module)(proposed)
        if k is not None:
            before, after = for_search(before, k), for_search(after, k)

        def run_both() -> tuple[Curated, Curated]:
            return curate(before, question, search), curate(after, question, search)

        curated_before, curated_after = await asyncio.to_thread(run_both)
        return Preview(
            module=module, current=current, proposed=proposed, changes=diff(current.values, proposed.model_dump(mode="json")),
            before=curated_before, after=curated_after,
        )
