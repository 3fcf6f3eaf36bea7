"""Gateway overhead: what a request pays for going through Deliberate instead of straight to vLLM.

One run measures two targets, each reached two ways:

- targets: ``mock`` (bench/mock_openai.py, answers instantly, so the difference is the gateway's
  own cost) and ``vllm`` (the real vLLM-CPU backend serving SmolLM2, so the difference is what a
  user actually notices);
- sides: ``direct`` (the load generator talks to the backend) and ``gateway`` (the same body,
  with the gateway's route name as ``model``, sent to the gateway, which forwards it).

Scenarios (every request: ``max_tokens=1``, ``temperature=0``, one short fixed user message):

- ``c1`` / ``cN``: non-streaming at concurrency 1 / N. Latency = from sending the request to
  having read the whole response body. ``req/s`` = completed requests / wall time of the
  measured phases (at concurrency 1 that is just 1 / mean latency).
- ``c1-sampled`` (mock only): ``c1`` through route ``single-pass-sampled``, which owns its
  sampling (``temperature: 0.0, top_k: 1, seed: 1``). The gateway side leaves those fields
  unset, so the route's values fill them (``gateway.pipeline.apply_sampling`` patches the
  body once); the direct side sends them set, so the mock gets the same bytes from both.
  It runs right after ``c1``. On vLLM the sampler's own work would change with ``top_k``, so
  the scenario is not run there.
- ``ttfc``: streaming at concurrency 1. Time to first chunk = from sending the request to
  receiving the first SSE ``data:`` line whose ``choices[0].delta.content`` is non-empty (the
  moment a user sees the first token). The stream is then read to its end.

Derived per scenario: added latency = gateway p50 − direct p50 (and the same for p95), and
ratio = gateway p50 / direct p50. The target is < 1 ms added p50 at concurrency 1 on the mock.
Also recorded: the gateway process's CPU time per request (from /proc), which, unlike the
latencies, does not depend on how the processes share the cores.

Sampling patch cost: ``c1-sampled``'s added p50 − ``c1``'s added p50 (the difference of two
noisy medians, so only a coarse bound), and an in-process micro-benchmark of
``apply_sampling`` alone (``--micro-calls`` × ``--micro-rounds``, ``time.perf_counter_ns``)
on the same config and payloads, with the patch and on the no-op path (a route without
sampling). It runs after every process started here is stopped.

Noise control: every (target, scenario) is measured in ``--blocks`` blocks, alternating
direct/gateway in ABBA order (A B, B A, A B, ...) so drift and other load on the machine hit
both sides alike; each block starts with un-measured warm-up requests on warm pooled
connections. The mock phases run before vLLM is started (an idle vLLM still wakes up for
health probes and busy-polls for ~1 s after each), each target with its own gateway process.
All processes we start (the mock, the gateways) and the load generator are pinned to
``--cpus`` (default core 1: the local vLLM pins its compute threads to core 0), started on
free ports, and torn down at the end, also on Ctrl-C / SIGTERM.

Load generator: ONE shared pooled ``httpx.AsyncClient`` by default. At 32 connections its own
pool bookkeeping costs ~1.5 ms of CPU per request here, which makes the c=32 phases partly
load-generator-bound; ``--client-per-worker`` gives each worker its own single-connection
client instead (~4x cheaper at c=32), which shows the servers' throughput more faithfully.

Usage: ``.venv/bin/python bench/overhead.py`` (full, ~4 min of which ~1 min is the vLLM start)
or ``--quick`` (smoke run). ``DELIBERATE_BENCH_BACKEND_URL`` reuses a running vLLM instead of
starting one; ``--targets mock`` skips vLLM. Results: ``bench/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import orjson
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
MOCK_SCRIPT = REPO_ROOT / "bench" / "mock_openai.py"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "overhead.json"

MOCK_MODEL = "mock-model"
MOCK_ROUTE = "mock"
"""The gateway route (and pool) for the mock; clients send ``"model": "mock"``."""
VLLM_ROUTE = "single-pass"
"""The gateway route for the real vLLM; clients send ``"model": "single-pass"``."""
SAMPLED_ROUTE = "single-pass-sampled"
"""A single-pass route to the mock that owns its sampling (``ROUTE_SAMPLING``)."""
ROUTE_SAMPLING: dict[str, Any] = {"temperature": 0.0, "top_k": 1, "seed": 1}
"""``SAMPLED_ROUTE``'s ``sampling:`` section, in ``SAMPLING_FIELDS`` order (the order in which
the gateway's patch appends the fields) and with the route model's types (``temperature`` is
a float), so both sides send the mock the same bytes."""
PROMPT = "Reply with one word: hello."
BACKEND_URL_ENV = "DELIBERATE_BENCH_BACKEND_URL"

Side = Literal["direct", "gateway"]
T = TypeVar("T")
# A wide console when piped, so the results table is never truncated.
console = Console(width=None if sys.stdout.isatty() else 160)


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a target answers errors...)."""


# --------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Scenario:
    """One way of sending requests. ``stream`` scenarios measure time to first chunk.

    ``sampled``: the gateway side names ``SAMPLED_ROUTE`` and leaves ``ROUTE_SAMPLING``'s
    fields unset, so the route's sampling patch applies; the direct side sends them set.
    """

    name: str
    concurrency: int
    stream: bool
    sampled: bool = False

    @property
    def metric(self) -> str:
        return "ttfc" if self.stream else "latency"

    @property
    def label(self) -> str:
        mode = (
            f"stream TTFC c={self.concurrency}"
            if self.stream
            else f"non-stream c={self.concurrency}"
        )
        return f"{mode} sampled" if self.sampled else mode


@dataclass(frozen=True)
class Target:
    """A backend reached directly (``direct_url``) and through the gateway (``gateway_url``).

    ``requests`` is the number of measured requests per side and scenario (split over blocks).
    ``sampled_model``: the gateway route with a sampling override the ``sampled`` scenarios
    name (None: the target runs none).
    """

    name: str
    direct_url: str
    gateway_url: str
    direct_model: str
    gateway_model: str
    requests: int
    gateway_pid: int
    sampled_model: str | None = None

    def url(self, side: Side) -> str:
        base = self.direct_url if side == "direct" else self.gateway_url
        return base + "/v1/chat/completions"

    def body(self, side: Side, stream: bool, sampled: bool = False) -> bytes:
        """The request body: what reaches the backend is the same on both sides."""
        if side == "direct":
            model = self.direct_model
        elif sampled:
            if self.sampled_model is None:
                raise BenchError(f"target {self.name!r} has no route with a sampling override")
            model = self.sampled_model
        else:
            model = self.gateway_model
        return orjson.dumps(request_payload(model, side, stream, sampled))


def request_payload(model: str, side: Side, stream: bool, sampled: bool) -> dict[str, Any]:
    """One benchmark request: ``max_tokens=1``, ``temperature=0``, the fixed prompt.

    ``sampled``: the direct side sets every ``ROUTE_SAMPLING`` field; the gateway side sets
    none of them, so the route's values fill them (an explicit route: fields the client leaves
    unset come from the route) and the gateway forwards the same body the direct side sends.
    """
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 1,
    }
    if not sampled:
        payload["temperature"] = 0
    elif side == "direct":
        payload.update(ROUTE_SAMPLING)
    if stream:
        payload["stream"] = True
    return payload


@dataclass
class PhaseRun:
    """Raw outcome of one measured phase: per-request seconds, failures, wall time, and the
    CPU seconds the gateway process used meanwhile (None on the direct side)."""

    latencies_s: list[float]
    errors: int
    wall_s: float
    gateway_cpu_s: float | None = None


@dataclass
class SideSamples:
    """Everything measured for one side of one (target, scenario), across its blocks."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    gateway_cpu_s: float | None = None
    block_p50_s: list[float] = field(default_factory=list)

    def add(self, run: PhaseRun) -> None:
        self.latencies_s.extend(run.latencies_s)
        self.errors += run.errors
        self.wall_s += run.wall_s
        if run.gateway_cpu_s is not None:
            self.gateway_cpu_s = (self.gateway_cpu_s or 0.0) + run.gateway_cpu_s
        if run.latencies_s:
            self.block_p50_s.append(percentile(sorted(run.latencies_s), 50))


@dataclass(frozen=True)
class Stats:
    """Summary of one side, in milliseconds; ``rps`` = completed requests / measured wall time.

    ``gateway_cpu_ms_per_request``: CPU time (user + system, from /proc) the gateway process
    spent per completed request during the measured phases (gateway side only). Unlike the
    latencies it does not depend on how the processes share the cores.
    """

    n: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    rps: float
    block_p50_ms: list[float]
    gateway_cpu_ms_per_request: float | None

    @classmethod
    def of(cls, s: SideSamples) -> Stats:
        xs = sorted(s.latencies_s)
        if not xs:
            raise BenchError("no successful request in a phase (see the errors above)")
        ms = 1000.0
        return cls(
            n=len(xs),
            errors=s.errors,
            p50_ms=percentile(xs, 50) * ms,
            p95_ms=percentile(xs, 95) * ms,
            p99_ms=percentile(xs, 99) * ms,
            mean_ms=sum(xs) / len(xs) * ms,
            min_ms=xs[0] * ms,
            max_ms=xs[-1] * ms,
            rps=len(xs) / s.wall_s if s.wall_s > 0 else 0.0,
            block_p50_ms=[round(b * ms, 4) for b in s.block_p50_s],
            gateway_cpu_ms_per_request=(
                s.gateway_cpu_s / len(xs) * ms if s.gateway_cpu_s is not None else None
            ),
        )


@dataclass(frozen=True)
class Comparison:
    """Gateway vs direct for one (target, scenario).

    ``added_*_ms`` = gateway − direct (what the gateway adds to a request at that percentile);
    ``ratio_*`` = gateway / direct; ``added_p50_ms_per_block`` pairs the blocks' medians (block
    i of the gateway minus block i of direct) and shows how stable the added median is.
    """

    target: str
    scenario: Scenario
    direct: Stats
    gateway: Stats

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def added_p95_ms(self) -> float:
        return self.gateway.p95_ms - self.direct.p95_ms

    @property
    def ratio_p50(self) -> float:
        return self.gateway.p50_ms / self.direct.p50_ms

    @property
    def ratio_p95(self) -> float:
        return self.gateway.p95_ms / self.direct.p95_ms

    def to_json(self) -> dict[str, Any]:
        pairs = zip(self.gateway.block_p50_ms, self.direct.block_p50_ms, strict=False)
        return {
            "target": self.target,
            "scenario": self.scenario.name,
            "metric": self.scenario.metric,
            "concurrency": self.scenario.concurrency,
            "stream": self.scenario.stream,
            "direct": asdict(self.direct),
            "gateway": asdict(self.gateway),
            "added_p50_ms": self.added_p50_ms,
            "added_p95_ms": self.added_p95_ms,
            "ratio_p50": self.ratio_p50,
            "ratio_p95": self.ratio_p95,
            "added_p50_ms_per_block": [round(g - d, 4) for g, d in pairs],
        }


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted data, linearly interpolated (numpy's default)."""
    if not sorted_xs:
        raise ValueError("percentile of no data")
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------
# Load generator: one pooled httpx.AsyncClient


def make_client(max_concurrency: int) -> httpx.AsyncClient:
    """A load-generator client: pooled keep-alive connections, no proxy env vars."""
    conns = max_concurrency + 2
    return httpx.AsyncClient(
        trust_env=False,
        timeout=httpx.Timeout(300.0, connect=5.0),
        limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns),
        headers={"content-type": "application/json"},
    )


async def timed_request(client: httpx.AsyncClient, url: str, body: bytes) -> float:
    """Seconds from sending a non-streaming request to having read its whole (200) body."""
    t0 = time.perf_counter()
    r = await client.post(url, content=body)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


async def timed_first_chunk(client: httpx.AsyncClient, url: str, body: bytes) -> float:
    """Seconds from sending a streaming request to its first ``data:`` line with content.

    The rest of the stream is read (not timed) so the connection goes back to the pool.
    """
    t0 = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, content=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise BenchError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
        async for line in r.aiter_lines():
            if first is None and has_content(line):
                first = time.perf_counter() - t0
    if first is None:
        raise BenchError(f"{url}: the stream ended without a content chunk")
    return first


def has_content(line: str) -> bool:
    """True for an SSE ``data:`` line carrying a chunk with non-empty ``delta.content``."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return False
    try:
        chunk = orjson.loads(data)
        return bool(chunk["choices"][0]["delta"].get("content"))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return False


Request = Callable[[httpx.AsyncClient], Awaitable[float]]
"""Sends one request with the given client; returns the measured seconds."""


async def run_phase(
    request: Request, clients: Sequence[httpx.AsyncClient], n: int, concurrency: int
) -> PhaseRun:
    """Send ``n`` requests with ``concurrency`` workers; each worker sends its next request as
    soon as its previous one is done (closed loop). Worker i uses ``clients[i % len(clients)]``.
    GC is paused so the load generator's own collections do not land inside one side's
    measurements."""
    todo = iter(range(n))
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in todo:  # shared iterator: the workers take requests off one queue
            try:
                latencies.append(await request(client))
            except (httpx.HTTPError, BenchError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    workers = min(concurrency, max(n, 1))
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(workers)))
        wall = time.perf_counter() - t0
    finally:
        gc.enable()
    if errors:
        console.print(f"[yellow]  {len(errors)} failed request(s), first: {errors[0]}[/yellow]")
    return PhaseRun(latencies, len(errors), wall)


def side_order(block: int) -> tuple[Side, Side]:
    """ABBA: even blocks measure direct first, odd blocks the gateway first."""
    return ("direct", "gateway") if block % 2 == 0 else ("gateway", "direct")


def block_sizes(total: int, blocks: int) -> list[int]:
    """Split ``total`` measured requests over ``blocks`` blocks as evenly as possible."""
    base, extra = divmod(total, blocks)
    return [base + (1 if i < extra else 0) for i in range(blocks)]


async def measure(
    clients: Sequence[httpx.AsyncClient],
    target: Target,
    scenario: Scenario,
    blocks: int,
    warmup: int,
) -> Comparison:
    """Measure one (target, scenario) on both sides in interleaved ABBA blocks."""
    samples: dict[Side, SideSamples] = {"direct": SideSamples(), "gateway": SideSamples()}
    timer = timed_first_chunk if scenario.stream else timed_request
    n_warm = max(warmup, 2 * scenario.concurrency)
    for block, n in enumerate(block_sizes(target.requests, blocks)):
        for side in side_order(block):
            url, body = target.url(side), target.body(side, scenario.stream, scenario.sampled)

            def request(
                client: httpx.AsyncClient, url: str = url, body: bytes = body
            ) -> Awaitable[float]:
                return timer(client, url, body)

            await run_phase(request, clients, n_warm, scenario.concurrency)  # warm-up
            cpu_before = process_cpu_s(target.gateway_pid) if side == "gateway" else None
            run = await run_phase(request, clients, n, scenario.concurrency)
            if cpu_before is not None:
                run.gateway_cpu_s = process_cpu_s(target.gateway_pid) - cpu_before
            samples[side].add(run)
            p50 = percentile(sorted(run.latencies_s), 50) * 1000 if run.latencies_s else 0.0
            console.print(
                f"  {target.name:<5} {scenario.label:<22} block {block + 1}/{blocks} "
                f"{side:<7} p50 {p50:8.3f} ms  ({len(run.latencies_s)} ok, "
                f"{len(run.latencies_s) / run.wall_s:7.1f} req/s)"
            )
    return Comparison(
        target.name, scenario, Stats.of(samples["direct"]), Stats.of(samples["gateway"])
    )


async def preflight(client: httpx.AsyncClient, target: Target) -> None:
    """One request per side and mode, so a misconfiguration fails loudly before measuring.

    With a sampled route, the gateway's ``/v1/route/explain`` must also show that the
    route's sampling fills the fields the sampled body leaves unset (else the scenario would
    measure the no-op path)."""
    for side in ("direct", "gateway"):
        await timed_request(client, target.url(side), target.body(side, stream=False))
        await timed_first_chunk(client, target.url(side), target.body(side, stream=True))
        if target.sampled_model is not None:
            await timed_request(client, target.url(side), target.body(side, False, sampled=True))
    if target.sampled_model is not None:
        body = target.body("gateway", stream=False, sampled=True)
        r = await client.post(target.gateway_url + "/v1/route/explain", content=body)
        applied = r.json().get("sampling", {}).get("applied") if r.status_code == 200 else None
        # bytes, not ==: 0 == 0.0, but the mock must get the direct side's exact body
        if orjson.dumps(applied) != orjson.dumps(ROUTE_SAMPLING):
            raise BenchError(
                f"route {target.sampled_model!r} does not patch {ROUTE_SAMPLING} in: "
                f"/v1/route/explain answered HTTP {r.status_code}: {r.text[:300]}"
            )


async def run_all(
    targets: Sequence[Target],
    scenarios: Sequence[Scenario],
    blocks: int,
    warmup: int,
    client_per_worker: bool = False,
) -> list[Comparison]:
    """Every scenario of every target, with the same load-generator client(s) for the whole run.

    By default ONE pooled client serves every worker. ``client_per_worker`` gives each worker
    its own single-connection client instead: at 32 connections, httpcore's pool bookkeeping
    (``AsyncConnectionPool._assign_requests_to_connections``, quadratic in the connections,
    plus a ``poll`` per idle connection) costs the shared client ~1.5 ms of CPU per request on
    this machine, so high-concurrency phases measure the load generator more than the servers.
    """
    most = max(s.concurrency for s in scenarios)
    async with contextlib.AsyncExitStack() as stack:
        if client_per_worker:
            clients = [await stack.enter_async_context(make_client(1)) for _ in range(most)]
        else:
            clients = [await stack.enter_async_context(make_client(most))]
        results: list[Comparison] = []
        for target in targets:
            await preflight(clients[0], target)
            for scenario in scenarios:
                if scenario.sampled and target.sampled_model is None:
                    continue
                results.append(await measure(clients, target, scenario, blocks, warmup))
    return results


# --------------------------------------------------------------------------------------------
# The cost of a route's sampling override


def sampling_patch_cost(results: Sequence[Comparison]) -> dict[str, Any] | None:
    """End to end: ``c1-sampled``'s added p50 − ``c1``'s added p50 on the mock (None without
    both). The difference of two noisy medians measured at different times: a few µs of
    patching drown in its spread (``per_block_ms`` pairs block i of both scenarios).
    ``gateway_cpu_ms_per_request`` is the same difference of the gateway's CPU per request
    (/proc, 10 ms ticks over the whole scenario)."""
    by_name = {c.scenario.name: c for c in results if c.target == "mock"}
    plain, sampled = by_name.get("c1"), by_name.get("c1-sampled")
    if plain is None or sampled is None:
        return None
    pairs = zip(
        sampled.to_json()["added_p50_ms_per_block"],
        plain.to_json()["added_p50_ms_per_block"],
        strict=False,
    )
    cpu_plain = plain.gateway.gateway_cpu_ms_per_request
    cpu_sampled = sampled.gateway.gateway_cpu_ms_per_request
    return {
        "definition": "added p50 (gateway - direct) of c1-sampled minus that of c1, mock target",
        "added_p50_ms": sampled.added_p50_ms - plain.added_p50_ms,
        "per_block_ms": [round(s - p, 4) for s, p in pairs],
        "gateway_cpu_ms_per_request": (
            cpu_sampled - cpu_plain if cpu_plain is not None and cpu_sampled is not None else None
        ),
        "caveat": "difference of two noisy medians taken at different times; see micro",
    }


def time_apply_sampling(calls: int, rounds: int) -> dict[str, Any]:
    """In process: ``gateway.pipeline.apply_sampling`` on the bench's own gateway config, with
    the gateway-side payloads of ``c1-sampled`` (route ``SAMPLED_ROUTE``: the patch applies)
    and ``c1`` (route ``mock``, no sampling: the no-op path), and an explicit decision.

    ``apply_sampling`` fills the payload, so every call gets a fresh shallow copy of it (what
    the pipeline mutates is top-level keys); the same loop with the copy alone is timed right
    after and subtracted, so ``us_per_call`` is the call itself. ``rounds`` rounds of ``calls``
    calls per case, in ABBA order, GC paused; ``us_per_call`` is the median round.
    """
    from gateway.context import RequestContext
    from gateway.pipeline import apply_sampling
    from routing.decision import Decision
    from routing.loader import parse_config

    config = parse_config(json.dumps(gateway_config("http://127.0.0.1:9", None)), "bench")
    cases = {
        "sampled": (SAMPLED_ROUTE, request_payload(SAMPLED_ROUTE, "gateway", False, True)),
        "no-op": (MOCK_ROUTE, request_payload(MOCK_ROUTE, "gateway", False, False)),
    }
    expected = {"sampled": ROUTE_SAMPLING, "no-op": {}}
    setups = {}
    for case, (name, template) in cases.items():
        route = config.route(name)
        ctx = RequestContext(f"bench-{case}")
        ctx.decision = Decision("explicit", name, "explicit", "named in model")
        check = template.copy()
        apply_sampling(route, config, check, ctx)
        if ctx.sampling is None or ctx.sampling.patch != expected[case]:
            patch = ctx.sampling.patch if ctx.sampling else None
            raise BenchError(f"apply_sampling on {name!r} patched {patch}, not {expected[case]}")
        setups[case] = (route, ctx, template)

    def one_round(case: str, n: int) -> tuple[int, int]:
        route, ctx, template = setups[case]
        copy = template.copy
        t0 = time.perf_counter_ns()
        for _ in range(n):
            apply_sampling(route, config, copy(), ctx)
        t1 = time.perf_counter_ns()
        for _ in range(n):
            copy()
        return t1 - t0, time.perf_counter_ns() - t1

    net_us: dict[str, list[float]] = {case: [] for case in cases}
    copy_us: dict[str, list[float]] = {case: [] for case in cases}
    gc.collect()
    gc.disable()
    try:
        for case in cases:  # warm-up
            one_round(case, min(calls, 5000))
        for r in range(rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for case in order:
                call_ns, copy_ns = one_round(case, calls)
                net_us[case].append((call_ns - copy_ns) / calls / 1000)
                copy_us[case].append(copy_ns / calls / 1000)
    finally:
        gc.enable()
    out: dict[str, Any] = {
        "function": "gateway.pipeline.apply_sampling",
        "calls_per_round": calls,
        "rounds": rounds,
        "timer": "time.perf_counter_ns, copy-only loop subtracted, GC paused",
    }
    for case, (name, template) in cases.items():
        out[case] = {
            "route": name,
            "payload": template,
            "patch": expected[case],
            "us_per_call": percentile(sorted(net_us[case]), 50),
            "us_per_call_min": min(net_us[case]),
            "us_per_call_rounds": [round(x, 4) for x in net_us[case]],
            "copy_us_per_call": percentile(sorted(copy_us[case]), 50),
        }
    out["patch_minus_noop_us"] = out["sampled"]["us_per_call"] - out["no-op"]["us_per_call"]
    return out


# --------------------------------------------------------------------------------------------
# Processes: the mock, the gateway, the real vLLM


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the benchmark itself dies (even SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits, late after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{proc.args!r} exited with status {proc.returncode}:\n{log_tail(log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within {timeout_s:.0f} s:\n{log_tail(log)}")


@contextlib.contextmanager
def service(
    name: str,
    argv: list[str],
    health_url: str,
    log_dir: Path,
    timeout_s: float = 60.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (its own session, output to ``log_dir/name.log``) until the block exits.

    Ready once ``health_url`` answers 200. Stopped with SIGTERM, then SIGKILL after 10 s.
    """
    log = log_dir / f"{name}.log"
    env = {**os.environ, "DELIBERATE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    env.update(extra_env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop it in order
            preexec_fn=_die_with_parent,  # safe: the benchmark starts no threads of its own
        )
    try:
        wait_http_ok(health_url, proc, log, timeout_s)
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it is still there after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gateway_config(mock_url: str, vllm: tuple[str, str] | None) -> dict[str, Any]:
    """The gateway's policy: routes ``mock`` and ``single-pass-sampled`` (the same, plus
    ``sampling: ROUTE_SAMPLING``) → the mock; ``single-pass`` → vLLM (url, model)."""
    backends: list[dict[str, Any]] = [{"name": "mock", "model": MOCK_MODEL, "replicas": [mock_url]}]
    routes: list[dict[str, Any]] = [
        {"name": MOCK_ROUTE, "strategy": "single-pass", "backend": "mock"},
        {
            "name": SAMPLED_ROUTE,
            "strategy": "single-pass",
            "backend": "mock",
            "sampling": dict(ROUTE_SAMPLING),
        },
    ]
    if vllm is not None:
        url, model = vllm
        backends.insert(0, {"name": "default", "model": model, "replicas": [url]})
        routes.insert(0, {"name": VLLM_ROUTE, "strategy": "single-pass", "backend": "default"})
    return {
        "version": 1,
        "default_route": routes[0]["name"],
        "backends": backends,
        "routes": routes,
    }


@contextlib.contextmanager
def mock_server(log_dir: Path, extra_args: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """The mock on a free port (``extra_args`` appended to its command line); yields
    (base URL, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(MOCK_SCRIPT), "--port", str(port), "--model", MOCK_MODEL]
    argv += extra_args
    with service("mock", argv, url + "/health", log_dir) as proc:
        yield url, proc.pid


def write_config(config: dict[str, Any], directory: Path, name: str = "routes.yaml") -> Path:
    """Write the policy file as ``directory/name`` (JSON is valid YAML)."""
    path = directory / name
    path.write_text(json.dumps(config, indent=2))
    return path


@contextlib.contextmanager
def gateway_server(
    config: dict[str, Any],
    log_dir: Path,
    name: str = "gateway",
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """``deliberate serve`` (as ``python -m gateway``) on a free port; yields (URL, pid).

    Its lifespan probes every pool before serving, so once ``/health`` answers the pools
    already know their replicas' ``max_model_len``. Config and log: ``log_dir/<name>.*``.
    ``extra_env`` overrides the environment (``DELIBERATE_LOG_LEVEL`` is ``warning``).
    """
    path = write_config(config, log_dir, f"{name}.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with service(name, argv, url + "/health", log_dir, extra_env=extra_env) as proc:
        yield url, proc.pid


def _progress(message: str) -> None:
    console.print(f"[cyan]  vllm ›[/cyan] {message}")


@contextlib.contextmanager
def vllm_backend(explicit_url: str | None) -> Iterator[tuple[str, str]]:
    """The real vLLM-CPU backend; yields (base URL, served model name).

    ``explicit_url`` (or ``$DELIBERATE_BENCH_BACKEND_URL``) reuses a running server; otherwise
    the project's own ``gateway.localbackend`` starts one on a free port with a private run dir
    (60-90 s) and stops it at the end.
    """
    url = explicit_url or os.environ.get(BACKEND_URL_ENV)
    if url:
        url = url.rstrip("/")
        yield url, served_model(url)
        return
    from gateway import localbackend as lb

    with tempfile.TemporaryDirectory(prefix="deliberate-bench-vllm-") as run_dir:
        paths = lb.BackendPaths.default(run_dir=Path(run_dir))
        spec = lb.ServerSpec(port=free_port())
        lb.setup(paths, _progress)
        try:
            status = lb.start(paths, spec, _progress)
            yield status.url, lb.SERVED_MODEL_NAME
        finally:
            lb.stop(paths, spec, _progress)


def served_model(url: str) -> str:
    """The first model id a running OpenAI-compatible server lists on ``/v1/models``."""
    try:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            cards = client.get(url + "/v1/models").json()["data"]
        return str(cards[0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise BenchError(f"{url}/v1/models did not list a model ({e})") from e


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_cpus(cpus: set[int] | None) -> set[int]:
    """Pin this process (and so every child started later) to ``cpus``; returns the affinity."""
    if cpus:
        os.sched_setaffinity(0, cpus & os.sched_getaffinity(0) or cpus)
    return set(os.sched_getaffinity(0))


@contextlib.contextmanager
def unpinned() -> Iterator[None]:
    """Every CPU for the children started in the block (vLLM pins itself to core 0), then the
    previous affinity again."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------------------------
# Reporting


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were taken (they only compare on the same machine)."""
    packages = ("httpx", "uvicorn", "fastapi", "starlette", "uvloop", "httptools", "orjson")
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "git_commit": git_commit(),
        "packages": {p: package_version(p) for p in packages},
    }


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repo (read-only), or None without git or commits."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _ms(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def results_table(results: Sequence[Comparison]) -> Table:
    """Rows: target × scenario. Latency in ms (TTFC for stream rows)."""
    table = Table(title="Deliberate gateway overhead (ms; stream rows = time to first chunk)")
    for col in ("target", "scenario"):
        table.add_column(col)
    for col in ("direct p50", "direct p95", "gw p50", "gw p95", "added p50", "added p95"):
        table.add_column(col, justify="right")
    for col in ("ratio p50", "req/s direct", "req/s gw", "gw CPU/req"):
        table.add_column(col, justify="right")
    for c in results:
        added_style = "green" if c.added_p50_ms < 1.0 else "yellow"
        table.add_row(
            c.target,
            c.scenario.label,
            _ms(c.direct.p50_ms),
            _ms(c.direct.p95_ms),
            _ms(c.gateway.p50_ms),
            _ms(c.gateway.p95_ms),
            f"[{added_style}]{_ms(c.added_p50_ms)}[/{added_style}]",
            _ms(c.added_p95_ms),
            f"{c.ratio_p50:.2f}×",
            f"{c.direct.rps:.0f}",
            f"{c.gateway.rps:.0f}",
            _ms(c.gateway.gateway_cpu_ms_per_request or 0.0),
        )
    return table


def sampling_table(e2e: dict[str, Any] | None, micro: dict[str, Any] | None) -> Table:
    """The sampling override's cost: end to end on the mock, and ``apply_sampling`` alone."""
    table = Table(title="Route sampling override: what patching the body costs")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("spread / note")
    if e2e is not None:
        blocks = ", ".join(f"{x * 1000:+.1f}" for x in e2e["per_block_ms"])
        table.add_row(
            "sampling patch cost (end to end, mock)",
            f"{e2e['added_p50_ms'] * 1000:+.1f} µs",
            f"c1-sampled added p50 − c1 added p50: a difference of two noisy medians; "
            f"per block: {blocks} µs",
        )
        if e2e["gateway_cpu_ms_per_request"] is not None:
            table.add_row(
                "  gateway CPU/req, c1-sampled − c1",
                f"{e2e['gateway_cpu_ms_per_request'] * 1000:+.1f} µs",
                "/proc, 10 ms ticks: coarse",
            )
    if micro is not None:
        for case, what in (("sampled", "route with sampling"), ("no-op", "route without")):
            m = micro[case]
            table.add_row(
                f"apply_sampling, {what} ({m['route']})",
                f"{m['us_per_call']:.3f} µs/call",
                f"min {m['us_per_call_min']:.3f}; {micro['rounds']} rounds × "
                f"{micro['calls_per_round']} calls; patch {orjson.dumps(m['patch']).decode()}",
            )
        table.add_row(
            "apply_sampling, patch − no-op", f"{micro['patch_minus_noop_us']:+.3f} µs/call", ""
        )
    return table


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Options:
    """Resolved command-line options (``--quick`` already applied)."""

    mock_requests: int
    vllm_requests: int
    concurrency: tuple[int, ...]
    blocks: int
    warmup: int
    targets: tuple[str, ...]
    output: Path
    cpus: set[int] | None
    backend_url: str | None
    quick: bool
    client_per_worker: bool
    micro_calls: int
    micro_rounds: int

    def scenarios(self) -> list[Scenario]:
        """``c<N>`` per concurrency, ``c1-sampled`` right after ``c1`` (it is compared with
        it, so they run close in time), then ``ttfc-c1``."""
        out: list[Scenario] = []
        for c in self.concurrency:
            out.append(Scenario(f"c{c}", c, stream=False))
            if c == 1:
                out.append(Scenario("c1-sampled", 1, stream=False, sampled=True))
        return [*out, Scenario("ttfc-c1", 1, stream=True)]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        description="Measure the latency and throughput the Deliberate gateway adds.",
    )
    p.add_argument("--quick", action="store_true", help="Smoke run: few requests, 2 blocks.")
    p.add_argument(
        "--requests",
        type=int,
        help="Measured requests per side and scenario against the mock "
        "(default 3000; 200 with --quick).",
    )
    p.add_argument(
        "--vllm-requests",
        type=int,
        help="Measured requests per side and scenario against vLLM (default 400; 40 with --quick).",
    )
    p.add_argument(
        "--concurrency",
        default="1,32",
        help="Comma-separated concurrency levels of the non-streaming scenarios (default 1,32).",
    )
    p.add_argument("--blocks", type=int, help="ABBA blocks per scenario (default 4; 2 quick).")
    p.add_argument(
        "--warmup",
        type=int,
        help="Warm-up requests before each measured phase, at least 2 × concurrency "
        "(default 30; 5 quick).",
    )
    p.add_argument("--targets", default="mock,vllm", help="Comma-separated: mock, vllm.")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file.")
    p.add_argument(
        "--cpus",
        default="1",
        help="CPUs for the load generator, mock and gateway ('none' = no pinning; default 1, "
        "since the local vLLM is pinned to core 0).",
    )
    p.add_argument(
        "--backend-url", help=f"A running vLLM to use (default ${BACKEND_URL_ENV}, else start one)."
    )
    p.add_argument(
        "--client-per-worker",
        action="store_true",
        help="One single-connection httpx client per worker instead of ONE shared pooled "
        "client (whose pool bookkeeping makes c=32 load-generator-bound).",
    )
    p.add_argument(
        "--micro-calls",
        type=int,
        help="apply_sampling calls per round of the in-process micro-benchmark "
        "(default 100000; 20000 with --quick; 0 skips it).",
    )
    p.add_argument("--micro-rounds", type=int, help="Its rounds per case (default 5; 3 quick).")
    a = p.parse_args(argv)
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    if not targets or set(targets) - {"mock", "vllm"}:
        p.error("--targets takes mock and/or vllm")
    concurrency = tuple(sorted({int(c) for c in a.concurrency.split(",") if c.strip()}))
    if not concurrency or min(concurrency) < 1:
        p.error("--concurrency needs positive integers")
    blocks = a.blocks or (2 if a.quick else 4)
    return Options(
        mock_requests=max(a.requests or (200 if a.quick else 3000), blocks),
        vllm_requests=max(a.vllm_requests or (40 if a.quick else 400), blocks),
        concurrency=concurrency,
        blocks=blocks,
        warmup=a.warmup if a.warmup is not None else (5 if a.quick else 30),
        targets=targets,
        output=a.output,
        cpus=parse_cpus(a.cpus),
        backend_url=a.backend_url,
        quick=a.quick,
        client_per_worker=a.client_per_worker,
        micro_calls=a.micro_calls
        if a.micro_calls is not None
        else (20_000 if a.quick else 100_000),
        micro_rounds=max(1, a.micro_rounds or (3 if a.quick else 5)),
    )


def parse_cpus(spec: str) -> set[int] | None:
    """'none' → no pinning; '1' / '0,1' / '2-3' → that CPU set (ignored on a 1-CPU machine)."""
    if spec.strip().lower() in ("", "none"):
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    available = os.sched_getaffinity(0)
    return cpus if cpus & available and len(available) > 1 else None


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_event_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when available (cheaper per request than asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Mock phases first (no vLLM running yet, so it cannot disturb them), then vLLM phases.

    Each target gets its own gateway process: the mock one routes only to the mock; the vLLM
    one has both pools, as in ``configs/``-style deployments.
    """
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # same teardown as Ctrl-C
    started = time.monotonic()
    load_before = os.getloadavg()
    results: list[Comparison] = []
    targets: list[Target] = []
    try:
        with contextlib.ExitStack() as stack:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlb-bench-")))
            affinity = pin_cpus(opts.cpus)
            mock_url, _ = stack.enter_context(mock_server(log_dir))
            if "mock" in opts.targets:
                config = gateway_config(mock_url, None)
                with gateway_server(config, log_dir, "gateway-mock") as (gw_url, gw_pid):
                    target = Target(
                        "mock",
                        mock_url,
                        gw_url,
                        MOCK_MODEL,
                        MOCK_ROUTE,
                        opts.mock_requests,
                        gw_pid,
                        sampled_model=SAMPLED_ROUTE,
                    )
                    targets.append(target)
                    results += measure_target(opts, target, affinity)
            if "vllm" in opts.targets:
                console.rule("starting the real vLLM backend")
                with unpinned():  # vLLM pins its own compute threads to core 0
                    vllm = stack.enter_context(vllm_backend(opts.backend_url))
                config = gateway_config(mock_url, vllm)
                gw_url, gw_pid = stack.enter_context(
                    gateway_server(config, log_dir, "gateway-vllm")
                )
                url, model = vllm
                target = Target("vllm", url, gw_url, model, VLLM_ROUTE, opts.vllm_requests, gw_pid)
                targets.append(target)
                results += measure_target(opts, target, affinity)
        # After every process we started is gone, on the same pinned core.
        micro = None
        if opts.micro_calls > 0:
            console.rule(f"apply_sampling micro-benchmark, cpus {sorted(affinity)}")
            micro = time_apply_sampling(opts.micro_calls, opts.micro_rounds)
    except KeyboardInterrupt:
        console.print("[red]interrupted: everything started was stopped[/red]")
        return 130
    except BenchError as e:
        console.print(f"[red]benchmark failed: {e}[/red]")
        return 1
    duration = time.monotonic() - started
    e2e = sampling_patch_cost(results)
    console.print(results_table(results))
    if e2e is not None or micro is not None:
        console.print(sampling_table(e2e, micro))
    report = {
        "benchmark": "gateway-overhead",
        "description": __doc__,
        "machine": machine_info()
        | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": settings_json(opts, affinity),
        "targets": [asdict(t) for t in targets],
        "results": [c.to_json() for c in results],
        "sampling_patch": {"end_to_end": e2e, "micro": micro},
        "duration_s": round(duration, 1),
    }
    write_json(opts.output, report)
    console.print(f"results: {opts.output} (run took {duration:.0f} s)")
    return 0


def measure_target(opts: Options, target: Target, affinity: set[int]) -> list[Comparison]:
    """Every scenario of one target, on a fresh event loop and fresh load-generator clients."""
    console.rule(f"{target.name}: gateway pid {target.gateway_pid}, cpus {sorted(affinity)}")
    return run_event_loop(
        run_all([target], opts.scenarios(), opts.blocks, opts.warmup, opts.client_per_worker)
    )


def settings_json(opts: Options, affinity: set[int]) -> dict[str, Any]:
    return {
        "quick": opts.quick,
        "requests_per_side": {"mock": opts.mock_requests, "vllm": opts.vllm_requests},
        "concurrency": list(opts.concurrency),
        "blocks": opts.blocks,
        "block_order": "ABBA (direct/gateway alternate which goes first)",
        "warmup_per_phase": opts.warmup,
        "bench_cpu_affinity": sorted(affinity),
        "request": {"max_tokens": 1, "temperature": 0, "prompt": PROMPT},
        "sampled_scenario": {
            "route": SAMPLED_ROUTE,
            "route_sampling": ROUTE_SAMPLING,
            "gateway_body": "the request without temperature (the route's sampling fills it)",
            "direct_body": "the request with the route's sampling fields already set",
        },
        "micro_benchmark": {"calls_per_round": opts.micro_calls, "rounds": opts.micro_rounds},
        "load_generator": (
            "one single-connection httpx.AsyncClient per worker"
            if opts.client_per_worker
            else "one shared httpx.AsyncClient (pooled keep-alive, trust_env=False)"
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
