"""The question router: real questions of each evaluation set reach their domain module.

The questions are drawn from each set's dev.jsonl (every 7th, skipping the first 20, so
they are not the modules' route examples, which were written by hand); off-domain
questions must fall back to the generic module."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules import module_class, module_keys
from retrieval.evaluation import load_questions
from retrieval.routing import FALLBACK, OFF_DOMAIN_EXAMPLES, ModuleRouter, RouteChoice

SETS = {"pubmedqa": "biomedical", "emanual": "manuals", "financebench": "finance", "cuad": "legal"}
PER_SET = 10
# Not the router's own off-domain examples, nor the questions its thresholds were calibrated on.
OFF_DOMAIN = [
    "Which planet is closest to the sun?",
    "How do I make cold brew coffee at home?",
    "Suggest a name for my new kitten.",
    "Who wrote Pride and Prejudice?",
]


def held_back_questions(eval_dir: Path) -> list[tuple[str, str]]:
    """(question, expected module) for every set whose module is registered."""
    pairs = []
    for set_name, module in SETS.items():
        if module not in module_keys():
            continue
        rows = load_questions(eval_dir / set_name / "dev.jsonl")
        pairs += [(row["question"], module) for row in rows[20::7][:PER_SET]]
    return pairs


@pytest.fixture(scope="module")
def router(embedder) -> ModuleRouter:
    return ModuleRouter(lambda texts: embedder.embed(texts).tolist())


@pytest.mark.integration
def test_real_questions_reach_their_domain_module(router: ModuleRouter, embedder, eval_dir: Path) -> None:
    pairs = held_back_questions(eval_dir)
    assert len(pairs) >= 2 * PER_SET, "the biomedical and manuals modules at least must be registered"
    vectors = embedder.embed([q for q, _ in pairs]).tolist()
    choices = [router.route(q, v) for (q, _), v in zip(pairs, vectors)]
    wrong = [(q, expected, c.module, c.scores) for (q, expected), c in zip(pairs, choices) if c.module != expected]
    accuracy = 1 - len(wrong) / len(pairs)
    print(f"routing accuracy {accuracy:.3f} over {len(pairs)} questions; misrouted: {wrong}")
    assert accuracy >= 0.8, wrong


@pytest.mark.integration
def test_off_domain_questions_fall_back_to_generic(router: ModuleRouter, embedder) -> None:
    vectors = embedder.embed(OFF_DOMAIN).tolist()
    choices = [router.route(q, v) for q, v in zip(OFF_DOMAIN, vectors)]
    assert [c.module for c in choices] == [FALLBACK] * len(OFF_DOMAIN), [c.scores for c in choices]
    assert all(set(c.scores) == set(router.examples) and FALLBACK in c.scores for c in choices)


@pytest.mark.unit
def test_examples_are_embedded_once_and_lazily() -> None:
    calls: list[list[str]] = []
    manuals_examples = set(module_class("manuals").route_examples)

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        # Orthogonal directions: the manuals examples, the off-domain examples, the rest.
        return [
            [1.0, 0.0, 0.0] if t in manuals_examples else [0.0, 0.0, 1.0] if t in OFF_DOMAIN_EXAMPLES else [0.0, 1.0, 0.0]
            for t in texts
        ]

    router = ModuleRouter(embed, ["manuals", "biomedical"])
    assert calls == [], "construction must not embed"
    first = router.route("How do I restart my phone?", [1.0, 0.0, 0.0])
    second = router.route("Does aspirin reduce mortality?", [0.0, 2.0, 0.0])  # need not be unit length
    third = router.route("Tell me a joke.", [0.0, 0.0, 1.0])
    assert len(calls) == 1
    assert isinstance(first, RouteChoice) and first.module == "manuals"
    assert first.scores == {"manuals": 1.0, "biomedical": 0.0, FALLBACK: 0.0}
    assert second.module == "biomedical" and second.score == pytest.approx(1.0)
    assert third.module == FALLBACK and third.scores[FALLBACK] == pytest.approx(1.0)


@pytest.mark.unit
def test_a_weak_or_ambiguous_match_is_generic() -> None:
    router = ModuleRouter(lambda texts: [[1.0, 0.0, 0.0]] * len(texts), ["manuals", "biomedical"])
    # Equal scores: no margin.
    assert router.route("anything", [1.0, 0.0, 0.0]).module == FALLBACK
    # Orthogonal to every example: below the minimum score.
    choice = router.route("anything", [0.0, 0.0, 1.0])
    assert choice.module == FALLBACK and choice.score == pytest.approx(0.0)
