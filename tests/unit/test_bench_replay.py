"""bench/test_time_scaling.py: the replay generator behind the ladder / confidence rows.

The derived rows run the REAL strategies (``Ladder``, ``BestOfN``, ``AdaptiveConsistency``)
over recorded candidates, so the replay must serve exactly what a backend would have: the
greedy answer for a ladder's first call, then the pool in order, with exact usage, and refuse
a call the recorded candidates cannot stand for.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gateway.context import RequestContext
from gateway.escalation import build_ladder
from routing.loader import load_config
from strategies.ports import GenChoice, GenRequest, GenResult, TokenLogprob
from strategies.usage import Usage

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROUTES = BENCH.parent / "configs" / "routes.yaml"


def _load() -> ModuleType:
    # the benchmark imports its sibling modules (overhead, tasks) by their bare names
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_tts", BENCH / "test_time_scaling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tts = _load()
CONFIG = load_config(ROUTES)
ARITH = tts.make_suite(1, 0)[0]  # "What is 3 + 5? ..." (reference 8)
MAX_TOKENS = 80


def _lp(p: float, n: int) -> tuple[TokenLogprob, ...]:
    """``n`` tokens of probability ``p`` each (confidence ``mean`` = p)."""
    return tuple(TokenLogprob("x", math.log(p)) for _ in range(n))


def _choice(text: str, tokens: int, p: float = 0.9) -> GenChoice:
    return GenChoice(0, text, tokens, "stop", logprobs=_lp(p, tokens))


def _pool(texts: list[str], start_tokens: int = 10) -> list[GenChoice]:
    return [_choice(t, start_tokens + i) for i, t in enumerate(texts)]


def _req(n: int, temperature: float, logprobs: bool = False) -> GenRequest:
    return GenRequest(
        messages=[{"role": "user", "content": "q"}],
        n=n,
        max_tokens=MAX_TOKENS,
        temperature=temperature,
        logprobs=logprobs,
        top_logprobs=2 if logprobs else None,
    )


def _replayer(pool: list[GenChoice], greedy: GenChoice | None = None) -> Any:
    return tts.ReplayGenerator(pool, 20, greedy=greedy, max_tokens=MAX_TOKENS)


@pytest.mark.anyio
async def test_first_n1_call_gets_greedy_then_pool_slices_in_order() -> None:
    pool = _pool([f"answer {i}" for i in range(16)])
    gen = _replayer(pool, greedy=_choice("greedy", 7))
    first: GenResult = await gen.generate(_req(1, 0.0))
    assert [c.text for c in first.choices] == ["greedy"]
    assert first.usage == Usage(prompt=20, visible=7)
    four: GenResult = await gen.generate(_req(4, 0.8))
    assert [c.text for c in four.choices] == [f"answer {i}" for i in range(4)]
    assert [c.index for c in four.choices] == [0, 1, 2, 3]  # renumbered per call, as vLLM does
    assert four.usage == Usage(prompt=20, visible=10 + 11 + 12 + 13)
    rest: GenResult = await gen.generate(_req(12, 0.8))
    assert [c.text for c in rest.choices] == [f"answer {i}" for i in range(4, 16)]
    assert gen.generated == 7 + sum(10 + i for i in range(16))
    assert gen.calls == [(1, 0.0), (4, 0.8), (12, 0.8)]


@pytest.mark.anyio
async def test_without_greedy_the_first_call_reads_the_pool() -> None:
    gen = _replayer(_pool(["a", "b"]))
    res: GenResult = await gen.generate(_req(1, 0.8))
    assert [c.text for c in res.choices] == ["a"]


@pytest.mark.anyio
async def test_logprobs_only_when_asked() -> None:
    gen = _replayer(_pool(["a", "b"]))
    plain: GenResult = await gen.generate(_req(1, 0.8))
    with_lp: GenResult = await gen.generate(_req(1, 0.8, logprobs=True))
    assert plain.choices[0].logprobs is None
    assert with_lp.choices[0].logprobs is not None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "request_",
    [
        _req(1, 0.8),  # greedy candidate at a sampling temperature
        GenRequest(messages=[], n=1, max_tokens=40, temperature=0.0),  # other max_tokens
        GenRequest(messages=[], n=1, max_tokens=MAX_TOKENS, temperature=0.0, prompt_logprobs=0),
    ],
)
async def test_mismatched_first_call_is_refused(request_: GenRequest) -> None:
    gen = _replayer(_pool(["a"]), greedy=_choice("g", 3))
    with pytest.raises(tts.ReplayMismatch):
        await gen.generate(request_)


@pytest.mark.anyio
async def test_more_samples_than_recorded_is_refused() -> None:
    gen = _replayer(_pool(["a", "b", "c"]))
    await gen.generate(_req(2, 0.8))
    with pytest.raises(tts.ReplayMismatch, match="1 of 3 remain"):
        await gen.generate(_req(2, 0.8))
    with pytest.raises(tts.ReplayMismatch, match="temperature"):
        await gen.generate(_req(1, 0.0))  # pool samples were drawn at 0.8


def test_replay_ladder_builds_the_gateway_ladder() -> None:
    """Rungs as ``gateway.escalation.build_ladder`` builds them from the shipped config."""
    spec = tts.spec_of(ARITH)
    for name in tts.LADDER_ROUTES:
        route = CONFIG.route(name)
        real = build_ladder(route, CONFIG, {}, RequestContext("t"), _replayer([]))
        replay = tts.replay_ladder(route, CONFIG, spec)
        assert [
            (r.label, r.verifier.name, r.threshold, r.samples, dict(r.sampling))
            for r in replay.rungs
        ] == [
            (r.label, r.verifier.name, r.threshold, r.samples, dict(r.sampling)) for r in real.rungs
        ]
        assert replay.params.model_copy(update={"answer": real.params.answer}) == real.params
        assert replay.first is None and real.first is None
        low = tts.replay_ladder(route, CONFIG, spec, threshold=0.4)
        assert {r.threshold for r in low.rungs} == {0.4}


def _pool_item(texts: list[str]) -> Any:
    pool = _pool(texts)
    return tts.PoolItem(
        [c.text for c in pool],
        [c.tokens for c in pool],
        ["stop"] * len(pool),
        [tts.judge(ARITH, c.text)[1] for c in pool],
        20,
        1.0,
        [c.logprobs for c in pool],
    )


def _greedy(text: str, tokens: int, p: float) -> Any:
    correct, answer = tts.judge(ARITH, text)
    return tts.Outcome(correct, answer, tokens, 0, candidate=_choice(text, tokens, p))


@pytest.mark.anyio
async def test_greedy_ladder_escalates_on_a_wrong_greedy_answer() -> None:
    """3 + 5: the greedy "= 9" fails the arithmetic check, the first 4 samples say 8 and pass,
    so the ladder stops after rung 1: tokens = greedy + the 4 drawn, the rest never drawn."""
    pool = _pool_item(["3 + 5 = 8. The answer is 8"] * 16)
    rows = await tts.replay_rows(
        [ARITH], [pool], [_greedy("3 + 5 = 9. The answer is 9", 7, 0.9)], CONFIG, MAX_TOKENS
    )
    row = next(r for r in rows if r.key == "greedy-ladder")
    (o,) = row.outcomes
    assert o.error is None and o.correct and o.answer == "8"
    assert o.extra["calls"] == [1, 4] and o.extra["stopped_at"] == 1
    assert o.samples == 5
    assert (o.visible, o.total) == (10, 7 + 10 + 11 + 12 + 13)
    assert o.prompt == 2 * 20  # the prompt of both calls


@pytest.mark.anyio
async def test_confidence_ladder_keeps_a_confident_greedy_answer() -> None:
    pool = _pool_item(["The answer is 9"] * 16)
    rows = await tts.replay_rows(
        [ARITH], [pool], [_greedy("The answer is 8", 6, 0.95)], CONFIG, MAX_TOKENS
    )
    kept = next(r for r in rows if r.key == "confidence-ladder").outcomes[0]
    assert kept.correct and kept.extra["calls"] == [1] and kept.extra["stopped_at"] == 0
    assert (kept.visible, kept.hidden) == (6, 0)


@pytest.mark.anyio
async def test_confidence_ladder_climbs_below_its_threshold() -> None:
    """Greedy confidence 0.5 < 0.6: rung 1 draws 4 samples of confidence 0.9, which pass and
    out-vote the greedy answer; at the 0.4 sensitivity threshold the greedy answer is kept."""
    pool = _pool_item(["The answer is 9"] * 16)
    rows = await tts.replay_rows(
        [ARITH], [pool], [_greedy("The answer is 8", 6, 0.5)], CONFIG, MAX_TOKENS
    )
    by_key = {r.key: r.outcomes[0] for r in rows}
    climbed = by_key["confidence-ladder"]
    assert climbed.extra["calls"] == [1, 4] and climbed.extra["stopped_at"] == 1
    assert not climbed.correct and climbed.answer == "9"
    assert (climbed.visible, climbed.total) == (10, 6 + 10 + 11 + 12 + 13)
    low = by_key["confidence-ladder-t0.4"]
    assert low.correct and low.extra["calls"] == [1]


@pytest.mark.anyio
async def test_confidence_vote_and_adaptive_draw_from_the_pool_only() -> None:
    pool = _pool_item(["The answer is 8"] * 12 + ["The answer is 9"] * 4)
    rows = await tts.replay_rows(
        [ARITH], [pool], [_greedy("The answer is 9", 6, 0.9)], CONFIG, MAX_TOKENS
    )
    by_key = {r.key: r.outcomes[0] for r in rows}
    vote16 = by_key["conf-vote@16"]
    assert vote16.correct and vote16.extra["calls"] == [16]
    assert vote16.total == sum(10 + i for i in range(16))  # the greedy answer is not drawn
    vote8 = by_key["conf-vote@8"]
    assert vote8.extra["calls"] == [8] and vote8.total == sum(10 + i for i in range(8))
    adaptive = by_key[tts.ADAPTIVE_CONF_ROUTE]  # first wave of 4 is unanimous: stop
    assert adaptive.correct and adaptive.extra["calls"] == [4]
    assert adaptive.stop_reason == "converged" and adaptive.samples == 4
    assert adaptive.total == 10 + 11 + 12 + 13


def test_pool_json_has_no_logprobs() -> None:
    d = _pool_item(["The answer is 8"] * 2).to_json()
    assert "logprobs" not in d and d["confidence"] == [0.9, 0.9]
    o = _greedy("The answer is 8", 6, 0.9)
    assert "candidate" not in tts.outcome_json(o)
