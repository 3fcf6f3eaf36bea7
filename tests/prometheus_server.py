"""Prometheus for the tests: promtool and a throwaway Prometheus server.

Both binaries come from Debian's ``prometheus`` package. When one is missing and the tests
run as root with apt-get available (developer machines and CI here), ``find_or_install``
installs the package; otherwise the test fails and says how to install it.

``running_prometheus`` starts a private server on a free loopback port with its own config
and TSDB directory, waits until it is ready and stops it on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

INSTALL_HINT = "install it with: apt-get update && apt-get install -y prometheus"


def apt_install_prometheus() -> str:
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


def find_or_install(binary: str) -> str:
    """Path of ``binary`` (promtool or prometheus), installed through apt-get when missing
    and running as root; fails the test otherwise."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{binary} is not installed and cannot be installed from here; {INSTALL_HINT}")
    log = apt_install_prometheus()
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"installing Debian's prometheus package did not provide {binary}:\n{log}")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusError(AssertionError):
    """The server answered an API call with an error."""


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a ``/api/v1/<path>`` answer; raises PrometheusError on an error."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {r.status_code}: {r.text[:500]}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the current time: the result's series (vector) or [] ."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_prometheus(
    config: dict[str, Any],
    workdir: Path,
    files: dict[str, Path] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[PrometheusServer]:
    """A Prometheus server on ``config`` (written to ``workdir/prometheus.yml``; ``files``
    are copied next to it under the given names, e.g. the rule files it names)."""
    binary = find_or_install("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    for name, source in (files or {}).items():
        shutil.copyfile(source, workdir / name)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = _free_port()
    server = PrometheusServer(f"http://127.0.0.1:{port}", workdir / "prometheus.log")
    cmd = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{server.log()[-4000:]}")
            try:
                if httpx.get(server.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready:\n{server.log()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------------------
# The shipped dashboards and alert rules, as PromQL
# --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "configs" / "grafana" / "dashboards"
ALERTS_FILE = ROOT / "configs" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "configs" / "prometheus" / "prometheus.yml"

# Grafana's own variables, with the value the tests substitute.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON of configs/grafana/dashboards, by file name."""
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) if panel.get("type") == "row" else ()


def dashboard_queries() -> list[PanelQuery]:
    out = []
    for name, dash in load_dashboards().items():
        for panel in iter_panels(dash):
            for target in panel.get("targets", []):
                out.append(
                    PanelQuery(name, panel.get("title", ""), target["refId"], target["expr"])
                )
    return out


def variable_query(variable: dict[str, Any]) -> str:
    """The PromQL / label_values query of a `query` template variable."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query or variable.get("definition", ""))


def variable_defaults(dashboard: dict[str, Any]) -> dict[str, str]:
    """Values the tests substitute for the dashboard's variables: textbox/constant/custom
    variables their current value, query variables (always multi-value regexes) `.*`."""
    values = dict(BUILTIN_VARIABLES)
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] in ("textbox", "constant", "custom"):
            current = var.get("current", {}).get("value") or var.get("query")
            values[var["name"]] = str(current)
        else:
            values[var["name"]] = ".*"
    return values


def label_values(query: str) -> tuple[str, str]:
    """(series selector, label) of a ``label_values(selector, label)`` variable query."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
    assert m, f"only label_values(selector, label) variable queries are supported: {query!r}"
    return m.group(1).strip(), m.group(2)


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def variables_in(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with every Grafana variable replaced; KeyError names an unknown one."""
    return _VARIABLE.sub(lambda m: values[next(g for g in m.groups() if g)], expr)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- a little PromQL lexing: enough for the shipped expressions ---------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_OPEN, _CLOSE = "([{", ")]}"
_SET_OPERATORS = ("and", "or", "unless")
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(r"^\s*(?:(?:on|ignoring|group_left|group_right)\s*\([^)]*\)\s*)+")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def _top_level(expr: str) -> list[int]:
    """Nesting depth of each character of ``expr`` (strings count as nested)."""
    depth, out, i = 0, [0] * len(expr), 0
    while i < len(expr):
        ch = expr[i]
        if ch in "\"'`":
            m = _STRING.match(expr, i)
            end = m.end() if m else len(expr)
            for j in range(i, end):
                out[j] = depth + 1
            i = end
            continue
        if ch in _OPEN:
            depth += 1
        out[i] = depth
        if ch in _CLOSE:
            depth -= 1
            out[i] = depth + 1
        i += 1
    return out


def split_set_operations(expr: str) -> list[str]:
    """The operands of top-level ``and`` / ``or`` / ``unless`` (modifiers dropped)."""
    depth = _top_level(expr)
    parts, start = [], 0
    for m in re.finditer(r"\b(?:and|or|unless)\b", expr):
        if depth[m.start()] == 0:
            parts.append(expr[start : m.start()])
            start = m.end()
    parts.append(expr[start:])
    return [_MODIFIER.sub("", p).strip() for p in parts]


def strip_comparison(expr: str) -> str:
    """``expr`` up to its first top-level comparison operator (``bool`` dropped)."""
    depth = _top_level(expr)
    for i in range(len(expr)):
        if depth[i] == 0 and expr.startswith(_COMPARISONS, i):
            return expr[:i].strip()
    return expr.strip()


def alert_queries(expr: str) -> list[str]:
    """What an alert compares: each operand of its set operations, thresholds removed."""
    return [strip_comparison(part) for part in split_set_operations(expr)]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (functions, keywords, labels and variables aside)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = _VARIABLE.sub(" 1 ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names
