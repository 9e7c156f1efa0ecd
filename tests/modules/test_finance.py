"""The finance module: the shared contract, plus enrichment of real filings, question
analysis of real FinanceBench questions, company/period resolution and the filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.vectorstore import Filter, IsEmpty, Match, MatchAny, Range
from modules.base import Candidate
from modules.finance import (
    ALIASES_KEY,
    COMPANY_YEARS_KEY,
    FinanceConfig,
    FinanceModule,
    extract_filing,
    line_item_terms,
)
from tests.modules.contract import ModuleContract, RecordingSearch, make_candidate

pytestmark = pytest.mark.unit

# The top of 3M's 2018 10-K cover page (FinanceBench corpus, 3M_2018_10K).
COVER_3M = """UNITED STATES
SECURITIES AND EXCHANGE COMMISSION
Washington, D.C. 20549

FORM 10-K
ANNUAL REPORT PURSUANT TO SECTION 13 OR 15(d) OF THE
SECURITIES EXCHANGE ACT OF 1934
For the fiscal year ended December 31, 2018
Commission file number 1-3285

3M COMPANY
State of Incorporation: Delaware
"""
CAPEX_3M = (
    "Cash Flows from Investing Activities\nPurchases of property, plant and equipment (PP&E)\n(1,577)\n(1,373)\n"
    "(1,420)\n(Millions)\n2018\n2017\n2016"
)
PEPSICO_LEGAL = "PepsiCo is party to a variety of legal proceedings in the ordinary course of business in 2022."
META_3M = {"company": "3M", "company_key": "3m", "company_aliases": ["3m", "mmm"], "doc_type": "10k", "fiscal_year": 2018}
META_3M_2022 = {**META_3M, "fiscal_year": 2022}
META_PEP = {"company": "PepsiCo, Inc.", "company_key": "pepsico", "company_aliases": ["pepsico", "pep"],
            "doc_type": "10k", "fiscal_year": 2022}


def strip_eval_header(text: str) -> str:
    """The evaluation corpus adds two header lines a user's upload would not have."""
    return text.split("\n", 2)[2]


class TestFinanceModule(ModuleContract):
    module_key = "finance"
    sample_questions = [
        "What is the FY2018 capital expenditure amount (in USD millions) for 3M? Give a response to the question by "
        "relying on the details shown in the cash flow statement.",
        "Does Corning have positive working capital based on FY2022 data?",
    ]
    sample_document = (COVER_3M, "3M_2018_10K.pdf", {})

    def candidates(self) -> list[Candidate]:
        texts = [
            (CAPEX_3M, META_3M),
            (CAPEX_3M, META_3M),  # an exact duplicate
            ("3M's capital spending in 2022 was $1.7bn.", META_3M_2022),
            (PEPSICO_LEGAL, META_PEP),
            ("Net sales (in millions, except per share amounts) 32,765 31,657", META_3M),
        ]
        return [make_candidate(i, t, similarity=0.7 - 0.1 * i, meta=m) for i, (t, m) in enumerate(texts)]


@pytest.mark.parametrize(
    ("filename", "company_key", "alias", "doc_type", "year", "quarter"),
    [
        ("3M_2023Q2_10Q.txt", "3m", "mmm", "10q", 2023, 2),
        ("Pfizer_2023Q2_10Q.txt", "pfizer", "pfe", "10q", 2023, 2),
        ("AMCOR_2022_8K_dated-2022-07-01.txt", "amcor", "amcr", "8k", 2022, None),
        ("JOHNSON_JOHNSON_2022Q4_EARNINGS.txt", "johnson johnson", "jnj", "earnings", 2022, 4),
    ],
)
def test_enrich_reads_real_filings(eval_dir: Path, filename, company_key, alias, doc_type, year, quarter) -> None:
    text = strip_eval_header((eval_dir / "financebench" / "corpus" / filename).read_text())
    meta = FinanceModule().enrich(text, filename, {})
    assert meta["company_key"] == company_key and alias in meta["company_aliases"]
    assert (meta["doc_type"], meta["fiscal_year"], meta.get("fiscal_quarter")) == (doc_type, year, quarter)
    assert meta["company_years"] == [f"{a}|{year}" for a in meta["company_aliases"]]


@pytest.mark.parametrize(
    ("filename", "company_key", "doc_type", "year"),
    [
        ("3M_2023Q2_10Q.txt", "3m", "10q", 2023),
        ("Pfizer_2023Q2_10Q.txt", "pfizer", "10q", 2023),
        ("JOHNSON_JOHNSON_2022_10K.txt", "johnson johnson", "10k", 2022),  # year ended January 1, 2023
        ("PEPSICO_2023Q1_EARNINGS.txt", "pepsico", "earnings", 2023),
    ],
)
def test_enrich_reads_the_cover_page_without_a_telling_filename(eval_dir: Path, filename, company_key, doc_type, year) -> None:
    text = strip_eval_header((eval_dir / "financebench" / "corpus" / filename).read_text())
    meta = extract_filing(text, "upload.pdf")
    assert (meta["company_key"], meta["doc_type"], meta["fiscal_year"]) == (company_key, doc_type, year)


@pytest.mark.parametrize(
    ("question", "mention", "year", "quarter"),
    [
        ("Does 3M have a reasonably healthy liquidity profile based on its quick ratio for Q2 of FY2023?", "3M", 2023, 2),
        ("Which of JPM's business segments had the lowest net revenue in 2021 Q1?", "JPM", 2021, 1),
        ("What are the geographies that American Express primarily operates in as of 2022?", "American Express", 2022, None),
        ("What is Adobe's year-over-year change in unadjusted operating income from FY2015 to FY2016?", "Adobe", 2016, None),
        ("Is growth in JnJ's adjusted EPS expected to accelerate in FY2023?", "JnJ", 2023, None),
    ],
)
def test_analyze_finds_entity_and_period_in_real_questions(question, mention, year, quarter) -> None:
    query = FinanceModule().analyze(question)
    assert mention in query.entities
    assert (query.notes["fiscal_year"], query.notes["fiscal_quarter"]) == (year, quarter)


KNOWN = {ALIASES_KEY: {"3m": 50, "mmm": 50, "johnsonjohnson": 40, "jnj": 40, "americanexpress": 30, "amex": 30,
                       "pepsico": 20, "pep": 20, "mgmresorts": 10, "mgm": 10}}


@pytest.mark.parametrize(
    ("question", "aliases"),
    [
        ("What is the FY2018 capital expenditure amount for 3M?", ["3m"]),
        ("How did JnJ's US sales growth compare to international sales growth in FY2022?", ["jnj"]),
        ("Did Johnson & Johnson raise its dividend in FY2022?", ["johnsonjohnson"]),
        ("How much has the effective tax rate of American Express changed between FY2021 and FY2022?", ["americanexpress"]),
        ("Which region had the worst topline performance for MGM during FY2022?", ["mgm"]),
        ("What is the year end FY2019 total amount of inventories for Best Buy?", []),
    ],
)
def test_fetch_restricts_to_the_company_and_prefers_the_period(question, aliases) -> None:
    module = FinanceModule()
    query = module.analyze(question)
    search = RecordingSearch([], values=KNOWN)
    module.fetch(query, search)
    assert query.notes.get("company_aliases", []) == aliases
    [every_year] = search.calls  # the period asked for preferred among all the company's years
    year = query.notes["fiscal_year"]
    if aliases:  # every chunk has the company-and-year key (RecordingSearch counts none without)
        assert MatchAny(key=COMPANY_YEARS_KEY, any=[f"{a}|{year}" for a in aliases]) in every_year["prefer"].must
    else:
        assert Match(key="meta.fiscal_year", value=year) in every_year["prefer"].must
    if aliases:
        assert MatchAny(key=ALIASES_KEY, any=aliases) in every_year["filter"].must
        assert not any(isinstance(c, Match) for c in every_year["filter"].must)
    else:
        assert every_year["filter"] is None


def lacking_the_key(n: int):
    """A count of `n` chunks that name a company but lack the company-and-year key."""
    def count(filter: Filter) -> int:
        assert filter == Filter(must=[IsEmpty(key=COMPANY_YEARS_KEY)], must_not=[IsEmpty(key=ALIASES_KEY)])
        return n
    return count


def test_fetch_prefers_the_company_and_year_as_one_condition_where_every_chunk_has_it() -> None:
    module = FinanceModule()
    query = module.analyze("What is the FY2018 capital expenditure amount for 3M in the 10-K?")
    search = RecordingSearch([], values=KNOWN, counts=lacking_the_key(0))
    module.fetch(query, search)
    [call] = search.calls
    assert call["filter"].must == [MatchAny(key=ALIASES_KEY, any=["3m"])]
    assert call["prefer"].must == [MatchAny(key=COMPANY_YEARS_KEY, any=["3m|2018"]), MatchAny(key="meta.doc_type", any=["10k"])]


def test_fetch_prefers_company_and_year_apart_while_some_chunks_lack_the_key() -> None:
    """While chunks enriched before the key existed remain, the two conditions stay apart:
    `prefer` then repeats the filter, as the store searches it as given."""
    module = FinanceModule()
    query = module.analyze("Did JnJ raise its dividend in FY2022?")
    search = RecordingSearch([], values=KNOWN, counts=lacking_the_key(3))
    module.fetch(query, search)
    [call] = search.calls
    assert call["prefer"].must == [*call["filter"].must, Match(key="meta.fiscal_year", value=2022)]
    assert len(search.counted) == 1


def test_line_items_give_the_words_filings_print() -> None:
    capex = line_item_terms("What is 3M's FY2018 capital expenditure, from the cash flow statement?")
    assert "purchases of property, plant and equipment" in capex
    assert "consolidated statements of cash flows" in capex
    assert "total current liabilities" in line_item_terms("Has AMCOR's quick ratio improved?")
    assert line_item_terms("Is Boeing's business subject to cyclicality?") == ""


def test_fetch_adds_the_line_items_to_the_keyword_side_only() -> None:
    question = "What is the FY2018 capital expenditure amount for 3M?"
    search = RecordingSearch([], values=KNOWN)
    FinanceModule().fetch(FinanceModule().analyze(question), search)
    [call] = search.calls
    assert call["text"] == question  # the embedding reads the question alone
    assert call["sparse_text"] == f"{question} {line_item_terms(question)}"

    search = RecordingSearch([], values=KNOWN)
    module = FinanceModule(FinanceConfig(expand_line_items=False))
    module.fetch(module.analyze(question), search)
    assert search.calls[0]["sparse_text"] is None

    # Line items are not a filter: they stay when the question's filters are off.
    search = RecordingSearch([], values=KNOWN)
    module = FinanceModule(FinanceConfig(use_question_filters=False))
    module.fetch(module.analyze(question), search)
    assert search.calls[0]["filter"] is None
    assert search.calls[0]["sparse_text"] == f"{question} {line_item_terms(question)}"


def test_strict_periods_widen_when_too_few_hits() -> None:
    module = FinanceModule(FinanceConfig(period_filter="strict", min_period_hits=3))
    query = module.analyze("What is 3M's FY2018 net PPNE?")
    search = RecordingSearch([make_candidate(0, CAPEX_3M, meta=META_3M)], values=KNOWN)
    module.fetch(query, search)
    assert Range(key="meta.fiscal_year", gte=2017, lte=2019) in search.calls[0]["filter"].must
    assert search.calls[1]["filter"].must == [MatchAny(key=ALIASES_KEY, any=["3m"])]
    assert "period_fallback" in query.notes


def test_filter_drops_the_wrong_company_with_a_reason() -> None:
    module = FinanceModule()
    query = module.analyze("What is the FY2018 capital expenditure amount for 3M?")
    module.fetch(query, RecordingSearch([], values=KNOWN))
    candidates = [make_candidate(0, CAPEX_3M, meta=META_3M), make_candidate(1, PEPSICO_LEGAL, meta=META_PEP)]
    kept, dropped = module.filter(query, module.normalize(query, candidates))
    assert kept.kept and not dropped.kept
    assert dropped.reason == "company 'pepsico' not asked for"


def test_strict_periods_drop_other_years() -> None:
    module = FinanceModule(FinanceConfig(period_filter="strict", min_period_hits=1))
    query = module.analyze("What is 3M's FY2018 net PPNE?")
    module.fetch(query, RecordingSearch([make_candidate(0, CAPEX_3M, meta=META_3M)], values=KNOWN))
    old = make_candidate(1, "3M's capital spending in 2022.", meta={**META_3M, "fiscal_year": 2022})
    [_, dropped] = module.filter(query, [make_candidate(0, CAPEX_3M, meta=META_3M), old])
    assert dropped.reason == "fiscal year 2022 outside FY2017-FY2019 asked for"


def test_normalize_annotates_amounts_scales_and_periods() -> None:
    module = FinanceModule()
    query = module.analyze("What was 3M's capex in fiscal 2018?")
    [c] = module.normalize(query, [make_candidate(0, "Capex was $1.2bn in fiscal 2018; EPS rose.")])
    assert c.text == "Capex was $1.2bn in fiscal 2018; EPS rose."
    assert c.model_text == "Capex was $1.2bn [= USD 1.2 billion] in fiscal 2018 [= FY2018]; EPS (earnings per share) rose."
    assert len(c.notes) == 3
    [t] = module.normalize(query, [make_candidate(1, "Total assets\n(in millions)\n36,500")])
    assert t.model_text.startswith("[Amounts in millions") and "table amounts are in millions" in t.notes


def test_only_candidates_that_can_fit_the_budget_are_normalized() -> None:
    module = FinanceModule(FinanceConfig(max_chunks=3, context_tokens=400))
    query = module.analyze("What was 3M's capex in fiscal 2018?")
    segments = ["Capital spending", "Research costs", "Dividends paid", "Share repurchases", "Pension funding"]
    candidates = [
        make_candidate(i, " ".join(f"{name} in region {j} was ${j + i}.2bn in fiscal 2018." for j in range(20)))
        for i, name in enumerate(segments)
    ]
    filtered = module.filter(query, module.normalize(query, candidates))
    assert [c.kept for c in filtered] == [True, False, False, False, False]
    assert "[= USD 1.2 billion]" in filtered[0].model_text
    assert all(c.reason == "over the 400-token budget" for c in filtered[1:])
    assert all(c.normalized is None for c in filtered[1:]), "dropped candidates were normalized for nothing"
