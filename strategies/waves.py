"""The wave machinery shared by escalation ladders and adaptive voting.

A ``CandidatePool`` collects every candidate of one request across waves (``n=k`` calls on
the same replica, so later waves reuse the cached prompt), with its normalised answer, the
wave that produced it and, lazily, each verifier's score. Scores are computed once per
candidate and verifier: a later rung re-scores only what is new. Selection over the pool is
pure (``select``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.answers import ExtractSpec
from strategies.base import StrategyContext, StrategyRequest
from strategies.best_of_n import SamplingParams, answers_of, sample, with_logprobs
from strategies.confidence import ConfidenceStats, as_json, confidence_stats
from strategies.ports import Candidate, GenChoice, Score, Verifier
from strategies.usage import Usage
from strategies.voting import weighted_vote


@dataclass
class CandidatePool:
    """Every candidate of one request so far. ``usage`` counts what generating them cost
    (prompt of every call, every generated token as ``visible``) and what verifiers spent
    (``hidden``); the caller re-labels visible vs hidden once one candidate is chosen."""

    spec: ExtractSpec
    choices: list[GenChoice] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    waves: list[int] = field(default_factory=list)
    usage: Usage = Usage()
    model: str = ""
    seeded: int = 0
    """The first ``seeded`` candidates came with the request (generated and counted before)."""
    scored: int = 0
    """Candidate scorings done (by any verifier)."""
    _scores: dict[str, list[Score | None]] = field(default_factory=dict)

    def add(self, choices: Sequence[GenChoice], wave: int, usage: Usage | None = None) -> None:
        """Add candidates from wave ``wave`` (``usage``: what producing them cost)."""
        self.choices.extend(choices)
        self.answers.extend(answers_of(choices, self.spec))
        self.waves.extend([wave] * len(choices))
        if usage is not None:
            self.usage = self.usage + usage

    def seed(self, choices: Sequence[GenChoice]) -> None:
        """Start from candidates generated earlier for the request (a ladder's pool)."""
        self.add(choices, -1)
        self.seeded = len(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def candidates(self, indices: Sequence[int] | None = None) -> list[Candidate]:
        idx = range(len(self.choices)) if indices is None else indices
        return [
            Candidate(
                i,
                self.choices[i].text,
                self.answers[i],
                self.choices[i].logprobs,
                self.choices[i].finish_reason,
            )
            for i in idx
        ]

    async def scores(self, question: str, verifier: Verifier) -> list[Score]:
        """``verifier``'s score of every candidate; only unscored ones are sent to it."""
        book = self._scores.setdefault(verifier.name, [])
        book.extend([None] * (len(self.choices) - len(book)))
        todo = [i for i, s in enumerate(book) if s is None]
        if todo:
            fresh = await verifier.score(question, self.candidates(todo))
            self.scored += len(todo)
            for i, s in zip(todo, fresh, strict=True):
                book[i] = s
                self.usage = self.usage + Usage(
                    prompt=s.usage.prompt, hidden=s.usage.visible + s.usage.hidden
                )
        return [s if s is not None else Score(0.0, "unscored") for s in book]

    def known_scores(self, verifier: str) -> list[float]:
        """Scores computed so far by ``verifier`` (0 for candidates it has not scored)."""
        book = self._scores.get(verifier, [])
        return [
            (book[i].value if i < len(book) and book[i] is not None else 0.0)  # type: ignore[union-attr]
            for i in range(len(self.choices))
        ]

    def confidence(self, i: int) -> ConfidenceStats | None:
        lp = self.choices[i].logprobs
        return confidence_stats(lp) if lp else None

    def generated(self) -> int:
        return sum(c.tokens for c in self.choices)


@dataclass(frozen=True, slots=True)
class Selection:
    """The candidate to return: ``index``, its ``score``, whether it ``passed`` the threshold
    (a verified answer), and the vote that chose it."""

    index: int
    score: float
    passed: bool
    tally: dict[str, float]
    margin: float
    tie: bool


def select(answers: Sequence[str | None], scores: Sequence[float], threshold: float) -> Selection:
    """The best answer of a scored pool: the best *verified* one when any candidate passes
    ``threshold``, else the best scored one.

    Among the candidates considered (those passing, or all), answers are voted with their
    scores as weights — several candidates agreeing on a checked answer outweigh one — and the
    highest-scored candidate carrying the winning answer is returned. Without any extractable
    answer, the highest score wins.
    """
    if not answers:
        raise ValueError("empty pool")
    passing = [i for i, s in enumerate(scores) if s >= threshold]
    considered = passing or list(range(len(answers)))
    keep = set(considered)
    vote = weighted_vote(
        [a if i in keep else None for i, a in enumerate(answers)],
        [s if i in keep else 0.0 for i, s in enumerate(scores)],
    )
    pool = [i for i in considered if vote.winner is None or answers[i] == vote.winner]
    best = max(pool, key=lambda i: (scores[i], -i))
    return Selection(
        best, scores[best], scores[best] >= threshold, vote.tally, vote.margin, vote.tie
    )


async def draw(
    request: StrategyRequest,
    ctx: StrategyContext,
    params: SamplingParams,
    n: int,
    *,
    overrides: Mapping[str, Any] | None = None,
    logprobs: bool = False,
) -> tuple[list[GenChoice], Usage, str, int]:
    """One wave: ``n`` samples in one call, ``overrides`` on top of the request's sampling.
    With ``logprobs`` the call asks for token logprobs (confidence). Returns the choices, the
    call's usage, the model and the n used (lower when the budget is short). Raises
    ``best_of_n.DeadlineExceeded`` when the deadline passes first."""
    req = request
    if overrides:
        req = replace(req, sampling={**req.sampling, **overrides})
    if logprobs:
        req = with_logprobs(req)
    result, used = await sample(req, ctx, params, n)
    return list(result.choices), result.usage, result.model, used


def candidate_detail(
    pool: CandidatePool, verifier: str | None, chosen: int
) -> list[dict[str, Any]]:
    """Per-candidate detail for the ``deliberate`` object: tokens, answer, the verifier's
    score and the confidence of each candidate (the gateway drops it above a route's
    ``candidate_detail`` count)."""
    book = pool._scores.get(verifier or "", [])
    out = []
    for i, c in enumerate(pool.choices):
        item: dict[str, Any] = {
            "index": i,
            "wave": pool.waves[i],
            "tokens": c.tokens,
            "answer": pool.answers[i],
            "finish_reason": c.finish_reason,
            "chosen": i == chosen,
        }
        s = book[i] if i < len(book) else None
        if s is not None:
            item["score"] = round(s.value, 4)
        if (stats := pool.confidence(i)) is not None:
            item["confidence"] = as_json(stats)
        out.append(item)
    return out


def relabel(pool: CandidatePool, chosen: int) -> Usage:
    """The pool's usage with the chosen candidate's tokens visible and all others hidden.
    A chosen seed (generated before, not counted in this pool's usage) makes all of it hidden."""
    generated = pool.usage.visible
    visible = 0 if chosen < pool.seeded else pool.choices[chosen].answer_tokens
    return Usage(
        prompt=pool.usage.prompt,
        visible=visible,
        hidden=max(0, generated - visible) + pool.usage.hidden,
    )
