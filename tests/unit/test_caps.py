"""Per-route caps are enforced by the budget and the guard in front of the generator:
a strategy that reaches one stops with its best answer so far and says which cap."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.compute import route_budget
from routing.loader import parse_config
from strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyParams
from strategies.base import BudgetGuard, StrategyContext, StrategyRequest, TokenBudget
from strategies.best_of_n import BestOfN, BestOfNParams
from strategies.bounded_reasoning import BoundedReasoning, BoundedReasoningParams
from strategies.ports import BudgetExhausted, GenRequest
from strategies.prm_search import PrmSearch, PrmSearchParams
from strategies.refine import Refine, RefineParams
from tests.fakes import ScriptedGenerator

pytestmark = pytest.mark.anyio
Q = StrategyRequest(messages=[{"role": "user", "content": "What is 17 + 25?"}])


def guarded(gen: ScriptedGenerator, **caps: Any) -> StrategyContext:
    budget = TokenBudget(**caps)
    return StrategyContext(BudgetGuard(gen, budget), budget)


@pytest.mark.parametrize(
    ("caps", "exhausted"),
    [
        ({"max_calls": 2}, "backend_calls"),
        ({"max_candidates": 3}, "candidates"),
        ({"limit": 30}, "tokens"),
        ({}, None),
    ],
)
def test_exhausted_by(caps: dict[str, int], exhausted: str | None) -> None:
    b = TokenBudget(**caps)
    b.calls, b.candidates = 2, 3
    from strategies.usage import Usage

    b.charge(Usage(visible=30))
    assert b.exhausted_by == exhausted
    assert (b.remaining == 0) == (exhausted is not None)


async def test_guard_clips_n_and_max_tokens_then_refuses() -> None:
    gen = ScriptedGenerator(["a"], tokens_per_text=5)
    budget = TokenBudget(limit=100, max_calls=2, max_candidates=5)
    guard = BudgetGuard(gen, budget)
    await guard.generate(GenRequest(messages=(), n=4, max_tokens=500))
    assert (gen.requests[0].n, gen.requests[0].max_tokens) == (4, 100)
    await guard.generate(GenRequest(messages=(), n=4, max_tokens=10))
    assert gen.requests[1].n == 1  # one candidate left of five
    with pytest.raises(BudgetExhausted, match="backend_calls"):
        await guard.generate(GenRequest(messages=()))
    assert len(gen.requests) == 2  # the refused call never reached the backend


async def test_best_of_n_candidate_cap() -> None:
    gen = ScriptedGenerator(["The answer is 42"] * 8)
    ctx = guarded(gen, max_candidates=3)
    result = await BestOfN(BestOfNParams(n=8, selector="majority")).run(Q, ctx)
    assert gen.requests[0].n == 3
    assert result.info["samples"] == 3 and result.stop_reason == "budget"


async def test_best_of_n_judge_without_calls_left_falls_back() -> None:
    gen = ScriptedGenerator(["The answer is 42", "The answer is 41"])
    ctx = guarded(gen, max_calls=1)
    params = BestOfNParams(n=2, selector="verifier", verifier="logprob-judge")
    result = await BestOfN(params).run(Q, ctx)
    assert len(gen.requests) == 1  # the judge calls were refused, not sent
    assert result.choices[0].text in {"The answer is 42", "The answer is 41"}


async def test_adaptive_stops_at_call_cap_with_best_so_far() -> None:
    gen = ScriptedGenerator(["The answer is 1", "The answer is 2"])
    ctx = guarded(gen, max_calls=2)
    params = AdaptiveConsistencyParams(waves=[2, 2, 4, 8], confidence=0.99)
    result = await AdaptiveConsistency(params).run(Q, ctx)
    assert len(gen.requests) == 2
    assert result.stop_reason == "budget" and result.info["samples"] == 4


async def test_bounded_reasoning_thinking_clipped_to_hidden_cap() -> None:
    gen = ScriptedGenerator(["thinking", "42"], tokens_per_text=500)
    ctx = guarded(gen, hidden_limit=64)
    await BoundedReasoning(BoundedReasoningParams(budget=256)).run(Q, ctx)
    assert gen.requests[0].max_tokens == 64


async def test_refine_stops_at_call_cap() -> None:
    gen = ScriptedGenerator(["The answer is 42", "Fix: it is 41", "The answer is 41"])
    ctx = guarded(gen, max_calls=2)
    result = await Refine(RefineParams(rounds=3)).run(Q, ctx)
    assert len(gen.requests) == 2
    assert result.stop_reason == "budget"


async def test_prm_search_candidate_cap() -> None:
    gen = ScriptedGenerator(["Step: 2 + 2 = 4\n\n", "The answer is 4"], tokens_per_text=5)
    ctx = guarded(gen, max_candidates=6)
    params = PrmSearchParams(beam_width=2, branch_factor=4, max_steps=4, max_tokens=16)
    result = await PrmSearch(params).run(Q, ctx)
    assert sum(r.n for r in gen.requests) <= 6
    assert result.choices[0].text


def test_route_budget_from_config_and_client() -> None:
    cfg = parse_config(
        """
default_route: r
backends: [{name: b, model: m, replicas: ["http://x:1"]}]
routes:
  - name: r
    strategy: best-of-n
    backend: b
    budget: {max_total_tokens: 1000, max_hidden_tokens: 300, max_visible_tokens: 100,
             max_candidates: 4, max_backend_calls: 2}
"""
    )
    route = cfg.routes[0]
    b = route_budget(route, {})
    assert (b.limit, b.hidden_limit, b.max_calls, b.max_candidates) == (400, 300, 2, 4)
    assert route_budget(route, {"max_completion_tokens": 50}).limit == 50


@pytest.mark.parametrize("caps", [{"max_calls": 2}, {"max_candidates": 6}])
async def test_prm_search_distinct_beams_stop_at_caps_with_an_answer(caps: dict[str, int]) -> None:
    texts = [f"Step: {i} + 1 = {i + 1}\n\n" for i in range(40)]
    gen = ScriptedGenerator(texts, tokens_per_text=5)
    ctx = guarded(gen, **caps)
    params = PrmSearchParams(beam_width=2, branch_factor=2 if "max_calls" in caps else 4)
    result = await PrmSearch(params).run(Q, ctx)  # no BudgetExhausted escapes
    assert result.stop_reason in ("budget", "completed") and result.choices[0].text
    assert len(gen.requests) <= caps.get("max_calls", 99)
    assert sum(r.n for r in gen.requests) <= caps.get("max_candidates", 99)


def test_total_limit_counts_prompts_too() -> None:
    from strategies.usage import Usage

    b = TokenBudget(limit=1000, total_limit=300)
    b.charge(Usage(prompt=200, visible=50))
    assert b.remaining == 50 and b.exhausted_by is None
    b.charge(Usage(prompt=40, visible=10))
    assert b.remaining == 0 and b.exhausted_by == "tokens"
