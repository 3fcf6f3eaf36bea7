"""configs/prometheus: the alert rules and scrape config pass Prometheus' own checker,
and the alerts fire (and stay quiet) when they should, per `promtool test rules`.

promtool comes with Debian's `prometheus` package. When it is missing and the
tests run as root (developer machines and CI here), the session fixture installs
it with apt-get (tests/prometheus_server.py); otherwise the tests fail and say how
to install it.

The shipped unit tests of the rules are configs/prometheus/alerts.test.yml: every
alert has a case where it fires and one where it stays quiet.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_server import find_or_install

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
PROMETHEUS_FILE = PROMETHEUS_DIR / "prometheus.yml"

ALERT_TESTS_FILE = PROMETHEUS_DIR / "alerts.test.yml"

SEVERITIES = {"critical", "warning"}


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool, installed through apt-get when missing and running as root."""
    return find_or_install("promtool")


def _run(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_expected_alerts_are_defined() -> None:
    alerts = _alerts()
    assert " ".join(str(alerts["GatewayDown"]["expr"]).split()) == 'up{job="deliberate"} == 0', (
        "GatewayDown should fire on up{job='deliberate'} == 0"
    )
    assert " ".join(str(alerts["BackendDown"]["expr"]).split()) == 'up{job="vllm"} == 0', (
        "BackendDown should fire on up{job='vllm'} == 0"
    )


# The alerts added for the Observability issue, and a metric each must watch.
EXPECTED_ALERTS = {
    "DeliberateBackendReplicaDown": "deliberate_backend_up",
    "DeliberateHighErrorRate": "deliberate_requests_total",
    "DeliberateTTFTSLOBurnFast": "deliberate_ttft_seconds_bucket",
    "DeliberateTTFTSLOBurnSlow": "deliberate_ttft_seconds_bucket",
    "DeliberateHiddenTokenRatioSpike": "deliberate_tokens_total",
    "DeliberateRequestTokensOutlier": "deliberate_request_tokens_bucket",
    "DeliberateKVCachePressure": "deliberate_backend_kv_usage_ratio",
    "DeliberateBudgetStoreErrors": "deliberate_budget_store_errors_total",
    "DeliberateConfigReloadFailed": "deliberate_config_reloads_total",
    "DeliberateEscalationsNotPaying": "deliberate_ladder_outcomes_total",
    "DeliberateTraceExportFailing": "deliberate_trace_export_failures_total",
}

_DURATION = re.compile(r"^(?:\d+[smhdwy])+$")


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_observability_alerts_are_defined() -> None:
    alerts = _alerts()
    for name, metric in EXPECTED_ALERTS.items():
        assert name in alerts, f"alerts.yml has no alert {name}"
        assert metric in str(alerts[name]["expr"]), f"{name} should watch {metric}"
    # Multi-window burn alerts: a short and a long window each.
    for name, windows in (
        ("DeliberateTTFTSLOBurnFast", ("[5m]", "[1h]")),
        ("DeliberateTTFTSLOBurnSlow", ("[30m]", "[6h]")),
    ):
        expr = " ".join(str(alerts[name]["expr"]).split())
        assert all(w in expr for w in windows) and " and " in expr, (
            f"{name} should require both {windows} windows: {expr}"
        )
    # Escalations not paying: a win share below 5 % AND enough escalations to judge, over 1h.
    expr = " ".join(str(alerts["DeliberateEscalationsNotPaying"]["expr"]).split())
    assert "[1h]" in expr and "< 0.05" in expr and " and " in expr and "> 0.01" in expr, expr
    assert alerts["DeliberateEscalationsNotPaying"]["for"] == "30m"


def test_every_rule_has_for_severity_and_annotations() -> None:
    rules = _rules()
    names = [r.get("alert") for r in rules]
    assert all(names), f"every rule of alerts.yml should be an alert: {names}"
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in rules:
        name = rule["alert"]
        assert _DURATION.match(str(rule.get("for", ""))), f"{name} needs a `for` duration"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, (
            f"{name} needs a severity label in {SEVERITIES}"
        )
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name} needs a {key} annotation"


def test_alert_unit_tests_cover_every_alert() -> None:
    spec = yaml.safe_load(ALERT_TESTS_FILE.read_text(encoding="utf-8"))
    assert [Path(f).name for f in spec["rule_files"]] == [ALERTS_FILE.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    for name in sorted(_alerts()):
        assert name in firing, f"{ALERT_TESTS_FILE.name} has no case where {name} fires"
        assert name in quiet, f"{ALERT_TESTS_FILE.name} has no case where {name} stays quiet"


def test_promtool_unit_tests_pass(promtool: str) -> None:
    proc = _run(promtool, "test", "rules", ALERT_TESTS_FILE.name, cwd=PROMETHEUS_DIR)
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_check_rules(promtool: str) -> None:
    proc = _run(promtool, "check", "rules", str(ALERTS_FILE))
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_check_config(promtool: str) -> None:
    # Also validates the rule files the config names, resolved next to it.
    proc = _run(promtool, "check", "config", str(PROMETHEUS_FILE))
    assert proc.returncode == 0, f"promtool check config failed:\n{proc.stdout}\n{proc.stderr}"


def test_alerts_fire_only_when_a_target_is_down(promtool: str, tmp_path: Path) -> None:
    alerts = _alerts()
    gateway_for = alerts["GatewayDown"].get("for", "0s")
    backend_for = alerts["BackendDown"].get("for", "0s")

    def firing(alert: str, job: str, instance: str) -> dict[str, Any]:
        # Annotations are templates; promtool compares them expanded.
        annotations = {
            k: str(v).replace("{{ $labels.instance }}", instance)
            for k, v in alerts[alert]["annotations"].items()
        }
        labels = {**alerts[alert].get("labels", {}), "job": job, "instance": instance}
        return {"exp_labels": labels, "exp_annotations": annotations}

    # Two cases of 10 minutes scraped every 15s: first the gateway is down and
    # vLLM up, then the reverse. Each alert must fire for its own job only,
    # checked at 5m, well past both `for` durations.
    unit_tests: dict[str, Any] = {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'up{job="deliberate", instance="gateway:8080"}', "values": "0x40"},
                    {"series": 'up{job="vllm", instance="vllm:8000"}', "values": "1x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "GatewayDown",
                        "exp_alerts": [firing("GatewayDown", "deliberate", "gateway:8080")],
                    },
                    {"eval_time": "5m", "alertname": "BackendDown", "exp_alerts": []},
                ],
            },
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'up{job="deliberate", instance="gateway:8080"}', "values": "1x40"},
                    {"series": 'up{job="vllm", instance="vllm:8000"}', "values": "0x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "GatewayDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "BackendDown",
                        "exp_alerts": [firing("BackendDown", "vllm", "vllm:8000")],
                    },
                ],
            },
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(unit_tests, sort_keys=False), encoding="utf-8")
    proc = _run(promtool, "test", "rules", str(test_file), cwd=tmp_path)
    assert proc.returncode == 0, (
        f"promtool test rules failed (GatewayDown for={gateway_for}, BackendDown "
        f"for={backend_for}):\n{proc.stdout}\n{proc.stderr}"
    )
