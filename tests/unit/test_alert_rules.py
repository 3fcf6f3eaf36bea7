"""configs/prometheus: the alert rules and scrape config pass Prometheus' own checker,
and the alerts fire (and stay quiet) when they should, per `promtool test rules`.

promtool comes with Debian's `prometheus` package. When it is missing and the
tests run as root (developer machines and CI here), the session fixture installs
it with apt-get; otherwise the tests fail and say how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
PROMETHEUS_FILE = PROMETHEUS_DIR / "prometheus.yml"

INSTALL_HINT = "install it with: apt-get update && apt-get install -y prometheus"


def _apt_install_prometheus() -> str:
    """Install Debian's prometheus package; returns apt's output for error messages."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = []
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        output.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-2000:]}")
        output.append(proc.stderr[-2000:])
        if proc.returncode != 0:
            break
    return "\n".join(output)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool, installed through apt-get when missing and running as root."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"promtool is not installed and cannot be installed from here; {INSTALL_HINT}")
    log = _apt_install_prometheus()
    found = shutil.which("promtool")
    if not found:
        pytest.fail(f"installing Debian's prometheus package did not provide promtool:\n{log}")
    return found


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
