"""The biomedical module: the shared contract, plus enrichment of real PubMed abstracts,
abbreviation and statistics normalization, design cues and the grouping of abstracts."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.base import Candidate
from modules.biomedical import (
    BiomedicalConfig,
    BiomedicalModule,
    defined_abbreviations,
    explain_statistics,
    study_design,
)
from tests.modules.contract import ModuleContract, RecordingSearch, make_candidate

pytestmark = pytest.mark.unit

# Sections of PubMedQA abstracts (corpus files pmid_17276801 and pmid_10135926).
TROPONIN_METHODS = (
    "METHODS AND RESULTS: This study was a retrospective chart review of patients diagnosed as having PE, in whom "
    "cTnI testing was obtained at emergency department (ED) presentation between January 2002 and April 2006."
)
TROPONIN_RESULTS = (
    "Elevated cTnI levels were associated with inhospital mortality (P = .02), complicated clinical course (P<.001), "
    "and right ventricular dysfunction (P<.001). In patients with elevated cTnI levels, inhospital mortality "
    "(odds ratio [OR], 3.31; 95% confidence interval [CI], 1.82-9.29) was more prevalent. The patients with "
    "elevated cTnI levels had more serious vital parameters at ED presentation."
)
TROPONIN_META = {
    "pmid": "17276801", "year": 2007, "design": "retrospective study",
    "abbreviations": {"cTnI": "cardiac troponin I", "PE": "pulmonary embolism", "ED": "emergency department"},
}
HELICOPTER_RESULTS = (
    "RESULTS: The mean time required for in-flight intubation (25.9 +/- 10.9 seconds) was significantly longer than "
    "the corresponding time (13.2 +/- 2.8 seconds) required for intubation in the control setting (ANOVA, F = 38.7, "
    "p<.001)."
)
HELICOPTER_META = {"pmid": "10135926", "year": 1994}


class TestBiomedicalModule(ModuleContract):
    module_key = "biomedical"
    sample_questions = [
        "Does elevated cardiac troponin I predict in-hospital mortality in acute pulmonary embolism?",
        "Is oral endotracheal intubation efficacy impaired in the helicopter environment?",
        "Do randomized trials show that tranexamic acid reduces bleeding after cardiac surgery?",
    ]
    sample_document = (
        "PubMed abstract (PMID 17276801, 2007)\n\nOBJECTIVE: To evaluate cardiac troponin I (cTnI).\n\n"
        + TROPONIN_METHODS + "\n\nRESULTS: " + TROPONIN_RESULTS,
        "pmid_17276801.txt",
        {},
    )

    def candidates(self) -> list[Candidate]:
        chunks = [
            (TROPONIN_RESULTS, TROPONIN_META, "pmid_17276801", 1),
            (TROPONIN_RESULTS, TROPONIN_META, "pmid_17276801", 1),  # an exact duplicate
            (HELICOPTER_RESULTS, HELICOPTER_META, "pmid_10135926", 1),
            (TROPONIN_METHODS, TROPONIN_META, "pmid_17276801", 0),
            ("MeSH terms: Air Ambulances; Humans; Intubation, Intratracheal", HELICOPTER_META, "pmid_10135926", 2),
        ]
        return [
            make_candidate(i, text, similarity=0.7 - 0.05 * i, page=None, meta=meta, doc_id=doc, filename=f"{doc}.txt",
                           chunk_index=index)
            for i, (text, meta, doc, index) in enumerate(chunks)
        ]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("pmid_10135926", {"pmid": "10135926", "year": 1994, "sections": ["INTRODUCTION", "SETTING", "METHODS", "RESULTS"]}),
        ("pmid_10223070", {"pmid": "10223070", "year": 1999, "design": "systematic review"}),
        ("pmid_17276801", {"pmid": "17276801", "year": 2007, "design": "retrospective study",
                           "abbreviations": TROPONIN_META["abbreviations"]}),
        ("pmid_10201555", {"pmid": "10201555", "year": 1998, "design": "cohort study",
                           "abbreviations": {"CVD": "cardiovascular disease"}}),
    ],
)
def test_enrich_reads_real_abstracts(eval_dir: Path, doc: str, expected: dict) -> None:
    text = (eval_dir / "pubmedqa" / "corpus" / f"{doc}.txt").read_text()
    meta = BiomedicalModule().enrich(text, f"{doc}.txt", {})
    assert {key: meta.get(key) for key in expected} == expected
    assert "MeSH terms" not in meta.get("sections", [])


def test_enrich_without_a_header_uses_the_filename_and_leaves_the_year_out() -> None:
    meta = BiomedicalModule().enrich("BACKGROUND: Mice were fed a high-fat diet.", "pmid_123456.txt", {})
    assert meta["pmid"] == "123456" and "year" not in meta


@pytest.mark.parametrize(
    ("text", "design"),
    [
        ("METHODS: Patients were randomly assigned to placebo or drug.", "randomized controlled trial"),
        ("DESIGN: Case-control study. METHODS: We matched 40 cases.", "case-control study"),
        ("METHODS: A cross-sectional survey was conducted among nurses.", "cross-sectional study"),
        ("We report a case of a 54-year-old man with a rare tumour.", "case report"),
        ("METHODS: Twelve rats were treated.\n\nMeSH terms: Animals; Rats; Male", "animal study"),
        ("A pooled meta-analysis of 12 randomized trials.", "meta-analysis"),
        ("The weather was fine.", None),
    ],
)
def test_study_design_rules(text: str, design: str | None) -> None:
    assert study_design(text) == design


def test_abbreviations_defined_in_the_text_are_found_by_their_letters() -> None:
    text = (
        "The international normalised ratio (INR) was measured in the emergency department (ED). "
        "Results were given as mean (SD). Patients (n=30) were included."
    )
    assert defined_abbreviations(text) == {"INR": "international normalised ratio", "ED": "emergency department"}


def test_normalize_spells_out_abbreviations_defined_elsewhere_in_the_abstract() -> None:
    module = BiomedicalModule()
    c = make_candidate(0, TROPONIN_RESULTS, meta=TROPONIN_META)
    [out] = module.normalize(module.analyze("Does troponin predict mortality?"), [c])
    assert out.text == TROPONIN_RESULTS, "citations need the stored text"
    assert "Elevated cTnI (cardiac troponin I) levels" in out.model_text
    assert out.model_text.count("(cardiac troponin I)") == 1, "only the first use is spelled out"
    assert "ED (emergency department) presentation" in out.model_text
    assert "expanded ED = emergency department" in out.notes
    # OR and CI are spelled out in the text itself, so they are left alone.
    assert "OR (odds ratio)" not in out.model_text


def test_normalize_makes_statistics_explicit_with_a_note_per_change() -> None:
    module = BiomedicalModule()
    c = make_candidate(0, TROPONIN_RESULTS + " " + HELICOPTER_RESULTS, meta=TROPONIN_META)
    [out] = module.normalize(module.analyze("q"), [c])
    assert "(p = 0.02 [significant at 0.05])" in out.model_text
    assert "p < 0.001 [significant at 0.05]" in out.model_text
    assert "95% CI 1.82 to 9.29 [excludes 1: significant]" in out.model_text
    assert "25.9 ± 10.9 seconds" in out.model_text
    assert any("p-value" in n for n in out.notes) and any("confidence interval" in n for n in out.notes)


def test_normalization_can_be_switched_off() -> None:
    module = BiomedicalModule(BiomedicalConfig(expand_abbreviations=False, explicit_statistics=False))
    [out] = module.normalize(module.analyze("q"), [make_candidate(0, TROPONIN_RESULTS, meta=TROPONIN_META)])
    assert out.model_text == TROPONIN_RESULTS and out.notes == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no difference (p>0.05)", "no difference (p > 0.05 [not significant at 0.05])"),
        ("p = 0.05 exactly", "p = 0.05 exactly"),
        ("HR 0.8 (95% CI 0.6-1.1)", "HR 0.8 (95% CI 0.6 to 1.1 [includes 1: not significant])"),
        ("a mean gain of 2 kg (95% CI 1-3)", "a mean gain of 2 kg (95% CI 1 to 3)"),  # not a ratio: no verdict
        ("12 per cent of 5 ml doses over 3 yrs", "12% of 5 mL doses over 3 years"),
    ],
)
def test_statistics_rules(text: str, expected: str) -> None:
    assert explain_statistics(text, 0.05)[0] == expected


def test_analyze_finds_terms_and_design_cues() -> None:
    query = BiomedicalModule().analyze(
        "Is the international normalised ratio (INR) reliable in a randomized trial of warfarin in 2010?"
    )
    assert query.notes["abbreviations_defined"] == {"INR": "international normalised ratio"}
    assert {"INR", "warfarin"} <= set(query.entities)
    assert query.doc_types == ["randomized controlled trial"] and query.periods == ["2010"]
    assert query.filter is None, "design and year cues rank, they do not exclude"


def test_fetch_moves_abstracts_of_the_named_design_up() -> None:
    module = BiomedicalModule()
    cohort = {"design": "cohort study"}
    trial = {"design": "randomized controlled trial"}
    search = RecordingSearch([make_candidate(0, "a", meta=cohort), make_candidate(1, "b", meta=trial)])
    ranked = module.fetch(module.analyze("Does a randomized trial show benefit of aspirin?"), search)
    assert [c.id for c in ranked] == ["c1", "c0"] and [c.rank for c in ranked] == [0, 1]
    assert any("design" in note for note in ranked[0].notes)
    plain = module.fetch(module.analyze("Does aspirin help?"), RecordingSearch(search.candidates))
    assert [c.id for c in plain] == ["c0", "c1"]


class WithinDocumentSearch(RecordingSearch):
    """Honours a `doc_id` filter and ranks by position, as the collection's search does."""

    def search(self, text, *, limit, mode="hybrid", fusion="rrf", filter=None, prefer=None, sparse_text=None):
        hits = super().search(text, limit=len(self.candidates), mode=mode, fusion=fusion, filter=filter)
        docs = {m.value for m in filter.must} if filter else None
        hits = [c for c in hits if docs is None or c.doc_id in docs][:limit]
        for rank, c in enumerate(hits):
            c.rank = rank
        return hits


def test_fetch_puts_the_best_abstracts_findings_after_its_best_chunk() -> None:
    module = BiomedicalModule(BiomedicalModule.config_model(top_k=3))
    background = make_candidate(0, "BACKGROUND: does a leaflet help recall?", doc_id="A", chunk_index=0)
    other = make_candidate(1, "RESULTS: other study", doc_id="B", chunk_index=1)
    methods = make_candidate(2, "METHODS: leaflet given", doc_id="A", chunk_index=1)
    results = make_candidate(3, "RESULTS: recall improved (p < 0.01)", doc_id="A", chunk_index=2)
    query = module.analyze("Does a written information sheet improve recall?")

    # Beyond the fetched candidates: one search within the abstract finds them.
    search = WithinDocumentSearch([background, other, methods, results])
    ranked = module.fetch(query, search)
    assert [c.id for c in ranked] == ["c0", "c3", "c1", "c2"] and [c.rank for c in ranked] == [0, 1, 2, 3]
    assert search.calls[-1]["filter"].must[0].value == "A"
    assert any("findings of the best-matching abstract" in note for note in ranked[1].notes)
    # Among them: moved up without a search; kept with the best chunk when the chunk cap applies.
    search = WithinDocumentSearch([background, other, results, methods])
    module = BiomedicalModule(BiomedicalModule.config_model(top_k=3, max_chunks=2))
    ranked = module.fetch(query, search)
    assert [c.id for c in ranked] == ["c0", "c3", "c1"] and len(search.calls) == 1
    kept = [c for c in module.filter(query, module.normalize(query, ranked)) if c.kept]
    assert {c.id for c in kept} == {"c0", "c3"}
    # The best chunk is the findings, or the option is off: the ranking stands.
    for first, config in ((results, {}), (background, {"lift_findings": False})):
        search = WithinDocumentSearch([first, other, methods])
        plain = BiomedicalModule(BiomedicalModule.config_model(**config)).fetch(query, search)
        assert [c.id for c in plain] == [first.id, "c1", "c2"]


def test_filter_keeps_the_sections_of_one_abstract_together_in_reading_order() -> None:
    module = BiomedicalModule()
    chunks = [
        make_candidate(0, "RESULTS: troponin results", doc_id="A", chunk_index=1),
        make_candidate(1, "RESULTS: helicopter results", doc_id="B", chunk_index=1),
        make_candidate(2, "METHODS: troponin methods", doc_id="A", chunk_index=0),
        make_candidate(3, "METHODS: helicopter methods", doc_id="B", chunk_index=0),
    ]
    query = module.analyze("q")
    kept = [c for c in sorted(module.filter(query, module.normalize(query, chunks)), key=lambda c: c.rank) if c.kept]
    assert [(c.doc_id, c.payload["chunk_index"]) for c in kept] == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
