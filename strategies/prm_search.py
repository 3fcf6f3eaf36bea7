"""prm-search: step-level beam search over partial solutions, guided by a step scorer (a PRM).

A beam is a partial assistant message made of steps. One iteration expands every frontier beam
with ONE backend call ``n = branch_factor, continue_final_message = True, stop = [delimiter]``
that continues the beam's partial message, so every branch reuses the beam's cached prefix
(beams with the same text share one call with ``n = branch_factor × beams``: this only happens
at the DVTS root, where every subtree starts from the empty message). A step ends where the
delimiter text appears (default a blank line; matched on text because ``"\\n\\n"`` is not one
token mid-text). A child is *finished* when its call ended for any reason other than the
delimiter (end of sequence: ``stop_reason`` None, a client stop string, the client's
``max_tokens`` reached by the beam) or its new step states a final answer (``final_pattern``);
finished beams leave the frontier and compete at the end. A step cut at ``max_tokens`` still
counts as a step; an empty step is dropped. The root is continued from an EMPTY assistant
message, which vLLM 0.32 renders exactly like the generation prompt (checked with /tokenize).

Scoring: all new steps of one iteration are scored in ONE verifier call through
``StepBatchScorer.score_last_steps`` (see ``step_scorer``). A beam's score aggregates its step
scores (``last | min | prod | mean``). Selection ranks the children by that score and keeps the
best ``width`` of them; a child whose normalised text (case-folded, whitespace collapsed) equals
that of a child already kept — or, with ``similarity < 1``, whose ``difflib`` ratio to one
reaches ``similarity`` — is dropped as a near-duplicate (the guard against beam collapse).
Beam mode keeps one pool of ``beam_width`` (finished beams use up slots); DVTS runs
``beam_width`` independent subtrees of width 1 that never compete before the end.

Budget and deadline: an iteration runs only for as many beams as the budget can fund at
``branch_factor × max_tokens`` each (the best ones); past the deadline in-flight calls are
cancelled. The answer is the best finished beam, else the best partial beam completed greedily
(temperature 0) when budget and time remain, else the best partial beam as it is. The answer's
tokens are visible; every other generated token (pruned branches, a judge's outputs) is hidden;
prompt = every prompt sent, the PRM's inputs included. Token logprobs are not returned (the
answer is stitched from several calls).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strategies.answers import ExtractSpec, extract_answer, normalize_answer
from strategies.base import (
    Choice,
    CountingGenerator,
    StopReason,
    StrategyContext,
    StrategyRequest,
    StrategyResult,
    with_instruction,
)
from strategies.best_of_n import DeadlineExceeded, question_of
from strategies.ports import (
    Candidate,
    GenChoice,
    Generator,
    GenRequest,
    Message,
    Score,
    Verifier,
)
from strategies.tracing import VERIFY_SPAN, note_scores
from strategies.usage import Usage
from strategies.verifiers.registry import VerifierConfigError, VerifierContext, build_verifier

Aggregation = Literal["last", "min", "prod", "mean"]
StepScorerName = Literal["arithmetic", "logprob-judge", "prm"]
T = TypeVar("T")

STEP_PROMPT = (
    "Solve the problem step by step. Write each step as one short paragraph and separate the "
    'steps with a blank line. In the last step write "Answer:" followed by the final answer.'
)
FINAL_PATTERN = r"(?i)\b(?:final\s+)?answer\s*(?:is\b|:)|\\boxed\{"
NEXT_STEP_TEMPLATE = (
    "Here is a question and a partial solution.\n\n"
    "Question: {question}\n\n"
    "Solution so far:\n{response}\n\n"
    "Next step: {answer}\n\n"
    "Is the next step correct? Reply with only Yes or No."
)


class PrmSearchParams(BaseModel):
    """A route's prm-search knobs. ``aggregation`` defaults to ``min`` (a beam is as good as its
    weakest step): with the arithmetic checker one wrong equation then sinks the beam for good,
    where ``last`` would forgive it at the next step. ``prm`` as ``scorer`` needs the gateway to
    inject its PRM client (``prm_backend`` names the PRM pool)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_width: int = Field(4, ge=1, le=16, description="Beams kept per step (DVTS: subtrees).")
    branch_factor: int = Field(4, ge=1, le=16, description="n of each beam's expansion call.")
    max_steps: int = Field(8, ge=1, le=64, description="Expansion iterations at most.")
    delimiter: str = Field("\n\n", min_length=1, description="Step boundary, matched on text.")
    aggregation: Aggregation = Field("min", description="How step scores make a beam's score.")
    dedupe: bool = Field(True, description="Drop near-duplicate beams at selection.")
    similarity: float = Field(
        1.0, gt=0, le=1, description="difflib ratio counting as duplicate; 1 = equal text only."
    )
    dvts: bool = Field(False, description="beam_width independent subtrees of one beam each.")
    scorer: StepScorerName = "arithmetic"
    prm_backend: str | None = Field(None, description="PRM pool name; required iff scorer=prm.")
    temperature: float = Field(0.8, ge=0, description="Step sampling; a client's value wins.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(128, ge=1, description="Cap of one step.")
    completion_max_tokens: int = Field(256, ge=1, description="Greedy completion of a partial.")
    step_prompt: str = Field(STEP_PROMPT, description="System instruction; '' for none.")
    final_pattern: str | None = Field(
        FINAL_PATTERN, description="Regex; a step matching it ends its beam. None: EOS only."
    )
    answer: ExtractSpec = ExtractSpec()

    @field_validator("final_pattern")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _prm_backend_iff_prm(self) -> PrmSearchParams:
        if self.scorer == "prm" and not self.prm_backend:
            raise ValueError("prm_backend (the PRM pool) is required when scorer is 'prm'")
        if self.scorer != "prm" and self.prm_backend is not None:
            raise ValueError("prm_backend applies only to scorer 'prm'")
        return self


# --- step scorers --------------------------------------------------------------------------


@runtime_checkable
class StepBatchScorer(Protocol):
    """Judges the LAST step of each partial solution, given the steps before it, in one call.

    One ``Score`` per solution, in order; values in [0, 1]; summing the scores' usages counts
    the call's backend tokens once. ``gateway.backends.prm.PrmVerifier`` has this natively (one
    ``/pooling`` request with a list of inputs); ``step_scorer`` adapts the other verifiers.
    """

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]: ...


@dataclass(frozen=True)
class IndependentSteps:
    """For scorers that judge each step on its own (the arithmetic checker: a step's own
    equations): ONE ``score_steps`` call over all the new steps."""

    verifier: Verifier

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]:
        return await self.verifier.score_steps(question, [s[-1] for s in solutions])


@dataclass(frozen=True)
class NextStepAsCandidate:
    """For the logprob judge built with ``NEXT_STEP_TEMPLATE``: ONE ``score`` call whose
    candidates are (steps so far, next step); the judge runs its backend calls concurrently
    and asks identical prompts once."""

    verifier: Verifier
    delimiter: str = "\n\n"

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]:
        candidates = [
            Candidate(i, self.delimiter.join(s[:-1]) or "(none)", s[-1])
            for i, s in enumerate(solutions)
        ]
        return await self.verifier.score(question, candidates)


@dataclass(frozen=True)
class PerSolution:
    """Any other ``Verifier``: one ``score_steps`` per solution, run concurrently, last score
    kept; the usage of all of a solution's step scores rides on the kept one."""

    verifier: Verifier

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]:
        per = await gather_all([self.verifier.score_steps(question, s) for s in solutions])
        out = []
        for scores in per:
            spent = sum((s.usage for s in scores), Usage())
            out.append(Score(scores[-1].value, scores[-1].detail, spent))
        return out


# name → (params for build_verifier, adapter); "prm" is injected by the gateway.
_BUILT_IN: Mapping[str, tuple[dict[str, Any], Callable[[Verifier, str], StepBatchScorer]]] = {
    "arithmetic": ({}, lambda v, d: IndependentSteps(v)),
    "logprob-judge": (
        {"prompt_template": NEXT_STEP_TEMPLATE},
        lambda v, d: NextStepAsCandidate(v, d),
    ),
}


def step_scorer(
    params: PrmSearchParams, generator: Generator, injected: Verifier | None
) -> tuple[str, StepBatchScorer]:
    """The scorer of a run and its name: the injected verifier when given (used as is when it
    is a ``StepBatchScorer``, else through ``PerSolution``), else the built-in ``scorer``."""
    if injected is not None:
        if isinstance(injected, StepBatchScorer):
            return injected.name, injected
        return injected.name, PerSolution(injected)
    if params.scorer not in _BUILT_IN:
        raise VerifierConfigError(
            f"step scorer {params.scorer!r} is served by the gateway (a PRM pool) and was not "
            "provided to this strategy"
        )
    build_params, adapt = _BUILT_IN[params.scorer]
    verifier = build_verifier(params.scorer, VerifierContext(generator=generator), build_params)
    return verifier.name, adapt(verifier, params.delimiter)


# --- pure policy ---------------------------------------------------------------------------


def aggregate(scores: Sequence[float], how: Aggregation) -> float:
    """A beam's score from its step scores (each in [0, 1]); 0.0 for no steps."""
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    return sum(scores) / len(scores)


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def near_duplicate(a: str, b: str, similarity: float) -> bool:
    """Whether two normalised texts count as the same beam (see the module docstring)."""
    if a == b:
        return True
    if similarity >= 1.0:
        return False
    m = SequenceMatcher(None, a, b, autojunk=False)
    return m.real_quick_ratio() >= similarity and m.ratio() >= similarity


@dataclass(frozen=True, slots=True)
class Beam:
    """A partial (or finished) solution: its steps as generated, without delimiters."""

    steps: tuple[str, ...] = ()
    step_scores: tuple[float, ...] = ()
    tokens: int = 0  # generated tokens of its steps
    group: int = 0  # DVTS subtree
    finished: bool = False
    finish_reason: str | None = None
    score: float = 0.0

    def prefix(self, delimiter: str) -> str:
        """The partial assistant message to continue: every step followed by the delimiter."""
        return "".join(s + delimiter for s in self.steps)

    def text(self, delimiter: str) -> str:
        return delimiter.join(self.steps)


@dataclass(frozen=True, slots=True)
class Selection:
    kept: list[Beam]
    pruned: int
    duplicates: int


def select(candidates: Sequence[Beam], width: int, params: PrmSearchParams) -> Selection:
    """The best ``width`` candidates by score (ties: earlier first), near-duplicates dropped."""
    kept: list[Beam] = []
    keys: list[str] = []
    pruned = duplicates = 0
    for beam in sorted(candidates, key=lambda b: -b.score):
        if len(kept) >= width:
            pruned += 1
            continue
        key = normalise(beam.text(params.delimiter))
        if params.dedupe and any(near_duplicate(key, k, params.similarity) for k in keys):
            duplicates += 1
            continue
        kept.append(beam)
        keys.append(key)
    return Selection(kept, pruned, duplicates)


async def gather_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Await all concurrently. The first failure cancels the others and is re-raised as is; if
    the caller is cancelled (a deadline), every in-flight call is cancelled and awaited first —
    cancelling a ``Generator`` call closes its connection, which makes vLLM abort it."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        exc = None if t.cancelled() else t.exception()
        if exc is not None:
            raise exc
    return [t.result() for t in tasks]


@dataclass
class _Run:
    """Mutable state of one search."""

    prompt: int = 0
    generated: int = 0
    verifier_usage: Usage = Usage()
    verifier_calls: int = 0
    prm_seconds: float = 0.0
    model: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)
    finished: list[Beam] = field(default_factory=list)


# --- the strategy --------------------------------------------------------------------------


@dataclass(frozen=True)
class PrmSearch:
    """The strategy object built from a route's params (see the module docstring).

    ``step_verifier`` is the gateway's PRM client when ``scorer`` is ``prm``; without it the
    named built-in scorer is built on the request's generator.
    """

    params: PrmSearchParams
    step_verifier: Verifier | None = None
    name: str = "prm-search"

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        p = self.params
        gen = CountingGenerator(ctx.generator)
        scorer_name, scorer = step_scorer(p, gen, self.step_verifier)
        question = question_of(request.messages)
        st = _Run()
        groups = [[Beam(group=g)] for g in range(p.beam_width if p.dvts else 1)]
        widths = [1 if p.dvts else p.beam_width] * len(groups)
        reason: StopReason = "max_steps"
        steps_run = 0
        for _ in range(p.max_steps):
            beams = [b for g in groups for b in g]
            frontier = self._fund(beams, ctx)
            if not beams:
                reason = "completed"
                break
            if ctx.deadline.expired or not frontier:
                if steps_run == 0 and ctx.deadline.expired:
                    raise DeadlineExceeded
                reason = "deadline" if ctx.deadline.expired else "budget"
                break
            try:
                children = await self._expand(request, ctx, gen, frontier, st)
            except TimeoutError:
                if steps_run == 0:
                    raise DeadlineExceeded from None
                reason = "deadline"
                break
            steps_run += 1
            try:
                children = await self._score(question, ctx, scorer, children, st)
            except TimeoutError:
                # Unscored children keep their parent's score: still the best we have.
                groups = self._select(groups, widths, frontier, children, st, len(beams), ctx)
                reason = "deadline"
                break
            groups = self._select(groups, widths, frontier, children, st, len(beams), ctx)
        else:
            if not any(groups):
                reason = "completed"
        return await self._answer(request, ctx, gen, groups, st, reason, steps_run, scorer_name)

    # -- one iteration ----------------------------------------------------------------------

    def _fund(self, beams: list[Beam], ctx: StrategyContext) -> list[Beam]:
        """The frontier beams the budget can expand, best first when it cannot fund all."""
        budget, bf = ctx.budget, self.params.branch_factor
        fits = [
            x
            for x in (
                None
                if budget.remaining is None
                else budget.remaining // (bf * self.params.max_tokens),
                budget.calls_left,  # one call per beam at most (beams sharing a prefix share it)
                None if budget.candidates_left is None else budget.candidates_left // bf,
            )
            if x is not None
        ]
        if not fits:
            return beams
        fit = min(fits)
        return beams if fit >= len(beams) else sorted(beams, key=lambda b: -b.score)[:fit]

    def _messages(self, request: StrategyRequest, prefix: str) -> list[Message]:
        msgs = with_instruction(request.messages, self.params.step_prompt)
        msgs.append({"role": "assistant", "content": prefix})
        return msgs

    def _call(
        self,
        request: StrategyRequest,
        prefix: str,
        n: int,
        max_tokens: int | None,
        greedy: bool = False,
    ) -> GenRequest:
        sampling = dict(request.sampling)
        temperature = sampling.pop("temperature", None)
        top_p = sampling.pop("top_p", None)
        client_stop = sampling.pop("stop", None)
        stops = [client_stop] if isinstance(client_stop, str) else list(client_stop or [])
        return GenRequest(
            messages=self._messages(request, prefix),
            n=n,
            max_tokens=max_tokens,
            temperature=0.0
            if greedy
            else (self.params.temperature if temperature is None else temperature),
            top_p=self.params.top_p if top_p is None else top_p,
            stop=stops if greedy else [self.params.delimiter, *stops],
            continue_final_message=True,
            extra=sampling,
        )

    async def _expand(
        self,
        request: StrategyRequest,
        ctx: StrategyContext,
        gen: CountingGenerator,
        frontier: list[Beam],
        st: _Run,
    ) -> list[Beam]:
        """ONE call per distinct beam text; children carry no new score yet."""
        p = self.params
        by_prefix: dict[str, list[Beam]] = {}
        for beam in frontier:
            by_prefix.setdefault(beam.prefix(p.delimiter), []).append(beam)
        cap = ctx.budget.cap(p.max_tokens)
        calls = [
            gen.generate(self._call(request, prefix, p.branch_factor * len(beams), cap))
            for prefix, beams in by_prefix.items()
        ]
        async with asyncio.timeout(ctx.deadline.remaining_s):
            results = await gather_all(calls)
        children: list[Beam] = []
        for (_prefix, beams), result in zip(by_prefix.items(), results, strict=True):
            ctx.budget.charge(result.usage)
            st.prompt += result.usage.prompt
            st.generated += result.usage.completion
            st.model = st.model or result.model
            for i, choice in enumerate(result.choices):
                parent = beams[min(i // p.branch_factor, len(beams) - 1)]
                child = self._child(request, parent, choice)
                if child is not None:
                    children.append(child)
        return children

    def _child(self, request: StrategyRequest, parent: Beam, choice: GenChoice) -> Beam | None:
        p = self.params
        text = choice.text
        at_delimiter = choice.finish_reason == "stop" and choice.stop_reason == p.delimiter
        step_done = at_delimiter or choice.finish_reason == "length"  # a cut step still counts
        final = bool(p.final_pattern and re.search(p.final_pattern, text))
        total = parent.tokens + choice.tokens
        too_long = request.max_tokens is not None and total >= request.max_tokens
        finished = not step_done or final or too_long
        if not text.strip():
            # No progress: an empty step that ends nothing is dropped; an empty ending finishes
            # the parent as it is (if it has steps).
            if not finished or not parent.steps:
                return None
            return replace(parent, tokens=total, finished=True, finish_reason="stop")
        reason = "stop" if final else choice.finish_reason if not step_done else "length"
        return Beam(
            steps=(*parent.steps, text),
            step_scores=parent.step_scores,
            tokens=total,
            group=parent.group,
            finished=finished,
            finish_reason=reason if finished else None,
            score=parent.score,
        )

    async def _score(
        self,
        question: str,
        ctx: StrategyContext,
        scorer: StepBatchScorer,
        children: list[Beam],
        st: _Run,
    ) -> list[Beam]:
        """ONE scorer call for the distinct new solutions (identical branches are scored once);
        aggregates each child's score."""
        p = self.params
        new = [c for c in children if len(c.steps) > len(c.step_scores)]
        distinct = list(dict.fromkeys(tuple(s.strip() for s in c.steps) for c in new))
        values: dict[tuple[str, ...], float] = {}
        if distinct:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(ctx.deadline.remaining_s):
                    with ctx.tracer.span(VERIFY_SPAN) as span:
                        scores = await scorer.score_last_steps(question, distinct)
                        if ctx.tracer.enabled:
                            span.set_attribute("deliberate.verifier.candidates", len(distinct))
                            note_scores(span, scores)
            finally:
                st.prm_seconds += time.perf_counter() - started
            st.verifier_calls += 1
            spent = sum((s.usage for s in scores), Usage())
            st.verifier_usage = st.verifier_usage + spent
            ctx.budget.charge(Usage(prompt=spent.prompt, hidden=spent.completion))
            values = {k: min(1.0, max(0.0, s.value)) for k, s in zip(distinct, scores, strict=True)}
        out = []
        for c in children:
            step_scores = c.step_scores
            if len(c.steps) > len(step_scores):
                step_scores = (*step_scores, values[tuple(s.strip() for s in c.steps)])
            out.append(
                replace(c, step_scores=step_scores, score=aggregate(step_scores, p.aggregation))
            )
        return out

    def _select(
        self,
        groups: list[list[Beam]],
        widths: list[int],
        frontier: list[Beam],
        children: list[Beam],
        st: _Run,
        frontier_size: int,
        ctx: StrategyContext,
    ) -> list[list[Beam]]:
        """Keep the best children per group; kept finished beams leave the frontier."""
        record: dict[str, Any] = {
            "step": len(st.log) + 1,
            "expanded": len(frontier),
            "unfunded": frontier_size - len(frontier),
            "candidates": len(children),
            "kept": 0,
            "pruned": 0,
            "duplicates": 0,
            "finished": 0,
            "scores": [],
        }
        expanded = {b.group for b in frontier}
        new_groups: list[list[Beam]] = []
        for g, beams in enumerate(groups):
            if g not in expanded:  # not funded this time: unchanged, no new children
                new_groups.append(beams if widths[g] > 0 else [])
                continue
            sel = select([c for c in children if c.group == g], widths[g], self.params)
            done = [b for b in sel.kept if b.finished]
            st.finished.extend(done)
            widths[g] -= len(done)
            new_groups.append([b for b in sel.kept if not b.finished])
            record["kept"] += len(sel.kept)
            record["pruned"] += sel.pruned
            record["duplicates"] += sel.duplicates
            record["finished"] += len(done)
            record["scores"] += [round(b.score, 4) for b in sel.kept]
        st.log.append(record)
        best = max(record["scores"], default=0.0)
        ctx.note(
            f"step {record['step']}: {record['candidates']} candidate steps from "
            f"{record['expanded']} beams; kept {record['kept']} (best {best:.2f}), pruned "
            f"{record['pruned']}, {record['duplicates']} duplicates, {record['finished']} "
            "finished\n"
        )
        return new_groups

    # -- the answer -------------------------------------------------------------------------

    async def _answer(
        self,
        request: StrategyRequest,
        ctx: StrategyContext,
        gen: CountingGenerator,
        groups: list[list[Beam]],
        st: _Run,
        reason: StopReason,
        steps_run: int,
        scorer_name: str,
    ) -> StrategyResult:
        p = self.params
        completed = False
        finish: str | None
        visible: int
        if st.finished:
            best = max(st.finished, key=lambda b: b.score)  # ties: the one that finished first
            text, finish, visible = best.text(p.delimiter), best.finish_reason, best.tokens
        else:
            partial = [b for g in groups for b in g] or [Beam()]
            best = max(partial, key=lambda b: b.score)
            text, finish, visible = best.text(p.delimiter), "length", best.tokens
            wanted = p.completion_max_tokens
            if request.max_tokens is not None:
                wanted = max(0, request.max_tokens - best.tokens)
            cap = ctx.budget.cap(wanted)
            if cap and not ctx.deadline.expired:
                done = await self._complete(request, ctx, gen, best, cap, st)
                if done is not None:
                    completed = True
                    text, finish, visible = done[0], done[1], best.tokens + done[2]
        usage = Usage(
            prompt=st.prompt + st.verifier_usage.prompt,
            visible=visible,
            hidden=max(0, st.generated - visible) + st.verifier_usage.completion,
        )
        raw = extract_answer(text, p.answer)
        info: dict[str, Any] = {
            "mode": "dvts" if p.dvts else "beam",
            "scorer": scorer_name,
            "aggregation": p.aggregation,
            "steps": steps_run,
            "per_step": st.log,
            "finished": [
                {"score": round(b.score, 4), "steps": len(b.steps), "group": b.group}
                for b in st.finished
            ],
            "chosen": {
                "score": round(best.score, 4),
                "step_scores": [round(s, 4) for s in best.step_scores],
                "steps": len(best.steps),
                "finished": best.finished,
                "completed_greedily": completed,
            },
            "answer": None if raw is None else normalize_answer(raw),
            "backend_calls": gen.calls,
            "verifier_calls": st.verifier_calls,
            "prm_seconds": round(st.prm_seconds, 4),
        }
        return StrategyResult(
            choices=(Choice(text, finish),),
            usage=usage,
            stop_reason=reason,
            info=info,
            model=st.model,
        )

    async def _complete(
        self,
        request: StrategyRequest,
        ctx: StrategyContext,
        gen: CountingGenerator,
        beam: Beam,
        cap: int | None,
        st: _Run,
    ) -> tuple[str, str | None, int] | None:
        """Finish a partial beam greedily: (full text, finish reason, new tokens), or None when
        the deadline passes first."""
        prefix = beam.prefix(self.params.delimiter)
        try:
            async with asyncio.timeout(ctx.deadline.remaining_s):
                result = await gen.generate(self._call(request, prefix, 1, cap, greedy=True))
        except TimeoutError:
            return None
        ctx.budget.charge(result.usage)
        st.prompt += result.usage.prompt
        st.generated += result.usage.completion
        st.model = st.model or result.model
        c = result.choices[0]
        return prefix + c.text, c.finish_reason, c.tokens
