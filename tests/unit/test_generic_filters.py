"""The filters every module shares."""

from __future__ import annotations

import random

import pytest

from modules.base import jaccard, near_duplicate


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.85, 0.9, 1.0])
def test_near_duplicate_is_jaccard_at_the_threshold(threshold: float) -> None:
    rng = random.Random(threshold)
    for _ in range(2000):
        a = set(rng.sample(range(40), rng.randint(0, 30)))
        b = set(rng.sample(range(40), rng.randint(0, 30))) if rng.random() < 0.7 else set(a)
        assert near_duplicate(a, b, threshold) == (jaccard(a, b) >= threshold), (a, b)
