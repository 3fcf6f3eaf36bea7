"""Escalation ladders: answer cheaply, climb a rung only while the best answer fails its check.

Rung 0 is the route's own answer (one sample with the route's sampling — greedy for a
``temperature: 0`` single-pass route — or the route's strategy). Before rung k runs, its
verifier scores the pool (only candidates it has not scored yet) and ``waves.select`` picks the
best answer; when that reaches the rung's threshold the ladder stops there. A ``samples`` rung
draws more candidates in one ``n=k`` call; a route rung runs another strategy with every
candidate so far as its seeds. Every candidate stays in the pool, so votes and scores carry
over and the first answer can still win.

One budget and one deadline hold across the whole ladder (the caller sizes them to the route's
caps). When either runs out — or a rung fails — the ladder returns the best verified answer so
far, else the best scored one, with the reason.

The result's ``info["ladder"]`` records the climb: the ``path`` of rungs run, ``stopped_at``,
``verified``, and ``first_index``, the pool index of the answer the ladder had before it climbed
(the first check's pick: the first answer, or the best of the start rung's candidates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from strategies.base import (
    BudgetExhausted,
    Choice,
    StopReason,
    Strategy,
    StrategyContext,
    StrategyRequest,
    StrategyResult,
)
from strategies.best_of_n import (
    DeadlineExceeded,
    SamplingParams,
    question_of,
    with_logprobs,
)
from strategies.ports import GenChoice, Verifier
from strategies.sampling import SAMPLING_FIELDS
from strategies.tracing import VERIFY_SPAN, Span, Tracer, verify_attrs
from strategies.usage import Usage
from strategies.verifiers.confidence import needs_logprobs
from strategies.waves import (
    CandidatePool,
    Selection,
    candidate_detail,
    draw,
    relabel,
    select,
)

RUNG_SPAN = "deliberate.rung"
RUNG_CANDIDATES = "deliberate.rung.candidates"
VERIFY_PASSED = "deliberate.verifier.passed"
VERIFY_BEST = "deliberate.verifier.best_score"


def rung_span(tracer: Tracer, k: int, label: str) -> AbstractContextManager[Span]:
    """The span of rung ``k`` (0: the route's own answer) while it draws its candidates."""
    if not tracer.enabled:
        return tracer.span(RUNG_SPAN)
    return tracer.span(RUNG_SPAN, {"deliberate.rung": k, "deliberate.rung.label": label})


def verify_span(tracer: Tracer, rung: RungPlan, candidates: int) -> AbstractContextManager[Span]:
    """The span of the check that gates ``rung`` (over the whole pool)."""
    if not tracer.enabled:
        return tracer.span(VERIFY_SPAN)
    attrs = {**verify_attrs(rung.verifier.name, candidates), "deliberate.rung.label": rung.label}
    return tracer.span(VERIFY_SPAN, {**attrs, "deliberate.verifier.threshold": rung.threshold})


@dataclass(frozen=True)
class RungPlan:
    """A rung ready to run: ``samples`` more candidates (``sampling`` on top of the request's),
    or a ``strategy`` seeded with the pool (``sampling`` replaces the request's sampling
    fields; None values unset them). ``verifier``/``threshold`` gate it."""

    label: str
    verifier: Verifier
    threshold: float
    samples: int | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    strategy: Strategy | None = None


@dataclass(frozen=True)
class Ladder:
    """``first``: the route's own strategy (None: one sample, as a single-pass route);
    ``params``: per-candidate defaults of sample rungs (max_tokens, answer format)."""

    rungs: tuple[RungPlan, ...]
    params: SamplingParams = SamplingParams(temperature=0.0)
    first: Strategy | None = None
    start: int = 0
    """0: start with the route's own answer; k ≥ 1: skip it and start with rung k (a request
    predicted too hard for the cheap rung), then climb from there."""

    @property
    def wants_logprobs(self) -> bool:
        return any(needs_logprobs(r.verifier) for r in self.rungs)

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        pool = CandidatePool(self.params.answer)
        question = question_of(request.messages)
        logprobs = self.wants_logprobs
        inner = with_logprobs(request) if logprobs else request
        start = min(max(0, self.start), len(self.rungs))
        if start == 0:
            label = "first"
            with rung_span(ctx.tracer, 0, label) as span:
                await self._first(inner, ctx, pool)  # no answer at all yet: errors propagate
                span.set_attribute(RUNG_CANDIDATES, len(pool))
        else:
            label = self.rungs[start - 1].label
            with rung_span(ctx.tracer, start, label) as span:
                try:
                    await self._climb(self.rungs[start - 1], start, inner, ctx, pool, logprobs)
                except BudgetExhausted:
                    if not len(pool):
                        raise
                span.set_attribute(RUNG_CANDIDATES, len(pool))
        path: list[dict[str, Any]] = [{"rung": start, "label": label, "candidates": len(pool)}]
        reason: StopReason = "completed"
        sel: Selection | None = None
        first: int | None = None  # the pick of the first check: the answer before any climb
        gate = self.rungs[max(0, start - 1)]
        for k, rung in enumerate(self.rungs[start:], start=start + 1):
            gate = rung
            try:
                async with asyncio.timeout(ctx.deadline.remaining_s):
                    with verify_span(ctx.tracer, rung, len(pool)) as span:
                        scores = await pool.scores(question, rung.verifier)
                        sel = select(pool.answers, [s.value for s in scores], rung.threshold)
                        span.set_attribute(VERIFY_PASSED, sel.passed)
                        span.set_attribute(VERIFY_BEST, round(sel.score, 4))
            except TimeoutError:
                reason = "deadline"
                break
            except BudgetExhausted:  # a verifier that calls the backend hit the caps
                reason = "budget"
                break
            first = sel.index if first is None else first
            path[-1].update(verifier=rung.verifier.name, best_score=round(sel.score, 4))
            path[-1]["passed"] = sel.passed
            if sel.passed:
                reason = "verified"
                break
            if ctx.budget.remaining == 0:
                reason = "budget"
                break
            if ctx.deadline.expired:
                reason = "deadline"
                break
            ctx.note(f"best answer scored {sel.score:.2f} < {rung.threshold}: rung {rung.label}\n")
            before = len(pool)
            with rung_span(ctx.tracer, k, rung.label) as span:
                try:
                    async with asyncio.timeout(ctx.deadline.remaining_s):
                        await self._climb(rung, k, inner, ctx, pool, logprobs)
                except (TimeoutError, DeadlineExceeded):
                    reason = "deadline"
                except BudgetExhausted:
                    reason = "budget"
                span.set_attribute(RUNG_CANDIDATES, len(pool) - before)
                if reason != "completed":
                    span.set_attribute("deliberate.rung.cut_by", reason)
            path.append({"rung": k, "label": rung.label, "candidates": len(pool) - before})
            sel = None
            if reason != "completed":
                break
        if sel is None:  # candidates arrived after the last check: score them (or not)
            sel = await self._final(question, gate, pool, ctx, reason)
            path[-1].update(verifier=gate.verifier.name, best_score=round(sel.score, 4))
            path[-1]["passed"] = sel.passed
            if sel.passed and reason == "completed":
                reason = "verified"
        first = sel.index if first is None else first  # no check before: nothing climbed
        return self._result(request, pool, sel, gate, reason, path, ctx, first)

    async def _first(
        self, request: StrategyRequest, ctx: StrategyContext, pool: CandidatePool
    ) -> None:
        if self.first is None:
            choices, usage, model, _ = await draw(request, ctx, self.params, 1)
            pool.model = model
            pool.add(choices, 0, usage)
            return
        res = await self.first.run(request, ctx)
        _add_result(pool, res, 0, seeds=0)

    async def _climb(
        self,
        rung: RungPlan,
        k: int,
        request: StrategyRequest,
        ctx: StrategyContext,
        pool: CandidatePool,
        logprobs: bool,
    ) -> None:
        if rung.samples is not None:
            choices, usage, model, used = await draw(
                request, ctx, self.params, rung.samples, overrides=rung.sampling, logprobs=logprobs
            )
            pool.model = pool.model or model
            pool.add(choices, k, usage)
            if used < rung.samples:  # the caps could not hold the whole rung
                raise BudgetExhausted("tokens")
            return
        assert rung.strategy is not None
        seeds = tuple(pool.choices)
        # A route rung's sampling replaces the request's (None: the strategy's default).
        sampling = {k: v for k, v in request.sampling.items() if k not in SAMPLING_FIELDS}
        sampling.update({k: v for k, v in rung.sampling.items() if v is not None})
        res = await rung.strategy.run(replace(request, seeds=seeds, sampling=sampling), ctx)
        _add_result(pool, res, k, seeds=len(seeds))

    async def _final(
        self,
        question: str,
        gate: RungPlan,
        pool: CandidatePool,
        ctx: StrategyContext,
        reason: StopReason,
    ) -> Selection:
        """Selection after the last rung ran (or was cut short): score what is new unless
        the deadline has passed, in which case only the scores already known count."""
        if reason != "deadline" and not ctx.deadline.expired:
            try:
                async with asyncio.timeout(ctx.deadline.remaining_s):
                    with verify_span(ctx.tracer, gate, len(pool)):
                        await pool.scores(question, gate.verifier)
            except (TimeoutError, BudgetExhausted):
                pass  # what was scored before counts
        return select(pool.answers, pool.known_scores(gate.verifier.name), gate.threshold)

    def _result(
        self,
        request: StrategyRequest,
        pool: CandidatePool,
        sel: Selection,
        gate: RungPlan,
        reason: StopReason,
        path: list[dict[str, Any]],
        ctx: StrategyContext,
        first: int,
    ) -> StrategyResult:
        pick = pool.choices[sel.index]
        info: dict[str, Any] = {
            "ladder": {
                "rungs": [r.label for r in self.rungs],
                "start_rung": min(max(0, self.start), len(self.rungs)),
                "path": path,
                "stopped_at": path[-1]["rung"],
                "verified": sel.passed,
                "first_index": first,
            },
            "selector": "ladder",
            "verifier": gate.verifier.name,
            "samples": len(pool),
            "backend_calls": ctx.budget.calls,
            "answers": list(pool.answers),
            "votes": sel.tally,
            "vote_margin": sel.margin,
            "tie": sel.tie,
            "no_answer": all(a is None for a in pool.answers),
            "chosen_index": sel.index,
            "chosen_wave": pool.waves[sel.index],
            "verifier_calls": pool.scored,
        }
        info["candidates"] = candidate_detail(pool, gate.verifier.name, sel.index)
        logprobs = pick.raw_logprobs if request.logprobs else None
        return StrategyResult(
            choices=(Choice(pick.text, pick.finish_reason, pick.reasoning, logprobs),),
            usage=relabel(pool, sel.index),
            stop_reason=reason,
            info=info,
            model=pool.model,
            candidates=tuple(pool.choices),
        )


def _add_result(pool: CandidatePool, res: StrategyResult, wave: int, seeds: int) -> None:
    """A strategy's candidates (past its ``seeds``) join the pool; a strategy that returns
    one answer only adds that answer. Its usage counts every token it generated."""
    generated = res.usage.visible + res.usage.hidden
    usage = Usage(prompt=res.usage.prompt, visible=generated)
    pool.model = pool.model or res.model
    if res.candidates:
        pool.add(res.candidates[seeds:], wave, usage)
        return
    c = res.choices[0]
    pool.add(
        (GenChoice(len(pool), c.text, res.usage.visible, c.finish_reason, None, c.reasoning),),
        wave,
        usage,
    )
