"""The finance module: SEC filings (10-K, 10-Q, 8-K) and earnings releases.

At ingestion `enrich` reads the filer (cover page, press-release dateline or filename),
its ticker, the document type and the fiscal period. At query time the question's company
is resolved against the companies the collection holds (aliases, tickers, nicknames), and
retrieval is restricted to that company and, softly or strictly, to the period asked for.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from pathlib import PurePath
from typing import Any, Literal

from pydantic import Field

from core.vectorstore import Filter, IndexType, IsEmpty, Match, MatchAny, Range
from modules.base import (
    Candidate,
    DomainModule,
    FetchContext,
    ModuleConfig,
    Query,
    apply_generic_filters,
    approx_tokens,
    collapse_whitespace,
)
from modules.normalize import (
    annotate_amounts,
    annotate_periods,
    apply_table_scale,
    expand_abbreviations,
    find_periods,
    find_table_scale,
    name_key,
    parse_date,
    squash,
)
from modules.registry import register

DocType = Literal["10k", "10q", "8k", "earnings", "other"]
ALIASES_KEY = "meta.company_aliases"
COMPANY_YEARS_KEY = "meta.company_years"

# Nicknames that neither the name nor the ticker give, to the squashed name key they mean.
NICKNAMES: dict[str, str] = {
    "jnj": "johnsonjohnson", "jj": "johnsonjohnson", "amex": "americanexpress", "jpmorgan": "jpmorganchase",
    "jpm": "jpmorganchase", "chase": "jpmorganchase", "coke": "cocacola", "mmm": "3m", "minnesotamining": "3m",
    "ge": "generalelectric", "gm": "generalmotors", "bofa": "bankofamerica", "hp": "hewlettpackard",
    "p&g": "proctergamble", "pg": "proctergamble", "ulta": "ultabeauty",
    "cvs": "cvshealth", "mgm": "mgmresorts", "awk": "americanwaterworks", "amd": "advancedmicrodevices",
    "activision": "activisionblizzard", "lockheed": "lockheedmartin", "kraft": "kraftheinz",
}
# First words too common to stand for a company alone ("American" Express, "General" Mills).
_GENERIC_WORDS = frozenset(
    "american general united national international first new global southern northern eastern western "
    "first royal standard central pacific atlantic bank banco pioneer great the advanced consolidated allied "
    "public capital financial energy healthcare".split()
)
_TRAILING_WORDS = ("international", "holdings", "holding", "group", "worldwide", "enterprises", "systems", "resorts")

_FILENAME = re.compile(
    r"^(?P<company>.+?)[_\s-]+(?P<year>(?:19|20)\d\d)(?:[_\s-]*Q(?P<quarter>[1-4]))?[_\s-]+"
    r"(?P<type>10-?K|10-?Q|8-?K|EARNINGS|EARNINGS[_\s-]?RELEASE|PRESS[_\s-]?RELEASE|ANNUAL[_\s-]?REPORT)"
    r"(?:[_\s-]+dated[_\s-](?P<dated>\d{4}-\d\d-\d\d))?",
    re.I,
)
_EXACT_NAME = re.compile(r"\(\s*Exact\s+name\s+of\s+(?:registrant|company)", re.I)
_DATELINE = re.compile(
    r"(?P<name>[A-Z][\w.&,'’ -]{1,60}?)\s*\((?:[^()]{0,40}?,\s*)?(?:NYSE|NASDAQ|Nasdaq|NYSE American)\s*:\s*(?P<ticker>[A-Z.]{1,6})\)"
)
_HEADLINE = re.compile(r"^(?P<name>[A-Z][\w.&'’ -]{1,60}?)\s+(?:Reports|Announces|REPORTS|ANNOUNCES)\b", re.M)
_SUBSIDIARIES = re.compile(r"^(?P<name>[A-Z][\w.&,'’ -]{1,60}?)\s+(?:and|AND)\s+(?:its\s+)?(?:Subsidiaries|SUBSIDIARIES|Consolidated Subsidiaries)\s*$", re.M)
_TICKER_AFTER_HEADER = re.compile(r"Trading\s+Symbol\(?s?\)?\)?(?P<after>.{0,400})", re.I | re.S)
_TICKER_LINE = re.compile(r"^\s*([A-Z]{1,5})\s*$", re.M)
_NOT_TICKERS = frozenset({"NONE", "YES", "NO", "NYSE", "N", "A", "NA"})
_FY_END = re.compile(r"for\s+the\s+(?:fiscal\s+)?year\s+ended\s+(?P<date>[A-Za-z]+\.?\s+\d{1,2},?\s+\d{4})", re.I)
_QUARTER_END = re.compile(r"for\s+the\s+quarterly\s+period\s+ended\s+(?P<date>[A-Za-z]+\.?\s+\d{1,2},?\s+\d{4})", re.I)
_REPORT_DATE = re.compile(r"Date\s+of\s+report[^:]{0,60}:\s*(?P<date>[A-Za-z]+\.?\s+\d{1,2},?\s+\d{4})", re.I)
# The form's name on a line of its own, as cover pages print it ("Form 10-K" in a sentence is a reference).
_COVER_FORMS: list[tuple[DocType, re.Pattern[str]]] = [
    ("10k", re.compile(r"^\s*FORM\s+10-?K\s*$|ANNUAL\s+REPORT\s+PURSUANT", re.I | re.M)),
    ("10q", re.compile(r"^\s*FORM\s+10-?Q\s*$|QUARTERLY\s+REPORT\s+PURSUANT", re.I | re.M)),
    ("8k", re.compile(r"^\s*FORM\s+8-?K\s*$|CURRENT\s+REPORT\s+Pursuant", re.I | re.M)),
]
_QUESTION_DOC_TYPES: list[tuple[DocType, re.Pattern[str]]] = [
    ("10k", re.compile(r"\b10-?K\b|\bannual report\b", re.I)),
    ("10q", re.compile(r"\b10-?Q\b|\bquarterly report\b", re.I)),
    ("8k", re.compile(r"\b8-?K\b|\bcurrent report\b", re.I)),
    ("earnings", re.compile(r"\bearnings (?:release|call|report)\b|\bpress release\b", re.I)),
]
_MENTION = re.compile(r"\b(?:[A-Z0-9][\w&.\-]*(?:'s|’s)?)(?:\s+(?:&\s+)?[A-Z0-9][\w&.\-]*(?:'s|’s)?)*")
_QUESTION_WORDS = frozenset(
    "what which who whom whose how when where why is are was were does do did has have had can could should would "
    "if in as of for from the a an by on to and or based assume answer round define give we basing among taking "
    "according considering using compute calculate use fy q1 q2 q3 q4 h1 h2 usd eps gaap non".split()
)
_TOKEN = re.compile(r"[A-Za-z0-9&]+(?:[.\-][A-Za-z0-9&]+)*")

# What a question calls a statement or a metric, and the words filings print for it: the
# question says "capital expenditure", the cash flow statement "Purchases of property, plant
# and equipment". Added to the BM25 side of the search (`FinanceConfig.expand_line_items`).
LINE_ITEMS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), terms) for p, terms in [
        (r"cash ?flows? statement|statements? of cash ?flows?",
         "consolidated statements of cash flows net cash provided by operating activities investing activities "
         "financing activities"),
        (r"balance sheet|statements? of financial position",
         "consolidated balance sheets total assets total current assets total current liabilities "
         "shareholders equity"),
        (r"income statement|statements? of (?:income|operations|earnings)|\bP&L\b|profit and loss",
         "consolidated statements of income operations net sales total revenues cost of sales operating income "
         "net income"),
        (r"capital expenditure|\bcapex\b",
         "purchases of property, plant and equipment additions to property capital expenditures"),
        (r"\bPP&E\b|\bPPNE\b|property,? plant|fixed asset",
         "property, plant and equipment net accumulated depreciation"),
        (r"free cash ?flow|\bFCF\b",
         "net cash provided by operating activities purchases of property, plant and equipment"),
        (r"working capital|quick ratio|current ratio|liquidity",
         "total current assets total current liabilities inventories cash and cash equivalents"),
        (r"dividend", "dividends paid cash dividends declared per share"),
        (r"cost of goods sold|\bCOGS\b|gross margin|inventory turnover",
         "cost of sales cost of products sold gross margin inventories"),
        (r"operating (?:income|margin|profit)", "operating income operating profit"),
        (r"return on assets|\bROA\b", "net income total assets"),
        (r"days payable|\bDPO\b|accounts payable", "accounts payable cost of sales"),
        (r"\bdebt\b|borrowings", "long-term debt current portion of long-term debt short-term borrowings"),
        (r"repurchase|buyback", "purchases of common stock share repurchase program treasury stock"),
        (r"effective tax rate", "effective tax rate provision for income taxes"),
        (r"restructuring", "restructuring and impairment charges"),
        (r"securities registered|registered to trade|national securities exchange",
         "securities registered pursuant to Section 12(b) of the Act title of each class trading symbol "
         "name of each exchange on which registered"),
    ]
]


class FinanceConfig(ModuleConfig):
    """Settings of the finance module (SEC filings and earnings releases)."""

    entity_filter: bool = Field(
        True, description="Restrict retrieval to the company the question names, when it is in the collection."
    )
    period_filter: Literal["strict", "prefer", "off"] = Field(
        "prefer",
        description="strict: only filings of the fiscal year asked for (within the tolerance); prefer: rank them first "
        "but keep other years of the company; off: ignore periods.",
    )
    period_tolerance_years: int = Field(
        1, ge=0, le=5,
        description="With strict periods, years either side of the one asked for that still count (a later filing "
        "repeats prior years; an earnings release gives next year's outlook).",
    )
    min_period_hits: int = Field(
        3, ge=0, le=100,
        description="With strict periods, fewer hits than this widens the search to every year of the company "
        "(recorded on the query).",
    )
    doc_type_filter: Literal["strict", "prefer", "off"] = Field(
        "prefer", description="What to do with document types the question names (10-K, 10-Q, 8-K, earnings release)."
    )
    doc_types: list[DocType] = Field(
        default_factory=list, description="Only these document types are ever used; empty: all."
    )
    annotate_numbers: bool = Field(
        True, description="Add the full value next to amounts with a scale word or in parentheses ($1.2bn -> USD 1.2 billion)."
    )
    table_scale: Literal["note", "cells", "off"] = Field(
        "note",
        description="For chunks whose table declares a scale ('in millions'): note it once in front, also annotate "
        "every cell, or do nothing.",
    )
    expand_abbreviations: bool = Field(
        True, description="Spell out financial abbreviations (EPS, SG&A, PP&E, ...) at their first use."
    )
    expand_line_items: bool = Field(
        True,
        description="Search with the question plus the words filings print for the statements and metrics it "
        "names (\"capital expenditure\": \"purchases of property, plant and equipment\"; the module's LINE_ITEMS), "
        "on the keyword (BM25) side of the search.",
    )


# ---- ingest time ----


def extract_filing(text: str, filename: str) -> dict[str, Any]:
    """Company, ticker, document type and fiscal period of a filing, from its first pages and
    its filename; keys whose value cannot be found are left out."""
    head = text[:12000]
    meta: dict[str, Any] = {}
    stem = PurePath(filename).stem
    by_name = _FILENAME.search(stem)
    names: list[str] = []
    tickers: list[str] = []

    m = _EXACT_NAME.search(head)
    if m:
        lines = [ln.strip() for ln in head[: m.start()].splitlines() if ln.strip()]
        names += [line for line in lines[-1:] if _looks_like_name(line)]
    for m in _DATELINE.finditer(head[:6000]):
        # "PURCHASE, N.Y. - April 25, 2023 - PepsiCo, Inc. (NASDAQ: PEP)": the name follows the dateline
        names.append(re.split(r"\s[-–—]{1,2}\s|--", m["name"])[-1].strip(" ,"))
        tickers.append(m["ticker"])
        break
    if not names:
        m = _HEADLINE.search(head[:3000]) or _SUBSIDIARIES.search(head[:6000])
        if m and name_key(m["name"]):
            names.append(m["name"].strip())
    m = _TICKER_AFTER_HEADER.search(head)
    if m:
        tickers += [t for t in _TICKER_LINE.findall(m["after"])[:1] if t not in _NOT_TICKERS]
    tickers += re.findall(r"\b(?:NYSE|NASDAQ|Nasdaq)\s*:\s*([A-Z]{1,5})\b", head)[:1]

    file_company = by_name["company"].replace("_", " ").strip() if by_name else None
    display = names[0] if names else file_company
    if display:
        meta["company"] = re.sub(r"\s+", " ", display).strip()
        meta["company_key"] = name_key(meta["company"])
        meta["company_aliases"] = company_aliases([*names[:1], *([file_company] if file_company else [])], tickers)

    doc_type = _doc_type(head, by_name["type"] if by_name else None)
    meta["doc_type"] = doc_type
    year, quarter = _period(head, doc_type, by_name)
    if year:
        meta["fiscal_year"] = year
        if quarter:
            meta["fiscal_quarter"] = quarter
        meta["period"] = f"FY{year}" + (f" Q{quarter}" if quarter else "")
    if "company_aliases" in meta:
        meta["company_years"] = company_years(meta["company_aliases"], year)
    if by_name and by_name["dated"]:
        meta["report_date"] = by_name["dated"]
    return meta


def company_years(aliases: list[str], year: int | None) -> list[str]:
    """Values of the company-and-year key, one per alias: `alias|year`, or `alias|` where the
    year is unknown, so that every chunk of a company has one. One keyword condition then
    selects a company's filings of a year: a company condition and a year condition make the
    engine check the year for each of the company's chunks (at 100k chunks, 2.4 instead of
    0.8-1.0 ms a search)."""
    return [f"{alias}|{year or ''}" for alias in aliases]


def _looks_like_name(line: str) -> bool:
    return (
        bool(re.search(r"[A-Za-z]{2}", line)) and len(line.split()) <= 8 and not re.search(r"\d{3}", line)
        and not re.match(r"(?:OR|for the|commission|\(mark|transition|annual|quarterly|form)\b", line, re.I)
    )


def company_aliases(names: list[str], tickers: list[str]) -> list[str]:
    """Squashed keys a question may use for the company: its names with and without generic
    trailing words, a distinctive first word, its tickers and known nicknames."""
    aliases: list[str] = []

    def add(alias: str) -> None:
        if len(alias) >= 2 and alias not in aliases:
            aliases.append(alias)

    for name in names:
        key = name_key(name)
        words = key.split()
        add(squash(key))
        while words and words[-1] in _TRAILING_WORDS:
            words = words[:-1]
            add("".join(words))
        if len(words) > 1 and words[0] not in _GENERIC_WORDS and len(words[0]) >= 5:
            add(words[0])
    for ticker in tickers:
        add(ticker.lower().replace(".", ""))
    for nick, target in NICKNAMES.items():
        if target in aliases:
            add(nick)
    return aliases


def _doc_type(head: str, from_name: str | None) -> DocType:
    if from_name:
        t = re.sub(r"[_\s-]", "", from_name.upper())
        return {"10K": "10k", "ANNUALREPORT": "10k", "10Q": "10q", "8K": "8k"}.get(t, "earnings")  # type: ignore[return-value]
    cover = head[:3000]
    forms = [(m.start(), t) for t, pattern in _COVER_FORMS if (m := pattern.search(cover))]
    if forms:
        return min(forms)[1]
    if re.search(r"\b(?:reports|announces|announced)\b.{0,80}\bresults\b|FOR IMMEDIATE RELEASE", head[:4000], re.I | re.S):
        return "earnings"
    return "other"


def _period(head: str, doc_type: str, by_name: re.Match[str] | None) -> tuple[int | None, int | None]:
    """(fiscal year, quarter). The filename wins; else the cover page: the year of the period's
    end date, and the calendar quarter in which a quarterly period ends."""
    if by_name:
        return int(by_name["year"]), int(by_name["quarter"]) if by_name["quarter"] else None
    if doc_type == "10q" and (m := _QUARTER_END.search(head)) and (d := parse_date(m["date"])):
        # a period ending early in a month (Pfizer's "July 2") belongs to the quarter before
        month = d.month - 1 if d.day <= 7 else d.month
        return d.year, (max(month, 1) - 1) // 3 + 1
    if (m := _FY_END.search(head)) and (d := parse_date(m["date"])):
        # a 52/53-week year ending in the first days of January is named after the year before
        return d.year - (d.month == 1 and d.day <= 7), None
    if (m := _REPORT_DATE.search(head)) and (d := parse_date(m["date"])):
        return d.year, None
    periods = [p for p in find_periods(head[:3000], bare_years=False)]
    if periods:
        return periods[0].year, periods[0].quarter
    return None, None


# ---- query time ----


def question_periods(question: str) -> tuple[int | None, int | None, list[str]]:
    """(target fiscal year, quarter, period labels). The latest year named is the target: a
    comparison "FY2021 vs FY2022" is answered by the later filing, which repeats the earlier."""
    periods = find_periods(question)
    explicit = [p for p in periods if p.explicit] or periods
    if not explicit:
        return None, None, []
    year = max(p.year for p in explicit)
    quarters = [p.quarter or (2 if p.half else None) for p in explicit if p.year == year]
    quarter = next((q for q in quarters if q), None)
    return year, quarter, [p.label for p in explicit]


def line_item_terms(question: str) -> str:
    """The words filings print for the statements and metrics the question names ("" if none)."""
    return " ".join(dict.fromkeys(terms for pattern, terms in LINE_ITEMS if pattern.search(question)))


def question_mentions(question: str) -> list[str]:
    """Capitalised phrases that may name a company ("American Express", "JnJ", "3M")."""
    mentions = []
    for m in _MENTION.finditer(question):
        words = [re.sub(r"(?:'s|’s)$", "", w) for w in m.group(0).split()]
        while words and (words[0].lower() in _QUESTION_WORDS or find_periods(words[0], bare_years=True)):
            words = words[1:]
        while words and (words[-1].lower() in _QUESTION_WORDS or find_periods(words[-1], bare_years=True)):
            words = words[:-1]
        if words and re.search(r"[A-Za-z]", " ".join(words)):
            mentions.append(" ".join(words))
    return mentions


def resolve_companies(question: str, known_aliases: dict[str, int], *, fuzzy: float = 0.88) -> list[str]:
    """The known aliases the question names: word n-grams of the question, squashed, matched
    exactly (nicknames mapped first), then fuzzily against capitalised mentions. Short aliases
    (tickers) only match a word the question writes in capitals."""
    known = set(known_aliases)
    raw_tokens = [re.sub(r"(?:'s|’s)$", "", t) for t in _TOKEN.findall(question.replace("’", "'"))]
    tokens = [t.lower().replace(".", "").replace("-", "") for t in raw_tokens]
    matched: list[str] = []
    i = 0
    while i < len(tokens):
        for n in (5, 4, 3, 2, 1):
            if i + n > len(tokens):
                continue
            gram = "".join(tokens[i : i + n]).replace("&", "")
            gram = NICKNAMES.get(gram, gram) if gram not in known else gram
            if gram in known and (len(gram) > 4 or n > 1 or not raw_tokens[i].islower()):
                if gram not in matched:
                    matched.append(gram)
                i += n - 1
                break
        i += 1
    if matched or fuzzy >= 1.0:
        return matched
    for mention in question_mentions(question):
        target = squash(name_key(mention))
        if len(target) < 5:
            continue
        best = max(known, key=lambda k: SequenceMatcher(None, target, k).ratio(), default=None)
        if best and len(best) >= 5 and SequenceMatcher(None, target, best).ratio() >= fuzzy:
            matched.append(best)
    return matched


def _keyed_by_year(ctx: FetchContext) -> bool:
    """Whether every chunk that names a company has the company-and-year key (chunks enriched
    before the key was added do not, until their file is ingested again). One count per
    collection version: per company, it would be a count the first time each is asked about."""
    lacking = Filter(must=[IsEmpty(key=COMPANY_YEARS_KEY)], must_not=[IsEmpty(key=ALIASES_KEY)])
    return ctx.count(lacking) == 0


def _meta(c: Candidate) -> dict[str, Any]:
    return c.payload.get("meta") or {}


@register
class FinanceModule(DomainModule[FinanceConfig]):
    key = "finance"
    description = (
        "SEC filings and earnings releases: retrieval restricted to the company and fiscal period asked for, "
        "amounts, scales and periods made explicit, other companies and periods dropped with a reason."
    )
    config_model = FinanceConfig
    payload_indexes = {
        "meta.company_key": IndexType.KEYWORD,
        ALIASES_KEY: IndexType.KEYWORD,
        "meta.doc_type": IndexType.KEYWORD,
        "meta.fiscal_year": IndexType.INTEGER,
        "meta.fiscal_quarter": IndexType.INTEGER,
        COMPANY_YEARS_KEY: IndexType.KEYWORD,
    }
    enrich_version = "finance-2"
    route_examples = [
        "What was 3M's FY2018 capital expenditure?",
        "What is Coca-Cola's FY2022 dividend payout ratio?",
        "How much did American Express's effective tax rate change between FY2021 and FY2022?",
        "Does Verizon have a healthy quick ratio for FY2022?",
        "What were Nike's revenues in the fourth quarter of fiscal 2023?",
        "What drove the change in operating margin in the latest 10-K?",
        "By how many percentage points did PepsiCo raise its full-year EPS guidance in Q1 2023?",
        "What is the net working capital of Lockheed Martin at year end 2021, in USD millions?",
        "Which business segment had the lowest net revenue last quarter according to the 10-Q?",
        "How much free cash flow did General Mills generate in fiscal 2020?",
        "What debt securities are registered on a national exchange under the company's name?",
    ]

    # ---- ingest time ----

    def enrich(self, text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return extract_filing(text, filename)

    # ---- query time ----

    def analyze(self, question: str) -> Query:
        year, quarter, labels = question_periods(question)
        doc_types = [t for t, pattern in _QUESTION_DOC_TYPES if pattern.search(question)]
        query = Query(text=question, entities=question_mentions(question), periods=labels, doc_types=doc_types)
        query.notes.update({"fiscal_year": year, "fiscal_quarter": quarter})
        if self.config.expand_line_items and (terms := line_item_terms(question)):
            query.notes["search_text"] = f"{question} {terms}"
        if self.config.doc_types:
            query.filter = Filter(must=[MatchAny(key="meta.doc_type", any=list(self.config.doc_types))])
        return query

    def fetch(self, query: Query, ctx: FetchContext) -> list[Candidate]:
        cfg = self.config
        if not cfg.use_question_filters:
            return super().fetch(query, ctx)
        base = query.filter or Filter()
        aliases: list[str] = []
        if cfg.entity_filter:
            aliases = resolve_companies(query.text, ctx.known_values(ALIASES_KEY, limit=5000))
            if aliases:
                query.notes["company_aliases"] = aliases
                base = base.and_(MatchAny(key=ALIASES_KEY, any=aliases))
        query.filter = base if base.must else None

        def search(extra: list[Any], prefer: Filter | None = None) -> list[Candidate]:
            f = base.and_(*extra) if extra else base
            return ctx.search(query.text, limit=cfg.top_k, mode=cfg.retrieval, fusion=cfg.fusion,
                              filter=f if f.must else None, prefer=prefer, sparse_text=query.notes.get("search_text"))

        year, quarter = query.notes.get("fiscal_year"), query.notes.get("fiscal_quarter")
        preferred: list[Any] = []
        if year and cfg.period_filter != "off":
            preferred.append(Match(key="meta.fiscal_year", value=year))
            if quarter:
                preferred.append(Match(key="meta.fiscal_quarter", value=quarter))
        if query.doc_types and cfg.doc_type_filter != "off":
            doc_types = MatchAny(key="meta.doc_type", any=query.doc_types)
            if cfg.doc_type_filter == "strict":
                base = base.and_(doc_types)
                query.filter = base
            else:
                preferred.append(doc_types)

        if year and cfg.period_filter == "strict":
            tol = cfg.period_tolerance_years
            window = Range(key="meta.fiscal_year", gte=year - tol, lte=year + tol)
            hits = search([window])
            if len(hits) >= cfg.min_period_hits:
                query.notes["period_window"] = [year - tol, year + tol]
                query.filter = base.and_(window)
                return hits
            query.notes["period_fallback"] = f"fewer than {cfg.min_period_hits} hits in FY{year - tol}-FY{year + tol}: all years searched"
            return search([])
        if preferred:
            # Two rankings fused: the exact period (and document type) asked for, and the
            # company's whole collection, so that a period match ranks first but a relevant
            # passage of another year (a comparative, an outlook) still competes.
            query.notes["preferred"] = [c.model_dump() for c in preferred]
            prefer = base.and_(*preferred)
            if aliases and preferred[0] == Match(key="meta.fiscal_year", value=year) and _keyed_by_year(ctx):
                # The company and the year as one condition (see `company_years`).
                company = MatchAny(key=COMPANY_YEARS_KEY, any=company_years(aliases, year))
                prefer = Filter(must=[*(c for c in base.must if c != MatchAny(key=ALIASES_KEY, any=aliases)), company, *preferred[1:]])
            return search([], prefer=prefer)
        return search([])

    def normalize(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        # Annotating every amount and period is the costliest stage work (~3 ms a chunk):
        # done for the candidates the filter measures, not for all `top_k`.
        for c in candidates:
            c.defer_normalization(self._normalized)
        return candidates

    def _normalized(self, c: Candidate) -> tuple[str, list[str]]:
        cfg = self.config
        text = collapse_whitespace(c.text)
        notes: list[str] = []
        if cfg.annotate_numbers:
            text, n = annotate_amounts(text)
            notes += n
        scale = find_table_scale(text) or find_table_scale(c.payload.get("section") or "")
        if scale and cfg.table_scale != "off":
            text, n = apply_table_scale(text, scale, cells=cfg.table_scale == "cells")
            notes += n
        text, n = annotate_periods(text)
        notes += n
        if cfg.expand_abbreviations:
            text, n = expand_abbreviations(text)
            notes += n
        return text, notes

    def filter(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        cfg = self.config
        aliases = set(query.notes.get("company_aliases") or [])
        window = query.notes.get("period_window")
        for c in candidates:
            meta = _meta(c)
            if not c.kept or not meta:
                continue
            if aliases and meta.get("company_aliases") and not aliases & set(meta["company_aliases"]):
                c.drop(f"company {meta.get('company_key', '?')!r} not asked for")
            elif window and meta.get("fiscal_year") and not window[0] <= meta["fiscal_year"] <= window[1]:
                c.drop(f"fiscal year {meta['fiscal_year']} outside FY{window[0]}-FY{window[1]} asked for")
            elif cfg.doc_types and meta.get("doc_type") not in cfg.doc_types:
                c.drop(f"document type {meta.get('doc_type')!r} not in {list(cfg.doc_types)}")
            elif (cfg.doc_type_filter == "strict" and query.doc_types and meta.get("doc_type")
                  and meta["doc_type"] not in query.doc_types):
                c.drop(f"document type {meta['doc_type']!r} not the {'/'.join(query.doc_types)} asked for")
        return apply_generic_filters(candidates, cfg, count_tokens=approx_tokens)
