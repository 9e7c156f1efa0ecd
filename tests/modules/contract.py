"""The domain-module contract suite: every module's tests subclass `ModuleContract`.

Subclasses set `module_key`, and provide `sample_questions` (questions of the domain),
`sample_document` (text, filename, file metadata) for `enrich`, and optionally override
`candidates()` to feed the stages realistic chunks of the domain.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from core.vectorstore import Filter
from modules import module_class
from modules.base import Candidate, DomainModule, FetchContext, ModuleConfig, Query
from modules.registry import check_contract


class RecordingSearch(FetchContext):
    """A FetchContext over fixed candidates that records what the module asked for."""

    def __init__(
        self, candidates: list[Candidate], values: dict[str, dict[str, int]] | None = None,
        counts: Callable[[Filter], int] = lambda filter: 0,
    ):
        self.candidates = candidates
        self.values = values or {}
        self.counts = counts
        self.calls: list[dict[str, Any]] = []
        self.counted: list[Filter] = []

    def search(self, text, *, limit, mode="hybrid", fusion="rrf", filter=None, prefer=None, sparse_text=None):
        self.calls.append(
            {"text": text, "limit": limit, "mode": mode, "filter": filter, "prefer": prefer, "sparse_text": sparse_text}
        )
        return [Candidate(**{**c.__dict__, "notes": list(c.notes)}) for c in self.candidates[:limit]]

    def known_values(self, key, limit=1000):
        return dict(list(self.values.get(key, {}).items())[:limit])

    def count(self, filter):
        self.counted.append(filter)
        return self.counts(filter)


def make_candidate(i: int, text: str, *, similarity: float = 0.6, page: int | None = 1, **payload: Any) -> Candidate:
    return Candidate(
        id=f"c{i}", doc_id=payload.pop("doc_id", f"doc{i}"), filename=payload.pop("filename", f"file{i}.txt"),
        page=page, text=text, payload={"text": text, "page": page, **payload}, score=1.0 / (i + 1),
        similarity=similarity, rank=i,
    )


class ModuleContract:
    module_key: ClassVar[str]
    sample_questions: ClassVar[list[str]] = []
    sample_document: ClassVar[tuple[str, str, dict[str, Any]]] = ("", "doc.txt", {})

    @pytest.fixture
    def module(self) -> DomainModule:
        return module_class(self.module_key)()

    def candidates(self) -> list[Candidate]:
        texts = [
            "Revenue grew 8% to $4.2 billion in fiscal 2023.",
            "Revenue grew 8% to $4.2 billion in fiscal 2023.",  # an exact duplicate
            "The agreement is governed by the laws of the State of New York.",
            "Press the power button for three seconds to restart the device.",
            "Patients in the treatment arm had lower mortality (p < 0.05).",
        ]
        return [make_candidate(i, t, similarity=0.7 - 0.1 * i) for i, t in enumerate(texts)]

    # ---- the class ----

    def test_satisfies_the_contract(self) -> None:
        cls = module_class(self.module_key)
        check_contract(cls)
        assert cls.key == self.module_key

    def test_config_rejects_unknown_keys_and_documents_every_field(self) -> None:
        config_model = module_class(self.module_key).config_model
        assert issubclass(config_model, ModuleConfig)
        schema = config_model.model_json_schema()
        assert all(prop.get("description") for prop in schema["properties"].values())
        with pytest.raises(ValueError):
            config_model.model_validate({"no_such_setting": 1})

    def test_default_config_round_trips_through_json(self) -> None:
        config_model = module_class(self.module_key).config_model
        default = config_model()
        assert config_model.model_validate(json.loads(default.model_dump_json())) == default

    # ---- the stages ----

    def test_analyze_returns_a_query(self, module: DomainModule) -> None:
        assert self.sample_questions, "give the contract suite some questions of the domain"
        for question in self.sample_questions:
            query = module.analyze(question)
            assert isinstance(query, Query) and query.text == question
            assert query.filter is None or isinstance(query.filter, Filter)

    def test_fetch_searches_the_collection(self, module: DomainModule) -> None:
        search = RecordingSearch(self.candidates())
        candidates = module.fetch(module.analyze(self.sample_questions[0]), search)
        assert search.calls, "fetch must search the collection"
        assert all(isinstance(c, Candidate) for c in candidates)

    def test_normalize_keeps_every_candidate_and_the_original_text(self, module: DomainModule) -> None:
        query = module.analyze(self.sample_questions[0])
        before = self.candidates()
        after = module.normalize(query, [Candidate(**{**c.__dict__, "notes": []}) for c in before])
        assert [c.id for c in after] == [c.id for c in before]
        assert [c.text for c in after] == [c.text for c in before], "citations need the stored text"
        assert all(c.model_text.strip() for c in after)

    def test_filter_gives_a_reason_for_every_drop_and_respects_the_limits(self, module: DomainModule) -> None:
        query = module.analyze(self.sample_questions[0])
        candidates = module.normalize(query, self.candidates())
        filtered = module.filter(query, candidates)
        assert {c.id for c in filtered} == {c.id for c in candidates}, "dropped candidates stay, marked"
        assert all(c.reason for c in filtered if not c.kept)
        kept = [c for c in filtered if c.kept]
        assert len(kept) <= module.config.max_chunks
        texts = [c.text for c in kept]
        assert len(texts) == len(set(texts)), "exact duplicates must not both be kept"

    def test_score_floor_drops_weak_candidates(self) -> None:
        cls = module_class(self.module_key)
        module = cls(cls.config_model(score_floor=0.55))
        query = module.analyze(self.sample_questions[0])
        filtered = module.filter(query, module.normalize(query, self.candidates()))
        weak = [c for c in filtered if c.similarity < 0.55]
        assert weak and all(not c.kept and "floor" in c.reason for c in weak)

    def test_enrich_returns_json_metadata_matching_the_declared_indexes(self, module: DomainModule) -> None:
        text, filename, metadata = self.sample_document
        meta = module.enrich(text, filename, metadata)
        json.dumps(meta)
        for key in module.payload_indexes:
            assert key.startswith("meta.")
        assert module.enrich(text, filename, metadata) == meta, "enrich must be deterministic"
