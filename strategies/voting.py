"""Selection over candidates: majority vote, weighted vote, DeepConf's confidence-filtered
vote, best score; and the adaptive stopping rules. Pure functions; ties and "no extractable
answer" are explicit outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VoteResult:
    """The outcome of a vote over normalised answers (None = candidate had no answer).

    ``chosen`` is the index of the candidate to return: the first one carrying the winning
    answer. ``tie`` says the winner was picked among equals (by earliest occurrence).
    ``winner`` is None only when no candidate had an answer; ``chosen`` is then None too.
    """

    winner: str | None
    chosen: int | None
    tally: dict[str, float]
    tie: bool
    margin: float


def _first_index(answers: Sequence[str | None]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is not None and a not in first:
            first[a] = i
    return first


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> VoteResult:
    """Sum ``weights`` per answer; the heaviest wins. Ties: more votes, then earliest."""
    if len(answers) != len(weights):
        raise ValueError("answers and weights differ in length")
    tally: dict[str, float] = {}
    count: dict[str, int] = {}
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            tally[a] = tally.get(a, 0.0) + w
            count[a] = count.get(a, 0) + 1
    if not tally:
        return VoteResult(None, None, {}, False, 0.0)
    first = _first_index(answers)
    ranked = sorted(tally, key=lambda a: (-tally[a], -count[a], first[a]))
    best = ranked[0]
    runner = tally[ranked[1]] if len(ranked) > 1 else 0.0
    tie = len(ranked) > 1 and math.isclose(tally[best], runner) and count[best] == count[ranked[1]]
    return VoteResult(best, first[best], tally, tie, tally[best] - runner)


def confidence_vote(
    answers: Sequence[str | None], confidences: Sequence[float], keep_top: float = 1.0
) -> VoteResult:
    """DeepConf's confidence-filtered, confidence-weighted majority vote.

    Of the candidates with an answer, keep the ``ceil(keep_top * count)`` most confident (at
    least one; ties in confidence: earliest first), then ``weighted_vote`` over them with their
    confidences as weights. Dropped candidates count for nobody; ``chosen`` indexes the
    ORIGINAL list. ``0 < keep_top <= 1`` and confidences ≥ 0, else ``ValueError``.
    """
    if len(answers) != len(confidences):
        raise ValueError("answers and confidences differ in length")
    if not 0.0 < keep_top <= 1.0:
        raise ValueError(f"keep_top must be in (0, 1], got {keep_top}")
    if any(c < 0.0 for c in confidences):
        raise ValueError("confidences must be non-negative")
    answered = [i for i, a in enumerate(answers) if a is not None]
    keep = max(1, math.ceil(keep_top * len(answered) - 1e-9))  # 0.3 * 10 is 3.0000000000000004
    kept = set(sorted(answered, key=lambda i: (-confidences[i], i))[:keep])
    filtered = [a if i in kept else None for i, a in enumerate(answers)]
    return weighted_vote(filtered, confidences)


def weighted_leader_share(answers: Sequence[str | None], weights: Sequence[float]) -> float:
    """The leading answer's share of the total weight of the answered candidates, in [0, 1]
    (0.0 when none has an answer or all weights are 0): an early-stop signal ("stop once the
    confidence-weighted leader holds more than x of the weight")."""
    tally = weighted_vote(answers, weights).tally
    total = sum(tally.values())
    if not tally or total <= 0.0:
        return 0.0
    return max(tally.values()) / total


def majority_vote(answers: Sequence[str | None]) -> VoteResult:
    """Self-consistency: the most frequent answer wins (ties: earliest occurrence)."""
    return weighted_vote(answers, [1.0] * len(answers))


def best_scored(scores: Sequence[float]) -> int:
    """Index of the highest score (ties: earliest)."""
    if not scores:
        raise ValueError("no scores")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def leader_confidence(votes: Sequence[str | None]) -> float:
    """Posterior probability that the current leader beats the runner-up.

    Model: among samples for the two leading answers, the leader's share p has a uniform
    prior, so after a votes for the leader and b for the runner-up p ~ Beta(a+1, b+1). The
    rule returns P(p > 1/2), which for integer parameters is a binomial tail:
    P(Beta(a+1, b+1) > 1/2) = P(Binomial(a+b+1, 1/2) <= a). Unanimous 4/4 gives 0.969;
    3 vs 1 gives 0.81. Samples without an answer count for nobody.
    """
    tally = majority_vote(votes).tally
    counts = sorted((int(v) for v in tally.values()), reverse=True)
    if not counts:
        return 0.0
    a = counts[0]
    b = counts[1] if len(counts) > 1 else 0
    n = a + b + 1
    favourable: int = sum(math.comb(n, k) for k in range(a + 1))
    return favourable / float(2**n)
