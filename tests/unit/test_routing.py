"""The router: features, rule classes, the quality/latency/cost policy, client hints."""

from __future__ import annotations

from typing import Any

import pytest

from routing.config import DeliberateConfig, Route
from routing.features import extract
from routing.loader import ConfigError, parse_config
from routing.policy import LiveLatency, Router

POLICY = """
default_route: single
backends: [{name: b, model: m, replicas: ["http://x:1"]}]
routes:
  - name: single
    strategy: single-pass
    backend: b
    measured:
      arithmetic: {quality: 0.30, p50_ms: 400, p95_ms: 900, tokens: 60}
      lookup: {quality: 0.90, p50_ms: 300, p95_ms: 600, tokens: 40}
  - name: think
    strategy: bounded-reasoning
    backend: b
    measured:
      arithmetic: {quality: 0.62, p50_ms: 4000, p95_ms: 9000, tokens: 400}
      lookup: {quality: 0.91, p50_ms: 3000, p95_ms: 6000, tokens: 350}
  - name: bon
    strategy: best-of-n
    backend: b
    measured:
      arithmetic: {quality: 0.70, p50_ms: 8000, p95_ms: 20000, tokens: 1500}
  - name: search
    strategy: prm-search
    backend: b
classes:
  - name: code
    match: {has_code: true}
  - name: arithmetic
    match: {min_operators: 1}
  - name: proof
    match: {keywords: [prove, "step by step"]}
  - name: tagged
    match: {tags: [extraction]}
  - name: lookup
    match: {max_chars: 200}
policy:
  default_class: open
  effort_routes: {high: bon, low: single}
  classes:
    arithmetic: {routes: [single, think, bon], min_quality: 0.6, latency_slo_ms: 30000}
    lookup: {routes: [single, think], min_quality: 0.8}
    proof: {routes: [think, bon, search], min_quality: 0.95, latency_slo_ms: 10000}
    open: {routes: [single, think]}
"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(parse_config(POLICY))


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("messages", "metadata", "cls", "why"),
    [
        (user("What is 17 + 25?"), None, "arithmetic", "operators"),
        (user("Fix this:\n```py\nprint(1)\n```"), None, "code", "code"),
        (user("Please prove it, step by step, for all n"), None, "proof", "keyword:prove"),
        (
            user("Pull the date out of this text."),
            {"task": "extraction"},
            "tagged",
            "tag:extraction",
        ),
        (user("Capital of France?"), None, "lookup", "length"),
        (user("x" * 300), None, "open", "default"),
        # the whole conversation counts, not just the last message
        (
            [*user("Compute 3 * 4 for me"), {"role": "assistant", "content": "Sure"}, *user("go")],
            None,
            "arithmetic",
            "operators",
        ),
    ],
)
def test_classes(
    router: Router, messages: list[dict[str, Any]], metadata: Any, cls: str, why: str
) -> None:
    m = router.classifier.classify(extract(messages, metadata))
    assert (m.name, m.why) == (cls, why)


def test_features_count_the_signals() -> None:
    f = extract(user("You must answer in exactly 3 words.\n- one\n- two\nWhat is 2*3 + 4?"))
    assert f.digits == 4 and f.operators == 2 and not f.has_code
    assert f.constraints >= 4  # must, exactly, two list items
    assert extract(user("hi"), {"tags": "A, b"}).tags == frozenset({"a", "b"})


def decide(router: Router, text: str, live: Any = None, **kw: Any) -> Any:
    d = router.decide("auto", user(text), live=live, **kw)
    assert d is not None
    return d


def test_cheapest_route_meeting_min_quality(router: Router) -> None:
    d = decide(router, "What is 17 + 25?")
    assert (d.request_class, d.route, d.source) == ("arithmetic", "think", "policy")
    assert d.reason.startswith("cheapest")
    views = {v.route: v for v in d.candidates}
    assert views["single"].quality == 0.30 and views["single"].kept  # kept, but below 0.6
    assert "class=arithmetic" in d.header_reason() and "route=think" in d.header_reason()


def test_slo_drops_slow_routes_with_live_queue(router: Router) -> None:
    # a 25 s queue pushes think (p95 9 s) and bon (20 s) past the 30 s SLO; single is left
    d = decide(router, "What is 17 + 25?", live=lambda r: LiveLatency(queue_ms=25_000))
    views = {v.route: v for v in d.candidates}
    assert not views["think"].kept and "SLO" in views["think"].why
    assert d.route == "single" and "best quality within the SLO" in d.reason


def test_nothing_good_enough_takes_best_quality(router: Router) -> None:
    # proof wants q >= 0.95: nobody is measured that good; think/bon have no proof data...
    d = decide(router, "Prove it step by step.")
    assert d.request_class == "proof" and "best quality" in d.reason


def test_unmeasured_routes_use_the_live_estimate_for_the_slo(router: Router) -> None:
    def live(route: Route) -> LiveLatency:
        return LiveLatency(unmeasured_ms=50_000 if route.name == "search" else 1000)

    d = decide(router, "Prove it step by step.", live=live)
    views = {v.route: v for v in d.candidates}
    assert not views["search"].kept and views["search"].quality_source == "unknown"


def test_hints_override_classification(router: Router) -> None:
    d = decide(router, "What is 17 + 25?", reasoning_effort="high")
    assert (d.route, d.source) == ("bon", "effort")
    d = decide(router, "What is 17 + 25?", tenant_route="single")
    assert (d.route, d.source) == ("single", "tenant")
    d = router.decide("search", user("What is 17 + 25?"))
    assert d is not None and (d.request_class, d.route, d.source) == (
        "explicit",
        "search",
        "explicit",
    )
    assert router.decide("nope", user("hi")) is None


def test_predictor_blends_with_the_measured_table() -> None:
    class Fixed:
        def predict(self, text: str) -> dict[str, float]:
            return {"single": 0.9, "think": 0.1}

    cfg = parse_config(
        POLICY.replace(
            "default_class: open", "default_class: open\n  predictor: {path: p.json, weight: 0.5}"
        )
    )
    d = Router(cfg, Fixed()).decide("auto", user("What is 17 + 25?"))
    assert d is not None
    views = {v.route: v for v in d.candidates}
    assert (
        views["single"].quality == pytest.approx(0.6) and views["single"].quality_source == "blend"
    )
    assert d.route == "single"  # now the cheapest at q >= 0.6


def test_no_policy_means_default_route() -> None:
    cfg = parse_config(
        "default_route: a\nbackends: [{name: b, model: m, replicas: ['http://x:1']}]\n"
        "routes: [{name: a, strategy: single-pass, backend: b}]\n"
    )
    d = Router(cfg).decide("auto", user("What is 1 + 1?"))
    assert d is not None and (d.route, d.source) == ("a", "default")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("routes: [single, think, bon]", "routes: [single, nope]"),
            "policy.classes.arithmetic.routes[1]: unknown route 'nope'",
        ),
        (
            ("default_class: open", "default_class: closed"),
            "policy.default_class: 'closed' has no entry",
        ),
        (
            ("{high: bon, low: single}", "{high: gone}"),
            "policy.effort_routes.high: unknown route 'gone'",
        ),
        (("max_chars: 200}", "max_chars: 200, regex: ['(']}"), "invalid regular expression"),
        (("    proof:", "    prooof:"), "policy.classes.prooof: unknown class 'prooof'"),
    ],
)
def test_policy_errors_name_the_path(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(POLICY.replace(*edit))
    assert any(message in line for line in e.value.lines), e.value.lines


def test_escalation_must_name_another_route() -> None:
    text = POLICY.replace(
        "  - name: search\n", "  - name: search\n    escalate_to: {route: search}\n"
    )
    with pytest.raises(ConfigError, match="cannot escalate to itself"):
        parse_config(text)


def test_shipped_policy_file_is_valid() -> None:
    from pathlib import Path

    from routing.loader import load_config

    cfg: DeliberateConfig = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"
    )
    assert cfg.version == 1


def test_a_down_pool_is_passed_over(router: Router) -> None:
    def live(route: Route) -> LiveLatency:
        return LiveLatency(up=route.name != "think")

    d = decide(router, "What is 17 + 25?", live=live)
    views = {v.route: v for v in d.candidates}
    assert not views["think"].kept and "no healthy replica" in views["think"].why
    assert d.route == "bon"  # the next cheapest route at q >= 0.6


def test_huge_conversations_are_scanned_head_and_tail() -> None:
    f = extract(user("What is 2 + 2? " + "blah " * 1_000_000 + " 3 * 3"))
    assert f.chars > 5_000_000 and len(f.text) <= 65_600
    assert f.operators == 2  # both ends are still seen
