"""Router decision latency: features + rule classes + the policy choice, with and without the
learned predictor, on the shipped policy ``configs/routes.yaml`` (written by
``deliberate calibrate``).

Prints a table and writes ``bench/results/router_latency.json``. Issue 6's budget: p99 under
1 ms for the rules path, a few ms with the learned predictor.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.policy_state import build_state  # noqa: E402
from routing.evalset import make_eval_set  # noqa: E402
from routing.loader import load_config  # noqa: E402
from routing.policy import LiveLatency, Router  # noqa: E402


def measure(router: Router, prompts: list[list[dict[str, str]]], calls: int) -> dict[str, float]:
    live = LiveLatency(queue_ms=120.0, unmeasured_ms=4000.0)
    times = []
    for i in range(calls):
        messages = prompts[i % len(prompts)]
        t0 = time.perf_counter()
        router.decide("auto", messages, live=lambda _r: live)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {
        "p50_us": round(statistics.median(times), 1),
        "p99_us": round(times[int(0.99 * len(times)) - 1], 1),
        "mean_us": round(statistics.fmean(times), 1),
    }


def main() -> None:
    path = ROOT / "configs" / "routes.yaml"
    cfg = load_config(path)
    with_predictor = build_state(cfg, path).router
    rules_only = Router(cfg, None)
    prompts = [item.messages for item in make_eval_set(200, seed=3)]
    rows = []
    for name, router in (
        ("rules + policy", rules_only),
        ("rules + policy + predictor", with_predictor),
    ):
        measure(router, prompts, 200)  # warm up
        rows.append({"path": name, **measure(router, prompts, 5000)})
    print("| path | p50 µs | p99 µs | mean µs |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['p50_us']} | {r['p99_us']} | {r['mean_us']} |")
    out = ROOT / "bench" / "results" / "router_latency.json"
    out.write_text(
        json.dumps({"benchmark": "router-latency", "calls": 5000, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
