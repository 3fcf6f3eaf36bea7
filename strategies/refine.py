"""refine: generate, then critique and revise for up to R rounds; return the best-scored version.

Round k asks the backend for a critique of the current version, then (unless the critique finds
nothing to fix) for a revision that addresses it; the verifier scores every version. Both
calls continue the client's conversation — its messages, the current version as the
assistant's turn, then the critique or revision instruction as a user turn — so the client's
system prompt still applies and the conversation prefix is reused from the prefix cache.

Stopping (the first that holds):
- ``plateau``: the new version's score gained less than ``min_gain`` over the version it
  revises (a loss included) — further rounds are not worth their tokens;
- ``no_issues``: the critique contains ``no_issues_marker`` (case-insensitive);
- ``max_rounds``: R rounds done;
- ``budget`` / ``deadline``: the token budget is spent, or the deadline passed (the call in
  flight is cancelled; a version without a score cannot be chosen).

The answer is the version with the highest score (ties: the earliest), not blindly the last:
a revision can make things worse. Usage: the chosen version's tokens are visible; every other
generated token (other versions, critiques, verifier outputs) is hidden; prompt = every prompt
sent, verifier calls included.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strategies.answers import ExtractSpec, extract_answer, normalize_answer
from strategies.base import (
    Choice,
    CountingGenerator,
    StopReason,
    StrategyContext,
    StrategyRequest,
    StrategyResult,
)
from strategies.best_of_n import DeadlineExceeded, question_of
from strategies.ports import Candidate, GenChoice, Generator, GenRequest, Verifier
from strategies.tracing import traced_score
from strategies.usage import Usage
from strategies.verifiers.registry import VerifierContext, build_verifier

Stop = Literal["plateau", "no_issues", "max_rounds", "budget", "deadline"]
_STOP_REASONS: dict[Stop, StopReason] = {
    "plateau": "converged",
    "no_issues": "converged",
    "max_rounds": "max_steps",
    "budget": "budget",
    "deadline": "deadline",
}

CRITIQUE_TEMPLATE = (
    "Check your answer above carefully, step by step: the reasoning, every calculation and the "
    "final answer. List each mistake and say how to fix it. If there is nothing to fix, reply "
    "with exactly: {marker}"
)
REVISE_TEMPLATE = (
    "A reviewer checked your answer above and wrote:\n\n{critique}\n\n"
    "Write a corrected, complete answer to the original question, fixing every problem the "
    "reviewer found. End with the final answer."
)
_FIELDS = {
    "critique_template": ("question", "answer", "marker"),
    "revise_template": ("question", "answer", "critique"),
}


class RefineParams(BaseModel):
    """Templates are ``str.format`` strings. ``critique_template`` may use ``{question}`` (the
    last user message), ``{answer}`` (the current version) and ``{marker}``;
    ``revise_template`` may use ``{question}``, ``{answer}`` and ``{critique}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(3, ge=1, le=8, description="Critique-and-revise rounds R at most.")
    min_gain: float = Field(
        0.01, ge=0, le=1, description="Stop when a revision gains less score than this."
    )
    critique_template: str = CRITIQUE_TEMPLATE
    revise_template: str = REVISE_TEMPLATE
    no_issues_marker: str = Field(
        "NO ISSUES", min_length=1, description="A critique containing it means nothing to fix."
    )
    temperature: float = Field(0.7, ge=0, description="Draft and revisions; a client's wins.")
    critique_temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(256, ge=1, description="Per version when the client sets none.")
    critique_max_tokens: int = Field(256, ge=1)
    verifier: Literal["arithmetic", "logprob-judge"] = "arithmetic"
    answer: ExtractSpec = ExtractSpec()

    @field_validator("critique_template", "revise_template")
    @classmethod
    def _placeholders(cls, template: str, info: ValidationInfo) -> str:
        fields = _FIELDS[str(info.field_name)]
        try:
            template.format(**dict.fromkeys(fields, ""))
        except (KeyError, IndexError, ValueError) as exc:
            allowed = ", ".join("{" + f + "}" for f in fields)
            raise ValueError(f"may use only {allowed}; got {exc!r}") from exc
        return template


@dataclass(frozen=True, slots=True)
class _Version:
    choice: GenChoice
    score: float | None = None
    detail: str = ""


@dataclass
class _Spent:
    prompt: int = 0
    generated: int = 0
    verifier: Usage = Usage()
    verifier_calls: int = 0
    model: str = ""


@dataclass(frozen=True)
class Refine:
    """The strategy object built from a route's params; ``verifier`` overrides the named one."""

    params: RefineParams
    verifier: Verifier | None = None
    name: str = "refine"

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        p = self.params
        gen = CountingGenerator(ctx.generator)
        verifier = self.verifier or build_verifier(p.verifier, VerifierContext(generator=gen), {})
        question = question_of(request.messages)
        spent = _Spent()
        draft = await self._generate(ctx, gen, self._version_call(request, None, None), spent)
        if draft is None:
            if ctx.deadline.expired:  # before any version existed
                raise DeadlineExceeded
            empty = _Version(GenChoice(0, "", 0, "length"))
            return self._result([empty], 0, "budget", [], spent, gen.calls, verifier.name)
        versions = [await self._score(ctx, verifier, question, _Version(draft), spent)]
        ctx.note(f"draft scored {_fmt(versions[0].score)}\n")
        current, rounds = 0, 0
        stop: Stop = "max_rounds"
        critiques: list[str] = []
        for _ in range(p.rounds):
            if versions[current].score is None:
                stop = "deadline"
                break
            answer = versions[current].choice.text
            critique = await self._generate(
                ctx, gen, self._critique_call(request, question, answer), spent
            )
            if critique is None:
                stop = "budget" if ctx.budget.remaining == 0 else "deadline"
                break
            rounds += 1
            critiques.append(critique.text)
            ctx.note(f"round {rounds}: critique written\n")
            if p.no_issues_marker.casefold() in critique.text.casefold():
                stop = "no_issues"
                break
            revision = await self._generate(
                ctx, gen, self._version_call(request, answer, critique.text), spent
            )
            if revision is None:
                stop = "budget" if ctx.budget.remaining == 0 else "deadline"
                break
            new = await self._score(ctx, verifier, question, _Version(revision), spent)
            versions.append(new)
            ctx.note(f"round {rounds}: revision scored {_fmt(new.score)}\n")
            before = versions[current].score or 0.0
            if new.score is None:
                stop = "deadline"
                break
            if new.score - before < p.min_gain:
                stop = "plateau"
                break
            current = len(versions) - 1
        return self._result(versions, rounds, stop, critiques, spent, gen.calls, verifier.name)

    # -- calls --------------------------------------------------------------------------------

    def _sampling(self, request: StrategyRequest) -> tuple[dict[str, Any], Any, Any, Any]:
        sampling = dict(request.sampling)
        return (
            sampling,
            sampling.pop("temperature", None),
            sampling.pop("top_p", None),
            sampling.pop("stop", None),
        )

    def _version_call(
        self, request: StrategyRequest, answer: str | None, critique: str | None
    ) -> GenRequest:
        """The draft (no answer yet) or a revision of ``answer`` addressing ``critique``."""
        p = self.params
        sampling, temperature, top_p, stop = self._sampling(request)
        messages = list(request.messages)
        if answer is not None and critique is not None:
            instruction = p.revise_template.format(
                question=question_of(request.messages), answer=answer, critique=critique
            )
            messages += [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": instruction},
            ]
        return GenRequest(
            messages=messages,
            max_tokens=request.max_tokens or p.max_tokens,
            temperature=p.temperature if temperature is None else temperature,
            top_p=top_p,
            stop=[stop] if isinstance(stop, str) else stop,
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
            extra=sampling,
        )

    def _critique_call(self, request: StrategyRequest, question: str, answer: str) -> GenRequest:
        """A critique is the strategy's own hidden call: the client's extra fields (e.g. a
        ``response_format`` meant for the answer) do not apply to it."""
        p = self.params
        instruction = p.critique_template.format(
            question=question, answer=answer, marker=p.no_issues_marker
        )
        return GenRequest(
            messages=[
                *request.messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": instruction},
            ],
            max_tokens=p.critique_max_tokens,
            temperature=p.critique_temperature,
        )

    async def _generate(
        self, ctx: StrategyContext, gen: Generator, req: GenRequest, spent: _Spent
    ) -> GenChoice | None:
        """One call sized to the budget; None when the budget is spent or the deadline passed
        (the call is then cancelled, which makes vLLM abort it)."""
        cap = ctx.budget.cap(req.max_tokens)
        if cap is not None and cap <= 0:
            return None
        sized = replace(req, max_tokens=cap)
        try:
            async with asyncio.timeout(ctx.deadline.remaining_s):
                result = await gen.generate(sized)
        except TimeoutError:
            return None
        ctx.budget.charge(result.usage)
        spent.prompt += result.usage.prompt
        spent.generated += result.usage.completion
        spent.model = spent.model or result.model
        return result.choices[0]

    async def _score(
        self,
        ctx: StrategyContext,
        verifier: Verifier,
        question: str,
        version: _Version,
        spent: _Spent,
    ) -> _Version:
        text = version.choice.text
        raw = extract_answer(text, self.params.answer)
        candidate = Candidate(0, text, None if raw is None else normalize_answer(raw))
        try:
            async with asyncio.timeout(ctx.deadline.remaining_s):
                (score,) = await traced_score(ctx.tracer, verifier, question, [candidate])
        except TimeoutError:
            return version
        spent.verifier_calls += 1
        spent.verifier = spent.verifier + score.usage
        ctx.budget.charge(Usage(prompt=score.usage.prompt, hidden=score.usage.completion))
        return _Version(version.choice, min(1.0, max(0.0, score.value)), score.detail)

    # -- the answer ---------------------------------------------------------------------------

    def _result(
        self,
        versions: list[_Version],
        rounds: int,
        stop: Stop,
        critiques: list[str],
        spent: _Spent,
        backend_calls: int,
        verifier_name: str,
    ) -> StrategyResult:
        scored = [i for i, v in enumerate(versions) if v.score is not None]
        # Highest score, earliest on ties; with no score at all (deadline) the draft.
        chosen = max(scored, key=lambda i: (versions[i].score, -i)) if scored else 0
        pick = versions[chosen].choice
        usage = Usage(
            prompt=spent.prompt + spent.verifier.prompt,
            visible=pick.answer_tokens,
            hidden=max(0, spent.generated - pick.answer_tokens) + spent.verifier.completion,
        )
        info: dict[str, Any] = {
            "rounds": rounds,
            "max_rounds": self.params.rounds,
            "versions": len(versions),
            "scores": [None if v.score is None else round(v.score, 4) for v in versions],
            "score_details": [v.detail for v in versions],
            "chosen_version": chosen,
            "stop": stop,
            "verifier": verifier_name,
            "critique_chars": [len(c) for c in critiques],
            "backend_calls": backend_calls,
            "verifier_calls": spent.verifier_calls,
        }
        return StrategyResult(
            choices=(Choice(pick.text, pick.finish_reason, pick.reasoning, pick.raw_logprobs),),
            usage=usage,
            stop_reason=_STOP_REASONS[stop],
            info=info,
            model=spent.model,
        )


def _fmt(score: float | None) -> str:
    return "(unscored)" if score is None else f"{score:.2f}"
