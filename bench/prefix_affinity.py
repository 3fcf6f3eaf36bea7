"""Prefix affinity against least-loaded and round-robin, on two REAL vLLM-CPU replicas.

Starts two SmolLM2 replicas with the project's own backend code (one pinned to each core,
``--kv-gib`` of KV cache each, prefix caching on) and one in-process gateway per balancing
policy, each with a two-replica pool. The workload is prefix-heavy: ``--prompts`` long system
prompts (``--prompt-words`` random words, ~1.3 tokens each), each reused by ``--uses``
requests with a short user question, in a seeded random order at ``--concurrency``. The
default working set (72 prompts of ~950 tokens, ~68k tokens) is larger than one replica's KV
cache (46,592 tokens at 1 GiB) but fits in two: the case affinity is for. (48 prompts, ~46k
tokens, just fit one replica's cache: ``results/prefix_affinity-48prompts.json``.) Every policy gets its own fresh prompts (same sizes,
other words), so no policy finds the previous one's prefixes cached.

Reported per policy, in one run: the prefix-cache hit rate from vLLM's own counters
(``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``, summed over both
replicas, deltas over the policy's requests), the requests each replica served
(``vllm:request_success_total``) and the max/mean load ratio, p50 and p95 latency. Targets:
affinity's hit rate >= 1.5x least-loaded's, with no replica over 1.5x the mean load.
Prints a table; writes ``bench/results/prefix_affinity.json``.

    .venv/bin/python bench/prefix_affinity.py [--prompts 72 --uses 4 --kv-gib 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway import localbackend as lb  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from routing.config import DeliberateConfig  # noqa: E402

POLICIES = ("prefix-affinity", "least-loaded", "round-robin")
OUT = ROOT / "bench" / "results" / "prefix_affinity.json"
WORDS = (
    "system policy tenant budget ledger replica engine token cache prefix route ladder "
    "verifier sample branch search reward process outcome latency deadline stream answer "
    "question careful tutor review account invoice shipment warehouse order refund customer "
    "support history context summary report analyst chart metric alert window quota limit"
).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def replicas(kv_gib: int, run_dir: Path) -> Iterator[list[str]]:
    """Two real vLLM-CPU servers, one per core; stopped on exit."""
    paths = lb.BackendPaths.default(run_dir=run_dir)
    specs = [
        lb.ServerSpec(port=free_port(), kv_cache_space_gib=kv_gib, omp_threads_bind=str(core))
        for core in (0, 1)
    ]

    def progress(message: str) -> None:
        print(f"  [backend] {message}", file=sys.stderr)

    lb.setup(paths, progress)
    started: list[lb.ServerSpec] = []
    try:
        for spec in specs:
            lb.start(paths, spec, progress)
            started.append(spec)
        yield [s.url for s in specs]
    finally:
        for spec in started:
            lb.stop(paths, spec, progress)


def counters(url: str) -> dict[str, float]:
    wanted = {
        "vllm:prefix_cache_hits_total": "hits",
        "vllm:prefix_cache_queries_total": "queries",
        "vllm:request_success_total": "requests",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return out


def workload(policy: str, args: argparse.Namespace) -> list[list[dict[str, str]]]:
    """The conversations of one policy: fresh system prompts, each used ``uses`` times."""
    rng = random.Random(f"{args.seed}:{policy}")
    prompts = [
        "You are assistant "
        + str(i)
        + ". "
        + " ".join(rng.choice(WORDS) for _ in range(args.prompt_words))
        for i in range(args.prompts)
    ]
    requests = [
        [
            {"role": "system", "content": p},
            {"role": "user", "content": f"Question {rng.randrange(10_000)}: one word reply."},
        ]
        for p in prompts
        for _ in range(args.uses)
    ]
    rng.shuffle(requests)
    return requests


def config(urls: list[str], policy: str) -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "single-pass",
            "backends": [
                {
                    "name": "pool",
                    "model": lb.SERVED_MODEL_NAME,
                    "replicas": urls,
                    "balance": {"policy": policy},
                }
            ],
            "routes": [{"name": "single-pass", "strategy": "single-pass", "backend": "pool"}],
        }
    )


async def run_policy(policy: str, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    app = create_app(Settings(reload_interval_s=0, access_log=False), config(urls, policy))
    convs = workload(policy, args)
    before = [counters(u) for u in urls]
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(args.concurrency)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=600) as c:

            async def one(messages: list[dict[str, str]]) -> None:
                nonlocal errors
                async with sem:
                    t0 = time.perf_counter()
                    body = {"model": "single-pass", "messages": messages, "max_tokens": 4}
                    r = await c.post("/v1/chat/completions", json=body)
                    latencies.append(time.perf_counter() - t0)
                    errors += r.status_code != 200

            await asyncio.gather(*(one(m) for m in convs))
    after = [counters(u) for u in urls]
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    hits = sum(d["hits"] for d in delta)
    queries = sum(d["queries"] for d in delta)
    loads = [d["requests"] for d in delta]
    mean = statistics.fmean(loads) if loads else 0.0
    latencies.sort()
    return {
        "policy": policy,
        "requests": len(convs),
        "errors": errors,
        "hit_rate": hits / queries if queries else 0.0,
        "hits": hits,
        "queries": queries,
        "replica_requests": loads,
        "max_over_mean_load": max(loads) / mean if mean else 0.0,
        "p50_s": latencies[len(latencies) // 2],
        "p95_s": latencies[int(len(latencies) * 0.95) - 1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=72)
    p.add_argument("--uses", type=int, default=4)
    p.add_argument("--prompt-words", type=int, default=900)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--kv-gib", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, replicas(args.kv_gib, Path(tmp)) as urls:
        rows = [asyncio.run(run_policy(policy, urls, args)) for policy in POLICIES]
    by = {r["policy"]: r for r in rows}
    ratio = by["prefix-affinity"]["hit_rate"] / max(by["least-loaded"]["hit_rate"], 1e-9)
    targets = {
        "hit_rate_vs_least_loaded": {"value": ratio, "target": 1.5, "met": ratio >= 1.5},
        "max_over_mean_load": {
            "value": by["prefix-affinity"]["max_over_mean_load"],
            "target": 1.5,
            "met": by["prefix-affinity"]["max_over_mean_load"] <= 1.5,
        },
    }
    table = Table(title="prefix affinity on two vLLM-CPU replicas (SmolLM2, one run)")
    for col in (
        "policy",
        "hit rate",
        "vs least-loaded",
        "requests per replica",
        "max/mean",
        "p50 s",
        "p95 s",
        "errors",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["policy"],
            f"{r['hit_rate']:.1%}",
            f"{r['hit_rate'] / max(by['least-loaded']['hit_rate'], 1e-9):.2f}x",
            " / ".join(f"{x:.0f}" for x in r["replica_requests"]),
            f"{r['max_over_mean_load']:.2f}",
            f"{r['p50_s']:.2f}",
            f"{r['p95_s']:.2f}",
            str(r["errors"]),
        )
    console = Console()
    console.print(table)
    for name, t in targets.items():
        console.print(
            f"{'met' if t['met'] else 'NOT met'}: {name} = {t['value']:.2f} (target {t['target']})"
        )
    result = {
        "benchmark": "prefix_affinity",
        "args": vars(args),
        "wall_s": time.perf_counter() - started,
        "rows": rows,
        "targets": targets,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
