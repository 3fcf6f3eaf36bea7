"""refine with scripted fakes: plateau, "no issues", best-not-last, budget, deadline, usage."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from strategies.base import Deadline, StrategyContext, StrategyRequest, TokenBudget
from strategies.best_of_n import DeadlineExceeded
from strategies.ports import Candidate, GenChoice, GenRequest, GenResult, Score
from strategies.refine import Refine, RefineParams
from strategies.usage import Usage
from tests.fakes import ScriptedGenerator

pytestmark = pytest.mark.anyio

Q = StrategyRequest(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 17 + 25?"},
    ]
)


@dataclass
class TableVerifier:
    """Scores a candidate by its text (default 0.5); spends 4 prompt + 1 hidden tokens a call."""

    table: Mapping[str, float]
    seen: list[str] = field(default_factory=list)
    name: str = "table"

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        self.seen += [c.text for c in candidates]
        return [Score(self.table.get(c.text, 0.5), "", Usage(4, 0, 1)) for c in candidates]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        raise AssertionError("refine scores whole versions")


async def test_plateau_stops_and_returns_the_best_not_the_last() -> None:
    gen = ScriptedGenerator(["draft", "fix the sum", "better", "fix again", "worse"])
    verifier = TableVerifier({"draft": 0.3, "better": 0.8, "worse": 0.5})
    res = await Refine(RefineParams(rounds=5), verifier).run(Q, StrategyContext(gen))
    assert res.choices[0].text == "better"
    assert res.stop_reason == "converged" and res.info["stop"] == "plateau"
    assert res.info["scores"] == [0.3, 0.8, 0.5]
    assert (res.info["chosen_version"], res.info["rounds"]) == (1, 2)
    assert len(gen.requests) == 5 and res.info["backend_calls"] == 5
    # usage: the chosen version visible; drafts, critiques and verifier outputs hidden
    assert res.usage == Usage(prompt=5 * 20 + 3 * 4, visible=10, hidden=4 * 10 + 3)


async def test_gain_below_min_gain_is_a_plateau() -> None:
    gen = ScriptedGenerator(["draft", "nit", "same-ish"])
    verifier = TableVerifier({"draft": 0.70, "same-ish": 0.705})
    res = await Refine(RefineParams(min_gain=0.01), verifier).run(Q, StrategyContext(gen))
    assert res.info["stop"] == "plateau"
    assert res.choices[0].text == "same-ish"  # best score wins even on a small gain


async def test_critique_with_no_issues_stops() -> None:
    gen = ScriptedGenerator(["draft", "Looks right to me. no issues."])
    res = await Refine(RefineParams(), TableVerifier({})).run(Q, StrategyContext(gen))
    assert res.info["stop"] == "no_issues" and res.stop_reason == "converged"
    assert len(gen.requests) == 2 and res.choices[0].text == "draft"
    assert res.info["rounds"] == 1


async def test_rounds_run_out_and_improving_versions_win() -> None:
    gen = ScriptedGenerator(["v0", "c1", "v1", "c2", "v2"])
    verifier = TableVerifier({"v0": 0.1, "v1": 0.5, "v2": 0.9})
    res = await Refine(RefineParams(rounds=2), verifier).run(Q, StrategyContext(gen))
    assert res.stop_reason == "max_steps" and res.info["stop"] == "max_rounds"
    assert res.choices[0].text == "v2" and res.info["versions"] == 3


async def test_calls_continue_the_conversation_with_the_templates() -> None:
    gen = ScriptedGenerator(["draft", "the sum is off", "fixed"])
    p = RefineParams(
        rounds=1,
        critique_template="Critique {answer} for {question}; else say {marker}",
        revise_template="Fix {answer} per: {critique}",
    )
    await Refine(p, TableVerifier({})).run(
        StrategyRequest(messages=Q.messages, sampling={"temperature": 0.2, "seed": 7}),
        StrategyContext(gen),
    )
    draft, critique, revision = gen.requests
    assert draft.messages == Q.messages and draft.temperature == 0.2
    assert draft.extra == {"seed": 7}
    assert critique.messages[:2] == Q.messages
    assert critique.messages[2] == {"role": "assistant", "content": "draft"}
    assert critique.messages[3]["content"] == (
        "Critique draft for What is 17 + 25?; else say NO ISSUES"
    )
    assert critique.temperature == 0.0 and critique.extra == {}
    assert revision.messages[2:] == [
        {"role": "assistant", "content": "draft"},
        {"role": "user", "content": "Fix draft per: the sum is off"},
    ]


def test_templates_are_checked() -> None:
    with pytest.raises(ValidationError, match="critique_template"):
        RefineParams(critique_template="{oops}")
    with pytest.raises(ValidationError, match="revise_template"):
        RefineParams(revise_template="{marker}")
    with pytest.raises(ValidationError):
        RefineParams(verifier="prm")


async def test_budget_stops_and_returns_best_so_far() -> None:
    gen = ScriptedGenerator(["draft", "fix it", "better", "more"])
    budget = TokenBudget(limit=25)
    verifier = TableVerifier({"draft": 0.2, "better": 0.6})
    res = await Refine(RefineParams(rounds=3), verifier).run(Q, StrategyContext(gen, budget))
    # 10 + 10 + 1 (verifier) → the revision gets 4 tokens; then nothing is left
    assert gen.requests[2].max_tokens == 4
    assert res.stop_reason == "budget" and res.choices[0].text == "better"
    assert len(gen.requests) == 3 and budget.remaining == 0


@dataclass
class HangOn:
    """Answers from ``texts`` but never answers call ``hang_at`` (until cancelled)."""

    texts: list[str]
    hang_at: int
    calls: int = 0
    cancelled: int = 0

    async def generate(self, request: GenRequest) -> GenResult:
        call = self.calls
        self.calls += 1
        if call == self.hang_at:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        choice = GenChoice(0, self.texts[call], 10, "stop")
        return GenResult((choice,), Usage(20, 10), "m")


async def test_deadline_cancels_the_call_and_returns_best_so_far() -> None:
    gen = HangOn(["draft", "fix it", "never"], hang_at=2)
    res = await Refine(RefineParams(), TableVerifier({"draft": 0.4})).run(
        Q, StrategyContext(gen, deadline=Deadline.after(0.2))
    )
    assert gen.cancelled == 1
    assert res.stop_reason == "deadline" and res.choices[0].text == "draft"
    assert res.usage == Usage(prompt=40 + 4, visible=10, hidden=10 + 1)


async def test_deadline_before_the_draft_raises() -> None:
    gen = HangOn(["draft"], hang_at=0)
    with pytest.raises(DeadlineExceeded):
        await Refine(RefineParams(), TableVerifier({})).run(
            Q, StrategyContext(gen, deadline=Deadline.after(0.05))
        )
    assert gen.cancelled == 1


async def test_builtin_arithmetic_verifier_drives_refinement() -> None:
    gen = ScriptedGenerator(["17 + 25 = 43", "It should be 42.", "17 + 25 = 42", "NO ISSUES"])
    res = await Refine(RefineParams()).run(Q, StrategyContext(gen))
    assert res.info["verifier"] == "arithmetic"
    assert res.info["scores"] == [0.0, 1.0]
    assert res.info["stop"] == "no_issues" and res.choices[0].text == "17 + 25 = 42"
