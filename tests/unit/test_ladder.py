"""Escalation ladders with scripted fakes: where they stop, what they keep, what they spend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyParams
from strategies.base import (
    BudgetGuard,
    Deadline,
    StrategyContext,
    StrategyRequest,
    TokenBudget,
)
from strategies.best_of_n import BestOfN, BestOfNParams, SamplingParams
from strategies.ladder import Ladder, RungPlan
from strategies.ports import GenChoice, GenRequest, GenResult, TokenLogprob
from strategies.usage import Usage
from strategies.verifiers.arithmetic import ArithmeticConsistencyVerifier
from strategies.verifiers.confidence import ConfidenceVerifier
from strategies.waves import select
from tests.fakes import ScriptedGenerator

pytestmark = pytest.mark.anyio

Q = StrategyRequest(
    messages=[{"role": "user", "content": "What is 17 + 25?"}], sampling={"temperature": 0}
)
ARITH = ArithmeticConsistencyVerifier()
RIGHT, WRONG = "The answer is 42", "The answer is 41"


def rung(samples: int = 0, **kw: Any) -> RungPlan:
    return RungPlan(
        f"samples:{samples}", ARITH, 0.5, samples=samples, sampling={"temperature": 0.8}, **kw
    )


def ctx_for(
    gen: ScriptedGenerator, deadline_s: float | None = None, **caps: Any
) -> StrategyContext:
    budget = TokenBudget(**caps)
    return StrategyContext(BudgetGuard(gen, budget), budget, Deadline.after(deadline_s))


LADDER = Ladder((rung(4), rung(12)), SamplingParams(temperature=0.0, max_tokens=32))


async def test_a_first_answer_that_passes_is_the_only_call() -> None:
    gen = ScriptedGenerator([RIGHT])
    res = await LADDER.run(Q, ctx_for(gen))
    assert len(gen.requests) == 1 and gen.requests[0].n == 1
    assert gen.requests[0].temperature == 0  # the request's (route's) greedy sampling
    assert res.stop_reason == "verified" and res.choices[0].text == RIGHT
    ladder = res.info["ladder"]
    assert ladder["stopped_at"] == 0 and ladder["verified"] is True
    assert ladder["path"] == [
        {"rung": 0, "label": "first", "candidates": 1, "verifier": "arithmetic",
         "best_score": 0.875, "passed": True}
    ]  # fmt: skip
    assert res.usage == Usage(prompt=20, visible=10, hidden=0)


async def test_stops_at_the_first_rung_that_passes_and_keeps_the_pool() -> None:
    # greedy is wrong; the 4 samples hold one right answer: the 12-sample rung never runs.
    gen = ScriptedGenerator([WRONG, WRONG, RIGHT, WRONG, WRONG])
    res = await LADDER.run(Q, ctx_for(gen))
    assert [r.n for r in gen.requests] == [1, 4]
    assert gen.requests[1].temperature == 0.8  # the rung's own sampling
    assert res.stop_reason == "verified" and res.choices[0].text == RIGHT
    assert res.info["ladder"]["stopped_at"] == 1
    assert res.info["samples"] == 5 and res.info["chosen_wave"] == 1
    assert [c["wave"] for c in res.info["candidates"]] == [0, 1, 1, 1, 1]
    assert [c["chosen"] for c in res.info["candidates"]].count(True) == 1
    # every generated token counted once: the chosen one visible, the rest hidden
    assert res.usage == Usage(prompt=40, visible=10, hidden=40)


async def test_the_first_answer_stays_a_candidate_and_can_win() -> None:
    # rung 0 is right but scored below a strict threshold; more samples only add wrong ones
    strict = Ladder(
        (RungPlan("samples:2", ARITH, 0.99, samples=2, sampling={"temperature": 0.8}),),
        SamplingParams(temperature=0.0),
    )
    gen = ScriptedGenerator(["42", WRONG, WRONG])
    res = await strict.run(Q, ctx_for(gen))
    assert res.choices[0].text == "42" and res.info["chosen_wave"] == 0
    assert res.stop_reason == "completed" and res.info["ladder"]["verified"] is False


async def test_nothing_passes_returns_the_best_scored_after_every_rung() -> None:
    gen = ScriptedGenerator(["17 + 25 = 42. So 41", WRONG])
    res = await LADDER.run(Q, ctx_for(gen))
    assert [r.n for r in gen.requests] == [1, 4, 12]
    assert res.stop_reason == "completed" and res.info["ladder"]["verified"] is False
    assert res.choices[0].text == "17 + 25 = 42. So 41"  # its equation holds: best score


async def test_call_cap_holds_across_the_ladder() -> None:
    gen = ScriptedGenerator([WRONG])
    res = await LADDER.run(Q, ctx_for(gen, max_calls=2))
    assert len(gen.requests) == 2
    assert res.stop_reason == "budget" and res.choices[0].text == WRONG


async def test_token_cap_holds_across_the_ladder() -> None:
    gen = ScriptedGenerator([WRONG], tokens_per_text=10)
    res = await LADDER.run(Q, ctx_for(gen, limit=30))
    # 10 for the first answer; of the 4 samples, one full-length (20) fits in the 20 left
    assert [r.n for r in gen.requests] == [1, 1]
    assert res.usage.visible + res.usage.hidden <= 30
    assert res.stop_reason == "budget"


async def test_deadline_returns_the_best_answer_so_far() -> None:
    gen = ScriptedGenerator([WRONG], delay_s=0.2)
    res = await LADDER.run(Q, ctx_for(gen, deadline_s=0.3))
    assert res.stop_reason == "deadline" and res.choices[0].text == WRONG
    assert gen.cancelled == 1  # the rung's call was cancelled, not left running


async def test_route_rung_is_seeded_with_the_pool() -> None:
    vote = BestOfN(BestOfNParams(n=3, selector="majority"))
    ladder = Ladder(
        (RungPlan("vote", ARITH, 0.5, sampling={"temperature": None}, strategy=vote),),
        SamplingParams(temperature=0.0),
    )
    gen = ScriptedGenerator([WRONG, RIGHT, RIGHT])
    res = await ladder.run(Q, ctx_for(gen))
    # the first answer is one of the three candidates: ONE n=2 call
    assert [r.n for r in gen.requests] == [1, 2]
    assert gen.requests[1].temperature == 0.8  # temperature unset: best-of-n's own default
    assert res.choices[0].text == RIGHT and res.info["samples"] == 3
    assert res.usage.visible == 10 and res.usage.hidden == 20


def test_select_prefers_verified_answers_then_the_vote() -> None:
    # three unverified "7"s do not outvote one verified "8"
    sel = select(["7", "7", "7", "8"], [0.2, 0.2, 0.2, 0.9], 0.5)
    assert (sel.index, sel.passed) == (3, True)
    # among passing candidates the answer with more weight wins; its best-scored carrier
    sel = select(["8", "9", "9"], [0.9, 0.6, 0.7], 0.5)
    assert (sel.index, sel.passed) == (2, True)
    # nothing passes: the best-scored answer, not verified
    sel = select(["1", "2"], [0.1, 0.3], 0.5)
    assert (sel.index, sel.passed) == (1, False)
    # no extractable answers at all: the highest score
    assert select([None, None], [0.2, 0.4], 0.5).index == 1


# ---- confidence: adaptive early stop, weighted vote, confidence-gated ladders ----------------


@dataclass
class LogprobGenerator:
    """Answers from a script of (text, per-token logprob) pairs, cycling; every token of a
    text has the same logprob, so its confidence is exp(logprob)."""

    script: list[tuple[str, float]]
    requests: list[GenRequest] = field(default_factory=list)
    _pos: int = 0

    async def generate(self, request: GenRequest) -> GenResult:
        self.requests.append(request)
        choices = []
        for i in range(request.n):
            text, lp = self.script[self._pos % len(self.script)]
            self._pos += 1
            logprobs = (
                tuple(TokenLogprob(t, lp) for t in text.split()) if request.logprobs else None
            )
            choices.append(GenChoice(i, text, 10, "stop", logprobs=logprobs))
        return GenResult(tuple(choices), Usage(prompt=20, visible=10 * request.n))


CONFIDENT, UNSURE = math.log(0.9), math.log(0.2)


async def test_adaptive_confidence_stops_once_the_weighted_leader_holds_its_share() -> None:
    # 4 samples: three confident "42", one unsure "41": weighted share 2.7 / 2.9 = 0.93
    gen = LogprobGenerator([(RIGHT, CONFIDENT), (RIGHT, CONFIDENT), (WRONG, UNSURE)])
    params = AdaptiveConsistencyParams(
        waves=[4, 4, 8], stop="confidence", share=0.8, min_samples=4, vote="confidence"
    )
    res = await AdaptiveConsistency(params).run(Q, StrategyContext(gen))
    assert [r.n for r in gen.requests] == [4]  # stopped after the first wave
    assert all(r.logprobs and r.top_logprobs == 2 for r in gen.requests)
    assert res.stop_reason == "converged" and res.choices[0].text == RIGHT
    assert res.info["leader_share"] == [pytest.approx(2.7 / 2.9, abs=1e-4)]
    assert res.choices[0].logprobs is None  # the client did not ask for logprobs
    assert res.info["candidates"][0]["confidence"]["mean"] == pytest.approx(0.9)


async def test_adaptive_confidence_keeps_sampling_while_split() -> None:
    gen = LogprobGenerator([(RIGHT, CONFIDENT), (WRONG, CONFIDENT)])
    params = AdaptiveConsistencyParams(waves=[4, 4, 8], stop="confidence", share=0.8)
    res = await AdaptiveConsistency(params).run(Q, StrategyContext(gen))
    assert [r.n for r in gen.requests] == [4, 4, 8] and res.stop_reason == "max_steps"


async def test_confidence_vote_outweighs_an_unsure_majority() -> None:
    # majority says 41 (three unsure samples); two confident 42s carry the weighted vote
    gen = LogprobGenerator(
        [(WRONG, UNSURE), (WRONG, UNSURE), (WRONG, UNSURE), (RIGHT, CONFIDENT), (RIGHT, CONFIDENT)]
    )
    res = await BestOfN(BestOfNParams(n=5, selector="confidence")).run(Q, StrategyContext(gen))
    assert res.choices[0].text == RIGHT and res.info["selector"] == "confidence"
    gen2 = LogprobGenerator(gen.script)
    majority = await BestOfN(BestOfNParams(n=5, selector="majority")).run(Q, StrategyContext(gen2))
    assert majority.choices[0].text == WRONG


async def test_confidence_ladder_escalates_an_unsure_first_answer() -> None:
    verifier = ConfidenceVerifier(None)
    ladder = Ladder(
        (RungPlan("samples:4", verifier, 0.6, samples=4, sampling={"temperature": 0.8}),),
        SamplingParams(temperature=0.0),
    )
    gen = LogprobGenerator([(WRONG, UNSURE), (RIGHT, CONFIDENT)])
    res = await ladder.run(Q, StrategyContext(gen))
    assert [r.n for r in gen.requests] == [1, 4] and gen.requests[0].logprobs
    assert res.choices[0].text == RIGHT and res.stop_reason == "verified"
    path = res.info["ladder"]["path"]
    assert path[0]["passed"] is False and path[0]["best_score"] == pytest.approx(0.2)


async def test_a_request_predicted_hard_starts_at_rung_one() -> None:
    ladder = Ladder(LADDER.rungs, LADDER.params, start=1)
    gen = ScriptedGenerator([RIGHT])
    res = await ladder.run(Q, ctx_for(gen))
    assert [(r.n, r.temperature) for r in gen.requests] == [(4, 0.8)]  # no greedy first
    assert res.info["ladder"]["start_rung"] == 1 and res.info["ladder"]["stopped_at"] == 1
    assert res.stop_reason == "verified" and res.choices[0].text == RIGHT
