"""bench/soak.py: its pure helpers (request mix, bench config, answer checks, delay stats,
figures and table rows), and a ``--quick`` run end to end (real mock and gateway processes),
so the bench cannot rot unnoticed."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import yaml

from routing.loader import parse_config

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROUTES = BENCH.parent / "configs" / "routes.yaml"


def _load() -> ModuleType:
    # the bench imports its sibling module (overhead) by its bare name, so it is imported so too
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("soak")


soak = _load()


def test_request_plan_mixes_evenly() -> None:
    plan = soak.request_plan(10, 2)
    assert len(plan) == 12
    assert plan.count("best-of-n") == 2
    assert plan.count("single-pass") == 10
    big = soak.request_plan(10_000, 2_000)
    best_at = [i for i, r in enumerate(big) if r == "best-of-n"]
    assert len(best_at) == 2_000
    assert {b - a for a, b in zip(best_at, best_at[1:], strict=False)} == {6}


def test_request_plan_edges() -> None:
    assert soak.request_plan(0, 0) == []
    assert soak.request_plan(3, 0) == ["single-pass"] * 3
    assert soak.request_plan(0, 2) == ["best-of-n"] * 2


def test_bench_config_points_the_default_pool_at_the_mock_only() -> None:
    shipped = yaml.safe_load(ROUTES.read_text())
    config = soak.bench_config(shipped, "http://127.0.0.1:9")
    [pool] = [b for b in config["backends"] if b["name"] == "default"]
    assert pool["replicas"] == ["http://127.0.0.1:9"]
    assert pool["model"] == "mock-model"
    assert config["routes"] == shipped["routes"]
    assert config["policy"] == shipped["policy"]
    assert yaml.safe_load(ROUTES.read_text()) == shipped  # the input is not mutated
    parsed = parse_config(json.dumps(config), "bench")
    assert parsed.route("best-of-n").strategy == "best-of-n"
    assert soak.best_of_n_samples(config) == 8


def test_bench_config_refuses_a_policy_without_the_routes() -> None:
    shipped = yaml.safe_load(ROUTES.read_text())
    no_pool = {**shipped, "backends": []}
    with pytest.raises(soak.BenchError, match="no backend"):
        soak.bench_config(no_pool, "http://x")
    no_route = {**shipped, "routes": [r for r in shipped["routes"] if r["name"] != "best-of-n"]}
    with pytest.raises(soak.BenchError, match="best-of-n"):
        soak.bench_config(no_route, "http://x")


def _answer(content: str, tokens: int = 1, hidden: int = 0, **deliberate: Any) -> bytes:
    usage = {"completion_tokens": tokens, "completion_tokens_details": {"reasoning_tokens": hidden}}
    body: dict[str, Any] = {"choices": [{"message": {"content": content}}], "usage": usage}
    if deliberate:
        body["deliberate"] = deliberate
    return orjson.dumps(body)


def test_check_answer_single_pass() -> None:
    check = soak.check_answer
    assert check("single-pass", 200, _answer("Hi"), 8) is None
    assert "answered 'Ho'" in check("single-pass", 200, _answer("Ho"), 8)
    assert "for 2 tokens" in check("single-pass", 200, _answer("Hi", tokens=2), 8)
    assert "HTTP 503" in check("single-pass", 503, b'{"error": {}}', 8)
    assert "unreadable" in check("single-pass", 200, b"{}", 8)


def test_check_answer_best_of_n() -> None:
    def best(content: str = "1 + 1 = 2", tokens: int = 8, hidden: int = 7, **info: Any) -> bytes:
        return _answer(content, tokens, hidden, **({"samples": 8, "backend_calls": 1} | info))

    check = soak.check_answer
    assert check("best-of-n", 200, best(), 8) is None
    assert "chose" in check("best-of-n", 200, best("1 + 1 = 3"), 8)
    assert "4 samples" in check("best-of-n", 200, best(samples=4), 8)
    assert "2 calls" in check("best-of-n", 200, best(backend_calls=2), 8)
    assert "8 hidden" in check("best-of-n", 200, best(hidden=8), 8)  # nothing visible
    assert "charged 16" in check("best-of-n", 200, best(tokens=16), 8)


def test_stream_bodies_send_the_mock_the_same_work() -> None:
    direct = orjson.loads(soak.stream_body("mock-model", 1000, direct=True))
    gateway = orjson.loads(soak.stream_body("single-pass", 1000, direct=False))
    assert direct["max_tokens"] == gateway["max_tokens"] == 1000
    assert direct["stream"] is gateway["stream"] is True
    assert direct["temperature"] == 0  # what the route's sampling fills in
    assert direct["stream_options"] == {"include_usage": True}  # what the gateway asks for
    assert "temperature" not in gateway and "stream_options" not in gateway


def test_gap_stats() -> None:
    stats = soak.gap_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["max_ms"] == pytest.approx(100.0)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert soak.gap_stats([]) == dict.fromkeys(stats, 0.0)


def test_log_problems(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text(
        "2026-12-03 13:16:37,374 WARNING gateway.backends.scraper: scrape failed\n"
        "2026-12-03 13:16:38,000 INFO deliberate.access: {}\n"
        "2026-12-03 13:16:39,000 ERROR gateway.pipeline: boom\n"
        "Traceback (most recent call last):\n"
        "ERROR:    Exception in ASGI application\n"
    )
    assert len(soak.log_problems(log)) == 3
    assert soak.log_problems(tmp_path / "missing.log") == []


def _sample(label: str, rss_mb: float, fds: int) -> dict[str, Any]:
    return {"t_s": 0.0, "label": label, "rss_bytes": int(rss_mb * soak.MB), "fds": fds, "cpu_s": 1}


def _side(errors: int, p99_ms: float, client_us: float, gateway_us: float) -> dict[str, Any]:
    return {
        "streams_ok": 2,
        "events": 2006,
        "errors": errors,
        "inter_chunk": {"p50_ms": 50.0, "p99_ms": p99_ms, "p999_ms": 60.0, "max_ms": 70.0},
        "ttfc_p99_ms": 3.0,
        "client_cpu_us_per_event": client_us,
        "gateway_cpu_us_per_event": gateway_us,
        "mock_cpu_us_per_event": 10.0,
    }


def _measured(final_rss_mb: float, stream_errors: int = 0) -> dict[str, Any]:
    return {
        "load": {
            "kinds": {
                "single-pass": {
                    "ok": 10,
                    "errors": 0,
                    "p50_ms": 1.0,
                    "p99_ms": 2.0,
                    "req_per_s": 9,
                },
                "best-of-n": {"ok": 1, "errors": 1, "p50_ms": 3.0, "p99_ms": 4.0, "req_per_s": 1},
            }
        },
        "streams": {
            "direct": _side(0, 51.0, 20.0, 0.0),
            "gateway": _side(stream_errors, 53.5, 21.0, 50.0),
        },
        "samples": [
            _sample("start", 70, 15),
            _sample("", 90, 300),
            _sample("baseline", 80, 30),
            _sample("after_load", 81, 30),
            _sample("mid_streams", 95, 290),
            _sample("final", final_rss_mb, 30),
        ],
    }


def test_figures_and_summary_rows() -> None:
    fig = soak.figures(_measured(final_rss_mb=85))
    assert fig["rss_growth_mb"] == pytest.approx(5.0)
    assert fig["rss_target_met"] is True
    assert fig["rss_peak_mb"] == pytest.approx(95.0)
    assert (fig["fds_baseline"], fig["fds_mid_streams"], fig["fds_final"]) == (30, 290, 30)
    assert fig["cpu_per_chunk_ratio"] == pytest.approx(2.5)
    assert fig["added_p99_inter_chunk_ms"] == pytest.approx(2.5)
    assert fig["errors"] == 1 and fig["errors_target_met"] is False
    rows = {r[0]: r for r in soak.summary_rows(fig)}
    assert rows["RSS growth after warm-up"][1] == "+5.0 MB"
    assert "met" in rows["RSS growth after warm-up"][2]
    assert rows["CPU per chunk, gateway / direct client"][1] == "2.50×"
    assert rows["added p99 inter-chunk delay"][1] == "+2.50 ms"
    assert "NOT met" in rows["errors"][2]
    assert rows["open fds start / baseline / mid-streams / final"][2] == "final = baseline"


def test_rss_miss_is_reported() -> None:
    fig = soak.figures(_measured(final_rss_mb=101, stream_errors=0))
    assert fig["rss_growth_mb"] == pytest.approx(21.0)
    assert fig["rss_target_met"] is False
    [row] = [r for r in soak.summary_rows(fig) if r[0] == "RSS growth after warm-up"]
    assert "NOT met" in row[2]


def test_load_and_stream_rows() -> None:
    measured = _measured(final_rss_mb=80)
    assert soak.load_rows(measured) == [
        ["single-pass", "10", "0", "1.000", "2.000", "9"],
        ["best-of-n", "2", "1", "3.000", "4.000", "1"],
    ]
    direct, gateway = soak.stream_rows(measured)
    assert direct[0] == "direct" and direct[10] == "-"  # no gateway on the direct side
    assert gateway[5] == "53.50" and gateway[10] == "50.0"


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """The real thing, small: mock + gateway processes, every phase, the JSON written."""
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--quick", "--cpus", "none", "--output", str(out)],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Soak figures" in done.stdout
    report = json.loads(out.read_text())
    fig = report["figures"]
    assert fig["errors"] == 0 and fig["gateway_log_problems"] == 0
    kinds = report["load"]["kinds"]
    assert (kinds["single-pass"]["ok"], kinds["best-of-n"]["ok"]) == (200, 40)
    direct, gateway = report["streams"]["direct"], report["streams"]["gateway"]
    # 16 streams of 50 chunks: role + 50 + finish + [DONE], the direct side also gets usage
    assert (direct["streams_ok"], direct["events"]) == (16, 16 * 54)
    assert (gateway["streams_ok"], gateway["events"]) == (16, 16 * 53)
    assert gateway["gaps"] == direct["gaps"] == 16 * 49
    assert fig["rss_baseline_mb"] > 0 and fig["fds_final"] > 0
    assert fig["cpu_per_chunk_ratio"] > 0
    labels = [s["label"] for s in report["samples"] if s["label"]]
    assert labels == ["start", "baseline", "after_load", "mid_streams", "after_streams", "final"]


def test_extra_stream_rounds_count_errors_and_show_rss_per_round() -> None:
    measured = _measured(final_rss_mb=86)
    measured["samples"][-1:-1] = [_sample("settled_1", 84, 30), _sample("settled_2", 85, 30)]
    measured["extra_gateway_rounds"] = [_side(0, 50, 1, 1), _side(2, 50, 1, 1)]
    fig = soak.figures(measured)
    assert fig["errors"] == 3  # 1 in the load phase, 2 in the third round
    assert fig["rss_after_each_stream_round_mb"] == pytest.approx([84, 85, 86])
    [row] = [r for r in soak.summary_rows(fig) if r[0] == "RSS after each gateway stream round"]
    assert row[1] == "84.0 / 85.0 / 86.0 MB"
    assert not [r for r in soak.summary_rows(soak.figures(_measured(80))) if "round" in r[0]]
