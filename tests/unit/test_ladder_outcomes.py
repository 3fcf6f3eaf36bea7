"""Ladder outcomes — the online, verified win rate of escalation: each ladder request counted
once as first_passed, won, first_kept or unverified, with its hidden tokens by outcome and
each win credited to the rung whose candidate was chosen (through the app, scripted vLLM)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.escalation import ladder_outcome
from metrics.registry import LadderOutcome
from routing.config import DeliberateConfig
from strategies.best_of_n import SamplingParams
from strategies.ladder import Ladder
from tests.fakes import FakeVLLM, ScriptedGenerator
from tests.unit.test_app import A, Factory
from tests.unit.test_app_sampling import SUM, post, raw
from tests.unit.test_ladder import RIGHT as RIGHT_42
from tests.unit.test_ladder import WRONG as WRONG_41
from tests.unit.test_ladder import Q, ctx_for, rung

pytestmark = pytest.mark.anyio

OUTCOMES: tuple[LadderOutcome, ...] = ("first_passed", "won", "first_kept", "unverified")
RUNGS = {"ladder": ("samples:2", "samples:4"), "strict-ladder": ("samples:2", "samples:3")}
RIGHT = ("2 + 2 = 4. The answer is 4",)  # scores 1.0: passes every check
BARE = ("The answer is 4",)  # right, no working shown: scores 0.875
WRONG = ("The answer is 5",)  # scores 0.125


def config() -> dict[str, Any]:
    """The app tests' ``ladder`` route, plus one whose first check only a fully checked answer
    passes (so a right but bare first answer climbs, then passes the second, laxer check)."""
    cfg = raw()
    cfg["routes"].append(
        {
            "name": "strict-ladder",
            "strategy": "single-pass",
            "backend": "default",
            "sampling": {"temperature": 0},
            "escalate_to": [{"samples": 2, "threshold": 1.0}, {"samples": 3, "threshold": 0.5}],
        }
    )
    return cfg


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"class": "explicit", **labels})


async def test_every_ladder_series_exists_at_zero_before_traffic(gateway: Factory) -> None:
    _, registry = await gateway(DeliberateConfig.model_validate(config()))
    for route, rungs in RUNGS.items():
        for outcome in OUTCOMES:
            for name in (
                "deliberate_ladder_outcomes_total",
                "deliberate_ladder_hidden_tokens_total",
            ):
                assert value(registry, name, route=route, outcome=outcome) == 0, (name, outcome)
        for label in rungs:
            wins = value(registry, "deliberate_escalation_wins_total", route=route, rung=label)
            assert wins == 0, (route, label)
    # routes without a ladder get none
    assert (
        value(registry, "deliberate_ladder_outcomes_total", route="greedy", outcome="won") is None
    )


@pytest.mark.parametrize(
    ("route", "scripts", "words", "outcome", "won_by", "calls"),
    [
        # the first answer passes the first check: nothing escalates
        ("ladder", [], RIGHT, "first_passed", None, 1),
        # the first answer is wrong, the first rung's samples right
        ("ladder", [WRONG], RIGHT, "won", "samples:2", 2),
        # ... or only the second rung's
        ("ladder", [WRONG, WRONG], RIGHT, "won", "samples:4", 3),
        # right but bare: it fails the strict first check, its rung adds only wrong answers,
        # and it passes the second check: the escalation kept the first answer
        ("strict-ladder", [BARE], WRONG, "first_kept", None, 2),
        # wrong all the way up: nothing passes
        ("ladder", [], WRONG, "unverified", None, 3),
    ],
)
async def test_each_outcome_is_counted_once(
    gateway: Factory,
    fake: FakeVLLM,
    route: str,
    scripts: list[tuple[str, ...]],
    words: tuple[str, ...],
    outcome: LadderOutcome,
    won_by: str | None,
    calls: int,
) -> None:
    fake.replica(A).word_scripts = list(scripts)
    fake.replica(A).words = words
    r, registry = await post(gateway, config(), {**SUM, "model": route})
    assert len(fake.completions_received()) == calls
    hidden = r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert (hidden > 0) == (outcome != "first_passed")
    for o in OUTCOMES:
        expected = 1 if o == outcome else 0
        count = value(registry, "deliberate_ladder_outcomes_total", route=route, outcome=o)
        assert count == expected, (o, count)
        tokens = value(registry, "deliberate_ladder_hidden_tokens_total", route=route, outcome=o)
        assert tokens == (hidden if o == outcome else 0), (o, tokens)
    for label in RUNGS[route]:
        wins = value(registry, "deliberate_escalation_wins_total", route=route, rung=label)
        assert wins == (1 if label == won_by else 0), (label, wins)


def info(
    path: list[dict[str, Any]],
    verified: bool,
    answers: list[str | None],
    chosen: int,
    wave: int,
    **ladder: Any,
) -> dict[str, Any]:
    return {
        "ladder": {
            "rungs": ["samples:4", "samples:12"],
            "path": path,
            "stopped_at": path[-1]["rung"],
            "verified": verified,
            **ladder,
        },
        "answers": answers,
        "chosen_index": chosen,
        "chosen_wave": wave,
    }


FAILED_FIRST = {"rung": 0, "label": "first", "candidates": 1, "passed": False}
CLIMBED = {"rung": 1, "label": "samples:4", "candidates": 4, "passed": True}


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        # a cap or the deadline stopped the ladder before any rung ran: nothing passed
        (info([FAILED_FIRST], False, ["5"], 0, 0), ("unverified", None)),
        # climbed, and a different answer passed
        (info([FAILED_FIRST, CLIMBED], True, ["5", "4", "4"], 1, 1), ("won", "samples:4")),
        # climbed, and another candidate with the first answer's answer passed
        (info([FAILED_FIRST, CLIMBED], True, ["4", "5", "4"], 2, 1), ("first_kept", None)),
        # no extractable answers (a confidence check): a different candidate is a win
        (info([FAILED_FIRST, CLIMBED], True, [None, None], 1, 1), ("won", "samples:4")),
        # a route's own strategy gave several first candidates: the first answer is the first
        # check's pick, and another of them winning after the climb is credited to `first`
        (
            info([FAILED_FIRST, CLIMBED], True, ["5", "4", "6"], 1, 0, first_index=2),
            ("won", "first"),
        ),
        (
            info([FAILED_FIRST, CLIMBED], True, ["5", "4", "6"], 1, 0, first_index=1),
            ("first_kept", None),
        ),
        # a request started at rung 1 whose candidates passed the first check
        (
            info([{**CLIMBED, "rung": 1}], True, ["4"] * 4, 0, 1, start_rung=1),
            ("first_passed", None),
        ),
    ],
)
def test_ladder_outcome(result: dict[str, Any], expected: tuple[str, str | None]) -> None:
    assert ladder_outcome(result) == expected


async def test_the_first_answer_of_a_ladder_started_at_a_rung_is_its_best() -> None:
    # started at rung 1 (predicted hard): its 4 samples hold one right answer, which passes
    ladder = Ladder((rung(4), rung(12)), SamplingParams(temperature=0.0, max_tokens=32), start=1)
    gen = ScriptedGenerator([WRONG_41, RIGHT_42, WRONG_41, WRONG_41])
    res = await ladder.run(Q, ctx_for(gen))
    assert res.info["ladder"]["first_index"] == res.info["chosen_index"] == 1
    assert ladder_outcome(res.info) == ("first_passed", None)
    # ... or none of them does, and the 12 samples of rung 2 find it
    gen = ScriptedGenerator([WRONG_41] * 4 + [RIGHT_42] * 12)
    res = await ladder.run(Q, ctx_for(gen))
    assert res.info["ladder"]["first_index"] == 0 and res.info["chosen_wave"] == 2
    assert ladder_outcome(res.info) == ("won", "samples:12")
