"""Route-owned sampling: precedence (pure) and the policy file's `sampling:` and ladders."""

from __future__ import annotations

import pytest

from routing.loader import ConfigError, parse_config
from routing.sampling import plan_sampling

ROUTE = {"temperature": 0.0, "top_k": 20}


def test_auto_the_route_wins() -> None:
    plan = plan_sampling(ROUTE, {"temperature": 1.0}, auto=True, honour_client=False, locked=False)
    assert plan.rule == "route-wins"
    assert plan.patch == {"temperature": 0.0, "top_k": 20}
    assert plan.sources == {"temperature": "route", "top_k": "route"}


def test_auto_with_honour_the_client_wins() -> None:
    plan = plan_sampling(ROUTE, {"temperature": 1.0}, auto=True, honour_client=True, locked=False)
    assert plan.rule == "client-wins"
    assert plan.patch == {"top_k": 20}  # what the client left unset still comes from the route
    assert plan.sources == {"temperature": "client", "top_k": "route"}


def test_explicit_route_the_client_wins_unless_locked() -> None:
    client = {"temperature": 1.0, "seed": 7, "top_k": None}  # null counts as unset
    plan = plan_sampling(ROUTE, client, auto=False, honour_client=False, locked=False)
    assert plan.patch == {"top_k": 20}
    assert plan.sources == {"temperature": "client", "top_k": "route", "seed": "client"}
    locked = plan_sampling(ROUTE, client, auto=False, honour_client=True, locked=True)
    assert locked.rule == "route-wins" and locked.patch == {"temperature": 0.0, "top_k": 20}
    assert "lock_sampling" in locked.why


def test_no_route_sampling_changes_nothing() -> None:
    plan = plan_sampling({}, {"temperature": 0.3}, auto=True, honour_client=False, locked=False)
    assert plan.patch == {} and plan.sources == {"temperature": "client"}


BASE = """
version: 1
default_route: greedy
backends:
  - name: default
    model: m
    replicas: ["http://127.0.0.1:8000"]
routes:
  - name: greedy
    strategy: single-pass
    backend: default
    sampling: {temperature: 0, stop: "END"}
    escalate_to:
      - {samples: 4, verifier: arithmetic, threshold: 0.5, sampling: {temperature: 0.8}}
      - {route: vote, verifier: confidence, threshold: 0.6}
  - name: vote
    strategy: best-of-n
    backend: default
"""


def test_good_ladder_parses() -> None:
    cfg = parse_config(BASE)
    r = cfg.route("greedy")
    assert r.sampling.fields() == {"temperature": 0.0, "stop": ["END"]}
    assert [x.label for x in r.escalate_to or ()] == ["samples:4", "vote"]


def test_one_step_form_is_a_one_rung_ladder() -> None:
    text = BASE.replace(
        """    escalate_to:
      - {samples: 4, verifier: arithmetic, threshold: 0.5, sampling: {temperature: 0.8}}
      - {route: vote, verifier: confidence, threshold: 0.6}
""",
        "    escalate_to: {route: vote, verifier: arithmetic, threshold: 0.5}\n",
    )
    r = parse_config(text).route("greedy")
    assert r.escalate_to is not None and [x.label for x in r.escalate_to] == ["vote"]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    return e.value.lines


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "sampling: {temperature: 0, stop",
            "sampling: {temperature: -1, stop",
            "r.yaml:routes[0].sampling.temperature: Input should be greater than or equal to 0",
        ),
        (
            "sampling: {temperature: 0, stop",
            "sampling: {temprature: 0, stop",
            "r.yaml:routes[0].sampling.temprature: unknown key; allowed:",
        ),
        (
            'stop: "END"}',
            'stop: ""}',
            "r.yaml:routes[0].sampling.stop: stop sequences must not be empty",
        ),
        (
            "{samples: 4,",
            "{samples: 0,",
            "r.yaml:routes[0].escalate_to[0].samples: Input should be greater than or equal to 1",
        ),
        (
            "{samples: 4,",
            "{samples: 4, route: vote,",
            "r.yaml:routes[0].escalate_to[0]: a rung is either",
        ),
        (
            "{route: vote, verifier: confidence",
            "{route: vote, sampling: {temperature: 1}, verifier: confidence",
            "r.yaml:routes[0].escalate_to[1]: `sampling` belongs to `samples` rungs",
        ),
        (
            "verifier: confidence",
            "verifier: oracle",
            "r.yaml:routes[0].escalate_to[1].verifier: Input should be",
        ),
        (
            "threshold: 0.6",
            "threshold: 1.5",
            "r.yaml:routes[0].escalate_to[1].threshold: Input should be less than or equal to 1",
        ),
        (
            "{route: vote,",
            "{route: nope,",
            "r.yaml:routes[0].escalate_to[1].route: unknown route 'nope'",
        ),
        (
            "{route: vote,",
            "{route: greedy,",
            "r.yaml:routes[0].escalate_to[1].route: a route cannot escalate to itself",
        ),
        (
            "    escalate_to:\n      - {samples: 4,",
            "    escalate_to: []\n    x_unused:\n      - {samples: 4,",
            "r.yaml:routes[0].escalate_to: List should have at least 1 item",
        ),
        (
            "{route: vote, verifier: confidence, threshold: 0.6}",
            "{route: vote, verifier: confidence, verifier_params: {signal: median}}",
            "r.yaml:routes[0].escalate_to[1].verifier_params.signal:",
        ),
    ],
)
def test_each_error_names_its_path(old: str, new: str, expected: str) -> None:
    assert old in BASE
    lines = errors_of(BASE.replace(old, new, 1))
    assert any(line.startswith(expected) for line in lines), lines


def test_unknown_rung_key_lists_the_allowed_ones() -> None:
    lines = errors_of(BASE.replace("{samples: 4,", "{sample: 4,", 1))
    assert any(
        line.startswith("r.yaml:routes[0].escalate_to[0].sample: unknown key; allowed: route,")
        for line in lines
    ), lines


def test_greedy_route_sampling_is_not_applied_to_n_choices() -> None:
    plan = plan_sampling(ROUTE, {"n": 3}, auto=True, honour_client=False, locked=False)
    assert plan.patch == {"top_k": 20} and "n > 1" in plan.why
    plan = plan_sampling(ROUTE, {"n": 1}, auto=True, honour_client=False, locked=False)
    assert plan.patch == {"temperature": 0.0, "top_k": 20}


def test_a_greedy_rung_of_several_samples_is_an_error() -> None:
    lines = errors_of(BASE.replace("sampling: {temperature: 0.8}}", "sampling: {temperature: 0}}"))
    assert any(
        line.startswith(
            "r.yaml:routes[0].escalate_to[0]: a rung of several samples cannot be greedy"
        )
        for line in lines
    ), lines
