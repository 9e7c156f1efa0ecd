"""Choosing a domain module per question, for collections that name none.

`ModuleRouter` compares the question's embedding with each module's `route_examples` (the
mean cosine similarity of its `TOP_N` closest examples) and with `OFF_DOMAIN_EXAMPLES`,
everyday questions that no module covers and that stand for the generic module. It picks
the best module when its score reaches `min_score` and beats the runner-up by `min_margin`;
otherwise, or when the off-domain examples are closest, it answers `generic`. No match is a
value (`RouteChoice(module="generic", ...)`), not an error.

Calibration (all-MiniLM-L6-v2, 480 dev questions of the four evaluation sets outside the
routing test, 12 off-domain questions): the right module for 95% of the domain questions,
generic for 11 of the 12 off-domain ones. Without the off-domain examples, no score
threshold did both: 0.15 kept 93% of the domain questions but routed 5 of 12 off-domain
ones to a module; 0.25 routed 2 of 12 but lost a quarter of the domain questions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modules import module_class, module_keys

FALLBACK = "generic"
# Examples per module whose similarities are averaged: one close example can be luck, three
# close ones are the domain.
TOP_N = 3
# Questions about nothing a module knows: the generic module's side of the comparison.
OFF_DOMAIN_EXAMPLES = [
    "What is the weather like today?",
    "Tell me a joke.",
    "Who was the first president of the United States?",
    "How many kilometres are in a mile?",
    "What is the population of Brazil?",
    "Can you help me plan a trip to Italy?",
    "Write an email to thank a colleague.",
    "What is the difference between a virus and a bacterium?",
    "Explain how photosynthesis works.",
    "What movies are playing this weekend?",
    "How do I cook rice?",
    "What is the tallest building in the world?",
    "Who painted the Mona Lisa?",
    "What are the rules of chess?",
    "Give me ideas for a birthday party.",
]


@dataclass
class RouteChoice:
    """The module chosen for a question, its score, and every module's score (`generic`: the
    off-domain examples' score)."""

    module: str
    score: float
    scores: dict[str, float]


class ModuleRouter:
    """Routes questions to domain modules by embedding similarity to their example questions.

    `embed_texts` must be the model that embeds questions (L2-normalised vectors are not
    required). The examples are embedded once, on the first `route`. Safe to share
    between threads."""

    def __init__(
        self,
        embed_texts: Callable[[list[str]], list[list[float]]],
        modules: list[str] | None = None,
        *,
        min_score: float = 0.1,
        min_margin: float = 0.01,
    ):
        keys = modules if modules is not None else [k for k in module_keys() if module_class(k).route_examples]
        self.examples = {key: list(module_class(key).route_examples) for key in keys if key != FALLBACK}
        self.examples = {key: examples for key, examples in self.examples.items() if examples}
        self.examples[FALLBACK] = OFF_DOMAIN_EXAMPLES
        self.embed_texts = embed_texts
        self.min_score = min_score
        self.min_margin = min_margin
        self._vectors: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _example_vectors(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._vectors is None:
                texts = [text for examples in self.examples.values() for text in examples]
                matrix = _unit_rows(np.asarray(self.embed_texts(texts), dtype=np.float32))
                self._vectors, start = {}, 0
                for key, examples in self.examples.items():
                    self._vectors[key] = matrix[start : start + len(examples)]
                    start += len(examples)
            return self._vectors

    def route(self, question: str, question_vector: list[float]) -> RouteChoice:
        """The module for `question` (embedded as `question_vector` by the same model)."""
        q = _unit_rows(np.asarray([question_vector], dtype=np.float32))[0]
        scores = {}
        for key, vectors in self._example_vectors().items():
            similarities = np.sort(vectors @ q)[::-1][:TOP_N]
            scores[key] = round(float(similarities.mean()), 4)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        best, score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else float("-inf")
        if best == FALLBACK or score < self.min_score or score - runner_up < self.min_margin:
            return RouteChoice(module=FALLBACK, score=score, scores=scores)
        return RouteChoice(module=best, score=score, scores=scores)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)
