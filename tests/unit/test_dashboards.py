"""configs/grafana: the shipped dashboards are well-formed Grafana JSON that the provisioned
data source can run, and every metric they (and the alert rules) query is one the gateway or
vLLM exports.

Whether each query returns data on a real Prometheus scraping a real gateway is
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.prometheus_server import (
    BUILTIN_VARIABLES,
    DASHBOARD_DIR,
    ROOT,
    alert_rules,
    dashboard_queries,
    iter_panels,
    label_values,
    load_dashboards,
    metric_names,
    variable_query,
    variables_in,
)

PROVISIONING = ROOT / "configs" / "grafana" / "provisioning"
COMPOSE_FILE = ROOT / "docker-compose.yml"
VLLM_METRICS = ROOT / "tests" / "data" / "vllm_metrics_cpu.txt"

EXPECTED = {
    "deliberate-overview.json": ("deliberate-overview", "Deliberate overview"),
    "deliberate-backends.json": ("deliberate-backends", "Deliberate backends"),
    "deliberate-budgets.json": ("deliberate-budgets", "Deliberate budgets"),
}
PANEL_TYPES = {"timeseries", "stat"}

# What the gateway exports on /metrics (docs/architecture.md, metrics/).
GATEWAY_COUNTERS = {
    "deliberate_requests_total",
    "deliberate_tokens_total",
    "deliberate_admission_downgrades_total",
    "deliberate_admission_rejections_total",
    "deliberate_budget_settled_tokens_total",
    "deliberate_budget_store_errors_total",
    "deliberate_config_reloads_total",
    "deliberate_route_decisions_total",
    "deliberate_escalations_total",
    "deliberate_ladder_outcomes_total",
    "deliberate_escalation_wins_total",
    "deliberate_ladder_hidden_tokens_total",
    "deliberate_hidden_tokens_total",
    "deliberate_strategy_stops_total",
    "deliberate_verifier_calls_total",
    "deliberate_backend_prefix_cache_hits_total",
    "deliberate_backend_prefix_cache_queries_total",
    "deliberate_backend_preemptions_total",
    "deliberate_trace_records_total",
    "deliberate_trace_export_failures_total",
}
GATEWAY_GAUGES = {
    "deliberate_build_info",
    "deliberate_budget_reservations_in_flight",
    "deliberate_tenant_budget_remaining_tokens",
    "deliberate_backend_up",
    "deliberate_backend_kv_usage_ratio",
    "deliberate_backend_requests_running",
    "deliberate_backend_requests_waiting",
    "deliberate_backend_prefix_cache_hit_ratio",
    "deliberate_backend_generation_tokens_per_second",
    "deliberate_backend_snapshot_age_seconds",
}
GATEWAY_HISTOGRAMS = {
    "deliberate_request_duration_seconds",
    "deliberate_ttft_seconds",
    "deliberate_hidden_ttft_share",
    "deliberate_inter_token_latency_seconds",
    "deliberate_request_tokens",
    "deliberate_strategy_samples",
    "deliberate_strategy_backend_calls",
    "deliberate_verifier_seconds",
    "deliberate_vote_margin",
    "deliberate_kv_estimate_bytes",
}
# The scraper's ratio over its own last scrape interval, absent while a replica is idle: the
# backends dashboard computes the same ratio from the hit / query counters over 5 minutes.
NOT_ON_DASHBOARDS = {"deliberate_backend_prefix_cache_hit_ratio", "deliberate_trace_records_total"}
# Prometheus' own per-target series.
PROMETHEUS_SERIES = {"up"}


def _vllm_types() -> dict[str, str]:
    """Metric families of a real vLLM-CPU /metrics capture, by name: counter, gauge, ..."""
    types = {}
    for line in VLLM_METRICS.read_text(encoding="utf-8").splitlines():
        if line.startswith("# TYPE vllm:"):
            _, _, name, kind = line.split()
            types[name] = kind
    return types


def _known() -> tuple[set[str], set[str], set[str]]:
    """(counters, gauges, histogram families) the dashboards and alerts may read."""
    vllm = _vllm_types()
    counters = GATEWAY_COUNTERS | {n for n, k in vllm.items() if k == "counter"}
    gauges = GATEWAY_GAUGES | PROMETHEUS_SERIES | {n for n, k in vllm.items() if k == "gauge"}
    histograms = GATEWAY_HISTOGRAMS | {n for n, k in vllm.items() if k == "histogram"}
    return counters, gauges, histograms


def _series_names() -> set[str]:
    counters, gauges, histograms = _known()
    parts = {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}
    return counters | gauges | parts


def _all_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard target, template variable query and alert rule."""
    out = [(q.where(), q.expr) for q in dashboard_queries()]
    for name, dash in load_dashboards().items():
        for var in dash.get("templating", {}).get("list", []):
            if var["type"] == "query":
                selector, _ = label_values(variable_query(var))
                out.append((f"{name} / variable {var['name']}", selector))
    out += [(f"alerts.yml / {r['alert']}", str(r["expr"])) for r in alert_rules()]
    return out


def _datasource_uids() -> set[str]:
    uids = set()
    for path in (PROVISIONING / "datasources").glob("*.y*ml"):
        for ds in yaml.safe_load(path.read_text(encoding="utf-8")).get("datasources", []):
            assert ds.get("type") == "prometheus", f"{path.name}: unexpected data source {ds}"
            uids.add(ds["uid"])
    return uids


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def test_the_three_dashboards_ship(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == set(EXPECTED), f"dashboards in {DASHBOARD_DIR}: {set(dashboards)}"
    for name, (uid, title) in EXPECTED.items():
        assert (dashboards[name]["uid"], dashboards[name]["title"]) == (uid, title), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_structure(name: str, dashboards: dict[str, dict[str, Any]]) -> None:
    dash = dashboards[name]
    assert dash.get("uid") and dash.get("title"), f"{name} needs a uid and a title"
    assert isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 39, (
        f"{name}: schemaVersion {dash.get('schemaVersion')} is older than Grafana 11's 39"
    )
    panels = list(iter_panels(dash))
    assert panels, f"{name} has no panels"
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), f"{name}: panel ids must be integers: {ids}"
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"

    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel.get("title")
        assert title, f"{name}: panel {panel.get('id')} has no title"
        grid = panel.get("gridPos", {})
        assert all(isinstance(grid.get(k), int) for k in "hwxy"), f"{name}/{title}: gridPos"
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{name}/{title}: wider than the 24-column grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), title)
                assert other == title, f"{name}: panels {other!r} and {title!r} overlap"
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, f"{name}/{title}: panel type {panel['type']}"
        assert panel.get("description"), f"{name}/{title}: needs a description"
        assert "unit" in panel.get("fieldConfig", {}).get("defaults", {}), (
            f"{name}/{title}: set a unit"
        )
        targets = panel.get("targets", [])
        assert targets, f"{name}/{title}: no queries"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{name}/{title}: refIds {refs}"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{name}/{title}: empty expr"
            assert "legendFormat" in target, f"{name}/{title}/{target['refId']}: no legend"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_datasources_resolve(name: str, dashboards: dict[str, dict[str, Any]]) -> None:
    uids = _datasource_uids()
    assert "prometheus" in uids, f"the provisioned data sources are {uids}"
    dash = dashboards[name]
    ds_variables = {
        v["name"] for v in dash.get("templating", {}).get("list", []) if v["type"] == "datasource"
    }

    def resolvable(ref: Any) -> bool:
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        if isinstance(uid, str) and variables_in(uid):
            return variables_in(uid) <= ds_variables
        return uid in uids

    for panel in iter_panels(dash):
        if panel["type"] == "row":
            continue
        for target in panel["targets"]:
            ref = target.get("datasource") or panel.get("datasource")
            assert ref and resolvable(ref), (
                f"{name}/{panel['title']}/{target['refId']}: data source {ref} is not one of "
                f"the provisioned uids {uids} or a data source variable"
            )
    for var in dash.get("templating", {}).get("list", []):
        if var["type"] == "query":
            assert resolvable(var.get("datasource")), f"{name}: variable {var['name']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variables_are_declared_and_regex_matched(
    name: str, dashboards: dict[str, dict[str, Any]]
) -> None:
    dash = dashboards[name]
    declared = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    for panel in iter_panels(dash):
        for target in panel.get("targets", []):
            expr = target["expr"]
            unknown = variables_in(expr) - declared - set(BUILTIN_VARIABLES)
            assert not unknown, f"{name}/{panel['title']}: undeclared variables {unknown}"
            # Multi-value / All variables expand to regexes: only =~ and !~ can take them.
            for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
                if variables_in(m.group(3)):
                    assert m.group(2) in ("=~", "!~"), (
                        f"{name}/{panel['title']}: use =~ for {m.group(0)}"
                    )


def test_metric_names_are_exported() -> None:
    known = _series_names()
    for where, expr in _all_exprs():
        names = metric_names(expr)
        unknown = names - known
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr!r}"


def test_queries_read_every_new_metric() -> None:
    counters, gauges, histograms = _known()
    read = set().union(*(metric_names(expr) for _, expr in _all_exprs()))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in read}
    gateway = GATEWAY_COUNTERS | GATEWAY_GAUGES | GATEWAY_HISTOGRAMS
    unused = gateway - read - families - NOT_ON_DASHBOARDS
    assert not unused, f"no dashboard panel or alert reads {sorted(unused)}"


def test_rates_apply_to_counters_and_quantiles_to_buckets() -> None:
    counters, gauges, histograms = _known()
    rate_ok = counters | {f"{h}_{s}" for h in histograms for s in ("bucket", "sum", "count")}
    for where, expr in _all_exprs():
        for m in re.finditer(r"\b(rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)", expr):
            assert m.group(2) in rate_ok, f"{where}: {m.group(1)}() of non-counter {m.group(2)}"
        for m in re.finditer(r"histogram_quantile\s*\(", expr):
            depth, end = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(expr[end], 0)
                end += 1
            call = expr[m.start() : end]
            names = metric_names(call)
            assert names and all(n.endswith("_bucket") for n in names), (
                f"{where}: histogram_quantile over {names}"
            )
            assert re.search(r"\bby\s*\([^)]*\ble\b", call), f"{where}: keep `le` in {call}"
        for name in metric_names(expr):
            base, _, suffix = name.rpartition("_")
            if suffix in ("bucket", "sum", "count") and base in histograms:
                continue
            assert name not in histograms, f"{where}: {name} is a histogram family"


def test_provisioning_loads_the_dashboards_dir() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "deliberate.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    path = PurePosixPath(provider["options"]["path"])
    grafana = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        host, container = str(volume).split(":")[:2]
        mounts[PurePosixPath(container)] = (COMPOSE_FILE.parent / host).resolve()
    assert mounts.get(path) == DASHBOARD_DIR.resolve(), (
        f"the provider loads {path}; docker-compose.yml mounts {mounts}"
    )
    assert mounts.get(PurePosixPath("/etc/grafana/provisioning")) == PROVISIONING.resolve()
