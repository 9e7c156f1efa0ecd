"""Normalization helpers shared by the domain modules: pure functions, no I/O.

Normalization annotates rather than destroys: the text keeps its wording and each value
the small model could misread gets a bracketed canonical form next to it, e.g.
"$1,577 million [= USD 1.577 billion]", "fiscal 2018 [= FY2018]",
"June 21, 1999 [= 1999-06-21]". Each helper returns the new text and one note per kind of
change, for `Candidate.notes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from dataclasses import dataclass
from datetime import date

# ---- numbers and money ----

SCALES: dict[str, float] = {
    "thousand": 1e3, "thousands": 1e3, "k": 1e3,
    "million": 1e6, "millions": 1e6, "mn": 1e6, "mm": 1e6, "mil": 1e6, "m": 1e6,
    "billion": 1e9, "billions": 1e9, "bn": 1e9, "b": 1e9,
    "trillion": 1e12, "trillions": 1e12, "tn": 1e12,
}
CURRENCIES: dict[str, str] = {
    "us$": "USD", "$": "USD", "usd": "USD", "€": "EUR", "eur": "EUR", "£": "GBP", "gbp": "GBP", "¥": "JPY", "jpy": "JPY",
}
_SCALE_NAMES = ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"))

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
# A scale word right after a number: long forms anywhere, one-letter forms only glued or
# before a non-letter ("$1.2bn", "$3B", but not "3 months").
_SCALE = r"(?:thousands?|millions?|billions?|trillions?|bn|mn|mm|tn|mil\b|[kmb]\b)"
_CUR = r"(?:US\$|\$|€|£|¥|USD|EUR|GBP|JPY)"
_AMOUNT_BODY = (
    rf"(?P<cur0>{_CUR})?\s?(?P<neg>\()?(?P<minus>[-−–])?\s?(?P<cur>{_CUR})?\s?(?P<num>{_NUM})(?P<close>\))?"
    rf"(?:\s?(?P<scale>{_SCALE}))?(?:\s?(?P<pct>%|percent\b))?(?:\s(?P<cur2>USD|EUR|GBP|dollars\b))?"
)
# Every part before the number is optional, so the engine would try the whole pattern at every
# character; this lookahead (the characters an amount can start with, a space only before one
# of them) skips the rest at the cost of one test, and finds the same matches 2-3x faster.
_AMOUNT_START = r"(?=[$€£¥(\-−–.\d]|US|EUR|GBP|JPY|\s[\s$€£¥(\-−–.\dUEGJ])"
_AMOUNT = re.compile(_AMOUNT_START + _AMOUNT_BODY, re.IGNORECASE)
# "(in millions, except per share)", "($ in Millions, except EPS)", "in thousands of U.S. dollars";
# `_SCALE_WORDS`, which every such header holds, is the cheap test first.
_SCALE_WORDS = re.compile(r"in\s+(?:thousands|millions|billions)", re.IGNORECASE)
_SCALE_HEADER = re.compile(
    r"\(?\s*(?:(?P<cur>\$|US\$|€|£|dollars|USD)\s+)?in\s+(?P<scale>thousands|millions|billions)"
    r"(?:\s+of\s+(?:U\.?S\.?\s+)?(?P<cur2>dollars|euros|pounds))?(?P<rest>[^)\n]{0,60})\)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Amount:
    """A number found in text: `value` with its scale applied, negative for "(1,234)"."""

    value: float
    currency: str | None
    percent: bool
    scaled: bool  # the text gave a scale word
    start: int
    end: int


def parse_number(text: str) -> float | None:
    """ "1,577" -> 1577.0, "(1,234)" -> -1234.0, "-3.5" -> -3.5; None if not a number."""
    s = text.strip().replace("−", "-").replace("–", "-")
    negative = s.startswith("(") and s.endswith(")")
    s = s.strip("()").replace(",", "").replace("$", "").strip()
    try:
        value = float(s)
    except ValueError:
        return None
    return -value if negative else value


def find_amounts(text: str) -> list[Amount]:
    """Numbers with their currency, scale word and percent sign, in order of appearance."""
    found = []
    for m in _AMOUNT.finditer(text):
        value = parse_number(m["num"])
        if value is None:
            continue
        if m["neg"] and m["close"] or m["minus"]:
            value = -value
        scale = (m["scale"] or "").lower()
        if scale:
            value *= SCALES[scale]
        cur = m["cur0"] or m["cur"] or m["cur2"]
        currency = CURRENCIES.get(cur.lower(), "USD" if cur.lower() == "dollars" else None) if cur else None
        found.append(Amount(value, currency, bool(m["pct"]), bool(scale), m.start(), m.end()))
    return found


def format_scaled(value: float, currency: str | None = None) -> str:
    """1.577e9 -> "1.577 billion", -1234 -> "-1,234", with "USD " in front when the currency is known."""
    magnitude = abs(value)
    for factor, name in _SCALE_NAMES:
        if magnitude >= factor:
            body = f"{_short(value / factor)} {name}"
            break
    else:
        body = _short(value)
    return f"{currency} {body}" if currency else body


def _compact(text: str) -> str:
    return re.sub(r"[\s$,]", "", text.lower())


def _short(x: float) -> str:
    return f"{x:,.4f}".rstrip("0").rstrip(".")


def annotate_amounts(text: str) -> tuple[str, list[str]]:
    """Append the canonical value to amounts written with a scale word or in parentheses:
    "$1,577 million" -> "$1,577 million [= USD 1.577 billion]", "(1,234)" -> "(1,234) [= -1,234]"."""
    out, last, count = [], 0, 0
    for a in find_amounts(text):
        raw = text[a.start : a.end]
        negative_parens = raw.lstrip().startswith("(") and raw.rstrip().endswith(")")
        if a.percent or not (a.scaled or negative_parens):
            continue
        canonical = format_scaled(a.value, a.currency)
        if _compact(raw) == _compact(canonical.removeprefix(f"{a.currency} ")):
            continue  # already canonical ("1.2 billion")
        out.append(text[last : a.end])
        out.append(f" [= {canonical}]")
        last = a.end
        count += 1
    out.append(text[last:])
    return "".join(out), ([f"annotated {count} amount(s) with their full value"] if count else [])


@dataclass(frozen=True)
class TableScale:
    factor: float
    currency: str | None
    label: str  # as written, e.g. "(in millions, except per share amounts)"

    @property
    def unit(self) -> str:
        name = {1e3: "thousands", 1e6: "millions", 1e9: "billions"}[self.factor]
        return f"{self.currency} {name}" if self.currency else name


def find_table_scale(text: str) -> TableScale | None:
    """The scale a table header declares for its bare numbers, if any."""
    m = _SCALE_WORDS.search(text) and _SCALE_HEADER.search(text)
    if not m:
        return None
    currency_word = (m["cur"] or m["cur2"] or "").lower()
    currency = {"$": "USD", "us$": "USD", "dollars": "USD", "usd": "USD", "€": "EUR", "euros": "EUR",
                "£": "GBP", "pounds": "GBP"}.get(currency_word)
    if currency is None and "$" in text:
        currency = "USD"
    return TableScale(SCALES[m["scale"].lower()], currency, m.group(0).strip())


_BARE = re.compile(rf"(?<![\w.$%/-])\(?(?:{_NUM})\)?(?![\w%.]|\s?(?:%|{_SCALE}))")


def apply_table_scale(text: str, scale: TableScale, *, cells: bool = False) -> tuple[str, list[str]]:
    """Make a scaled table's bare numbers unambiguous.

    By default one line in front states the unit ("[Amounts in USD millions ...]"); with
    `cells`, every bare number of four or more digits is also annotated with its full value,
    which is clearer for a small model but costs tokens."""
    head = f"[Amounts in {scale.unit} unless stated otherwise; from the header {scale.label!r}]\n"
    if not cells:
        return head + text, [f"table amounts are in {scale.unit}"]
    out, last, count = [], 0, 0
    for m in _BARE.finditer(text):
        raw = m.group(0)
        value = parse_number(raw)
        # years, note numbers and small counts are not amounts
        if value is None or abs(value) < 1000 or re.fullmatch(r"(19|20)\d\d", raw):
            continue
        out.append(text[last : m.end()])
        out.append(f" [= {format_scaled(value * scale.factor, scale.currency)}]")
        last = m.end()
        count += 1
    out.append(text[last:])
    return head + "".join(out), [f"table amounts are in {scale.unit}; {count} cell(s) annotated"]


# ---- dates ----

MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"], 1)}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
MONTHS["sept"] = 9
_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
_DATE_MDY = re.compile(rf"\b(?P<month>{_MONTH})\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year>(?:19|20)\d\d)\b", re.I)
_DATE_DMY = re.compile(
    rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?(?P<month>{_MONTH}),?\s+(?P<year>(?:19|20)\d\d)\b", re.I
)
_DATE_NUM = re.compile(r"\b(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>(?:19|20)\d\d)\b")


@dataclass(frozen=True)
class FoundDate:
    value: date
    start: int
    end: int


_ANY_YEAR = re.compile(r"(?:19|20)\d\d")


def find_dates(text: str) -> list[FoundDate]:
    """Calendar dates written out ("June 21, 1999", "23rd day of September, 2016", "6/21/1999")."""
    found: list[FoundDate] = []
    if not _ANY_YEAR.search(text):  # every form has a year: one cheap scan spares three
        return found
    for pattern in (_DATE_MDY, _DATE_DMY, _DATE_NUM):
        for m in pattern.finditer(text):
            month = m["month"]
            name = month.lower().rstrip(".")
            month_no = int(month) if month.isdigit() else MONTHS.get(name, MONTHS.get(name[:3], 0))
            try:
                value = date(int(m["year"]), month_no, int(m["day"]))
            except ValueError:
                continue
            if not any(f.start < m.end() and m.start() < f.end for f in found):
                found.append(FoundDate(value, m.start(), m.end()))
    return sorted(found, key=lambda f: f.start)


def parse_date(text: str) -> date | None:
    dates = find_dates(text)
    return dates[0].value if dates else None


def annotate_dates(text: str) -> tuple[str, list[str]]:
    """ "June 21, 1999" -> "June 21, 1999 [= 1999-06-21]"."""
    out, last = [], 0
    dates = find_dates(text)
    for d in dates:
        out += [text[last : d.end], f" [= {d.value.isoformat()}]"]
        last = d.end
    out.append(text[last:])
    return "".join(out), ([f"annotated {len(dates)} date(s) in ISO form"] if dates else [])


# ---- fiscal periods ----

_ORDINAL = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}
_YEAR = r"(?:19|20)\d\d"
_Y = rf"(?:{_YEAR}|'?\d\d)"  # 2018, '18, 18


def _any_of(*words: str) -> Callable[[str], object]:
    return lambda lowered: any(word in lowered for word in words)


# What each period pattern cannot match without, tested on the lowercased text (substring
# tests, and one pattern that starts with a literal): it spares the pattern's scan of a text
# that has none (most chunks name no quarter or half), at a tenth of a case-blind search.
_Q_DIGIT, _DIGIT_Q = _any_of("q1", "q2", "q3", "q4"), _any_of("1q", "2q", "3q", "4q")
_QUARTER, _HALF, _H_DIGIT = _any_of("quarter"), _any_of("half"), _any_of("h1", "h2", "1h", "2h")
_FY, _FISCAL, _ENDED, _AS_OF = _any_of("fy"), _any_of("fiscal"), _any_of("ended"), re.compile(r"as\s+of").search
_PERIOD_PATTERNS: list[tuple[str, Callable[[str], object], re.Pattern[str]]] = [
    # quarters: "Q2 2023", "Q2'2023", "Q2 of FY2023", "Q2 FY23", "2023 Q1", "FY2023Q1", "2Q23"
    ("quarter", _Q_DIGIT, re.compile(rf"\bQ(?P<q>[1-4])\s*(?:of\s+)?(?:FY|fiscal(?:\s+year)?)?\s*'?(?P<y>{_Y})\b", re.I)),
    ("quarter", _Q_DIGIT, re.compile(rf"\b(?:FY|fiscal(?:\s+year)?)?\s*(?P<y>{_YEAR})\s*-?\s*Q(?P<q>[1-4])\b", re.I)),
    ("quarter", _DIGIT_Q, re.compile(rf"\b(?P<q>[1-4])Q\s*'?(?P<y>{_Y})\b", re.I)),
    ("quarter", _QUARTER, re.compile(
        rf"\b(?P<qw>first|second|third|fourth|1st|2nd|3rd|4th)[\s-]+(?:fiscal\s+)?quarter\s+(?:of\s+)?(?:fiscal\s+(?:year\s+)?|FY\s*)?(?P<y>{_YEAR})\b",
        re.I)),
    ("quarter", _QUARTER, re.compile(
        rf"\b(?P<y>{_YEAR})\s+(?P<qw>first|second|third|fourth)[\s-]+quarter\b", re.I)),
    # halves: "H1 FY2023", "1H23", "first half of 2023"
    ("half", _H_DIGIT, re.compile(rf"\b(?:H(?P<h>[12])|(?P<h2>[12])H)\s*(?:of\s+)?(?:FY|fiscal\s+)?\s*'?(?P<y>{_Y})\b", re.I)),
    ("half", _HALF, re.compile(rf"\b(?P<hw>first|second)\s+half\s+(?:of\s+)?(?:fiscal\s+(?:year\s+)?|FY\s*)?(?P<y>{_YEAR})\b", re.I)),
    # years: "FY2018", "FY 18", "FY'18", "fiscal 2018", "fiscal year 2018", "fiscal year ended December 31, 2018"
    ("year", _FY, re.compile(rf"\bFY\s*'?(?P<y>{_YEAR}|\d\d)\b", re.I)),
    ("year", _FISCAL, re.compile(rf"\bfiscal\s+(?:year\s+)?(?P<y>{_YEAR})\b", re.I)),
    ("year", _ENDED, re.compile(rf"\b(?:fiscal\s+)?years?\s+ended\s+(?:{_MONTH}\s+\d{{1,2}},?\s+)?(?P<y>{_YEAR})\b", re.I)),
    ("year", _AS_OF, re.compile(rf"\bas\s+of\s+(?:{_MONTH}\s+\d{{1,2}},?\s+)?(?P<y>{_YEAR})\b", re.I)),
]
_BARE_YEAR = re.compile(rf"(?<![\d$.,])(?P<y>{_YEAR})(?![\d%])")


@dataclass(frozen=True)
class Period:
    """A fiscal period named in text. `quarter` 1-4 or `half` 1-2 narrow `year`; `explicit`
    is False for a bare calendar year ("in 2022"), which is weaker evidence."""

    year: int
    quarter: int | None = None
    half: int | None = None
    explicit: bool = True
    start: int = 0
    end: int = 0

    @property
    def label(self) -> str:
        if self.quarter:
            return f"FY{self.year} Q{self.quarter}"
        if self.half:
            return f"FY{self.year} H{self.half}"
        return f"FY{self.year}"


def _year(raw: str) -> int:
    raw = raw.lstrip("'")
    return int(raw) if len(raw) == 4 else 2000 + int(raw) if int(raw) < 70 else 1900 + int(raw)


def find_periods(text: str, *, bare_years: bool = True) -> list[Period]:
    """Fiscal periods named in `text`, most specific first where they overlap, then in order."""
    found: list[Period] = []

    def overlaps(s: int, e: int) -> bool:
        return any(p.start < e and s < p.end for p in found)

    lowered = text.lower()
    present: dict[Callable[[str], object], bool] = {}
    for kind, needle, pattern in _PERIOD_PATTERNS:
        if needle not in present:
            present[needle] = bool(needle(lowered))
        if not present[needle]:
            continue
        for m in pattern.finditer(text):
            if overlaps(m.start(), m.end()):
                continue
            groups = m.groupdict()
            year = _year(groups["y"])
            if kind == "quarter":
                q = int(groups["q"]) if groups.get("q") else _ORDINAL[groups["qw"].lower()]
                found.append(Period(year, quarter=q, start=m.start(), end=m.end()))
            elif kind == "half":
                h = groups.get("h") or groups.get("h2")
                found.append(Period(year, half=int(h) if h else 1 + (groups["hw"].lower() == "second"),
                                    start=m.start(), end=m.end()))
            else:
                found.append(Period(year, start=m.start(), end=m.end()))
    if bare_years:
        for m in _BARE_YEAR.finditer(text):
            if not overlaps(m.start(), m.end()):
                found.append(Period(int(m["y"]), explicit=False, start=m.start(), end=m.end()))
    return sorted(found, key=lambda p: p.start)


def annotate_periods(text: str) -> tuple[str, list[str]]:
    """ "fiscal 2018" -> "fiscal 2018 [= FY2018]", "second quarter of 2023" -> "... [= FY2023 Q2]".
    Forms already canonical (FY2018) and bare years are left alone."""
    out, last, count = [], 0, 0
    for p in find_periods(text, bare_years=False):
        raw = text[p.start : p.end]
        if raw.replace(" ", "").upper() == p.label.replace(" ", ""):
            continue
        out += [text[last : p.end], f" [= {p.label}]"]
        last = p.end
        count += 1
    out.append(text[last:])
    return "".join(out), ([f"annotated {count} fiscal period(s)"] if count else [])


# ---- names, abbreviations and aliases ----

# Legal-form suffixes dropped from a name key ("3M Company" -> "3m").
LEGAL_SUFFIXES = frozenset(
    "inc incorporated corp corporation co company cos companies plc ltd limited llc lp llp lllp sa ag nv bv se "
    "gmbh spa srl pte pty oyj ab asa kk the".split()
)
_NON_WORD = re.compile(r"[^0-9a-z]+")


def name_key(name: str) -> str:
    """A company or party name as a comparison key: lowercase words, no punctuation, no legal-
    form suffix. "The Coca-Cola Company" -> "coca cola", "JOHNSON & JOHNSON" -> "johnson johnson"."""
    name = name.lower().replace("&", " ").replace("'s ", " ").replace("’s ", " ")
    name = re.sub(r"\b([a-z])\.(?=[a-z]\.)", r"\1", name)  # "u.s." -> "us."
    words = [w for w in _NON_WORD.split(name.replace(".", "")) if w]
    while words and words[-1] in LEGAL_SUFFIXES:
        words.pop()
    while words and words[0] == "the":
        words.pop(0)
    return " ".join(words)


def squash(key: str) -> str:
    """A name key without spaces, so "Coca Cola", "COCACOLA" and "Coca-Cola" compare equal."""
    return key.replace(" ", "")


# Common abbreviations in filings and questions, expanded in the model's text on first use.
ABBREVIATIONS: dict[str, str] = {
    "YoY": "year over year", "QoQ": "quarter over quarter", "EPS": "earnings per share",
    "EBITDA": "earnings before interest, taxes, depreciation and amortization", "EBIT": "earnings before interest and taxes",
    "FCF": "free cash flow", "SG&A": "selling, general and administrative expenses", "COGS": "cost of goods sold",
    "PP&E": "property, plant and equipment", "D&A": "depreciation and amortization", "R&D": "research and development",
    "CapEx": "capital expenditures", "ROA": "return on assets", "ROE": "return on equity",
    "DPO": "days payable outstanding", "DSO": "days sales outstanding", "GAAP": "generally accepted accounting principles",
    "bps": "basis points", "MD&A": "management's discussion and analysis",
}


@lru_cache(maxsize=16)
def _abbreviation_pattern(shorts: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation, longest first, scanned once per text (not one search per abbreviation).
    alternatives = "|".join(re.escape(short) for short in sorted(shorts, key=len, reverse=True))
    return re.compile(rf"(?<![\w&])(?:{alternatives})(?![\w&])")


def expand_abbreviations(text: str, table: dict[str, str] = ABBREVIATIONS) -> tuple[str, list[str]]:
    """Expand each known abbreviation once, at its first use: "EPS" -> "EPS (earnings per share)"."""
    first: dict[str, int] = {}
    for m in _abbreviation_pattern(tuple(table)).finditer(text):
        first.setdefault(m.group(0), m.end())
    lowered = text.lower()
    done = [short for short in table if short in first and table[short].lower() not in lowered]
    # Insert from the end, so that the offsets found still hold.
    for short in sorted(done, key=lambda short: first[short], reverse=True):
        end = first[short]
        text = f"{text[:end]} ({table[short]}){text[end:]}"
    return text, ([f"expanded {', '.join(done)}"] if done else [])
