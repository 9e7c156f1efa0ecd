"""Training data for fine-tuning: question/answer pairs turned into prompts with curated context.

Pairs come as JSONL, one object a line, in the shape of the evaluation sets
(`../shared/eval/*/dev.jsonl`): `question`, `answers` (a list, the first is the reference),
and optionally `id`, `answerable` (false: the documents do not hold the answer),
`doc_ids` (the gold documents), `label` and `long_answer` (PubMedQA), `evidence` (CUAD
clause texts) and `domain`. `parse_pairs` refuses a malformed file with one message per bad
line, before anything is trained.

Each pair becomes an `Example`: the exact messages the small model gets at query time (the
module's curated context, as `retrieval.prompting` builds them) and the completion it should learn: the answer with a citation of the
source that holds it, or the no-answer reply when the context does not hold it. So the
model learns to answer from curated context, to cite, and to abstain.

Examples are content-addressed: `examples_hash` is the sha256 of their canonical JSON,
and the train/evaluation split is a function of each example's id and the seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ValidationFailedError
from modules.base import Candidate, shingles
from retrieval.prompting import NO_ANSWER, build_messages

MAX_PROBLEMS_SHOWN = 20
_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class Pair:
    """One labelled question."""

    id: str
    question: str
    answers: list[str]
    answerable: bool = True
    doc_ids: list[str] = field(default_factory=list)
    domain: str | None = None
    label: str | None = None
    long_answer: str | None = None
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Example:
    """A pair as the model is trained on it: the chat `messages` the small tier gets (rendered
    by its chat template at training time) followed by `completion`."""

    id: str
    messages: list[dict[str, str]]
    completion: str
    answerable: bool
    answers: list[str]
    domain: str | None
    context_ids: list[str]

    def item(self) -> dict[str, Any]:
        """The pair as `retrieval.metrics.score_answer` reads it."""
        return {"answerable": self.answerable, "answers": self.answers, "domain": self.domain}


def parse_pairs(text: str, *, source: str = "training data") -> list[Pair]:
    """Pairs from JSONL text; raises `ValidationFailedError` (code `finetune_bad_data`) listing
    every bad line, or when there is no pair at all."""
    pairs: list[Pair] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            problems.append(f"line {number}: not JSON ({e.msg})")
            continue
        problem = _check_row(row)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        pair = _pair(row, default_id=f"line-{number}")
        if pair.id in seen:
            problems.append(f"line {number}: duplicate id {pair.id!r}")
            continue
        seen.add(pair.id)
        pairs.append(pair)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise ValidationFailedError(f"{source} is not valid{more}", code="finetune_bad_data", details=shown)
    if not pairs:
        raise ValidationFailedError(f"{source} holds no question/answer pairs", code="finetune_empty_data")
    return pairs


def _check_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object"
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        return "'question' must be a non-empty string"
    answers = row.get("answers")
    answerable = row.get("answerable", True)
    if not isinstance(answerable, bool):
        return "'answerable' must be true or false"
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "'answers' must be a list of strings"
    if answerable and not any(a.strip() for a in answers):
        return "an answerable question needs at least one non-empty answer"
    for key in ("doc_ids", "evidence"):
        value = row.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"'{key}' must be a list of strings"
    return None


def _pair(row: dict[str, Any], *, default_id: str) -> Pair:
    return Pair(
        id=str(row.get("id") or default_id),
        question=row["question"].strip(),
        answers=[a.strip() for a in row["answers"] if a.strip()],
        answerable=row.get("answerable", True),
        doc_ids=list(row.get("doc_ids") or []),
        domain=row.get("domain"),
        label=row.get("label"),
        long_answer=row.get("long_answer"),
        evidence=list(row.get("evidence") or []),
    )


def read_pairs(path: Path) -> list[Pair]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValidationFailedError(f"cannot read {path}: {e}", code="finetune_bad_data") from e
    return parse_pairs(text, source=str(path))


# ---- what the model should say ----


def _squash(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def holds_evidence(text: str, evidence: Sequence[str], share: float = 0.5) -> bool:
    """Whether `text` holds `share` of the word 4-grams of one annotated evidence span: a span
    may cross a chunk's edge, or differ from the stored text in whitespace and punctuation.
    Spans of fewer than four words are not evidence of anything."""
    held = shingles(text, n=4)
    spans = [shingles(span, n=4) for span in _checkable(evidence)]
    return any(len(span & held) / len(span) >= share for span in spans)


def _checkable(evidence: Sequence[str]) -> list[str]:
    return [span for span in evidence if len(_WORD.findall(span)) >= 4]


def citation_for(pair: Pair, context: Sequence[Candidate]) -> int | None:
    """The 1-based number of the source that holds the answer: the first one holding an
    annotated evidence span, or the answer itself; for a pair without annotated evidence, else
    the first from a gold document; None if no source is known to hold it (a pair whose
    evidence is annotated is held only where that evidence is)."""
    answers = [_squash(a) for a in pair.answers if len(a) >= 4]
    for i, c in enumerate(context, 1):
        if holds_evidence(c.text, pair.evidence) or any(a in _squash(c.text) for a in answers):
            return i
    if _checkable(pair.evidence):
        return None
    # Evaluation sets name documents by file stem; ids may hold dots ("Inc._-_EX-10.10").
    gold = set(pair.doc_ids)
    for i, c in enumerate(context, 1):
        if gold & {c.doc_id, c.filename, Path(c.filename).stem}:
            return i
    return None


def target_answer(pair: Pair, context: Sequence[Candidate]) -> str:
    """The completion to learn for `pair` given the curated `context`.

    The no-answer reply when the pair is unanswerable, when it names gold documents and none
    of them reached the context, or when its annotated evidence did not (a CUAD "Yes" whose
    clause is not among the sources): the model must not learn to answer without the
    evidence. Otherwise the reference answer with a citation: PubMedQA's label, with the
    first sentence of its conclusion only when the cited source states it ("Yes. Intubation
    took twice as long [1]"; PubMedQA's corpus withholds the conclusions, so there it is "Yes
    [1].": a model taught to write sentences its context lacks learns to invent them), CUAD's
    Yes/No ("Yes [2]."; a "No" is an absence judgement and cites nothing), a span or value
    otherwise ("June 21, 1999 [1]"), preferring an annotated span found in the context.
    """
    if not pair.answerable:
        return NO_ANSWER
    cite = citation_for(pair, context)
    if cite is None and (pair.doc_ids or _checkable(pair.evidence)):
        return NO_ANSWER
    marker = f" [{cite}]" if cite else ""
    reference = pair.answers[0]
    if pair.label and pair.label.lower() in ("yes", "no", "maybe"):
        conclusion = _SENTENCE_END.split((pair.long_answer or "").strip())[0].rstrip(".")
        opening = pair.label.capitalize()
        stated = conclusion and cite and _squash(conclusion) in _squash(context[cite - 1].text)
        return f"{opening}. {conclusion}{marker}." if stated else f"{opening}{marker}."
    if reference.lower() in ("yes", "no"):
        return "No." if reference.lower() == "no" else f"Yes{marker}."
    in_context = [a for a in pair.answers if cite and _squash(a) in _squash(context[cite - 1].text)]
    return f"{(in_context or [reference])[0]}{marker}"


# ---- examples ----

ContextFor = Callable[[Pair], list[Candidate]]


def build_examples(pairs: Iterable[Pair], context_for: ContextFor, system_prompt: str | None = None) -> list[Example]:
    """Each pair with the module's curated context (`context_for`: the query-time stages),
    in the chat the small tier is sent (`system_prompt`: its setting)."""
    examples = []
    for pair in pairs:
        context = context_for(pair)
        examples.append(
            Example(
                id=pair.id,
                messages=build_messages(pair.question, context, system_prompt),
                completion=target_answer(pair, context),
                answerable=pair.answerable,
                answers=pair.answers,
                domain=pair.domain,
                context_ids=[c.id for c in context],
            )
        )
    return examples


def examples_hash(examples: Sequence[Example]) -> str:
    """sha256 of the examples' canonical JSON: the training data's content address."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(asdict(example), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def write_examples(examples: Sequence[Example], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")


def read_examples(path: Path) -> list[Example]:
    # Split on "\n" only: str.splitlines also splits on U+2028 and friends, which abstracts hold.
    return [Example(**json.loads(line)) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def split_examples(
    examples: Sequence[Example], *, eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, evaluation): a seeded shuffle, stratified by answerability so that both parts
    hold unanswerable questions, with at least one example on each side when there are two."""
    train: list[Example] = []
    held: list[Example] = []
    for answerable in (True, False):
        group = sorted((e for e in examples if e.answerable is answerable), key=lambda e: e.id)
        random.Random(f"{seed}:{answerable}").shuffle(group)
        n_eval = round(len(group) * eval_fraction)
        held += group[:n_eval]
        train += group[n_eval:]
    if eval_fraction > 0 and not held and len(train) > 1:
        held.append(train.pop())
    return train, held
