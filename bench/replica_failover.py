"""Replica failover: what one dead replica of two costs a client, against two healthy ones.

One gateway process (``python -m gateway serve``) per concurrency level, started fresh so
each level meets the dead replica for the first time, with three two-replica pools, each
behind its own single-pass route, on mock backends with a fixed small latency
(``tests.faulty_backend.FaultyBackend``, real sockets, ``--latency-ms`` per answer):

- ``healthy``: two healthy replicas (the baseline);
- ``refused``: one replica's port is closed (connection refused), one healthy;
- ``hang``: one replica reads requests and never answers (hang before headers), one healthy.

Every scenario runs ``--requests`` non-streaming requests at each ``--concurrency``, in
``--blocks`` blocks interleaved across the scenarios (healthy, refused, hang, then the
reverse order, ...) so drift and other load hit all three alike. Nothing is warmed up: the
requests that meet the dead replica before it is ejected (or marked down) are part of the
figures, and so are its returns on probation once its ejection time is up (the default
outlier policy: ejected after 5 failed calls in a row, for 10 s doubling per ejection).

The pools use ``timeouts.read_s`` = ``--read-s`` (what a hung replica costs before the next
one is tried) and the routes ``deadline_s`` = 10 s. Reported per scenario: success rate,
p50/p90/p99/max, added p50/p99 against ``healthy`` and how many requests took longer than
``--slow-ms``. Prints a table; writes ``bench/results/replica_failover.json``.

    .venv/bin/python bench/replica_failover.py
    .venv/bin/python bench/replica_failover.py --requests 200 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faulty_backend import Fault, FaultyBackend  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "replica_failover.json"
SCENARIOS = ("healthy", "refused", "hang")
MODEL = "failover-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(pools: dict[str, list[str]], read_s: float) -> dict[str, Any]:
    return {
        "version": 1,
        "default_route": "healthy",
        "backends": [
            {
                "name": name,
                "model": f"{MODEL}-{name}",
                "replicas": replicas,
                "timeouts": {"connect_s": 1.0, "read_s": read_s},
            }
            for name, replicas in pools.items()
        ],
        "routes": [
            {
                "name": name,
                "strategy": "single-pass",
                "backend": name,
                "budget": {"deadline_s": 10.0},
            }
            for name in pools
        ],
    }


def start_gateway(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "DELIBERATE_LOG_LEVEL": "warning", "DELIBERATE_ACCESS_LOG": "false"}
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gateway did not start:\n{log.read_text(errors='replace')}")


async def run_block(
    client: httpx.AsyncClient, route: str, requests: int, concurrency: int
) -> list[tuple[float, bool]]:
    """``requests`` calls at ``concurrency``; (latency in ms, succeeded) each."""
    body = {
        "model": route,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 8,
    }
    todo = iter(range(requests))
    out: list[tuple[float, bool]] = []

    async def worker() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=body)
                ok = r.status_code == 200 and bool(r.json().get("choices"))
            except httpx.HTTPError:
                ok = False
            out.append(((time.perf_counter() - t0) * 1000, ok))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms)) - 1))]


def summarise(samples: list[tuple[float, bool]], slow_ms: float) -> dict[str, Any]:
    ms = sorted(t for t, _ in samples)
    return {
        "requests": len(samples),
        "success_rate": sum(ok for _, ok in samples) / len(samples),
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(quantile(ms, 0.90), 2),
        "p99_ms": round(quantile(ms, 0.99), 2),
        "max_ms": round(ms[-1], 2),
        "slow": sum(1 for t in ms if t > slow_ms),
    }


async def measure(
    url: str, concurrency: int, requests: int, blocks: int
) -> dict[str, list[tuple[float, bool]]]:
    samples: dict[str, list[tuple[float, bool]]] = {s: [] for s in SCENARIOS}
    per_block = max(1, requests // blocks)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=limits, trust_env=False
    ) as client:
        for b in range(blocks):
            order = SCENARIOS if b % 2 == 0 else tuple(reversed(SCENARIOS))
            for scenario in order:
                samples[scenario] += await run_block(client, scenario, per_block, concurrency)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=600, help="per scenario and concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--latency-ms", type=float, default=5.0, help="each mock answer's latency")
    ap.add_argument("--read-s", type=float, default=1.0, help="pools' timeouts.read_s")
    ap.add_argument("--slow-ms", type=float, default=250.0)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args()

    latency_s = args.latency_ms / 1000
    healthy_a = FaultyBackend(MODEL, latency_s=latency_s).start()
    healthy_b = FaultyBackend(MODEL, latency_s=latency_s).start()
    hung = FaultyBackend(MODEL, latency_s=latency_s).start()
    hung.fault = Fault.HANG_BEFORE_HEADERS
    dead = f"http://127.0.0.1:{free_port()}"
    pools = {
        "healthy": [healthy_a.url, healthy_b.url],
        "refused": [dead, healthy_b.url],
        "hang": [hung.url, healthy_b.url],
    }
    results: dict[str, Any] = {}
    ejections: dict[str, dict[str, float]] = {}
    started = time.monotonic()
    try:
        for c in args.concurrency:
            # A fresh gateway per level: each one meets the dead replica for the first time.
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "routes.yaml"
                config.write_text(
                    yaml.safe_dump(gateway_config(pools, args.read_s), sort_keys=False)
                )
                proc, url = start_gateway(config, Path(tmp) / "gateway.log")
                try:
                    samples = asyncio.run(measure(url, c, args.requests, args.blocks))
                    metrics = httpx.get(url + "/metrics", timeout=5).text
                finally:
                    proc.terminate()
                    proc.wait(30)
            stats = {s: summarise(samples[s], args.slow_ms) for s in SCENARIOS}
            base = stats["healthy"]
            for s in SCENARIOS:
                stats[s]["added_p50_ms"] = round(stats[s]["p50_ms"] - base["p50_ms"], 2)
                stats[s]["added_p99_ms"] = round(stats[s]["p99_ms"] - base["p99_ms"], 2)
            results[f"c{c}"] = stats
            ejections[f"c{c}"] = {
                line.split('pool="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("deliberate_backend_ejections_total{")
                if float(line.rsplit(" ", 1)[1]) > 0
            }
    finally:
        for b in (healthy_a, healthy_b, hung):
            b.stop()
    wall_s = time.monotonic() - started
    table = Table(
        title=f"Replica failover (mock latency {args.latency_ms} ms, read_s {args.read_s} s)"
    )
    for col in ("conc", "scenario", "n", "ok %", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for col in ("+p50 ms", "+p99 ms", f">{args.slow_ms:.0f} ms"):
        table.add_column(col, justify="right")
    for conc, stats in results.items():
        for s, st in stats.items():
            table.add_row(
                conc,
                s,
                str(st["requests"]),
                f"{100 * st['success_rate']:.1f}",
                f"{st['p50_ms']:.2f}",
                f"{st['p90_ms']:.2f}",
                f"{st['p99_ms']:.2f}",
                f"{st['max_ms']:.1f}",
                f"{st['added_p50_ms']:+.2f}",
                f"{st['added_p99_ms']:+.2f}",
                str(st["slow"]),
            )
    Console(width=160).print(table)
    Console().print(f"ejections during the run: {ejections or 'none'}; wall {wall_s:.0f} s")
    out = {
        "bench": "replica_failover",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "params": {
            "requests_per_scenario": args.requests,
            "blocks": args.blocks,
            "mock_latency_ms": args.latency_ms,
            "read_s": args.read_s,
            "deadline_s": 10.0,
            "slow_ms": args.slow_ms,
            "outlier": "defaults (5 failures in a row, 10 s doubling, cap 300 s)",
        },
        "results": results,
        "ejections_total": ejections,
        "wall_s": round(wall_s, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    Console().print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
