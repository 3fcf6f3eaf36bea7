"""Strategies with scripted fakes: selection, adaptive stopping, budgets, deadlines."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyParams
from strategies.answers import ExtractSpec
from strategies.base import Deadline, StrategyContext, StrategyRequest, TokenBudget
from strategies.best_of_n import BestOfN, BestOfNParams, DeadlineExceeded
from strategies.bounded_reasoning import BoundedReasoning, BoundedReasoningParams
from strategies.ports import Candidate, Score
from strategies.self_consistency import SelfConsistency, SelfConsistencyParams
from strategies.usage import Usage
from strategies.voting import leader_confidence, majority_vote, weighted_vote
from tests.fakes import ScriptedGenerator

pytestmark = pytest.mark.anyio

Q = StrategyRequest(messages=[{"role": "user", "content": "What is 17 + 25?"}])
WORDY = StrategyRequest(
    messages=[{"role": "user", "content": "Which is bigger, a cat or a mouse?"}]
)


def test_majority_and_ties() -> None:
    v = majority_vote(["4", "5", "4", None])
    assert (v.winner, v.chosen, v.tie, v.margin) == ("4", 0, False, 1.0)
    t = majority_vote(["5", "4", "4", "5"])
    assert t.winner == "5" and t.tie  # tie broken by earliest occurrence, and said so
    n = majority_vote([None, None])
    assert n.winner is None and n.chosen is None


def test_weighted_vote_can_overrule_majority() -> None:
    answers = ["10", "10", "10", "12"]
    assert majority_vote(answers).winner == "10"
    assert weighted_vote(answers, [0.1, 0.1, 0.1, 0.9]).winner == "12"


def test_leader_confidence() -> None:
    assert leader_confidence(["a"] * 4) == pytest.approx(31 / 32)
    assert leader_confidence(["a", "a", "a", "b"]) == pytest.approx(26 / 32)
    assert leader_confidence(["a", "b"]) == pytest.approx(0.5)
    assert leader_confidence([None, None]) == 0.0


async def test_self_consistency_one_call_majority_and_usage() -> None:
    gen = ScriptedGenerator(["It is 42.", "It is 41.", "42", "So 42."])
    res = await SelfConsistency(SelfConsistencyParams(n=4)).run(WORDY, StrategyContext(gen))
    assert len(gen.requests) == 1 and gen.requests[0].n == 4  # ONE backend request, n=N
    assert res.choices[0].text == "It is 42."
    assert res.info["votes"] == {"42": 3.0, "41": 1.0}
    assert res.usage == Usage(prompt=20, visible=10, hidden=30)


async def test_best_of_n_arithmetic_verifier_beats_majority() -> None:
    # Majority says 43 (wrong); the checker recomputes 17 + 25 = 42.
    texts = [
        "17 + 25 = 43. Answer: 43",
        "17 + 25 = 43, so 43",
        "17 + 25 = 42. Answer: 42",
        "Answer: 43",
    ]
    gen = ScriptedGenerator(texts)
    res = await BestOfN(BestOfNParams(n=4, selector="auto")).run(Q, StrategyContext(gen))
    assert res.info["selector"] == "weighted"  # the checker's scores outweigh the majority
    assert "42" in res.choices[0].text
    assert res.info["chosen_index"] == 2


async def test_best_of_n_no_extractable_answer_is_explicit() -> None:
    gen = ScriptedGenerator(["no idea", "cannot say"])
    res = await BestOfN(BestOfNParams(n=2, selector="majority")).run(WORDY, StrategyContext(gen))
    assert res.info["no_answer"] is True and res.info["chosen_index"] == 0


async def test_best_of_n_samples_fewer_when_budget_is_short() -> None:
    gen = ScriptedGenerator(["1"], tokens_per_text=10)
    ctx = StrategyContext(gen, TokenBudget(limit=25))
    res = await BestOfN(BestOfNParams(n=8, max_tokens=10, selector="majority")).run(Q, ctx)
    assert gen.requests[0].n == 2 and res.info["samples"] == 2
    assert res.stop_reason == "budget"
    assert res.usage.completion <= 25


async def test_adaptive_stops_early_when_unanimous() -> None:
    gen = ScriptedGenerator(["Answer: 7"])
    res = await AdaptiveConsistency(AdaptiveConsistencyParams()).run(Q, StrategyContext(gen))
    assert res.stop_reason == "converged"
    assert res.info["samples"] == 4 and [r.n for r in gen.requests] == [2, 2]


async def test_adaptive_keeps_sampling_when_split() -> None:
    gen = ScriptedGenerator(["Answer: 7", "Answer: 8"])
    res = await AdaptiveConsistency(AdaptiveConsistencyParams()).run(Q, StrategyContext(gen))
    assert res.stop_reason == "max_steps"
    assert res.info["samples"] == 16 and [r.n for r in gen.requests] == [2, 2, 4, 8]
    assert res.usage.visible + res.usage.hidden == 160


async def test_adaptive_deadline_returns_best_so_far_and_cancels() -> None:
    gen = ScriptedGenerator(["Answer: 7", "Answer: 8"], delay_s=0.05)
    first_call_only = Deadline.after(0.08)
    res = await AdaptiveConsistency(AdaptiveConsistencyParams()).run(
        Q, StrategyContext(gen, deadline=first_call_only)
    )
    assert res.stop_reason == "deadline" and res.info["samples"] == 2
    assert gen.cancelled == 1  # the outstanding backend call was cancelled


async def test_deadline_before_any_candidate_raises() -> None:
    gen = ScriptedGenerator(["1"], delay_s=1.0)
    with pytest.raises(DeadlineExceeded):
        await BestOfN(BestOfNParams(n=2)).run(
            Q, StrategyContext(gen, deadline=Deadline.after(0.01))
        )
    assert gen.cancelled == 1


async def test_adaptive_budget_cut() -> None:
    gen = ScriptedGenerator(["Answer: 7", "Answer: 8"], tokens_per_text=10)
    ctx = StrategyContext(gen, TokenBudget(limit=50))
    res = await AdaptiveConsistency(AdaptiveConsistencyParams(max_tokens=10)).run(Q, ctx)
    assert res.stop_reason == "budget"
    assert res.usage.visible + res.usage.hidden <= 50


async def test_bounded_reasoning_two_phases_forced_close() -> None:
    gen = ScriptedGenerator(["17 plus 25 is", "42"], tokens_per_text=8, finish=["length", "stop"])
    params = BoundedReasoningParams(budget=8)
    res = await BoundedReasoning(params).run(Q, StrategyContext(gen))
    think, answer = gen.requests
    assert think.max_tokens == 8 and think.stop == ["</think>"] and think.continue_final_message
    assert think.messages[0]["role"] == "system" and think.messages[-1]["content"] == "<think>\n"
    assert answer.messages[-1]["content"] == "<think>\n17 plus 25 is\n</think>\n"
    assert res.choices[0].text == "42" and res.choices[0].reasoning == "17 plus 25 is"
    assert res.info["forced_close"] is True
    assert res.usage == Usage(prompt=40, visible=8, hidden=8)


async def test_bounded_reasoning_effort_maps_to_budget() -> None:
    gen = ScriptedGenerator(["ok"])
    req = StrategyRequest(messages=Q.messages, reasoning_effort="none")
    res = await BoundedReasoning(BoundedReasoningParams()).run(req, StrategyContext(gen))
    assert len(gen.requests) == 1  # budget 0: no thinking call
    assert res.usage.hidden == 0 and res.info["thinking_budget"] == 0
    gen2 = ScriptedGenerator(["hmm", "ok"])
    req = StrategyRequest(messages=Q.messages, reasoning_effort="low")
    await BoundedReasoning(BoundedReasoningParams()).run(req, StrategyContext(gen2))
    assert gen2.requests[0].max_tokens == 64


class FixedScores:
    """A verifier that scores candidates from a table (and spends some hidden tokens)."""

    name = "fixed"

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(self.scores[c.index], usage=Usage(prompt=5, hidden=1)) for c in candidates]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return [Score(0.5) for _ in steps]


async def test_weighted_selector_overrules_majority_and_counts_verifier_tokens() -> None:
    params = BestOfNParams(n=4, selector="weighted", answer=ExtractSpec(format="answer_line"))
    wordy = StrategyRequest(messages=[{"role": "user", "content": "Pick one.\nAnswer: x"}])
    texts = ["Answer: a", "Answer: a", "Answer: a", "Answer: b"]
    gen = ScriptedGenerator(texts)
    res = await BestOfN(params, FixedScores([0.1, 0.1, 0.1, 0.9])).run(wordy, StrategyContext(gen))
    assert res.info["selector"] == "weighted" and res.choices[0].text == "Answer: b"
    # 4 candidates x 10 tokens, 1 visible; verifier: 4 x (5 prompt + 1 hidden)
    assert res.usage == Usage(prompt=20 + 20, visible=10, hidden=30 + 4)


async def test_auto_uses_judge_weighted_vote_when_nothing_is_checkable() -> None:
    gen = ScriptedGenerator(["A cat.", "A cat.", "A mouse."])
    params = BestOfNParams(n=3, verifier="logprob-judge", answer=ExtractSpec(format="answer_line"))
    res = await BestOfN(params).run(WORDY, StrategyContext(gen))
    assert res.info["selector"] == "weighted" and res.info["verifier"] == "logprob-judge"
    assert len(gen.requests) == 1 + 2  # one n=3 sampling call; the judge once per distinct text
