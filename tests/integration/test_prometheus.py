"""The shipped dashboards and alert rules on a REAL Prometheus.

Prometheus (Debian's package; installed by tests/prometheus_server.py when missing) scrapes
every second, with the shipped scrape jobs (`deliberate`, `vllm`) and the shipped alert rules:

* the session gateway (the shipped routes file in front of the real vLLM backend), and
* a second gateway on the same policy plus what the session one cannot show: tenants (401 and
  429 rejections, the opt-in per-tenant gauge), routes whose 1 ms TTFT SLO makes admission
  step down or refuse (downgrades, 503 overloaded), a cascade (escalations) and a one-round
  refine (verifier calls);
* the real vLLM backend.

Real traffic goes through both gateways while Prometheus scrapes. Then every query of every
panel of every dashboard must return at least one series (no silently empty panel), every
template variable must have values, every alert rule must load and evaluate with health
`ok`, and what each alert compares (its expression without the threshold) must return series.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.integration.conftest import MODEL, free_port, running_gateway
from tests.prometheus_server import (
    ALERTS_FILE,
    PROMETHEUS_CONFIG,
    PrometheusError,
    PrometheusServer,
    alert_queries,
    alert_rules,
    iter_panels,
    label_values,
    load_dashboards,
    running_prometheus,
    substitute,
    variable_defaults,
    variable_query,
)

pytestmark = pytest.mark.integration

SCRAPE_S = 1
OBS_KEY = f"sk-obs-{uuid.uuid4().hex}"
TINY_KEY = f"sk-obs-tiny-{uuid.uuid4().hex}"
ARITHMETIC = [{"role": "user", "content": "What is 23 + 48?"}]
HELLO = [{"role": "user", "content": "Say hello."}]


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _host(url: str) -> str:
    return urlsplit(url).netloc


@pytest.fixture(scope="module")
def events_metrics() -> str:
    """The events gateway's DELIBERATE_METRICS_BIND: with tenants, its main port serves
    /metrics to admin keys only, so Prometheus scrapes this private listener."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def events_gateway(
    gateway_config: Path, tmp_path_factory: pytest.TempPathFactory, events_metrics: str
) -> Iterator[str]:
    """A gateway on the session policy plus tenants, SLO-tight routes and a cascade."""
    config = yaml.safe_load(gateway_config.read_text())
    config["routes"] += [
        # Admission's predicted TTFT always breaks a 1 ms SLO: stepped down to single-pass...
        {
            "name": "obs-slo-downgrade",
            "strategy": "bounded-reasoning",
            "backend": "default",
            "slo": {"ttft_ms": 1},
            "downgrade_to": "single-pass",
        },
        # ... or, with nowhere to step down to, refused (503 overloaded).
        {
            "name": "obs-slo-reject",
            "strategy": "single-pass",
            "backend": "default",
            "slo": {"ttft_ms": 1},
        },
        # One short critique-and-revise round, scored by the arithmetic verifier.
        {
            "name": "obs-refine",
            "strategy": "refine",
            "backend": "default",
            "params": {"rounds": 1, "max_tokens": 8, "critique_max_tokens": 8},
        },
        # A cascade: one pass, checked by the arithmetic verifier, best-of-n below 0.5.
        {
            "name": "obs-cascade",
            "strategy": "single-pass",
            "backend": "default",
            "escalate_to": {"route": "best-of-n", "verifier": "arithmetic", "threshold": 0.5},
        },
    ]
    config["tenants"] = [
        {
            "name": "obs",
            "key_sha256": _sha256(OBS_KEY),
            "tokens_per_minute": 1_000_000,
            "requests_per_minute": 1_000,
        },
        # One request a day (windows are aligned to the epoch: a daily one is not crossed
        # between two requests, see _drive_traffic).
        {"name": "obs-tiny", "key_sha256": _sha256(TINY_KEY), "requests_per_day": 1},
    ]
    workdir = tmp_path_factory.mktemp("events-gateway")
    path = workdir / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "DELIBERATE_METRICS_TENANT_LABELS": "true",
        "DELIBERATE_METRICS_BIND": events_metrics,
        # A trace sink, so the trace-export series (and their alert's query) exist.
        "DELIBERATE_TRACE_SINK": "file",
        "DELIBERATE_TRACE_FILE": str(workdir / "traces.jsonl"),
    }
    with running_gateway(path, workdir, env) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(
    gateway_url: str,
    events_gateway: str,
    events_metrics: str,
    backend_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    """Prometheus on the shipped scrape config and rules, retargeted at the test processes."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"] = {
        "scrape_interval": f"{SCRAPE_S}s",
        "scrape_timeout": f"{SCRAPE_S}s",
        "evaluation_interval": f"{SCRAPE_S}s",
    }
    targets = {
        "deliberate": [_host(gateway_url), events_metrics],
        "vllm": [_host(backend_url)],
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"prometheus.yml scrape jobs: {set(jobs)}"
    for name, job in jobs.items():
        job["static_configs"] = [{"targets": targets[name]}]
    rule_files = {Path(f).name: ALERTS_FILE.parent / f for f in config["rule_files"]}
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus"), rule_files) as prom:
        # Every target scraped (zero-valued series included) before any traffic.
        _wait_for(
            lambda: len(prom.query("up == 1")) == 3,
            "all three targets up",
            prom,
        )
        yield prom


def _wait_for(condition: Any, what: str, prom: PrometheusServer, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            targets = prom.api("targets")["activeTargets"]
            health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
            pytest.fail(f"timed out waiting for {what}; targets: {health}\n{prom.log()[-3000:]}")
        time.sleep(0.25)


def _chat(
    client: httpx.Client, base: str, model: str, status: int, key: str | None = None, **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": extra.pop("messages", HELLO), "max_tokens": 8, **extra}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == status, f"{model}: {r.status_code} {r.text[:500]}"
    return r


def _drive_traffic(gateway: str, events: str) -> None:
    """A few small requests that touch every panel: single pass (streamed and not), auto
    routing, best-of-n, the shipped escalation ladder, thinking, a 404, a 400, a dead pool; on
    the second gateway a downgrade, an overload, a cascade, a verified refine round, a 401 and
    a 429."""
    with httpx.Client(timeout=300) as c:
        _chat(c, gateway, "single-pass", 200)
        with c.stream(
            "POST",
            f"{gateway}/v1/chat/completions",
            json={
                "model": "single-pass",
                "messages": HELLO,
                "max_tokens": 16,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as r:
            assert r.status_code == 200
            assert any(line.startswith("data: [DONE]") for line in r.iter_lines())
        _chat(c, gateway, "auto", 200, messages=ARITHMETIC)
        _chat(c, gateway, MODEL, 200)
        _chat(c, gateway, "best-of-n", 200, messages=ARITHMETIC)
        _chat(c, gateway, "greedy-ladder", 200, messages=ARITHMETIC)  # the shipped ladder
        _chat(c, gateway, "bounded-reasoning", 200, reasoning_effort="minimal")
        _chat(c, gateway, "no-such-model", 404)
        _chat(c, gateway, "single-pass", 400, messages=[{"role": "nobody", "content": "x"}])
        _chat(c, gateway, "dead-route", 503)

        _chat(c, events, "obs-slo-downgrade", 200, OBS_KEY)
        _chat(c, events, "obs-slo-reject", 503, OBS_KEY)
        _chat(c, events, "obs-cascade", 200, OBS_KEY, messages=ARITHMETIC)
        _chat(c, events, "obs-refine", 200, OBS_KEY, messages=ARITHMETIC)
        _chat(c, events, "single-pass", 401)
        if (to_midnight := 86_400 - time.time() % 86_400) < 30:
            time.sleep(to_midnight + 1)
        _chat(c, events, "single-pass", 200, TINY_KEY)
        _chat(c, events, "single-pass", 429, TINY_KEY)


@pytest.fixture(scope="module")
def scraped(prometheus: PrometheusServer, gateway_url: str, events_gateway: str) -> float:
    """Drive the traffic, then wait for three scrapes of every target after it and for every
    rule to be evaluated. Returns when the traffic ended (epoch seconds)."""
    _drive_traffic(gateway_url, events_gateway)
    ended = time.time()

    def scraped_thrice() -> bool:
        # timestamp(up) is the time of each target's latest scrape.
        last = prometheus.query("timestamp(up)")
        return len(last) == 3 and all(float(s["value"][1]) >= ended + 2 * SCRAPE_S for s in last)

    _wait_for(scraped_thrice, "three scrapes of every target after the traffic", prometheus)

    def evaluated() -> bool:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return len(rules) == len(alert_rules()) and all(
            r["health"] == "ok" and r.get("evaluationTime") is not None for r in rules
        )

    _wait_for(evaluated, "every rule evaluated with health ok", prometheus, timeout_s=30)
    return ended


def _returns_series(prom: PrometheusServer, expr: str) -> str | None:
    """None when ``expr`` returns at least one series, else what went wrong."""
    try:
        result = prom.query(expr)
    except PrometheusError as e:
        return f"query error: {e}"
    return None if result else "no series"


def test_targets_are_scraped(prometheus: PrometheusServer, scraped: float) -> None:
    # At least one successful scrape of each target in the last 5 s (a single scrape may
    # time out on a busy machine at a 1 s interval).
    up = {
        f"{s['metric']['job']} {s['metric']['instance']}": s["value"][1]
        for s in prometheus.query("max_over_time(up[5s])")
    }
    assert sorted(up.values()) == ["1", "1", "1"], f"scrape targets: {up}"


def test_every_dashboard_panel_returns_series(prometheus: PrometheusServer, scraped: float) -> None:
    problems, checked = [], 0
    for name, dash in load_dashboards().items():
        values = variable_defaults(dash)
        for panel in iter_panels(dash):
            for target in panel.get("targets", []):
                expr = substitute(target["expr"], values)
                checked += 1
                if (problem := _returns_series(prometheus, expr)) is not None:
                    problems.append(
                        f"{name} / {panel['title']!r} / {target['refId']}: {problem}\n    {expr}"
                    )
    assert checked > 50, f"only {checked} queries found"
    assert not problems, f"{len(problems)} of {checked} panel queries are empty:\n" + "\n".join(
        problems
    )


def test_every_template_variable_has_values(prometheus: PrometheusServer, scraped: float) -> None:
    for name, dash in load_dashboards().items():
        for var in dash.get("templating", {}).get("list", []):
            if var["type"] != "query":
                continue
            selector, label = label_values(variable_query(var))
            found = prometheus.api(f"label/{label}/values", **{"match[]": selector})
            assert found, f"{name}: variable {var['name']} ({variable_query(var)}) has no values"


def test_every_alert_rule_loads_and_evaluates(prometheus: PrometheusServer, scraped: float) -> None:
    groups = prometheus.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    shipped = {r["alert"] for r in alert_rules()}
    assert set(loaded) == shipped, f"loaded {sorted(loaded)}, shipped {sorted(shipped)}"
    unhealthy = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
    assert not unhealthy, f"rules that do not evaluate: {unhealthy}"


def test_every_alert_query_returns_series(prometheus: PrometheusServer, scraped: float) -> None:
    problems = []
    for rule in alert_rules():
        for query in alert_queries(str(rule["expr"])):
            if (problem := _returns_series(prometheus, query)) is not None:
                problems.append(f"{rule['alert']}: {problem}\n    {query}")
    assert not problems, "alert queries without series:\n" + "\n".join(problems)
