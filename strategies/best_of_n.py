"""best-of-n: N candidates in ONE backend request (``n=N``, shared prompt KV), then selection.

Selectors: ``verifier`` (highest verifier score, ORM), ``majority`` (most frequent normalised
final answer: self-consistency), ``weighted`` (sum of verifier scores per answer), ``auto``
(a vote weighted by the arithmetic-consistency checker where the candidates' arithmetic can be
checked — the checker moves the vote — else a plain majority vote, or a vote weighted by the
configured judge). Ties and "no extractable answer" are explicit in ``info``.

Why ``auto`` weights the vote instead of taking the best-scored candidate: measured in
bench/test_time_scaling.py on SmolLM2 (96 items, N=16), the checker-weighted vote reached 32 %
against 27 % for best score and 29 % for majority; best score alone follows a candidate whose
few equations hold even when the vote clearly disagrees (comparison questions: 25 % vs 62 %).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.answers import ExtractSpec, extract_answer, normalize_answer
from strategies.base import Choice, StopReason, StrategyContext, StrategyRequest, StrategyResult
from strategies.confidence import Signal, confidence_stats, signal_value
from strategies.ports import Candidate, GenChoice, GenRequest, GenResult, Score, Verifier
from strategies.thinking import ThinkingParams, thinking_budget
from strategies.tracing import NO_TRACING, Tracer, traced_score
from strategies.usage import Usage
from strategies.verifiers.arithmetic import ArithmeticConsistencyVerifier, is_checkable
from strategies.verifiers.registry import VerifierContext, build_verifier
from strategies.voting import (
    VoteResult,
    best_scored,
    confidence_vote,
    majority_vote,
    weighted_vote,
)

Selector = Literal["auto", "verifier", "majority", "weighted", "confidence"]


class SamplingParams(BaseModel):
    """Sampling defaults of a multi-candidate route (a client's own values win)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.8, ge=0, description="Diversity is what voting needs.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, description="Per-candidate cap when the client sets none.")
    answer: ExtractSpec = ExtractSpec()
    thinking: ThinkingParams | None = Field(
        None,
        description="Native thinking per candidate (a backend with a reasoning parser): "
        "thinking_token_budget, reasoning_effort budgets, the prefill that opens it.",
    )


class BestOfNParams(SamplingParams):
    n: int = Field(8, ge=1, le=64, description="Candidates per request (one backend call).")
    selector: Selector = "auto"
    keep_top: float = Field(
        1.0,
        gt=0,
        le=1,
        description="selector confidence: vote among only this most confident share (DeepConf).",
    )
    signal: Signal = Field(
        "mean", description="selector confidence: which confidence weights a vote."
    )
    verifier: Literal["arithmetic", "logprob-judge"] = Field(
        "arithmetic",
        description="Scores for the verifier/weighted selectors; with auto, used for a weighted "
        "vote when the arithmetic checker has nothing to check.",
    )


# Enough alternatives for DeepConf's top-k measure, cheap on vLLM (bench/logprobs_cost.py).
CONFIDENCE_TOP_LOGPROBS = 2


def with_logprobs(request: StrategyRequest) -> StrategyRequest:
    """``request`` sampling with token logprobs (for confidence), unless it already does."""
    if request.logprobs:
        return request
    return replace(request, logprobs=True, top_logprobs=CONFIDENCE_TOP_LOGPROBS)


class DeadlineExceeded(Exception):
    """The deadline passed before any candidate existed."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """Candidates of one request so far, with their normalised answers."""

    choices: tuple[GenChoice, ...]
    answers: tuple[str | None, ...]
    usage: Usage


def question_of(messages: Sequence[dict[str, Any]]) -> str:
    """The last user message's text (what verifiers judge answers against)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def gen_request(
    request: StrategyRequest,
    params: SamplingParams,
    n: int,
    cap: int | None,
    think: int = 0,
) -> GenRequest:
    """The backend call for ``n`` candidates: the client's sampling fields win over defaults.

    ``think`` > 0: each candidate first thinks for at most that many tokens (the backend
    enforces ``thinking_token_budget``), then answers within ``cap``."""
    sampling = dict(request.sampling)
    temperature = sampling.pop("temperature", None)
    top_p = sampling.pop("top_p", None)
    stop = sampling.pop("stop", None)
    messages: Sequence[dict[str, Any]] = request.messages
    continue_final = False
    if think > 0 and params.thinking is not None:
        sampling["thinking_token_budget"] = think
        cap = None if cap is None else cap + think
        if params.thinking.prefill:
            messages = [*messages, {"role": "assistant", "content": params.thinking.prefill}]
            continue_final = True
    return GenRequest(
        messages=messages,
        n=n,
        max_tokens=cap,
        continue_final_message=continue_final,
        temperature=params.temperature if temperature is None else temperature,
        top_p=params.top_p if top_p is None else top_p,
        stop=[stop] if isinstance(stop, str) else stop,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        extra=sampling,
    )


async def sample(
    request: StrategyRequest, ctx: StrategyContext, params: SamplingParams, n: int
) -> tuple[GenResult, int]:
    """One ``n``-candidate call sized to the budget; returns the result and the n used.

    Fewer candidates are sampled when the budget cannot hold ``n`` full-length ones.
    Raises ``DeadlineExceeded`` when the deadline passes first (the call is cancelled, which
    closes its connection and makes vLLM abort it).
    """
    think = 0
    if params.thinking is not None:
        think = ctx.budget.cap_hidden(thinking_budget(params.thinking, request.reasoning_effort))
    cap = ctx.budget.cap(request.max_tokens or params.max_tokens)
    rem = ctx.budget.remaining
    if think and rem is not None and cap is not None:  # one candidate's thinking + answer fit
        think = min(think, max(0, rem - 1))
        cap = max(1, min(cap, rem - think))
    per_candidate = None if cap is None else cap + think
    if per_candidate and rem is not None:
        n = max(1, min(n, rem // per_candidate))
    if (left := ctx.budget.candidates_left) is not None:
        n = max(1, min(n, left))
    try:
        async with asyncio.timeout(ctx.deadline.remaining_s):
            result = await ctx.generator.generate(gen_request(request, params, n, cap, think))
    except TimeoutError as e:
        raise DeadlineExceeded from e
    ctx.budget.charge(result.usage)
    return result, n


def answers_of(choices: Sequence[GenChoice], spec: ExtractSpec) -> tuple[str | None, ...]:
    out: list[str | None] = []
    for c in choices:
        raw = extract_answer(c.text, spec)
        out.append(None if raw is None else normalize_answer(raw))
    return tuple(out)


def split_usage(total: Usage, choices: Sequence[GenChoice], chosen: int) -> Usage:
    """Re-label generated tokens: the chosen candidate's answer is visible; its thinking and
    every other candidate are hidden."""
    visible = choices[chosen].answer_tokens
    generated = total.visible + total.hidden
    return Usage(prompt=total.prompt, visible=visible, hidden=max(0, generated - visible))


def _confidence_select(
    sampled: Sampled, params: BestOfNParams | None
) -> tuple[int, dict[str, Any], Usage]:
    """DeepConf's offline vote: weight each answer by its candidate's confidence, among the
    most confident ``keep_top`` share."""
    p = params or BestOfNParams()
    weights = [
        signal_value(confidence_stats(c.logprobs), p.signal) if c.logprobs else 0.0
        for c in sampled.choices
    ]
    vote = confidence_vote(sampled.answers, weights, p.keep_top)
    chosen = vote.chosen if vote.chosen is not None else 0
    info: dict[str, Any] = {
        "selector": "confidence",
        "answers": list(sampled.answers),
        "votes": {k: round(v, 4) for k, v in vote.tally.items()},
        "vote_margin": vote.margin,
        "tie": vote.tie,
        "no_answer": vote.winner is None,
        "chosen_index": chosen,
        "confidence": [round(w, 4) for w in weights],
    }
    return chosen, info, Usage()


async def select(
    question: str,
    sampled: Sampled,
    selector: Selector,
    verifier: Verifier | None,
    verifier_params: BestOfNParams | None = None,
    tracer: Tracer = NO_TRACING,
) -> tuple[int, dict[str, Any], Usage]:
    """Pick a candidate. Returns (index, info, verifier usage)."""
    texts = [c.text for c in sampled.choices]
    used = selector
    v: Verifier = verifier or ArithmeticConsistencyVerifier()
    if selector == "auto":
        if any(is_checkable(question, t) for t in texts):
            used, v = "weighted", ArithmeticConsistencyVerifier()
        else:
            used = "majority" if v.name == "arithmetic" else "weighted"
    if selector == "confidence":
        return _confidence_select(sampled, verifier_params)
    scores: list[Score] = []
    if used in ("verifier", "weighted"):
        cands = [
            Candidate(i, t, a) for i, (t, a) in enumerate(zip(texts, sampled.answers, strict=True))
        ]
        scores = await traced_score(tracer, v, question, cands)
    vote: VoteResult = (
        weighted_vote(sampled.answers, [s.value for s in scores])
        if used == "weighted"
        else majority_vote(sampled.answers)
    )
    if used == "verifier":
        chosen = best_scored([s.value for s in scores])
    elif vote.chosen is not None:
        chosen = vote.chosen
    else:  # no candidate has an extractable answer: any reply beats an empty one
        chosen = next((i for i, t in enumerate(texts) if t.strip()), 0)
    info: dict[str, Any] = {
        "selector": used,
        "answers": list(sampled.answers),
        "votes": vote.tally,
        "vote_margin": vote.margin,
        "tie": vote.tie,
        "no_answer": vote.winner is None,
        "chosen_index": chosen,
    }
    if scores:
        info["verifier"] = v.name
        info["scores"] = [round(s.value, 4) for s in scores]
    spent = Usage()
    for s in scores:
        spent = spent + s.usage
    return chosen, info, Usage(prompt=spent.prompt, hidden=spent.visible + spent.hidden)


@dataclass(frozen=True)
class BestOfN:
    """The strategy object built from a route's params."""

    params: BestOfNParams
    verifier: Verifier | None = None
    name: str = "best-of-n"

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        client_logprobs = request.logprobs
        seeds = request.seeds[: self.params.n - 1]
        if self.params.selector == "confidence":
            request = with_logprobs(request)
        result, n_used = await sample(request, ctx, self.params, self.params.n - len(seeds))
        choices = (*seeds, *result.choices)
        if seeds:  # seeds were generated (and counted) before this call
            result = GenResult(choices, result.usage, result.model)
        sampled = Sampled(choices, answers_of(choices, self.params.answer), result.usage)
        ctx.note(
            f"sampled {n_used} candidates in one request; selecting ({self.params.selector})\n"
        )
        verifier = self.verifier or build_verifier(
            self.params.verifier, VerifierContext(generator=ctx.generator), {}
        )
        chosen, info, verify_usage = await select(
            question_of(request.messages),
            sampled,
            self.params.selector,
            verifier,
            self.params,
            ctx.tracer,
        )
        ctx.budget.charge(Usage(hidden=verify_usage.hidden))
        if chosen < len(seeds):  # a seed won: every token of this call is hidden
            generated = result.usage.visible + result.usage.hidden
            usage = Usage(prompt=result.usage.prompt, hidden=generated) + verify_usage
        else:
            usage = split_usage(result.usage, result.choices, chosen) + verify_usage
        pick = result.choices[chosen]
        logprobs = pick.raw_logprobs if client_logprobs else None
        n_used += len(seeds)
        info.update(samples=n_used, requested_samples=self.params.n, backend_calls=1)
        if seeds:
            info.update(seeded=len(seeds), seed_chosen=chosen < len(seeds))
        reason: StopReason = "budget" if n_used < self.params.n else "completed"
        return StrategyResult(
            choices=(Choice(pick.text, pick.finish_reason, pick.reasoning, logprobs),),
            usage=usage,
            stop_reason=reason,
            info=info,
            model=result.model,
            candidates=choices,
        )
