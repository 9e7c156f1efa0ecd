"""The biomedical module: research abstracts and clinical text.

- `enrich`: PMID, publication year, study design and the section labels of an abstract
  (`PubMed abstract (PMID n, year)` header, `METHODS:`-style labels, MeSH terms), plus the
  abbreviations it defines, so that a chunk far from the definition can still be explained.
- `analyze`: abbreviations, disease and drug terms, study-design cues and years in the question.
- `fetch`: hybrid retrieval; abstracts whose design matches the question's design cue move up.
- `normalize`: abbreviations spelled out at their first use in a chunk, p-values and
  confidence intervals written one way and marked significant or not, units and `+/-` unified.
- `filter`: the generic filters; kept sections of one abstract then sit together in
  reading order, so the model reads an abstract's methods next to its results.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field

from core.vectorstore import Filter, IndexType, Match
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
from modules.registry import register


class BiomedicalConfig(ModuleConfig):
    """Settings of the biomedical module."""

    expand_abbreviations: bool = Field(
        True,
        description="Spell out abbreviations the document defines (e.g. ED -> emergency department) at their "
        "first use in a chunk.",
    )
    explicit_statistics: bool = Field(
        True,
        description="Write p-values, confidence intervals, +/- and units one way, and mark p-values and ratio "
        "intervals as significant or not at the significance level below.",
    )
    significance_level: float = Field(
        0.05, gt=0.0, lt=1.0, description="Alpha used to mark p-values significant or not."
    )
    design_boost: int = Field(
        5, ge=0, le=100,
        description="Places a chunk moves up when its study design matches one the question names "
        "(e.g. 'randomized trial'); 0 turns it off.",
    )
    group_abstracts: bool = Field(
        True,
        description="Order the kept chunks by abstract (in the order of each abstract's best chunk) and, within "
        "one abstract, in reading order.",
    )
    lift_findings: bool = Field(
        True,
        description="When the best-matching chunk is not the findings of its abstract (a RESULTS or CONCLUSIONS "
        "section), that abstract's findings move up to follow it: a question's wording matches an abstract's "
        "background, its answer is in the results.",
    )


# ---- study designs ----

# (design, patterns), most specific first: the first design whose pattern matches wins. A
# `DESIGN:`/`STUDY DESIGN:` section is read before the rest of the text.
_DESIGNS: list[tuple[str, re.Pattern[str]]] = [
    (design, re.compile(pattern, re.IGNORECASE))
    for design, pattern in [
        ("meta-analysis", r"\bmeta-?\s?analy[sz]"),
        ("systematic review",
         r"\bsystematic(ally)? review|\b(search(ing|ed)?|review(ed)?) (of )?the (medline|pubmed|embase|cochrane)\b"),
        ("randomized controlled trial",
         r"\brandomi[sz]ed\b|\brandomly (assigned|allocated|divided)\b|\bplacebo-controlled\b|\bdouble-blind"),
        ("case-control study", r"\bcase[- ]control\b|\bmatched controls\b"),
        ("cohort study", r"\bcohort\b|\bprospective(ly)?\b|\blongitudinal (study|studies|follow)|\bfollow-up studies\b"),
        ("retrospective study", r"\bretrospective(ly)?\b|\bchart review\b|\bmedical records? (were|was) reviewed\b"),
        ("cross-sectional study",
         r"\bcross-sectional\b|\bsurveys? (was|were)? ?(conducted|administered|sent|mailed)|\bquestionnaires? (was|were)\b"),
        ("qualitative study", r"\bqualitative\b|\bfocus groups?\b|\bsemi-structured interviews?\b"),
        ("case report", r"\bcase report\b|\bwe (report|present|describe) (a|an|the case)\b|\bcase of an? \d+-year-old\b"),
        ("case series", r"\bcase series\b"),
        ("controlled trial", r"\bcontrolled (clinical )?trial\b|\bclinical trial\b"),
        ("diagnostic accuracy study", r"\bsensitivity and specificity\b|\bdiagnostic accuracy\b"),
        ("animal study", r"\b(rats|mice|rabbits|dogs|pigs|sheep|in rodents)\b"),
        ("review", r"\breview of the literature\b|\bliterature review\b|\bnarrative review\b|\bwe review\b"),
    ]
]
# Question words that name a design; the value is a `_DESIGNS` name.
_DESIGN_CUES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern, re.IGNORECASE), design)
    for pattern, design in [
        (r"\bmeta-?\s?analy[sz]", "meta-analysis"),
        (r"\bsystematic review", "systematic review"),
        (r"\brandomi[sz]ed|\bRCTs?\b|\bplacebo", "randomized controlled trial"),
        (r"\bcase[- ]control", "case-control study"),
        (r"\bcohort|\bprospective", "cohort study"),
        (r"\bretrospective", "retrospective study"),
        (r"\bcross-sectional|\bsurvey", "cross-sectional study"),
        (r"\bqualitative", "qualitative study"),
        (r"\bcase report", "case report"),
        (r"\bcase series", "case series"),
    ]
]

_HEADER = re.compile(r"PubMed abstract \(PMID (\d+), (\d{4}|None)\)")
_PMID = re.compile(r"\bPMID:?\s*(\d{4,9})\b")
_PMID_FILENAME = re.compile(r"pmid[_-]?(\d{4,9})", re.IGNORECASE)
_SECTION_LABEL = re.compile(r"^([A-Z][A-Z ,/&-]{1,60}[A-Z]):\s", re.MULTILINE)
_MESH = re.compile(r"^MeSH terms:\s*(.+)$", re.MULTILINE)
_DESIGN_SECTION = re.compile(r"^(?:STUDY )?DESIGN(?: AND [A-Z ]+)?:\s*(.+)$", re.MULTILINE)
_YEAR = re.compile(r"\b(19[5-9]\d|20[0-4]\d)\b")


def study_design(text: str) -> str | None:
    """The study design an abstract describes, by keyword rules (None when no rule matches)."""
    mesh = " ".join(_MESH.findall(text))
    # MeSH 'Animals' without 'Humans' is a sure sign; 'Prospective Studies' and the like are
    # matched by the rules below through the MeSH line itself.
    if re.search(r"\bAnimals\b", mesh) and not re.search(r"\bHumans\b", mesh):
        return "animal study"
    for source in (*_DESIGN_SECTION.findall(text), text):
        for design, pattern in _DESIGNS:
            if pattern.search(source):
                return design
    return None


# ---- abbreviations (Schwartz & Hearst, PSB 2003) ----

_PAREN = re.compile(r"\(([^()]{2,12})\)")
_SHORT_FORM = re.compile(r"^[A-Za-z0-9][\w-]*$")
_SENTENCE_BREAK = re.compile(r"[.;:!?]\s|\n")


def _long_form(short: str, before: str) -> str | None:
    """Schwartz-Hearst: the shortest tail of `before` whose letters spell `short`, every
    character of `short` in order and its first one at the start of a word."""
    words = before.split()
    window = " ".join(words[-min(len(short) + 5, 2 * len(short)) :])
    s, l = len(short) - 1, len(window) - 1
    while s >= 0:
        ch = short[s].lower()
        if not ch.isalnum():
            s -= 1
            continue
        while l >= 0 and (window[l].lower() != ch or (s == 0 and l > 0 and window[l - 1].isalnum())):
            l -= 1
        if l < 0:
            return None
        l -= 1
        s -= 1
    start = window.rfind(" ", 0, l + 1) + 1
    long = window[start:].strip(" ,-")
    if len(long) <= len(short) or short.lower() in long.lower().split():
        return None
    return long


def defined_abbreviations(text: str) -> dict[str, str]:
    """Abbreviations the text defines as `long form (SF)`, short form -> long form (first definition wins)."""
    found: dict[str, str] = {}
    for m in _PAREN.finditer(text):
        short = m.group(1).strip()
        if short in found or not _SHORT_FORM.match(short) or not any(ch.isupper() for ch in short):
            continue
        if not any(ch.isalpha() for ch in short) or len(short) > 10:
            continue
        # The long form is at most 2 x 10 words long: a window of text before it is enough.
        before = text[max(0, m.start() - 250) : m.start()]
        breaks = list(_SENTENCE_BREAK.finditer(before))
        before = before[breaks[-1].end() :] if breaks else before
        long = _long_form(short, before.rstrip())
        if long:
            found[short] = long
    return found


# Statistical abbreviations the model may not know; spelled out unless the text defines them.
_STAT_TERMS = {
    "OR": "odds ratio", "RR": "relative risk", "HR": "hazard ratio", "CI": "confidence interval",
    "SD": "standard deviation", "SEM": "standard error of the mean", "IQR": "interquartile range",
    "AUC": "area under the curve", "NNT": "number needed to treat", "ROC": "receiver operating characteristic",
}

# ---- question analysis ----

_ACRONYM = re.compile(r"\b(?=[A-Za-z0-9-]*[A-Z][A-Za-z0-9-]*[A-Z0-9])[A-Za-z][A-Za-z0-9-]{1,9}\b")
_DISEASE = re.compile(
    r"\b[\w-]{3,}(?:itis|osis|emia|aemia|oma|pathy|plasia|trophy|algia)s?\b"
    r"|\b(?:[\w'’-]+\s)?(?:syndrome|disease|disorder|cancer|carcinoma|infection|failure|injury|fracture|deficiency)\b",
    re.IGNORECASE,
)
_DRUG = re.compile(
    r"\b[A-Za-z-]+(?:mab|nib|pril|sartan|olol|statin|cillin|mycin|cycline|floxacin|azole|vir|prazole|dipine|parin"
    r"|oxetine|azepam|profen|sone|olone|formin|gliptin|platin|taxel|rubicin|semide|thiazide)s?\b"
    r"|\b[a-z]+ic acid\b|\b(?:insulin|aspirin|warfarin|heparin|morphine|ketamine|propofol|lidocaine|desmopressin)\b",
    re.IGNORECASE,
)
_COMMON_CAPS = {"IS", "DO", "DOES", "ARE", "CAN", "THE", "AND", "OR"}
_STOPWORDS = {"a", "an", "the", "of", "in", "with", "and", "or", "for", "to", "is", "are", "does", "do", "on", "by", "at"}


def _disease_term(match: str) -> str:
    first, _, rest = match.partition(" ")
    return rest if rest and first.lower() in _STOPWORDS else match


def question_terms(question: str) -> dict[str, list[str]]:
    """Heuristic abbreviations, disease and drug terms of a question."""
    abbreviations = [
        a for a in dict.fromkeys(_ACRONYM.findall(question)) if a.upper() not in _COMMON_CAPS and not a.istitle()
    ]
    diseases = list(dict.fromkeys(_disease_term(m.group(0)) for m in _DISEASE.finditer(question)))
    drugs = list(dict.fromkeys(m.group(0) for m in _DRUG.finditer(question)))
    return {"abbreviations": abbreviations, "diseases": diseases, "drugs": drugs}


# ---- statistics and units ----

# Starts with a character class so that the engine can skip ahead fast; the callback checks
# that the `p` starts a word.
_P_VALUE = re.compile(r"[pP]\s*(<=|>=|=|<|>|≤|≥)\s*(0?\.\d+|[01](?:\.\d+)?)(?!\d)")
_CI = re.compile(
    r"\b(\d{2}(?:\.\d)?)\s?%\s*(?:CI|confidence intervals?(?:\s*\[CI\])?)\s*[:=,]?\s*"
    r"(-?\d+(?:\.\d+)?)\s*(?:to|-|–|—|,)\s*(-?\d+(?:\.\d+)?)",
    re.IGNORECASE,
)
# A ratio named shortly before an interval: its CI is significant when it excludes 1.
_RATIO_BEFORE = re.compile(
    r"(?:\b(?:OR|RR|HR|aOR|aHR|IRR)\b|(?i:odds ratio|relative risk|risk ratio|hazard ratio))(?:[^.]|\.(?=\d)){0,40}$"
)
_PLUS_MINUS = re.compile(r" ?\+/?- ?")
_PERCENT_WORDS = re.compile(r"(\d)\s*(?:per cent|percent)\b", re.IGNORECASE)
# A number followed by a unit spelt another way -> the unit's standard spelling.
_UNIT = re.compile(r"(\d)\s*(mg/dl|g/dl|mmol/l|ml|mcg|ug|yrs?|hrs?)\b", re.IGNORECASE)
_UNIT_SPELLING = {
    "mg/dl": "mg/dL", "g/dl": "g/dL", "mmol/l": "mmol/L", "ml": "mL", "mcg": "µg", "ug": "µg",
    "yr": "years", "yrs": "years", "hr": "hours", "hrs": "hours",
}


def _number(text: str) -> float:
    return float(text if not text.startswith(".") else "0" + text)


def explain_statistics(text: str, alpha: float) -> tuple[str, list[str]]:
    """p-values, confidence intervals, +/-, percentages and units written one way; returns the
    text and one note per kind of change."""
    notes: list[str] = []
    p_values = 0

    def p_value(m: re.Match[str]) -> str:
        nonlocal p_values
        if m.start() and (text[m.start() - 1].isalnum() or text[m.start() - 1] == "."):
            return m.group(0)
        p_values += 1
        op = {"<=": "≤", ">=": "≥"}.get(m.group(1), m.group(1))
        value = _number(m.group(2))
        if op in ("<", "≤") and value <= alpha or op == "=" and value < alpha:
            verdict = "significant"
        elif op in (">", "≥") and value >= alpha or op == "=" and value > alpha:
            verdict = "not significant"
        else:
            return f"p {op} {value:g}"
        return f"p {op} {value:g} [{verdict} at {alpha:g}]"

    def interval(m: re.Match[str]) -> str:
        level, low, high = m.group(1), _number(m.group(2)), _number(m.group(3))
        written = f"{level}% CI {m.group(2)} to {m.group(3)}"
        if _RATIO_BEFORE.search(text[max(0, m.start() - 60) : m.start()]) and low <= high:
            written += " [excludes 1: significant]" if low > 1 or high < 1 else " [includes 1: not significant]"
        return written

    out = _P_VALUE.sub(p_value, text)
    if p_values:
        notes.append(f"{p_values} p-value(s) written as 'p < x' and marked significant or not at {alpha:g}")
    text = out
    out, n = _CI.subn(interval, text)
    if n:
        notes.append(f"{n} confidence interval(s) written as 'x% CI low to high'")
    out, n = _PLUS_MINUS.subn(" ± ", out)
    if n:
        notes.append("'+/-' written as '±'")
    out, n = _PERCENT_WORDS.subn(r"\1%", out)
    if n:
        notes.append("'per cent' written as '%'")
    units = 0

    def unit(m: re.Match[str]) -> str:
        nonlocal units
        written = f"{m.group(1)} {_UNIT_SPELLING[m.group(2).lower()]}"
        units += written != m.group(0)
        return written

    out = _UNIT.sub(unit, out)
    if units:
        notes.append(f"{units} unit(s) written in standard form (mL, mg/dL, µg, years, hours)")
    return out, notes


_TOKEN = re.compile(r"[\w-]+")


def spell_out(text: str, abbreviations: dict[str, str]) -> tuple[str, list[str]]:
    """Each abbreviation used but not defined in `text`: its first use becomes `SF (long form)`."""
    lower = text.lower()
    pending = {
        short: long for short, long in abbreviations.items()
        if short in text and f"({short})" not in text and long.lower() not in lower
    }
    if not pending:
        return text, []
    first_use: dict[str, int] = {}
    for m in _TOKEN.finditer(text):
        if m.group(0) in pending and m.group(0) not in first_use:
            first_use[m.group(0)] = m.end()
    parts, start = [], 0
    for short, end in sorted(first_use.items(), key=lambda kv: kv[1]):
        parts += [text[start:end], f" ({pending[short]})"]
        start = end
    notes = [f"expanded {short} = {pending[short]}" for short in first_use]
    return "".join(parts) + text[start:], notes


# ---- the module ----


@register
class BiomedicalModule(DomainModule[BiomedicalConfig]):
    key = "biomedical"
    description = (
        "Research abstracts and clinical text: PMID, year and study design metadata, abbreviations spelled out, "
        "p-values and confidence intervals made explicit, sections of one abstract kept together."
    )
    config_model = BiomedicalConfig
    payload_indexes: ClassVar[dict[str, IndexType]] = {
        "meta.pmid": IndexType.KEYWORD,
        "meta.year": IndexType.INTEGER,
        "meta.design": IndexType.KEYWORD,
    }
    enrich_version = "1"
    route_examples: ClassVar[list[str]] = [
        "Does early mobilisation after hip fracture surgery reduce mortality in elderly patients?",
        "Is serum ferritin a reliable marker of iron deficiency in chronic kidney disease?",
        "Are statins associated with a lower risk of postoperative atrial fibrillation?",
        "Do children with asthma exposed to second-hand smoke have more emergency department visits?",
        "Is laparoscopic appendectomy safe during pregnancy?",
        "Does metformin improve survival in patients with type 2 diabetes and colorectal cancer?",
        "Can MRI replace biopsy for the diagnosis of prostate cancer?",
        "Is there an association between vitamin D levels and depression in older adults?",
        "Does a nurse-led follow-up clinic improve outcomes after myocardial infarction?",
        "Is preoperative chemotherapy effective in locally advanced gastric carcinoma?",
        "Do randomized trials support antibiotic prophylaxis before dental procedures?",
    ]

    def enrich(self, text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        header = _HEADER.search(text[:500])
        pmid = header.group(1) if header else None
        pmid = pmid or _first(_PMID, text[:2000]) or _first(_PMID_FILENAME, filename)
        if pmid:
            meta["pmid"] = pmid
        if header and header.group(2) != "None":
            meta["year"] = int(header.group(2))
        design = study_design(text)
        if design:
            meta["design"] = design
        sections = list(dict.fromkeys(label for label in _SECTION_LABEL.findall(text) if label != "MeSH terms"))
        if sections:
            meta["sections"] = sections
        abbreviations = defined_abbreviations(text)
        if abbreviations:
            meta["abbreviations"] = abbreviations
        return meta

    def analyze(self, question: str) -> Query:
        terms = question_terms(question)
        designs = list(dict.fromkeys(design for pattern, design in _DESIGN_CUES if pattern.search(question)))
        return Query(
            text=question,
            entities=list(dict.fromkeys(terms["abbreviations"] + terms["diseases"] + terms["drugs"])),
            periods=list(dict.fromkeys(_YEAR.findall(question))),
            doc_types=designs,
            notes={**terms, "abbreviations_defined": defined_abbreviations(question)},
        )

    def fetch(self, query: Query, ctx: FetchContext) -> list[Candidate]:
        candidates = super().fetch(query, ctx)
        boost = self.config.design_boost
        if query.doc_types and boost:
            wanted = set(query.doc_types)
            matches = {c.id for c in candidates if _meta(c).get("design") in wanted}
            candidates = sorted(
                candidates, key=lambda c: (c.rank - boost if c.id in matches else c.rank, c.id not in matches)
            )
            for rank, c in enumerate(candidates):
                if c.id in matches:
                    c.notes.append(f"design '{_meta(c)['design']}' matches the question")
                c.rank = rank
        if self.config.lift_findings:
            candidates = lift_findings(query, candidates, ctx)
        return candidates

    def normalize(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        cfg = self.config
        for c in candidates:
            text = collapse_whitespace(c.text)
            if cfg.expand_abbreviations:
                defined = {**_STAT_TERMS, **_meta(c).get("abbreviations", {}), **defined_abbreviations(text)}
                text, notes = spell_out(text, defined)
                c.notes += notes
            if cfg.explicit_statistics:
                text, notes = explain_statistics(text, cfg.significance_level)
                c.notes += notes
            c.normalized = text
        return candidates

    def filter(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        candidates = apply_generic_filters(candidates, self.config, count_tokens=approx_tokens)
        if self.config.group_abstracts:
            group_by_document(candidates)
        return candidates


_FINDINGS = re.compile(r"\b(?:RESULTS?|FINDINGS|CONCLUSIONS?|INTERPRETATION)\s*:")


def lift_findings(query: Query, candidates: list[Candidate], ctx: FetchContext) -> list[Candidate]:
    """The best chunk's abstract's findings second, when the best chunk is not them: from the
    candidates, else from one search within that abstract."""
    ranked = sorted(candidates, key=lambda c: c.rank)
    if not ranked or _FINDINGS.search(ranked[0].text):
        return ranked
    top = ranked[0]
    findings = [c for c in ranked[1:] if c.doc_id == top.doc_id and _FINDINGS.search(c.text)]
    if not findings:
        within = Filter(must=[Match(key="doc_id", value=top.doc_id)])
        findings = [c for c in ctx.search(query.text, limit=8, filter=within) if c.id != top.id and _FINDINGS.search(c.text)]
    if not findings or findings[0] is ranked[1]:
        return ranked
    lifted = findings[0]
    lifted.notes.append("the findings of the best-matching abstract, moved up to follow it")
    ordered = [top, lifted, *(c for c in ranked[1:] if c.id != lifted.id)]
    for rank, c in enumerate(ordered):
        c.rank = rank
    return ordered


def group_by_document(candidates: list[Candidate]) -> None:
    """Re-rank the kept candidates so that each document's chunks follow one another in
    reading order (`chunk_index`), documents in the order of their best chunk; dropped
    candidates keep their places after them."""
    kept = sorted((c for c in candidates if c.kept), key=lambda c: c.rank)
    first_rank: dict[str, int] = {}
    for c in kept:
        first_rank.setdefault(c.doc_id, c.rank)
    ordered = sorted(kept, key=lambda c: (first_rank[c.doc_id], c.payload.get("chunk_index", 0), c.rank))
    dropped = sorted((c for c in candidates if not c.kept), key=lambda c: c.rank)
    for rank, c in enumerate(ordered + dropped):
        c.rank = rank


def _meta(c: Candidate) -> dict[str, Any]:
    return c.payload.get("meta") or {}


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    m = pattern.search(text)
    return m.group(1) if m else None
