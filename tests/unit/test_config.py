"""Policy-file validation: every error path gives a `file:path: message` line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from routing.loader import ConfigError, ConfigUnreadable, load_config, parse_config
from routing.resolve import RouteTable, clashes

GOOD = """
version: 1
default_route: single-pass
backends:
  - name: default
    model: m
    replicas: ["http://127.0.0.1:8000"]
routes:
  - name: single-pass
    strategy: single-pass
    backend: default
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    return e.value.lines


def test_shipped_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "routes.yaml")
    assert cfg.default_route == "single-pass"
    assert [r.name for r in cfg.routes] == [
        "single-pass",
        "sampled-single-pass",
        "greedy-ladder",
        "confidence-ladder",
        "bounded-reasoning",
        "best-of-n",
        "self-consistency",
        "adaptive-consistency",
        "adaptive-confidence",
        "refine",
        "prm-search",
    ]
    assert clashes(cfg) == []


def test_prm_example_and_prm_backend_checks() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "examples" / "prm.yaml")
    assert cfg.pools_in_use() == ["default", "prm"]
    assert clashes(cfg) == []
    text = (root / "configs" / "examples" / "prm.yaml").read_text()
    lines = errors_of(text.replace("prm_backend: prm", "prm_backend: nowhere"))
    assert lines == [
        "r.yaml:routes[1].params.prm_backend: unknown backend 'nowhere'; "
        "backends: ['default', 'prm']"
    ]
    lines = errors_of(text.replace("prm_backend: prm", "prm_backend: default"))
    assert lines[0].startswith(
        "r.yaml:routes[1].params.prm_backend: backend 'default' has no `prm:`"
    )


def test_good_config_defaults() -> None:
    cfg = parse_config(GOOD)
    assert cfg.limits.max_n == 16
    assert cfg.backends[0].timeouts.read_s == 600.0
    assert cfg.backends[0].replica_urls == ["http://127.0.0.1:8000"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "strategy: single-pass",
            "strategy: best-of-nope",
            "r.yaml:routes[0].strategy: unknown strategy 'best-of-nope'; allowed: single-pass, "
            "bounded-reasoning, best-of-n",
        ),
        (
            "    backend: default\n",
            "    backend: default\n    params: {n: 0}\n",
            "r.yaml:routes[0].params.n: unknown key; this section takes no keys",
        ),
        (
            "strategy: single-pass\n    backend: default\n",
            "strategy: best-of-n\n    backend: default\n    params: {n: 0, selector: best}\n",
            "r.yaml:routes[0].params.n: Input should be greater than or equal to 1",
        ),
        (
            "backend: default\n",
            "backend: gpu\n",
            "r.yaml:routes[0].backend: unknown backend 'gpu'; backends: ['default']",
        ),
        (
            "default_route: single-pass",
            "default_route: fancy",
            "r.yaml:default_route: unknown route 'fancy'; routes: ['single-pass']",
        ),
        (
            'replicas: ["http://127.0.0.1:8000"]',
            "replicas: []",
            "r.yaml:backends[0].replicas: List should have at least 1 item after validation, not 0",
        ),
        (
            'replicas: ["http://127.0.0.1:8000"]',
            'replicas: ["not a url"]',
            "r.yaml:backends[0].replicas[0]: Input should be a valid URL",
        ),
        (
            'replicas: ["http://127.0.0.1:8000"]',
            'replicas: ["http://a:1", "http://a:1/"]',
            "r.yaml:backends[0]: replicas must be distinct URLs",
        ),
        (
            "    backend: default\n",
            "    backend: default\n    params: {n: 4}\n",
            "r.yaml:routes[0].params.n: unknown key; this section takes no keys",
        ),
        (
            "model: m",
            "model: m\n    timeouts: {conect_s: 1}",
            "r.yaml:backends[0].timeouts.conect_s: unknown key; allowed: connect_s, pool_s, read_s, write_s",
        ),
        (
            "model: m",
            "model: m\n    timeouts: {connect_s: 0}",
            "r.yaml:backends[0].timeouts.connect_s: Input should be greater than 0",
        ),
        ("version: 1", "version: 2", "r.yaml:version: Input should be 1"),
        (
            "version: 1",
            "version: 1\nlimits: {max_n: 0}",
            "r.yaml:limits.max_n: Input should be greater than or equal to 1",
        ),
        ("- name: single-pass", "- name: auto", "r.yaml:routes[0].name: 'auto' is reserved"),
        (
            "name: default",
            "name: 'bad name!'",
            "r.yaml:backends[0].name: String should match pattern",
        ),
    ],
)
def test_each_error_path(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    lines = errors_of(GOOD.replace(old, new, 1))
    assert any(line.startswith(expected) for line in lines), lines


def test_duplicate_names_and_missing_sections() -> None:
    dup = GOOD + "  - name: single-pass\n    strategy: single-pass\n    backend: default\n"
    assert "r.yaml:routes[1].name: duplicate name 'single-pass'" in errors_of(dup)
    lines = errors_of("version: 1\n")
    assert "r.yaml:default_route: Field required" in lines
    assert "r.yaml:backends: Field required" in lines
    assert errors_of("- just\n- a list\n") == [
        "r.yaml: expected a mapping at the top level, got list"
    ]


def test_unreadable_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable) as e:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in e.value.lines[0]
    with pytest.raises(ConfigUnreadable) as e2:
        parse_config("a: [1, 2\n", "x.yaml")
    assert e2.value.lines[0].startswith("x.yaml:")


def test_resolution_and_clash_warnings() -> None:
    text = GOOD.replace("model: m", "model: single-pass")
    cfg = parse_config(text)
    assert clashes(cfg) == ["backends[0].model: 'single-pass' is also a route name; the route wins"]
    table = RouteTable(parse_config(GOOD))
    assert table.resolve("auto") is table.resolve("single-pass") is table.resolve("m")
    assert table.resolve("other") is None
    assert table.model_ids() == ["auto", "single-pass", "m"]


def test_cli_check_config_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = runner.invoke(app, ["check-config", str(good)])
    assert r.exit_code == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("backend: default\n", "backend: gpu\n"))
    r = runner.invoke(app, ["check-config", str(bad)])
    assert r.exit_code == 1
    assert (
        r.stderr.strip() == f"{bad}:routes[0].backend: unknown backend 'gpu'; backends: ['default']"
    )
    r = runner.invoke(app, ["check-config", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "cannot read" in r.stderr


def test_budgets_demo_example() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "examples" / "budgets-demo.yaml")
    (demo,) = cfg.tenants
    assert (demo.name, demo.key_env, demo.tokens_per_minute) == (
        "demo",
        "DELIBERATE_DEMO_KEY",
        3000,
    )
    assert [r.name for r in cfg.ladder("prm-search")] == [
        "prm-search",
        "best-of-n",
        "bounded-reasoning",
        "single-pass",
    ]
    assert cfg.pool("default").kv.shape is not None
    assert cfg.pool("default").kv.shape.kv_bytes_per_token == 23040
