"""Online updates of the measured tables: bounded steps, in memory, written out by export."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from routing.config import DeliberateConfig
from routing.loader import parse_config
from routing.online import OnlineTables, exported
from tests.fakes import FakeVLLM
from tests.unit.test_app import A, Factory

pytestmark = pytest.mark.anyio


def test_every_step_is_bounded_and_moves_toward_the_outcome() -> None:
    t = OnlineTables(step=0.1)
    assert t.quality("r", "c") is None
    q = t.observe("r", "c", True, prior=0.5)
    assert q == pytest.approx(0.55)  # 0.5 + 0.1 * (1 - 0.5)
    for _ in range(200):
        before = t.quality("r", "c")
        assert before is not None
        after = t.observe("r", "c", False, prior=0.5)
        assert 0.0 <= after <= before and before - after <= 0.1
    assert t.snapshot()["r"]["c"]["observations"] == 201


def test_export_writes_live_qualities_into_measured_tables() -> None:
    raw = {
        "routes": [
            {"name": "a", "measured": {"all": {"quality": 0.4, "p50_ms": 1, "p95_ms": 2,
                                               "tokens": 3, "items": 10}}},
            {"name": "b"},
        ]
    }  # fmt: skip
    t = OnlineTables(step=0.5)
    t.observe("a", "arith", True, prior=0.4)
    t.observe("b", "arith", True, prior=None)
    out = exported(raw, t)
    assert out["routes"][0]["measured"]["arith"] == {
        "quality": 0.7, "p50_ms": 1, "p95_ms": 2, "tokens": 3, "items": 11
    }  # fmt: skip
    assert out["routes"][0]["measured"]["all"]["quality"] == 0.4  # the file's own entry stays
    assert "measured" not in out["routes"][1] or not out["routes"][1]["measured"]
    assert raw["routes"][0]["measured"].keys() == {"all"}  # the input is not modified


def online_raw(enabled: bool) -> dict[str, Any]:
    def measured(q: float) -> dict[str, Any]:
        return {"all": {"quality": q, "p50_ms": 100, "p95_ms": 200, "tokens": 50, "items": 8}}

    return {
        "default_route": "greedy",
        "backends": [
            {"name": "default", "model": "fake-model", "replicas": [A], "health_interval_s": 3600}
        ],
        "routes": [
            {"name": "greedy", "strategy": "single-pass", "backend": "default",
             "measured": measured(0.5)},
            {"name": "ladder", "strategy": "single-pass", "backend": "default",
             "escalate_to": [{"samples": 2}], "measured": measured(0.7)},
        ],
        "classes": [{"name": "arith", "match": {"min_operators": 1}}],
        "policy": {
            "default_class": "arith",
            "online_update": {"enabled": enabled, "step": 0.1},
            "classes": {"arith": {"routes": ["greedy", "ladder"],
                                  "gain": {"cheap": "greedy", "ladder": "ladder"}}},
        },
    }  # fmt: skip


SUM = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@pytest.mark.parametrize("enabled", [True, False])
async def test_live_outcomes_move_the_tables_only_when_enabled(
    gateway: Factory, fake: FakeVLLM, enabled: bool
) -> None:
    fake.replica(A).words = ("2 + 2 = 4. The answer is 4",)  # the first answer passes
    client, _ = await gateway(DeliberateConfig.model_validate(online_raw(enabled)))
    for _ in range(3):
        r = await client.post("/v1/chat/completions", json=SUM)
        assert r.status_code == 200, r.text
        assert r.headers["x-deliberate-route"] == "ladder"
    e = (await client.post("/v1/route/explain", json=SUM)).json()
    gain = e["gain"]
    if enabled:  # 0.5 → 0.55 → 0.595 → 0.6355 for greedy; the ladder 0.7 → 0.73 → ...
        assert gain["p_cheap"] == pytest.approx(0.6355)
        assert gain["p_ladder"] == pytest.approx(1 - 0.3 * 0.9**3)
    else:
        assert (gain["p_cheap"], gain["p_ladder"]) == (0.5, 0.7)
    r = await client.get("/v1/policy/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
    assert r.headers["x-deliberate-online-observations"] == ("6" if enabled else "0")
    cfg = parse_config(r.text)  # the export is a valid policy file
    got = cfg.route("greedy").measured
    if enabled:
        assert got["arith"].quality == pytest.approx(0.6355, abs=1e-4)
        assert got["arith"].items == 8 + 3
    else:
        assert "arith" not in got and yaml.safe_load(r.text)["routes"][0]["name"] == "greedy"
