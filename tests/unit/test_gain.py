"""The gain rule: escalate only when verifiable and the predicted gain reaches a minimum."""

from __future__ import annotations

from typing import Any

import pytest

from routing.config import DeliberateConfig
from routing.loader import ConfigError, parse_config
from routing.policy import Router

Q_ARITH = [{"role": "user", "content": "What is 37 + 45?"}]
Q_WORDS = [{"role": "user", "content": "Which is bigger, a cat or a mouse?"}]


def config(p_cheap: float, p_ladder: float, **gain: Any) -> DeliberateConfig:
    def measured(q: float) -> dict[str, Any]:
        return {"any": {"quality": q, "p50_ms": 100, "p95_ms": 200, "tokens": 50}}

    return DeliberateConfig.model_validate(
        {
            "default_route": "greedy",
            "backends": [{"name": "b", "model": "m", "replicas": ["http://a:1"]}],
            "routes": [
                {"name": "greedy", "strategy": "single-pass", "backend": "b",
                 "measured": measured(p_cheap)},
                {"name": "ladder", "strategy": "single-pass", "backend": "b",
                 "escalate_to": [{"samples": 4}, {"samples": 12}],
                 "measured": measured(p_ladder)},
            ],
            "policy": {
                "default_class": "any",
                "classes": {
                    "any": {"routes": ["greedy", "ladder"],
                            "gain": {"cheap": "greedy", "ladder": "ladder", **gain}},
                },
            },
        }
    )  # fmt: skip


def decide(cfg: DeliberateConfig, messages: list[dict[str, str]] = Q_ARITH) -> Any:
    d = Router(cfg).decide("auto", messages)
    assert d is not None
    return d


def test_gain_above_the_minimum_escalates() -> None:
    d = decide(config(0.5, 0.8, min_gain=0.1))
    assert d.route == "ladder" and d.start_rung == 0
    assert d.gain.p_cheap == 0.5 and d.gain.gain == pytest.approx(0.3) and d.gain.verifiable
    assert "gain=+0.30" in d.header_reason()


def test_small_gain_stays_cheap() -> None:
    d = decide(config(0.5, 0.55, min_gain=0.1))
    assert d.route == "greedy" and "predicted gain +0.05 < 0.1" in d.reason


def test_predicted_easy_never_escalates() -> None:
    d = decide(config(0.95, 0.99, min_gain=0.01, never_escalate_above=0.9))
    assert d.route == "greedy" and "predicted easy" in d.reason


def test_predicted_hard_starts_at_rung_one() -> None:
    d = decide(config(0.1, 0.6, start_high_below=0.2))
    assert (d.route, d.start_rung) == ("ladder", 1) and "start_rung=1" in d.header_reason()


def test_unverifiable_never_escalates() -> None:
    d = decide(config(0.2, 0.9), Q_WORDS)  # the arithmetic check cannot judge a comparison
    assert d.route == "greedy" and not d.gain.verifiable and "unverifiable" in d.reason
    d = decide(config(0.2, 0.9, verifiable="always"), Q_WORDS)
    assert d.route == "ladder"


def test_gain_routes_must_be_class_routes_and_a_ladder() -> None:
    text = """
default_route: a
backends: [{name: b, model: m, replicas: ["http://a:1"]}]
routes:
  - {name: a, strategy: single-pass, backend: b}
  - {name: c, strategy: single-pass, backend: b}
policy:
  default_class: any
  classes:
    any: {routes: [a, c], gain: {cheap: a, ladder: c}}
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    assert any(
        line.startswith("r.yaml:policy.classes.any.gain.ladder: route 'c' is one plain pass")
        for line in e.value.lines
    ), e.value.lines
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace("gain: {cheap: a", "gain: {cheap: x"), "r.yaml")
    assert any("gain.cheap: 'x' is not one of the class's routes" in x for x in e.value.lines)


def vote_config(**gain: Any) -> DeliberateConfig:
    """The gain rule escalating to a multi-sample route (a vote) instead of a ladder."""
    raw = config(0.4, 0.7, **gain).model_dump(mode="json", exclude_none=True)
    raw["routes"][1] = {
        "name": "ladder", "strategy": "self-consistency", "backend": "b",
        "params": {"n": 4}, "measured": raw["routes"][1]["measured"],
    }  # fmt: skip
    return DeliberateConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("content", "escalates"),
    [
        ("What is 37 + 45?", True),  # numbers: the votes' answers can be compared
        ("Which is larger, 61 or 13?", True),
        ("Which is a fruit?\nA) car\nB) pear\nC) bus", True),  # lettered options
        ("Name three colours.", False),  # an open question never goes to a vote
        ("Which is bigger, a cat or a mouse?", False),
    ],
)
def test_a_vote_escalation_needs_comparable_answers(content: str, escalates: bool) -> None:
    d = decide(vote_config(start_high_below=0.9), [{"role": "user", "content": content}])
    assert d.route == ("ladder" if escalates else "greedy"), d.reason
    assert d.gain.verifiable is escalates
    assert d.start_rung == 0  # a vote has no rungs to skip
