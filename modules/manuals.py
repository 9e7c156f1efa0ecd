"""The manuals module: technical documentation (user manuals, e-manuals, guides).

- `enrich`: the product (a normalized key, e.g. `samsung_galaxy_s10_att`) and the section
  path, from a breadcrumb first line (`<manual> > <section> > <subsection>`), else from a
  manual's title line, the file's title metadata or its name.
- `analyze`: product mentions (model numbers, device words) and UI terms in the question.
- `fetch`: hybrid retrieval (score-fused), restricted to the product the question names when
  it names one the collection holds; optionally fused with a second search over the sections
  whose titles match the question's words (`title_weight`).
- `normalize`: menu paths written one way (`Settings > Display`), link labels of e-manuals removed.
- `filter`: the generic filters, and chunks of another product than the question's dropped.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from core.vectorstore import RRF_K, Condition, Filter, IndexType, MatchAny
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


class ManualsConfig(ModuleConfig):
    """Settings of the manuals module."""

    fusion: Literal["rrf", "dbsf"] = Field(
        "dbsf",
        description="How hybrid results are fused: reciprocal rank (rrf) or distribution-based score (dbsf). "
        "dbsf by default: on E-Manual dev questions rrf ranked the gold section lower than dense retrieval alone.",
    )
    product_filter: bool = Field(
        True, description="Search only the manual of the product the question names, when the collection holds it."
    )
    title_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Weight, against 1 for the main search, of a second search over the sections whose titles match "
        "the question's words, fused by reciprocal rank; 0 (the default) turns it off. It helps where section "
        "titles are deep and specific; on the E-Manual set's shallow titles it ranked gold sections lower.",
    )
    title_matches: int = Field(5, ge=1, le=50, description="Most section titles the second search is restricted to.")
    title_min_overlap: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of a title's words (weighted by rarity) the question must contain for the title to match.",
    )
    drop_phrases: list[str] = Field(
        default_factory=lambda: ["Try Now"],
        description="Link or button labels of e-manuals removed from the text the model sees.",
    )


SEPARATOR = " > "
# Words that name a kind of device: one of them in the question is enough to name a product.
DEVICE_WORDS = {
    "tv", "phone", "smartphone", "tablet", "watch", "smartwatch", "remote", "monitor", "printer", "laptop",
    "notebook", "camera", "refrigerator", "fridge", "washer", "dryer", "dishwasher", "oven", "microwave",
    "router", "soundbar", "projector", "console", "earbuds", "headphones", "vacuum",
}
_ALIASES = {"television": "tv", "tvs": "tv", "phones": "phone", "fridges": "fridge"}
_MANUAL_WORDS = re.compile(
    r"\s*\b(?:user'?s?|owner'?s?|e-?|quick start|reference|installation|operating|service)?\s*"
    r"(?:manual|guide|handbook|instructions)\b.*$",
    re.IGNORECASE,
)
_TITLE_LINE = re.compile(r"\b(?:manual|user guide|owner's guide|handbook)\b", re.IGNORECASE)
_FILENAME_NOISE = re.compile(r"[_\s-]*(?:section|chapter|part|page)[_\s-]*\d+$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_STOPWORDS = {
    "a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "do", "does", "how", "can", "i",
    "my", "me", "what", "where", "when", "which", "why", "with", "from", "by", "it", "this", "that", "be", "use",
    "using", "you", "your", "there", "about", "if", "not", "want", "know", "find", "way", "ways", "steps",
}
# Menu separators written other ways; `>` is the one the model sees.
_MENU_ARROW = re.compile(r"\s*(?:->|→|➔|➜|»|›|▶)\s*")
# UI verbs followed by a capitalised control name: "Tap Settings", "select Display".
_UI_TERM = re.compile(
    r"\b(?i:tap|touch|press|select|choose|click|open|go to|navigate to|swipe|drag)\s+"
    r"([A-Z][\w+&'-]*(?:\s+(?:>\s+)?[A-Z][\w+&'-]*)*)"
)
# One item of a menu path printed one per line (PDF e-manuals): a few words, capitalised,
# no sentence punctuation ("Settings", "Open Network Settings").
_MENU_LINE = re.compile(r"^[A-Z0-9][\w+&'’()/-]*(?: [\w+&'’()/-]+){0,3}$")
_PAGE_NUMBER_LINE = re.compile(r"^[-–]\s*\d{1,4}\s*[-–]$")
# A line that stops before a removed icon or a control name: "..., select" / "Press the".
_OPEN_END = re.compile(r"\b(?:select|tap|touch|press|choose|click|the|a|an|to|and|or|of|on|then)$", re.IGNORECASE)
_QUOTED = re.compile(r"['‘\"“]([^'’\"”]{2,40})['’\"”]")


def product_key(name: str) -> str:
    """A product name as a payload key: lowercase words joined by `_` (`Galaxy S10 (AT&T)` -> `galaxy_s10_att`)."""
    return "_".join(re.findall(r"[a-z0-9]+", name.lower().replace("&", "")))


def product_name(manual: str) -> str:
    """A manual's title without the words that say it is a manual."""
    return _MANUAL_WORDS.sub("", manual).strip(" -:,/")


def words(text: str) -> list[str]:
    """Lowercase words with aliases applied (`television` -> `tv`, `TV's` -> `tv`)."""
    return [_ALIASES.get(w, w) for w in (re.sub(r"['’]s$", "", w) for w in _WORD.findall(text.lower()))]


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude suffix stripper, enough to match `choosing`/`choose` and `settings`/`setting`."""
    for suffix in ("ings", "ing", "ies", "ied", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@lru_cache(maxsize=65536)
def content_stems(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in words(text) if w not in _STOPWORDS)


def resolve_products(question: str, known: list[str]) -> list[str]:
    """The known product keys the question names.

    A product is named by a model number (a word with a digit) or a device word of its key,
    or by two words of its key, counting only words that tell the known products apart
    (`samsung` in every key names none). Naming every known product is naming none."""
    if len(known) < 2:
        return []
    tokens = {key: set(key.split("_")) for key in known}
    shared = set.intersection(*tokens.values())
    asked = set(words(question))
    named = []
    for key, key_tokens in tokens.items():
        hits = (key_tokens - shared) & asked
        if any(_is_model_number(t) or t in DEVICE_WORDS for t in hits) or len(hits) >= 2:
            named.append(key)
    return named if len(named) < len(known) else []


def match_titles(question: str, titles: dict[str, int], *, limit: int, min_overlap: float) -> list[str]:
    """The section titles most of whose (rarity-weighted) words the question contains, best first."""
    asked = content_stems(question)
    if not asked or not titles:
        return []
    stems = {title: content_stems(title) for title in titles}
    df: dict[str, int] = {}
    for title_stems in stems.values():
        for s in title_stems:
            df[s] = df.get(s, 0) + 1
    n = len(stems)

    def idf(s: str) -> float:
        return math.log(1 + n / df[s])

    scored = []
    for title, title_stems in stems.items():
        common = title_stems & asked
        if not common:
            continue
        overlap = sum(idf(s) for s in common) / sum(idf(s) for s in title_stems)
        if overlap >= min_overlap:
            scored.append((overlap, sum(idf(s) for s in common), title))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [title for _, _, title in scored[:limit]]


def rejoin_lines(text: str) -> tuple[str, list[str]]:
    """Undo what PDF extraction does to manuals: page-number lines removed, sentences broken
    around removed icons joined again, menu paths printed one item per line written as
    `A > B > C`. Returns the text and one note per kind of change."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    kept = [line for line in lines if not _PAGE_NUMBER_LINE.match(line)]
    notes = [f"removed {len(lines) - len(kept)} page number line(s)"] if len(kept) < len(lines) else []
    joined: list[str] = []
    rejoined = 0
    for line in kept:
        previous = joined[-1] if joined else ""
        broken = previous and not previous.endswith((".", "!", "?", ":", ";")) and (
            line[0].islower() or (_OPEN_END.search(previous) and _MENU_LINE.match(line))
        )
        if broken:
            joined[-1] = f"{previous} {line}"
            rejoined += 1
        else:
            joined.append(line)
    if rejoined:
        notes.append(f"joined {rejoined} line(s) broken around icons or control names")
    out: list[str] = []
    run: list[str] = []
    paths = 0
    for line in [*joined, ""]:
        if line and _MENU_LINE.match(line):
            run.append(line)
            continue
        if len(run) >= 2:
            out.append(SEPARATOR.join(run))
            paths += 1
        else:
            out.extend(run)
        run = []
        if line:
            out.append(line)
    if paths:
        notes.append(f"{paths} menu path(s) printed one item per line written as 'A > B'")
    return "\n".join(out), notes


def fuse(*weighted_lists: tuple[list[Candidate], float]) -> list[Candidate]:
    """Weighted reciprocal rank fusion of candidate lists (the vector store's `RRF_K`)."""
    fused: dict[str, Candidate] = {}
    scores: dict[str, float] = {}
    for candidates, weight in weighted_lists:
        for rank, c in enumerate(candidates):
            fused.setdefault(c.id, c)
            scores[c.id] = scores.get(c.id, 0.0) + weight / (RRF_K + rank)
    ordered = sorted(fused.values(), key=lambda c: (-scores[c.id], c.id))
    for rank, c in enumerate(ordered):
        c.score, c.rank = scores[c.id], rank
    return ordered


@register
class ManualsModule(DomainModule[ManualsConfig]):
    key = "manuals"
    description = (
        "Technical documentation and user manuals: product and section path metadata, retrieval restricted to "
        "the product asked about and helped by section titles, menu paths written one way."
    )
    config_model = ManualsConfig
    payload_indexes: ClassVar[dict[str, IndexType]] = {
        "meta.product": IndexType.KEYWORD,
        "meta.section_titles": IndexType.KEYWORD,
    }
    enrich_version = "1"
    route_examples: ClassVar[list[str]] = [
        "How do I turn on Bluetooth on my phone?",
        "How can I change the picture mode on the TV?",
        "Where do I find the battery saving settings?",
        "How do I pair the remote control with the TV?",
        "What should I do if the screen keeps flickering?",
        "How do I set up a Wi-Fi hotspot on my device?",
        "Can I record a program to a USB drive?",
        "How do I reset the device to factory settings?",
        "How do I add a fingerprint to unlock the screen?",
        "How do I update the device software?",
        "Where is the option to turn on captions and subtitles?",
    ]

    def enrich(self, text: str, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        titles: list[str] = []
        if SEPARATOR in first_line and len(first_line) <= 400:
            manual, *titles = [part.strip() for part in first_line.split(SEPARATOR)]
        else:
            lines = text.splitlines()[:20]
            heading = next((line.strip() for line in lines if _TITLE_LINE.search(line) and len(line) <= 120), None)
            stem = _FILENAME_NOISE.sub("", Path(filename).stem).replace("_", " ")
            manual = heading or str(metadata.get("title") or "") or stem
        name = product_name(manual) or manual
        meta: dict[str, Any] = {}
        if product_key(name):
            meta.update(product=product_key(name), product_name=name, manual=manual)
        titles = [t for t in titles if t]
        if titles:
            meta.update(section_path=SEPARATOR.join(titles), section_titles=titles, section=titles[-1])
        return meta

    def analyze(self, question: str) -> Query:
        asked = words(question)
        ui_terms = [m.group(1).strip() for m in _UI_TERM.finditer(question)] + _QUOTED.findall(question)
        mentions = [w for w in asked if w in DEVICE_WORDS or _is_model_number(w)]
        return Query(
            text=question,
            entities=list(dict.fromkeys(mentions)),
            notes={"ui_terms": list(dict.fromkeys(ui_terms))},
        )

    def fetch(self, query: Query, ctx: FetchContext) -> list[Candidate]:
        cfg = self.config
        conditions: list[Condition] = [query.filter] if query.filter and cfg.use_question_filters else []
        products = resolve_products(query.text, list(ctx.known_values("meta.product"))) if cfg.product_filter else []
        query.notes["products"] = products
        if products:
            conditions.append(MatchAny(key="meta.product", any=products))

        def search(*extra: Condition) -> list[Candidate]:
            flt = Filter(must=[*conditions, *extra]) if conditions or extra else None
            return ctx.search(query.text, limit=cfg.top_k, mode=cfg.retrieval, fusion=cfg.fusion, filter=flt)

        candidates = search()
        if not cfg.title_weight:
            return candidates
        titles = match_titles(
            query.text, ctx.known_values("meta.section_titles"), limit=cfg.title_matches, min_overlap=cfg.title_min_overlap
        )
        if not titles:
            return candidates
        query.notes["section_titles"] = titles
        by_title = search(MatchAny(key="meta.section_titles", any=titles))
        for c in by_title:
            c.notes.append("its section title matches the question")
        return fuse((candidates, 1.0), (by_title, cfg.title_weight))

    def normalize(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        phrases = [p.strip() for p in self.config.drop_phrases if p.strip()]
        drop = [(p, re.compile(rf"[ \t]*\b{re.escape(p)}\b[ \t]*")) for p in phrases]
        for c in candidates:
            text = collapse_whitespace(c.text)
            for phrase, pattern in drop:
                text, n = pattern.subn(" ", text)
                if n:
                    c.notes.append(f"removed {n} link label(s) {phrase!r}")
            text, n = _MENU_ARROW.subn(SEPARATOR, text)
            if n:
                c.notes.append(f"{n} menu path separator(s) written as ' > '")
            text, notes = rejoin_lines(text)
            c.notes += notes
            path = _meta(c).get("section_path")
            if path and path not in text:
                # Where in the manual a passage is tells the model what its steps apply to.
                text = f"[{path}]\n{text}"
                c.notes.append("section path added")
            c.normalized = text or collapse_whitespace(c.text)
        return candidates

    def filter(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        products = query.notes.get("products")
        if products is None:
            # Not fetched here (a preview of the stages): resolve against the candidates' products.
            present = dict.fromkeys(p for c in candidates if (p := _meta(c).get("product")))
            products = resolve_products(query.text, list(present))
        if products:
            for c in candidates:
                product = _meta(c).get("product")
                # A chunk below the score floor is left to the generic filters, whose reason is the plainer one.
                if c.kept and product and product not in products and c.similarity >= self.config.score_floor:
                    c.drop(f"about {product}, the question is about {', '.join(products)}")
        return apply_generic_filters(candidates, self.config, count_tokens=approx_tokens)


def _is_model_number(word: str) -> bool:
    return any(ch.isdigit() for ch in word) and any(ch.isalpha() for ch in word)


def _meta(c: Candidate) -> dict[str, Any]:
    return c.payload.get("meta") or {}
