"""Prompts from curated context, and citations from answers."""

from __future__ import annotations

import re

from modules.base import Candidate

NO_ANSWER = "The documents do not contain the answer."

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources below. "
    "Answer in one or two sentences and cite the sources you used like [1]. "
    f'If the sources do not contain the answer, reply exactly: "{NO_ANSWER}"'
)

_CITATION = re.compile(r"\[(\d{1,2})(?:\s*,\s*(\d{1,2}))*\]")
_NUMBERS_IN_BRACKETS = re.compile(r"\d{1,2}")
_WORD = re.compile(r"[a-z0-9]+")


def source_label(c: Candidate) -> str:
    where = f", page {c.page}" if c.page else ""
    return f"{c.filename}{where}"


def build_messages(question: str, context: list[Candidate], system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat a tier is sent: its instructions (`SYSTEM_PROMPT` unless the tier sets its
    own), then the numbered sources and the question."""
    sources = "\n\n".join(f"[{i}] ({source_label(c)})\n{c.model_text}" for i, c in enumerate(context, 1))
    return [
        {"role": "system", "content": system_prompt or SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
    ]


def cited_sources(answer: str, context: list[Candidate]) -> list[Candidate]:
    """The sources an answer cites with [n] markers, in order of first mention."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        for number in _NUMBERS_IN_BRACKETS.findall(match.group(0)):
            index = int(number) - 1
            if 0 <= index < len(context) and index not in seen:
                seen.append(index)
    return [context[i] for i in seen]


def supporting_sources(answer: str, context: list[Candidate], limit: int = 2) -> list[Candidate]:
    """When an answer cites nothing: the sources sharing the most words with it, best first."""
    words = set(_WORD.findall(answer.lower()))
    if not words:
        return []
    scored = [(len(words & set(_WORD.findall(c.text.lower()))) / len(words), i) for i, c in enumerate(context)]
    scored = [(s, i) for s, i in scored if s > 0]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [context[i] for _, i in scored[:limit]]


def renumber_citations(answer: str, context: list[Candidate], cited: list[Candidate]) -> str:
    """Rewrite [n] markers (numbered by context position) to number the `cited` list."""
    position = {id(c): i for i, c in enumerate(cited, 1)}

    def replace(match: re.Match) -> str:
        numbers = []
        for number in _NUMBERS_IN_BRACKETS.findall(match.group(0)):
            index = int(number) - 1
            if 0 <= index < len(context) and id(context[index]) in position:
                numbers.append(str(position[id(context[index])]))
        return f"[{', '.join(dict.fromkeys(numbers))}]" if numbers else ""

    return _CITATION.sub(replace, answer).strip()


def is_no_answer(answer: str) -> bool:
    return NO_ANSWER.lower().rstrip(".") in answer.lower()
