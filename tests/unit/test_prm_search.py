"""prm-search with scripted fakes: pruning, beam width, aggregation, duplicates, DVTS, budget,
deadline and cancellation, usage."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from strategies.base import Deadline, StrategyContext, StrategyRequest, TokenBudget
from strategies.best_of_n import DeadlineExceeded
from strategies.ports import (
    Candidate,
    GenChoice,
    GenRequest,
    GenResult,
    Score,
    TokenLogprob,
    TopLogprob,
)
from strategies.prm_search import (
    IndependentSteps,
    NextStepAsCandidate,
    PrmSearch,
    PrmSearchParams,
    StepBatchScorer,
    aggregate,
    gather_all,
    near_duplicate,
    step_scorer,
)
from strategies.usage import Usage
from strategies.verifiers.registry import VerifierConfigError

pytestmark = pytest.mark.anyio

Q = StrategyRequest(messages=[{"role": "user", "content": "What is 2 + 3?"}])
EOS = "EOS:"  # a scripted step starting with this ends with end-of-sequence


@dataclass
class StepScript:
    """A ``Generator`` continuing partial assistant messages from a script.

    ``steps`` maps the partial message (the prefix) to the steps to sample; choice i takes
    option i (cycling). An option starting with ``EOS:`` ends at end-of-sequence (stop_reason
    None), any other at the delimiter. A greedy completion (temperature 0) answers
    ``completion``. ``hang`` selects calls that never answer (until cancelled).
    """

    steps: Mapping[str, Sequence[str]]
    tokens: int = 10
    prompt_tokens: int = 20
    completion: str = " so the answer is 5."
    hang_prefixes: tuple[str, ...] = ()
    requests: list[GenRequest] = field(default_factory=list)
    cancelled: int = 0

    async def generate(self, request: GenRequest) -> GenResult:
        self.requests.append(request)
        prefix = str(request.messages[-1]["content"])
        if prefix in self.hang_prefixes:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if request.temperature == 0.0:
            options: Sequence[str] = [EOS + self.completion]
        else:
            options = self.steps[prefix]
        choices = []
        for i in range(request.n):
            option = options[i % len(options)]
            eos = option.startswith(EOS)
            tokens = min(self.tokens, request.max_tokens or self.tokens)
            choices.append(
                GenChoice(
                    index=i,
                    text=option.removeprefix(EOS),
                    tokens=tokens,
                    finish_reason="stop",
                    stop_reason=None if eos else "\n\n",
                )
            )
        generated = sum(c.tokens for c in choices)
        return GenResult(tuple(choices), Usage(self.prompt_tokens, generated), "fake-model")


@dataclass
class TableScorer:
    """A batched step scorer: a step's score from a table (default 0.5); 3 prompt tokens and 1
    hidden token per call, on the first score."""

    table: Mapping[str, float]
    calls: list[list[list[str]]] = field(default_factory=list)
    name: str = "table"

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]:
        self.calls.append([list(s) for s in solutions])
        return [
            Score(self.table.get(s[-1], 0.5), "", Usage(3, 0, 1) if i == 0 else Usage())
            for i, s in enumerate(solutions)
        ]

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        raise AssertionError("search scores steps")

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        raise AssertionError("a batch scorer is called through score_last_steps")


def params(**kw: object) -> PrmSearchParams:
    return PrmSearchParams.model_validate({"step_prompt": "", **kw})


async def test_keeps_the_high_scored_branch_and_prunes_the_low_one() -> None:
    gen = StepScript(
        {
            "": ["good start", "bad start"],
            "good start\n\n": ["Answer: 5"],
            "bad start\n\n": ["Answer: 6"],
        }
    )
    scorer = TableScorer({"good start": 0.9, "bad start": 0.1, "Answer: 5": 0.8})
    res = await PrmSearch(params(beam_width=1, branch_factor=2), scorer).run(
        Q, StrategyContext(gen)
    )
    assert res.choices[0].text == "good start\n\nAnswer: 5"
    assert res.stop_reason == "completed"
    # Each expansion: ONE request, n = branch_factor, continuing the partial message.
    assert [r.n for r in gen.requests] == [2, 2]
    assert all(r.continue_final_message and r.stop == ["\n\n"] for r in gen.requests)
    assert gen.requests[1].messages[-1] == {"role": "assistant", "content": "good start\n\n"}
    assert res.info["per_step"][0]["kept"] == 1 and res.info["per_step"][0]["pruned"] == 1
    assert res.info["chosen"]["step_scores"] == [0.9, 0.8]
    assert res.info["answer"] == "5"
    # one scorer call per iteration, with every new step of it
    assert scorer.calls == [[["good start"], ["bad start"]], [["good start", "Answer: 5"]]]
    assert res.info["verifier_calls"] == 2 and res.info["backend_calls"] == 2


async def test_honours_beam_width() -> None:
    steps = {"": ["s1", "s2", "s3", "s4"]}
    for s in ("s1", "s2", "s3", "s4"):
        steps[f"{s}\n\n"] = [f"{s}a", f"{s}b", f"{s}c", f"{s}d"]
        for x in "abcd":
            steps[f"{s}\n\n{s}{x}\n\n"] = [EOS + f"end {s}{x}"]
    gen = StepScript(steps)
    scorer = TableScorer({"s1": 0.9, "s2": 0.8, "s3": 0.2, "s4": 0.1, "s2a": 0.95})
    p = params(beam_width=2, branch_factor=4, max_steps=2, aggregation="last")
    res = await PrmSearch(p, scorer).run(Q, StrategyContext(gen))
    step1, step2 = res.info["per_step"]
    assert (step1["candidates"], step1["kept"], step1["pruned"]) == (4, 2, 2)
    assert [r.messages[-1]["content"] for r in gen.requests[1:3]] == ["s1\n\n", "s2\n\n"]
    assert (step2["expanded"], step2["candidates"], step2["kept"]) == (2, 8, 2)
    assert all(r.n == 4 for r in gen.requests[:3])
    # max_steps reached without a finished beam: the best partial, completed greedily
    assert res.stop_reason == "max_steps"
    assert res.info["chosen"]["completed_greedily"] is True
    assert res.choices[0].text == "s2\n\ns2a\n\n so the answer is 5."
    assert gen.requests[-1].temperature == 0.0 and gen.requests[-1].stop == []


def test_aggregations_are_last_min_prod_mean() -> None:
    a = [0.9, 0.3, 0.95]
    assert aggregate(a, "last") == 0.95
    assert aggregate(a, "min") == 0.3
    assert aggregate(a, "prod") == pytest.approx(0.9 * 0.3 * 0.95)
    assert aggregate(a, "mean") == pytest.approx((0.9 + 0.3 + 0.95) / 3)
    assert aggregate([], "min") == 0.0


@pytest.mark.parametrize(
    ("how", "winner"), [("last", "A"), ("min", "B"), ("prod", "B"), ("mean", "A")]
)
async def test_aggregation_decides_between_finished_beams(how: str, winner: str) -> None:
    # A = [0.9, 0.3, 0.95] (one weak step), B = [0.65, 0.65, 0.65] (steady).
    gen = StepScript(
        {
            "": ["A1", "B1"],
            "A1\n\n": ["A2"],
            "B1\n\n": ["B2"],
            "A1\n\nA2\n\n": [EOS + "A3"],
            "B1\n\nB2\n\n": [EOS + "B3"],
        }
    )
    table = {"A1": 0.9, "A2": 0.3, "A3": 0.95, "B1": 0.65, "B2": 0.65, "B3": 0.65}
    p = params(beam_width=2, branch_factor=1, dvts=True, aggregation=how)
    res = await PrmSearch(p, TableScorer(table)).run(Q, StrategyContext(gen))
    assert res.choices[0].text.startswith(winner)
    assert len(res.info["finished"]) == 2 and res.stop_reason == "completed"


async def test_near_duplicates_are_dropped() -> None:
    gen = StepScript(
        {
            "": ["Add 2 and 3.", "add  2 AND 3.", "Count up from 2."],
            "Add 2 and 3.\n\n": [EOS + "Answer: 5"],
            "Count up from 2.\n\n": [EOS + "Answer: 5"],
        }
    )
    res = await PrmSearch(params(beam_width=3, branch_factor=3), TableScorer({})).run(
        Q, StrategyContext(gen)
    )
    first = res.info["per_step"][0]
    assert (first["kept"], first["duplicates"]) == (2, 1)
    assert [r.messages[-1]["content"] for r in gen.requests[1:]] == [
        "Add 2 and 3.\n\n",
        "Count up from 2.\n\n",
    ]
    # without the guard the duplicate survives
    gen2 = StepScript({**gen.steps, "add  2 AND 3.\n\n": [EOS + "Answer: 5"]})
    res2 = await PrmSearch(
        params(beam_width=3, branch_factor=3, dedupe=False), TableScorer({})
    ).run(Q, StrategyContext(gen2))
    assert res2.info["per_step"][0]["kept"] == 3


def test_similarity_threshold() -> None:
    assert near_duplicate("the sum is 5", "the sum is 5", 1.0)
    assert not near_duplicate("the sum is 5", "the sum is 5.", 1.0)
    assert near_duplicate("the sum is 5", "the sum is 5.", 0.9)
    assert not near_duplicate("the sum is 5", "multiply first", 0.9)


async def test_dvts_keeps_subtrees_apart() -> None:
    gen = StepScript(
        {
            "": ["hi1", "hi2", "lo1", "lo2"],  # choices 0-1 → subtree 0, 2-3 → subtree 1
            "hi1\n\n": ["hi1x", "hi1y"],
            "lo1\n\n": ["lo1x", "lo1y"],
        }
    )
    table = {"hi1": 0.9, "hi2": 0.8, "lo1": 0.2, "lo2": 0.1}
    table |= {"hi1x": 0.9, "hi1y": 0.1, "lo1x": 0.3, "lo1y": 0.1}
    p = params(beam_width=2, branch_factor=2, dvts=True, max_steps=2, aggregation="last")
    res = await PrmSearch(p, TableScorer(table)).run(Q, StrategyContext(gen))
    # the shared empty root is ONE call for both subtrees (n = 2 × branch_factor)
    assert gen.requests[0].n == 4
    # beam search would keep hi1 and hi2; DVTS keeps the best of EACH subtree
    assert sorted(r.messages[-1]["content"] for r in gen.requests[1:3]) == [
        "hi1\n\n",
        "lo1\n\n",
    ]
    assert all(r.n == 2 for r in gen.requests[1:3])
    assert res.info["mode"] == "dvts" and res.info["per_step"][1]["kept"] == 2
    assert res.info["per_step"][1]["scores"] == [0.9, 0.3]
    beam = await PrmSearch(p.model_copy(update={"dvts": False}), TableScorer(table)).run(
        Q, StrategyContext(StepScript({**gen.steps, "hi2\n\n": ["hi2x"]}))
    )
    assert beam.info["per_step"][0]["scores"] == [0.9, 0.8]


async def test_finished_beams_leave_the_frontier() -> None:
    gen = StepScript(
        {
            "": [EOS + "5", "think"],  # the first child ends at end-of-sequence
            "think\n\n": [EOS + "Answer: 5"],
        }
    )
    res = await PrmSearch(params(beam_width=2, branch_factor=2), TableScorer({"5": 0.2})).run(
        Q, StrategyContext(gen)
    )
    assert [r.messages[-1]["content"] for r in gen.requests] == ["", "think\n\n"]
    assert gen.requests[1].n == 2  # only the unfinished beam is expanded
    assert len(res.info["finished"]) == 2
    assert res.choices[0].text == "think\n\nAnswer: 5"  # 0.5 beats the finished 0.2


async def test_final_answer_pattern_ends_a_beam() -> None:
    gen = StepScript({"": ["So the answer is 5."]})
    res = await PrmSearch(params(beam_width=1, branch_factor=1), TableScorer({})).run(
        Q, StrategyContext(gen)
    )
    assert len(gen.requests) == 1 and res.stop_reason == "completed"
    assert res.choices[0].finish_reason == "stop"


async def test_budget_cut_returns_best_partial_completed_greedily() -> None:
    gen = StepScript({"": ["good", "bad"]})
    budget = TokenBudget(limit=30)  # funds ONE iteration of 2 × 10-token steps
    p = params(beam_width=2, branch_factor=2, max_tokens=10)
    res = await PrmSearch(p, TableScorer({"good": 0.9, "bad": 0.1})).run(
        Q, StrategyContext(gen, budget)
    )
    assert res.stop_reason == "budget"
    assert res.info["steps"] == 1 and res.info["chosen"]["completed_greedily"] is True
    assert res.choices[0].text == "good\n\n so the answer is 5."
    assert gen.requests[-1].max_tokens == 9  # what the budget had left (30 - 20 - 1 judge)
    assert budget.remaining == 0
    # visible = the chosen beam's step + its completion; the other branch is hidden
    assert (res.usage.visible, res.usage.hidden) == (10 + 9, 10 + 1)


async def test_budget_gone_returns_partial_as_is() -> None:
    gen = StepScript({"": ["good", "bad"]})
    p = params(beam_width=2, branch_factor=2, max_tokens=10)
    res = await PrmSearch(p, TableScorer({"good": 0.9})).run(
        Q, StrategyContext(gen, TokenBudget(limit=20))
    )
    assert res.stop_reason == "budget" and res.choices[0].text == "good"
    assert res.choices[0].finish_reason == "length"
    assert len(gen.requests) == 1


async def test_deadline_cancels_every_in_flight_call_and_returns_best_so_far() -> None:
    gen = StepScript(
        {"": ["a", "b", "c"], "a\n\n": ["x"], "b\n\n": ["x"], "c\n\n": ["x"]},
        hang_prefixes=("a\n\n", "b\n\n", "c\n\n"),
    )
    p = params(beam_width=3, branch_factor=3)
    table = {"a": 0.4, "b": 0.7, "c": 0.6}
    res = await PrmSearch(p, TableScorer(table)).run(
        Q, StrategyContext(gen, deadline=Deadline.after(0.3))
    )
    assert gen.cancelled == 3  # all three expansions of step 2 were in flight
    assert res.stop_reason == "deadline"
    assert res.choices[0].text == "b" and res.choices[0].finish_reason == "length"
    assert res.info["chosen"]["completed_greedily"] is False


async def test_deadline_before_any_step_raises() -> None:
    gen = StepScript({"": ["a"]}, hang_prefixes=("",))
    with pytest.raises(DeadlineExceeded):
        await PrmSearch(params(), TableScorer({})).run(
            Q, StrategyContext(gen, deadline=Deadline.after(0.05))
        )
    assert gen.cancelled == 1


async def test_usage_adds_up() -> None:
    gen = StepScript(
        {"": ["p", "q"], "p\n\n": [EOS + "Answer: 5", "r"], "q\n\n": [EOS + "Answer: 6", "s"]}
    )
    res = await PrmSearch(
        params(beam_width=2, branch_factor=2, max_steps=2), TableScorer({"Answer: 5": 0.9})
    ).run(Q, StrategyContext(gen))
    calls = len(gen.requests)
    scorer_calls = res.info["verifier_calls"]
    assert res.usage.prompt == 20 * calls + 3 * scorer_calls
    generated = sum(10 * r.n for r in gen.requests)
    assert res.usage.visible == 20  # two 10-token steps
    assert res.usage.visible + res.usage.hidden == generated + scorer_calls
    assert res.choices[0].text == "p\n\nAnswer: 5"


async def test_builtin_arithmetic_scorer_prunes_wrong_arithmetic() -> None:
    gen = StepScript(
        {
            "": ["2 + 3 = 6", "2 + 3 = 5"],
            "2 + 3 = 5\n\n": [EOS + "Answer: 5"],
            "2 + 3 = 6\n\n": [EOS + "Answer: 6"],
        }
    )
    res = await PrmSearch(params(beam_width=1, branch_factor=2)).run(Q, StrategyContext(gen))
    assert res.choices[0].text == "2 + 3 = 5\n\nAnswer: 5"
    assert res.info["scorer"] == "arithmetic"
    assert res.info["backend_calls"] == 2  # the checker spends no backend call


async def test_prm_scorer_must_be_injected() -> None:
    with pytest.raises(ValidationError, match="prm_backend"):
        PrmSearchParams(scorer="prm")
    with pytest.raises(ValidationError, match="only to scorer"):
        PrmSearchParams(prm_backend="prm")
    with pytest.raises(ValidationError, match="regular expression"):
        PrmSearchParams(final_pattern="(")
    p = PrmSearchParams(scorer="prm", prm_backend="prm")
    with pytest.raises(VerifierConfigError, match="PRM pool"):
        await PrmSearch(p).run(Q, StrategyContext(StepScript({})))


async def test_logprob_judge_scores_next_step_given_previous_ones() -> None:
    @dataclass
    class Judge:
        prompts: list[str] = field(default_factory=list)

        async def generate(self, request: GenRequest) -> GenResult:
            self.prompts.append(str(request.messages[-1]["content"]))
            top = (TopLogprob("Yes", -0.1), TopLogprob("No", -2.5))
            choice = GenChoice(0, "Yes", 1, "length", logprobs=(TokenLogprob("Yes", -0.1, top),))
            return GenResult((choice,), Usage(30, 1), "m")

    judge = Judge()
    name, scorer = step_scorer(PrmSearchParams(scorer="logprob-judge"), judge, None)
    assert name == "logprob-judge" and isinstance(scorer, NextStepAsCandidate)
    scores = await scorer.score_last_steps("What is 2 + 3?", [["s1", "s2"], ["t1"]])
    assert len(judge.prompts) == 2 and all(s.value > 0.9 for s in scores)
    assert "Solution so far:\ns1\n\nNext step: s2" in judge.prompts[0]
    assert "Solution so far:\n(none)\n\nNext step: t1" in judge.prompts[1]
    assert sum((s.usage for s in scores), Usage()) == Usage(prompt=60, hidden=2)


def test_scorer_resolution() -> None:
    name, scorer = step_scorer(PrmSearchParams(), StepScript({}), None)
    assert name == "arithmetic" and isinstance(scorer, IndependentSteps)
    table = TableScorer({})
    assert isinstance(table, StepBatchScorer)
    assert step_scorer(PrmSearchParams(), StepScript({}), table) == ("table", table)


async def test_gather_all_cancels_the_rest_on_failure() -> None:
    cancelled = []

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return 1

    async def boom() -> int:
        raise ValueError("backend said no")

    with pytest.raises(ValueError, match="backend said no"):
        await gather_all([slow(), boom(), slow()])
    assert len(cancelled) == 2
    assert await gather_all([]) == []
