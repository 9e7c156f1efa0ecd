"""The legal module: commercial contracts.

At ingestion `enrich` reads the contract's title, parties (from the preamble), effective
date, governing law and clause headings. At query time a question naming a contract ("In
the SUPPLY AGREEMENT between A and B: ...") is resolved to that contract through the
indexed title and party keys, and the clause question is searched with the words contracts
use for it (audit rights -> "audit, inspect, books and records"); within the contract, with a
model clause of the kind asked about instead of the question.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import PurePath
from typing import Any

from pydantic import Field

from core.vectorstore import Filter, IndexType, MatchAny
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
from modules.normalize import annotate_dates, find_dates, name_key, squash
from modules.registry import register

TITLE_KEY = "meta.title_key"
PARTIES_KEY = "meta.party_keys"


# Clause kinds (CUAD's and common phrasings): the words contracts use for each, and a model
# clause worded as a contract words it (None for the preamble's dates). A question gets the
# words of every kind it matches, and the model clause of the first kind that has one, so a
# kind comes before any whose pattern also matches its questions (exceptions to a non-compete
# before the non-compete, joint IP ownership before IP ownership). Within a named contract the
# model clause is what is embedded (and its words join the BM25 query) instead of the
# question: a contract's audit clause reads like another contract's audit clause far more
# than like "Does a party have the right to audit ...?".
@dataclass(frozen=True)
class ClauseKind:
    pattern: re.Pattern[str]
    terms: str
    model: str | None


CLAUSE_KINDS: list[ClauseKind] = [
    ClauseKind(re.compile(p, re.I), terms, model) for p, terms, model in [
        (r"competitive restriction exception|exceptions or carveouts",
         "notwithstanding the foregoing exception shall not restrict",
         "Notwithstanding the foregoing restrictions, nothing in this Section shall prevent either party from "
         "owning less than five percent of a publicly traded company or engaging in the excepted activities."),
        (r"\baudit",
         "audit inspect examine books and records accounts during normal business hours",
         "The Licensee shall keep complete and accurate books and records, and the Licensor may, upon "
         "reasonable notice and during normal business hours, audit and inspect such books and records to "
         "verify compliance with this Agreement."),
        (r"govern(?:ing|s)?\b.*\blaw|\blaw\b.*\bgovern",
         "governed by and construed in accordance with the laws of the State of",
         "This Agreement shall be governed by and construed in accordance with the laws of the State of New "
         "York, without regard to its conflict of laws principles."),
        (r"non-?compet|\bcompete\b",
         "shall not compete engage in any competing business during the term territory",
         "During the term of this Agreement and for a period thereafter, the Company shall not, directly or "
         "indirectly, engage in, own or operate any business that competes with the business of the other "
         "party in the Territory."),
        (r"exclusiv",
         "exclusive exclusively sole supplier requirements shall not appoint any other",
         "The Distributor shall be the exclusive distributor of the Products in the Territory, and the Company"
         " shall not appoint any other distributor or sell the Products to any third party in the Territory."),
        (r"no-?solicit.*customer|soliciting customers|solicit(?:ing)? .*customers",
         "shall not solicit customers clients divert business",
         "Neither party shall, directly or indirectly, solicit or induce any customer or client of the other "
         "party to terminate or reduce its business with the other party."),
        (r"solicit.*employee|hiring employees",
         "shall not solicit hire employ employees personnel",
         "During the term and for twelve months thereafter, neither party shall solicit for employment or hire"
         " any employee of the other party without its prior written consent."),
        (r"non-?disparag|disparage",
         "shall not disparage make any negative or derogatory statements",
         "Neither party shall make any statement that disparages or is derogatory of the other party or its "
         "products, officers or directors."),
        (r"terminat\w* .*without cause|for convenience",
         "may terminate this agreement at any time for convenience without cause upon written notice",
         "Either party may terminate this Agreement at any time, for any reason or no reason, upon thirty (30)"
         " days prior written notice to the other party."),
        (r"\brofr\b|first refusal|first offer|first negotiation",
         "right of first refusal first offer first negotiation",
         "Before selling or licensing the rights to any third party, the Company shall first offer them to the"
         " other party, which shall have a right of first refusal to accept such offer on the same terms."),
        (r"change of control",
         "change of control merger acquisition sale of all or substantially all assets terminate consent",
         "In the event of a change of control of a party, including a merger, acquisition or sale of all or "
         "substantially all of its assets, the other party may terminate this Agreement upon written notice."),
        (r"anti-?assignment|assigned to a third party|\bassign",
         "may not assign transfer this agreement without the prior written consent",
         "Neither party may assign or transfer this Agreement or any of its rights or obligations hereunder "
         "without the prior written consent of the other party."),
        (r"revenue.*shar|profit.*shar|share revenue",
         "royalty revenue share percentage of net sales profits",
         "The Company shall pay to the other party a royalty equal to a percentage of Net Sales, and the "
         "parties shall share the net profits as set forth herein."),
        (r"price restriction|raise or reduce prices",
         "prices shall not increase price adjustment most favored pricing",
         "The prices set forth in Exhibit A shall remain fixed and may not be increased during the term of "
         "this Agreement except as provided herein."),
        (r"minimum (?:order|commitment|amount)",
         "minimum purchase order quantity commitment per year",
         "The Distributor shall purchase a minimum quantity of Products in each contract year, and shall pay "
         "for any shortfall from the minimum purchase commitment."),
        (r"volume restriction|exceeds certain threshold",
         "exceed volume threshold additional fees usage limit",
         "If the usage of the services exceeds the volume threshold set forth in the order, the customer shall"
         " pay additional fees for the excess usage."),
        (r"covenant not to sue|contesting the validity",
         "shall not contest challenge the validity of ownership covenant not to sue",
         "Licensee shall not contest or challenge the validity of Licensor's ownership of the Licensed Marks "
         "or bring any claim against Licensor in connection therewith."),
        (r"joint .*ownership|shared ownership|jointly owned",
         "jointly owned joint ownership intellectual property",
         "Any intellectual property jointly developed by the parties shall be jointly owned by the parties, "
         "each having an undivided interest therein."),
        (r"ip ownership|intellectual property .*property of|ownership of intellectual property|assignment of ip",
         "intellectual property shall be owned by vest assign all right title and interest work product inventions",
         "All work product, inventions and intellectual property created by the Consultant in performing the "
         "services shall be the sole property of the Company, and the Consultant hereby assigns all right, "
         "title and interest therein to the Company."),
        (r"affiliate.*licen[cs]|licen[cs].*affiliate",
         "license affiliates subsidiaries sublicense",
         "Licensor and its Affiliates hereby grant to Licensee and its Affiliates a license under the patents "
         "and know-how owned or controlled by Licensor or its Affiliates."),
        (r"non-?transferable|transfer the licen",
         "non-transferable license may not sublicense transfer",
         "The license granted herein is non-transferable and non-sublicensable, and Licensee may not transfer "
         "or sublicense its rights to any third party."),
        (r"unlimited|all you can eat|enterprise",
         "unlimited enterprise-wide license all users",
         "Licensee may use the Software on an unlimited number of computers by an unlimited number of users "
         "throughout its enterprise, without additional license fees."),
        (r"irrevocable|perpetual",
         "perpetual irrevocable license",
         "Licensor grants Licensee a perpetual, irrevocable, royalty-free license to use the Licensed "
         "Materials."),
        (r"license grant|licen[cs]e granted|grant.*licen[cs]e",
         "hereby grants a non-exclusive license right to use",
         "Licensor hereby grants to Licensee a non-exclusive, non-transferable license to use the Licensed "
         "Technology during the term of this Agreement."),
        (r"source code escrow|escrow",
         "source code escrow agent deposit release conditions",
         "Licensor shall deposit the source code of the Software with an escrow agent, to be released to "
         "Licensee upon the bankruptcy of Licensor or its failure to maintain the Software."),
        (r"post-?termination",
         "upon termination or expiration shall survive transition wind down return",
         "Upon termination or expiration of this Agreement, the Supplier shall continue to provide transition "
         "services for a wind-down period, and the provisions that by their nature survive shall survive "
         "termination."),
        (r"uncapped liability|liability uncapped",
         "liability shall not be limited unlimited indemnification exclusions",
         "The limitations of liability in this Section shall not apply to a party's indemnification "
         "obligations, breach of confidentiality, or gross negligence or willful misconduct."),
        (r"cap on liability|limitation of liability|maximum amount",
         "limitation of liability in no event shall liability exceed aggregate amount paid",
         "In no event shall either party's aggregate liability under this Agreement exceed the total amounts "
         "paid by Customer in the twelve months preceding the claim."),
        (r"liquidated damages|termination fee",
         "liquidated damages termination fee penalty",
         "If the Agreement is terminated early, the terminating party shall pay a termination fee as "
         "liquidated damages and not as a penalty."),
        (r"warranty",
         "warrants warranty free from defects for a period of months",
         "The Company warrants that the Products shall be free from defects in materials and workmanship for a"
         " period of twelve (12) months from the date of delivery."),
        (r"insurance",
         "insurance maintain coverage policy insured general liability",
         "Each party shall maintain, at its own expense, commercial general liability insurance with coverage "
         "of at least $1,000,000 per occurrence and name the other party as an additional insured."),
        (r"third party beneficiar|non-contracting party",
         "third party beneficiary no third party beneficiaries",
         "Nothing in this Agreement shall confer any rights or remedies upon any person other than the "
         "parties, and there are no third party beneficiaries of this Agreement."),
        (r"most favored|better terms",
         "most favored nation terms no less favorable than those offered to any other customer",
         "If the Supplier offers any other customer more favorable prices or terms for the same products, it "
         "shall offer such more favorable prices or terms to the Company."),
        (r"expir|initial term",
         "term of this agreement shall commence and continue until expire years",
         "This Agreement shall commence on the Effective Date and continue for an initial term of five (5) "
         "years, unless terminated earlier as provided herein."),
        (r"notice .*terminate renewal|notice period|non-?renewal",
         "written notice of non-renewal days prior to the expiration of the then-current term",
         "Either party may elect not to renew this Agreement by giving written notice of non-renewal at least "
         "ninety (90) days prior to the expiration of the then-current term."),
        (r"renewal term|renew",
         "automatically renew successive renewal term years unless",
         "This Agreement shall automatically renew for successive one-year renewal terms unless either party "
         "gives notice of non-renewal."),
        (r"agreement date|dated as of|date of (?:this|the) agreement",
         "dated as of made and entered into this day of",
         None),
        (r"effective date",
         "effective date shall become effective as of",
         None),
    ]
]
# Clauses stated in the preamble, next to the contract's name and parties: the whole question
# finds them better than the clause question alone.
_PREAMBLE_CLAUSE = re.compile(r"agreement date|effective date|dated as of|date of (?:this|the) agreement|document name", re.I)
_AGREEMENT_WORDS = (
    r"(?:AGREEMENT|CONTRACT|LICEN[CS]E|AMENDMENT|ADDENDUM|MEMORANDUM|ARRANGEMENT|TERMS|LEASE|NOTE|PLAN|ACCORD"
    r"|JOINT FILING|POWER OF ATTORNEY|GUARANT(?:EE|Y))"
)
_TITLE_LINE = re.compile(rf"^\s*(?P<title>(?:[A-Z0-9][A-Za-z0-9 ,.&'’/()#-]{{2,120}}?)?\b{_AGREEMENT_WORDS}\b[A-Za-z0-9 ,.&'’/()#-]{{0,60}}?)\s*$", re.M | re.I)
# "This Software License, Customization and Maintenance Agreement": the longest name ending in
# Agreement or Contract first, else one ending in another agreement word.
_THIS_TITLES = [
    re.compile(rf"\bThis\s+(?P<title>[A-Z][\w ,&'’/-]{{2,100}}?\b(?:{words}))\b", re.I)
    for words in ("Agreement|Contract", "License|Amendment|Addendum")
]
# "AMENDMENT NO. 3", "FIRST ADDENDUM": a heading whose next heading names what it amends
_AMENDMENT_ONLY = re.compile(r"(?:\w+\s+)?(?:AMENDMENT|ADDENDUM)(?:\s+(?:NO\.?|NUMBER|#)\s*\w+|\s+[IVX]+)?", re.I)
_BODY_VERB = re.compile(r"\b(?:is|are|was|were|shall|will|has|have|hereby)\b")  # lower case: a sentence, not a name
_MINOR_WORDS = frozenset("a an and as at by for in of on or the to with".split())
_SKIP_TITLE = re.compile(
    r"exhibit|confidential|execution copy|omitted|\*\*\*|redacted|page \d|^\W*$|^(?:\d+(?:\.\d+)*|[IVX]+|article|section)\b", re.I
)
_BETWEEN = re.compile(r"\b(?:by\s+and\s+between|by\s+and\s+among|between|among)\s*:?\s+", re.I)
_PREAMBLE_END = re.compile(r"\b(?:WHEREAS|RECITALS?|WITNESSETH|NOW,?\s+THEREFORE|BACKGROUND|IN CONSIDERATION)\b", re.I)
_NAME_STOP = re.compile(
    r",|\(|\s+(?:a|an)\s+(?:[A-Z][a-z]+\s+){0,4}(?:corporation|company|limited|partnership|organization|entity|banking|"
    r"national|state|individual|resident|[a-z]+\s+organized)|\s+of\s+(?=[^,]*\d)|\s+(?:having|with its|whose|located|organized|"
    r"incorporated under|hereinafter|\(hereinafter)\b",
    re.I,
)
_PARTY_SPLIT = re.compile(r"\s+and\s+|;|,\s+(?=[A-Z])|\s+&\s+(?=[A-Z])", re.I)
_ROLE_WORDS = frozenset(
    "company client customer licensee licensor supplier distributor party parties provider contractor consultant "
    "agent seller buyer purchaser vendor franchisee franchisor manufacturer reseller sponsor owner lessor lessee "
    "employer employee the and or of inc".split()
)
_GOVERNING_LAW = re.compile(
    r"governed\s+by,?\s+(?:and\s+(?:construed|interpreted|enforced)\s+(?:in\s+accordance\s+with\s+|under\s+)?)?"
    r"(?:and\s+in\s+accordance\s+with\s+)?the\s+(?:internal\s+|substantive\s+)?laws?\s+of\s+(?:the\s+)?"
    r"(?P<law>(?:State|Commonwealth|Province|Republic|Kingdom)\s+of\s+[A-Z][A-Za-z ]{2,30}?|[A-Z][A-Za-z ]{2,30}?)"
    r"(?=[,.;(]|\s+(?:without|and|applicable|excluding|as|except|that|in|to)\b)",
    re.I,
)
_EFFECTIVE = re.compile(r"(?:effective|dated|entered\s+into|made)\s+(?:as\s+of\s+)?(?:this\s+|the\s+)?", re.I)
_HEADING = re.compile(r"^\s*(?:(?:ARTICLE|Section|SECTION)\s+)?(?:[IVX]+|\d{1,2})(?:\.\d{1,2})*\.?\s+(?P<h>[A-Z][A-Za-z ,&/'-]{2,60}?)\s*(?:\.|:|$)", re.M)
_QUESTION_FORMS = [
    re.compile(r"^In the (?P<title>.+?) (?:between|involving) (?P<parties>.+?)\s*\)?\s*:\s*(?P<clause>.+)$", re.S),
    re.compile(r"^(?P<clause>What is the (?:agreement date|effective date|renewal term)) of the (?P<title>.+?) (?:between|involving) (?P<parties>.+?)\s*\)?(?: after its initial term expires)?\?$", re.S),
    re.compile(r"^(?P<clause>On what date does the initial term) of the (?P<title>.+?) (?:between|involving) (?P<parties>.+?)\s*\)? expire\?$", re.S),
    re.compile(r"^(?P<clause>Which state's or country's law governs) the (?P<title>.+?) (?:between|involving) (?P<parties>.+?)\s*\)?\?$", re.S),
    re.compile(r"^(?P<clause>How much notice is required to terminate renewal) of the (?P<title>.+?) (?:between|involving) (?P<parties>.+?)\s*\)?\?$", re.S),
    re.compile(r"^(?P<clause>.+?)\b(?:in|of|under) the (?P<title>[^?]*?\b(?:Agreement|Contract|License|Lease)\b[^?]*?) (?:between|involving|with) (?P<parties>[^?]+?)\s*\??$", re.S | re.I),
]


class LegalConfig(ModuleConfig):
    """Settings of the legal module (commercial contracts)."""

    contract_filter: bool = Field(
        True, description="Restrict retrieval to the contract the question names (by parties and title), when found."
    )
    match_threshold: float = Field(
        0.85, ge=0.5, le=1.0,
        description="Least similarity (0-1) between a title or party named in the question and a stored one to count "
        "as the same, when they do not match exactly.",
    )
    expand_clause_terms: bool = Field(
        True, description="Search with the clause question plus the words contracts use for that clause."
    )
    clause_only_within_contract: bool = Field(
        True,
        description="Within the contract its parties identify, rank chunks by the clause question (and its terms) "
        "alone, not by the whole question: there the contract's name and parties only pull its preamble and "
        "signature page first. Not for clauses the preamble states (agreement and effective dates). The clause "
        "question is then what is embedded, and what similarities (score floor, confidence) are measured against.",
    )
    model_clauses: bool = Field(
        True,
        description="Where the clause question alone is searched (above) and the clause is of a kind Sieve has a "
        "model clause for (audit rights, non-compete, cap on liability, ...; the module's CLAUSE_KINDS), search "
        "with that model clause instead: it is what is embedded (and what similarities are measured against), "
        "and its words with the clause terms are the BM25 query. Contracts word a clause like other contracts, "
        "not like the question.",
    )
    annotate_dates: bool = Field(True, description="Add the ISO form next to dates (June 21, 1999 [= 1999-06-21]).")


# ---- ingest time ----


def extract_contract(text: str, filename: str) -> dict[str, Any]:
    """Title, parties, effective date, governing law and clause headings of a contract."""
    head = text[:6000]
    meta: dict[str, Any] = {}
    title = contract_title(head) or _filename_title(filename)
    if title:
        meta["title"] = title
        meta["title_key"] = name_key(title)
        meta["agreement_type"] = _agreement_type(meta["title_key"])
    parties = contract_parties(head)
    keys: list[str] = []
    for party in parties:
        key = name_key(party)
        if key and key not in _ROLE_WORDS and len(key) >= 3:
            for k in (key, squash(key)):
                if k not in keys:
                    keys.append(k)
    filer = _filename_filer(filename)
    if filer and filer not in keys:
        keys.append(filer)
    if parties:
        meta["parties"] = parties
    if keys:
        meta["party_keys"] = keys
    dates = [d for d in find_dates(head[:3000])]
    m = _EFFECTIVE.search(head[:3000])
    effective = next((d for d in dates if m and d.start >= m.end() - 1), dates[0] if dates else None)
    if effective:
        meta["effective_date"] = effective.value.isoformat()
    m = _GOVERNING_LAW.search(text)
    if m:
        meta["governing_law"] = re.sub(r"\s+", " ", m["law"]).strip()
    headings = []
    for m in _HEADING.finditer(text):
        h = m["h"].strip(" ,")
        if h.lower() not in (x.lower() for x in headings) and len(h.split()) <= 8:
            headings.append(h)
        if len(headings) >= 40:
            break
    if headings:
        meta["headings"] = headings
    return meta


def contract_title(head: str) -> str | None:
    """The contract's name: its first heading that names an agreement (with the heading after
    it when it only says "AMENDMENT NO. 3"), else the "This ... Agreement" of its preamble."""
    head = re.sub(r"[ \t\xa0]+", " ", head)[:2500]  # some filings indent every line by dozens of spaces
    headings = [(m.start(), line) for m in _TITLE_LINE.finditer(head) if _is_heading(line := _clean_title(m["title"]))]
    if headings:
        (start, title), following = headings[0], headings[1:2]
        if following and _AMENDMENT_ONLY.fullmatch(title) and following[0][0] - start < 400:
            title = f"{title} {following[0][1]}"
        return title
    for pattern in _THIS_TITLES:
        for m in pattern.finditer(head):
            if _is_name(title := _clean_title(m["title"])):
                return title
    return None


def _is_heading(line: str) -> bool:
    """A heading: short, mostly capitals or capitalized words, not a sentence of the body, and
    more than a bare "AGREEMENT"."""
    letters = [ch for ch in line if ch.isalpha()]
    if _SKIP_TITLE.search(line) or len(line.split()) > 12 or not letters or re.fullmatch(_AGREEMENT_WORDS, line, re.I):
        return False
    return sum(ch.isupper() for ch in letters) / len(letters) >= 0.6 or _is_name(line)


def _is_name(phrase: str) -> bool:
    """A name ("Software License, Customization and Maintenance Agreement"), not a clause of
    the body ("Amendment, all other terms ... of the Agreement"): most words capitalized."""
    words = [w for w in re.findall(r"[A-Za-z][\w'’-]*", phrase) if w.lower() not in _MINOR_WORDS]
    if not words or _BODY_VERB.search(phrase):
        return False
    return sum(w[0].isupper() for w in words) / len(words) >= 0.6


def _clean_title(title: str) -> str:
    title = re.sub(r"\s+(?:by and )?between\b.*$|\s*\bTABLE OF CONTENTS\b.*$", "", re.sub(r"\s+", " ", title), flags=re.I)
    title = title.strip(" .,:-_")
    return re.sub(r"^(?:the|this)\s+", "", title, flags=re.I)


def contract_parties(head: str) -> list[str]:
    """Party names of the preamble: "by and between X, a Delaware corporation ("X"), and Y"."""
    m = _BETWEEN.search(head)
    if not m:
        return []
    end = _PREAMBLE_END.search(head, m.end())
    span = head[m.end() : end.start() if end else m.end() + 1500][:1500]
    span = _first_sentence(re.sub(r"\([^()]*\)", " ", re.sub(r"\s+", " ", span)))
    parties: list[str] = []
    # every party starts the span or follows ", and" / " and " / ";" / "AND:" after the previous one
    pieces = re.split(r"\s*(?:;|\band\b:?|\bAND\b:?)\s+(?=[A-Z0-9\[])", span)
    for piece in pieces:
        name = re.sub(r"\s+", " ", _NAME_STOP.split(piece, maxsplit=1)[0]).strip(" .:;\"'“”")
        name = re.sub(r"^(?:and|the)\s+", "", name, flags=re.I) if name.lower().startswith("and ") else name
        if len(name.split()) > 10:
            continue
        name = re.sub(r"\s+(?:and|or)$", "", _SENTENCE_TAIL.split(name, maxsplit=1)[0])
        if not name or not re.match(r"[A-Z0-9\[]", name) or _NOT_A_PARTY.search(name):
            continue
        if name_key(name) in _ROLE_WORDS or not name_key(name):
            continue
        if name not in parties:
            parties.append(name)
        if len(parties) >= 6:
            break
    return parties


# "Hoffmann-La Roche Inc. with an office and place of business", "NETGEAR with respect to the
# purchase": the name ends where the sentence goes on in lower case ("of the", "de la" do not)
_SENTENCE_TAIL = re.compile(r"\s+(?=(?!(?:of|the|and|de|du|la|le|von|van|der|for|in|on|at|a|an)\b)[a-z][\w'-]*\s+[a-z])")
_NOT_A_PARTY = re.compile(r"\b(?:AGREEMENT|CONTRACT)\b|\d:\d", re.I)
_ABBREVIATIONS = frozenset("inc ltd co corp lp llc nv sa bv ag no st mr ms dr jr sr plc u.s l.p n.v s.a".split())


def _first_sentence(text: str) -> str:
    """`text` up to its first full stop that does not end an abbreviation ("Inc.", "L.P.")."""
    for m in re.finditer(r"\.\s+(?=[A-Z])", text):
        word = text[: m.start()].rsplit(None, 1)[-1].lower().strip(",")
        if word not in _ABBREVIATIONS and len(word) > 1:
            return text[: m.start()]
    return text


_TYPES = [
    "license", "distribution", "distributor", "supply", "manufacturing", "services", "service", "consulting",
    "joint venture", "collaboration", "development", "franchise", "agency", "endorsement", "sponsorship",
    "promotion", "marketing", "reseller", "outsourcing", "hosting", "maintenance", "transportation",
    "co-branding", "strategic alliance", "non-compete", "cooperation", "affiliate", "ip", "intellectual property",
    "content", "lease", "loan", "employment", "settlement",
]


def _agreement_type(title_key: str) -> str:
    for t in _TYPES:
        if re.search(rf"\b{re.escape(name_key(t))}\b", title_key):
            return name_key(t).replace("distributor", "distribution").replace("service", "services").replace("servicess", "services")
    return "other"


def _filename_title(filename: str) -> str | None:
    stem = PurePath(filename).stem
    m = re.search(r"((?:[A-Za-z]+[_ -]){0,5}(?:Agreement|Contract|License)[A-Za-z_ -]*)", stem, re.I)
    return m.group(1).replace("_", " ").strip() if m else None


def _filename_filer(filename: str) -> str | None:
    """EDGAR exhibit names start with the filer: "ADAMSGOLFINC_03_21_2005-EX-10.17-..." -> "adamsgolf",
    "BLUEROCKRESIDENTIALGROWTHREIT_INC_06_01_2016-..." -> "bluerockresidentialgrowthreit"; other
    exhibits "Antares_Pharma_Inc._-_Manufacturing_Agreement" -> "antarespharma"."""
    stem = re.sub(r"^cuad_", "", PurePath(filename).stem, flags=re.I)
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9_.-]{2,80}?)_*(?:\d{2}_\d{2}_\d{4}|\d{8})", stem) or re.match(
        r"([A-Za-z0-9][A-Za-z0-9_.,&-]{2,80}?)_-_", stem  # "Antares_Pharma_Inc._-_Manufacturing_Agreement"
    )
    if not m:
        return None
    key = re.sub(r"[^a-z0-9]", "", m.group(1).lower())
    for suffix in ("incorporated", "corporation", "company", "corp", "inc", "plc", "ltd", "llc", "lp", "co", "sa", "ag", "nv"):
        if key.endswith(suffix) and len(key) > len(suffix) + 2:
            key = key[: -len(suffix)]
            break
    return key


# ---- query time ----


def parse_question(question: str) -> dict[str, str] | None:
    """Split a question that names its contract into title, parties and the clause question."""
    text = re.sub(r"\s+", " ", question.strip())
    for pattern in _QUESTION_FORMS:
        m = pattern.match(text)
        if m:
            return {k: v.strip(" ,") for k, v in m.groupdict().items()}
    return None


def clause_terms(clause: str) -> str:
    """The words contracts use for the clause a question asks about ("" if none is known)."""
    return " ".join(dict.fromkeys(kind.terms for kind in CLAUSE_KINDS if kind.pattern.search(clause)))


def model_clause(clause: str) -> str | None:
    """A clause of the kind the question asks about, as a contract words it (None if no kind matches)."""
    return next((kind.model for kind in CLAUSE_KINDS if kind.model and kind.pattern.search(clause)), None)


def match_parties(parties: str, known: dict[str, int], threshold: float) -> list[str]:
    """Stored party keys the question's party text names: a multi-word key as whole words of
    it, a squashed key equal to one named party or a prefix of it (or it of the key: "Adams
    Golf" and "ADAMSGOLFINC"); fuzzily when nothing matches exactly."""
    words = name_key(parties).split()
    parts = [p for p in (squash(name_key(x)) for x in _PARTY_SPLIT.split(parties)) if len(p) >= 3 and p not in _ROLE_WORDS]
    # set lookups and one sorted scan, not a comparison per stored key: collections hold thousands
    grams = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 2, min(i + 12, len(words)) + 1)}
    found = {k for k in grams if k in known}
    ordered = sorted(k for k in known if " " not in k)
    for p in parts:
        # the longest stored prefix only: "paymentdatasystems" is not also the "payment" of another contract
        longest = next((p[:n] for n in range(len(p), 4, -1) if p[:n] in known), None)
        found |= {k for k in (longest, p) if k in known}
        i = bisect_left(ordered, p)
        while len(p) >= 5 and i < len(ordered) and ordered[i].startswith(p):
            found.add(ordered[i])
            i += 1
    if found:
        return sorted(found)
    return list(dict.fromkeys(k for p in parts if len(p) >= 5 for k in get_close_matches(p, ordered, n=3, cutoff=threshold)))


def match_title(title: str, known: dict[str, int], threshold: float) -> list[str]:
    key = name_key(title)
    if key in known:
        return [key]
    return get_close_matches(key, list(known), n=1, cutoff=threshold)


@register
class LegalModule(DomainModule[LegalConfig]):
    key = "legal"
    description = (
        "Commercial contracts: retrieval restricted to the contract a question names (title, parties), clause "
        "questions searched with contract wording, dates made explicit, other contracts dropped with a reason."
    )
    config_model = LegalConfig
    payload_indexes = {TITLE_KEY: IndexType.KEYWORD, PARTIES_KEY: IndexType.KEYWORD, "meta.agreement_type": IndexType.KEYWORD}
    enrich_version = "legal-4"
    route_examples = [
        "Which state's law governs the distribution agreement?",
        "Does a party have the right to audit the books and records of the counterparty?",
        "What is the renewal term of the supply agreement after its initial term expires?",
        "How much notice is required to terminate renewal of the services agreement?",
        "Is there a non-compete clause in the franchise agreement?",
        "Can either party terminate the license agreement for convenience?",
        "Is consent required to assign the contract to a third party?",
        "What is the cap on liability under the hosting agreement?",
        "What is the effective date of the consulting agreement between Acme and Globex?",
        "Does the contract grant an exclusive license to the licensee's affiliates?",
        "Is there a most favored nation clause in the reseller agreement?",
    ]

    def enrich(self, text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return extract_contract(text, filename)

    def analyze(self, question: str) -> Query:
        parsed = parse_question(question)
        query = Query(text=question)
        if parsed:
            query.entities = [parsed["title"], parsed["parties"]]
            query.notes["contract"] = parsed
        clause = parsed["clause"] if parsed else question
        terms = clause_terms(clause) if self.config.expand_clause_terms else ""
        if terms:
            query.notes["search_text"] = f"{clause} {terms}"
        elif parsed:
            query.notes["search_text"] = clause
        if parsed and self.config.model_clauses and (model := model_clause(clause)):
            query.notes["model_clause"] = model
            query.notes["model_clause_keywords"] = f"{terms} {model}".strip()
        return query

    def fetch(self, query: Query, ctx: FetchContext) -> list[Candidate]:
        cfg = self.config
        contract = query.notes.get("contract")
        # While the contract is still to be found, dense search reads the whole question (its
        # name and parties help find it); the clause terminology widens the BM25 side.
        keywords = query.notes.get("search_text")

        def search(
            f: Filter | None, prefer: Filter | None = None, text: str = query.text, sparse: str | None = keywords,
        ) -> list[Candidate]:
            return ctx.search(text, limit=cfg.top_k, mode=cfg.retrieval, fusion=cfg.fusion, filter=f,
                              prefer=prefer, sparse_text=sparse)

        if not (cfg.use_question_filters and cfg.contract_filter and contract):
            return search(query.filter if cfg.use_question_filters else None)
        parties = match_parties(contract["parties"], ctx.known_values(PARTIES_KEY, limit=20000), cfg.match_threshold)
        query.notes["matched_parties"] = parties
        if parties:
            # The parties identify the contract: only its chunks are searched (and kept).
            by_parties = Filter(must=[MatchAny(key=PARTIES_KEY, any=parties)])
            clause_only = cfg.clause_only_within_contract and keywords and not _PREAMBLE_CLAUSE.search(contract["clause"])
            if clause_only and "model_clause" in query.notes:
                hits = search(by_parties, text=query.notes["model_clause"], sparse=query.notes["model_clause_keywords"])
            else:
                hits = search(by_parties, text=keywords if clause_only else query.text)
            if hits:
                query.filter = by_parties
                query.notes["contract_filter"] = by_parties.model_dump()
                return hits
        titles = match_title(contract["title"], ctx.known_values(TITLE_KEY, limit=10000), cfg.match_threshold)
        query.notes["matched_titles"] = titles
        if titles:
            # A title alone ("AGENCY AGREEMENT") is shared by many contracts: contracts of that
            # title rank first, but nothing is excluded.
            query.notes["contract_preference"] = titles
            return search(None, prefer=Filter(must=[MatchAny(key=TITLE_KEY, any=titles)]))
        query.notes["contract_filter"] = "no stored contract matches the title or parties: whole collection searched"
        return search(None)

    def normalize(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        for c in candidates:
            text = collapse_whitespace(c.text)
            if self.config.annotate_dates:
                text, notes = annotate_dates(text)
                c.notes += notes
            c.normalized = text
        return candidates

    def filter(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        f = query.filter
        wanted = {cond.key: set(cond.any) for cond in (f.must if f else []) if isinstance(cond, MatchAny)}
        for c in candidates:
            meta = c.payload.get("meta") or {}
            if not c.kept or not meta or not wanted:
                continue
            parties, title = wanted.get(PARTIES_KEY), wanted.get(TITLE_KEY)
            if parties and not parties & set(meta.get("party_keys") or []):
                c.drop(f"contract {meta.get('title', c.filename)!r} is not between the parties asked for")
            elif title and meta.get("title_key") not in title:
                c.drop(f"contract {meta.get('title', c.filename)!r} is not the {sorted(title)[0]!r} asked for")
        return apply_generic_filters(candidates, self.config, count_tokens=approx_tokens)
