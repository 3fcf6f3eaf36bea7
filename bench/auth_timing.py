"""Key-check timing: does ``TenantDirectory.authenticate`` take the same time for the right
key, a wrong key sharing a long prefix with it, unknown keys (short and long) and no key?

Every presented key is hashed to one 32-byte digest and compared with every configured
digest (``budgets/tenants.py``), so the distributions should agree within noise; only the
hashing of a much longer key costs more (SHA-256 over its bytes, which the caller chose and
knows). Calls of the cases are interleaved so drift hits them all alike.

Prints a table and writes ``bench/results/auth_timing.json``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from budgets.tenants import TenantDirectory  # noqa: E402
from routing.budget_config import TenantConfig  # noqa: E402

TENANTS = 20
ROUNDS = 50_000
KEY = "sk-live-4f1c9a7e2b8d6035e1a2b3c4d5e6f708"  # the last configured tenant's key


def directory() -> TenantDirectory:
    keys = [f"sk-live-{i:032x}" for i in range(TENANTS - 1)] + [KEY]
    configs = [
        TenantConfig(name=f"t{i}", key_sha256=hashlib.sha256(k.encode()).hexdigest())
        for i, k in enumerate(keys)
    ]
    return TenantDirectory.build(configs, {})


CASES: dict[str, str | None] = {
    "right key": f"Bearer {KEY}",
    "wrong key, same prefix": f"Bearer {KEY[:-1]}9",
    "unknown key, same length": "Bearer sk-live-" + "0" * (len(KEY) - 8),
    "unknown key, short": "Bearer x",
    "no key": None,
    "malformed (Basic)": f"Basic {KEY}",
}


def main() -> None:
    d = directory()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(2000):  # warm up
        for value in CASES.values():
            d.authenticate(value)
    clock = time.perf_counter_ns
    for _ in range(ROUNDS):
        for name, value in CASES.items():
            t0 = clock()
            d.authenticate(value)
            samples[name].append(clock() - t0)
    base = statistics.median(samples["right key"])
    rows = []
    for name, times in samples.items():
        times.sort()
        p50 = statistics.median(times)
        rows.append(
            {
                "case": name,
                "p50_ns": round(p50),
                "p90_ns": round(times[int(0.9 * len(times))]),
                "mean_ns": round(statistics.fmean(times[: int(0.99 * len(times))])),
                "p50_vs_right_key": round(p50 / base, 3),
            }
        )
    print(f"{TENANTS} tenants, {ROUNDS} interleaved calls per case")
    print("| case | p50 ns | p90 ns | mean ns (≤p99) | p50 / right key |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['p50_ns']} | {r['p90_ns']} | {r['mean_ns']} "
            f"| {r['p50_vs_right_key']} |"
        )
    out = ROOT / "bench" / "results" / "auth_timing.json"
    out.write_text(
        json.dumps(
            {"benchmark": "auth-timing", "tenants": TENANTS, "rounds": ROUNDS, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
