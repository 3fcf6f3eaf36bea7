"""Load and soak: does one gateway process stay flat under sustained load and long streams?

One run starts the mock backend (bench/mock_openai.py, streams paced by
``--chunk-interval-ms``) and ONE real gateway process (``python -m gateway serve``, uvicorn,
as ``deliberate serve`` runs it) on a bench copy of the shipped policy ``configs/routes.yaml``
whose ``default`` pool points at the mock. The policy is otherwise served as written; the
access log is on (``DELIBERATE_LOG_LEVEL=info``, lines go to the gateway's log file). Then:

1. warm-up: ``--warmup-requests`` requests of the load mix, then ``--streams`` concurrent
   short streams (``--warmup-chunks`` chunks each), so the allocator, the connection pools and
   every code path have seen the run's peak concurrency before the baseline is taken;
2. settle (``--settle-s``: long enough for the mock to close idle keep-alive connections and
   the gateway's next health probe to drop them), then the baseline sample: RSS, open fds;
3. load: ``--single`` single-pass and ``--best-of-n`` best-of-n requests (the shipped routes
   ``single-pass`` and ``best-of-n``, n=8 in one backend call), interleaved evenly, at
   ``--concurrency`` closed-loop workers on one pooled client; every answer is checked;
4. streams: ``--streams`` concurrent streams of ``--chunks`` one-token chunks, first straight
   to the mock (the baseline), then through the gateway's ``single-pass`` route; both sides
   send the mock the same body (the gateway adds ``temperature: 0`` and
   ``stream_options.include_usage``, so the direct side sends them itself);
5. settle again, then the final sample (``--stream-rounds`` N repeats the gateway streams N
   times, each followed by a settle and a reading: a leak grows every round, a high-water
   mark only once; the figures use round 1).

A sampler reads the gateway's RSS (``VmRSS``) and open fds from /proc every
``--sample-every-s`` for the whole run (the time series is in the JSON).

Figures: RSS growth = final RSS - baseline RSS (target <= 20 MB); open fds at baseline and
final; gateway CPU (user + system, /proc) per relayed chunk over the gateway stream phase,
divided by the load generator's own CPU per chunk over the direct stream phase (a ratio in
one run; both read whole SSE events with the same splitter); inter-chunk delay = time between
two consecutive content chunks at the client, and the added p99 = gateway p99 - direct p99;
errors (non-200, a wrong answer, an SSE ``error`` event, a missing chunk, a transport error),
which must be 0; ERROR lines and tracebacks in the gateway's log.

Everything runs pinned to ``--cpus`` (default core 1, as bench/overhead.py: the local vLLM
pins its compute threads to core 0), on free ports, and is torn down at the end, also on
Ctrl-C / SIGTERM. ``--quick`` is a smoke run of a few seconds. Results:
``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import signal
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from overhead import (
    MOCK_MODEL,
    REPO_ROOT,
    BenchError,
    gateway_server,
    machine_info,
    mock_server,
    parse_cpus,
    percentile,
    pin_cpus,
    process_cpu_s,
    run_event_loop,
    write_json,
)
from rich.console import Console
from rich.table import Table

from gateway.sse import EventSplitter
from routing.loader import anchored

SHIPPED_POLICY = REPO_ROOT / "configs" / "routes.yaml"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "soak.json"
POOL = "default"
"""The shipped policy's pool that the bench points at the mock."""
SINGLE_ROUTE = "single-pass"
BEST_ROUTE = "best-of-n"
RSS_TARGET_MB = 20.0
MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 160)


# --------------------------------------------------------------------------------------------
# Config and request bodies


def bench_config(policy: dict[str, Any], mock_url: str) -> dict[str, Any]:
    """The shipped policy with its ``default`` pool pointed at the mock (model and replicas);
    nothing else changes. Raises BenchError when the routes the bench sends to are missing."""
    config = copy.deepcopy(policy)
    pools = [b for b in config.get("backends", []) if b.get("name") == POOL]
    if not pools:
        raise BenchError(f"the policy has no backend {POOL!r} to point at the mock")
    pools[0]["model"] = MOCK_MODEL
    pools[0]["replicas"] = [mock_url]
    routes = {r.get("name"): r for r in config.get("routes", [])}
    for name in (SINGLE_ROUTE, BEST_ROUTE):
        if routes.get(name, {}).get("backend") != POOL:
            raise BenchError(f"the policy has no route {name!r} on backend {POOL!r}")
    return config


def best_of_n_samples(config: dict[str, Any]) -> int:
    """``n`` of the best-of-n route (8 in the shipped policy)."""
    route = next(r for r in config["routes"] if r["name"] == BEST_ROUTE)
    return int(route.get("params", {}).get("n", 8))


SINGLE_BODY = orjson.dumps(
    {
        "model": SINGLE_ROUTE,
        "messages": [{"role": "user", "content": "Reply with one word: hello."}],
        "max_tokens": 1,
    }
)
BEST_BODY = orjson.dumps(
    {
        "model": BEST_ROUTE,
        "messages": [{"role": "user", "content": "What is 1 + 1?"}],
        "max_tokens": 16,
    }
)


def stream_body(model: str, chunks: int, direct: bool) -> bytes:
    """A stream of ``chunks`` content chunks (the mock sends one per ``max_tokens``).

    The gateway's ``single-pass`` route fills ``temperature: 0`` and asks the backend for
    stream usage, so the direct side sets both itself: the mock does the same work.
    """
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": chunks,
        "stream": True,
    }
    if direct:
        payload["temperature"] = 0
        payload["stream_options"] = {"include_usage": True}
    return orjson.dumps(payload)


def request_plan(single: int, best: int) -> list[str]:
    """``single`` + ``best`` route names, the best-of-n ones spread evenly (never bunched)."""
    total = single + best
    plan = []
    for i in range(total):
        is_best = (i + 1) * best // total > i * best // total if total else False
        plan.append(BEST_ROUTE if is_best else SINGLE_ROUTE)
    return plan


# --------------------------------------------------------------------------------------------
# The gateway process: RSS, open fds, CPU, log


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class Sample:
    """One reading of the gateway process, ``t_s`` seconds into the run."""

    t_s: float
    label: str
    rss_bytes: int
    fds: int
    cpu_s: float


class Probe:
    """Reads the gateway process; keeps every reading (periodic ones and labelled ones)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []

    def take(self, label: str = "") -> Sample:
        s = Sample(
            round(time.monotonic() - self.t0, 2),
            label,
            rss_bytes(self.pid),
            open_fds(self.pid),
            process_cpu_s(self.pid),
        )
        self.samples.append(s)
        return s

    async def run(self, every_s: float) -> None:
        while True:
            self.take()
            await asyncio.sleep(every_s)


def log_problems(log: Path) -> list[str]:
    """Lines of the gateway's log at ERROR/CRITICAL level or starting a traceback."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    marks = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)", "ERROR:")
    return [line for line in lines if any(m in line for m in marks)]


# --------------------------------------------------------------------------------------------
# Load: non-streaming single-pass and best-of-n


@dataclass
class KindStats:
    """Latencies and failures of one kind of request in the load phase."""

    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, wall_s: float) -> dict[str, Any]:
        xs = sorted(self.latencies_s)
        out: dict[str, Any] = {"ok": len(xs), "errors": len(self.errors)}
        if xs:
            out |= {
                "p50_ms": percentile(xs, 50) * 1000,
                "p99_ms": percentile(xs, 99) * 1000,
                "max_ms": xs[-1] * 1000,
                "req_per_s": len(xs) / wall_s if wall_s > 0 else 0.0,
            }
        out["first_errors"] = self.errors[:5]
        return out


def check_answer(route: str, status: int, body: bytes, samples: int) -> str | None:
    """None when the gateway's answer is what the mock and the route make of it, else why not.

    single-pass: the mock's one-token answer and usage, passed through. best-of-n: ``samples``
    one-token candidates in one backend call, the 3:1 vote for 2 won (the mock's
    ``CANDIDATE_TEXTS``), charged as 1 visible + ``samples - 1`` hidden tokens.
    """
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        data = orjson.loads(body)
        content = data["choices"][0]["message"]["content"]
        usage = data["usage"]
        generated = usage["completion_tokens"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        return f"unreadable answer ({type(e).__name__}): {body[:200]!r}"
    if route == SINGLE_ROUTE:
        if content != "Hi" or generated != 1:
            return f"single-pass answered {content!r} for {generated} tokens"
        return None
    info = data.get("deliberate") or {}
    if info.get("samples") != samples or info.get("backend_calls") != 1:
        return f"best-of-n used {info.get('samples')} samples in {info.get('backend_calls')} calls"
    hidden = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if generated != samples or hidden != samples - 1:
        return f"best-of-n charged {generated} tokens, {hidden} hidden, for {samples} samples"
    return None if content == "1 + 1 = 2" else f"best-of-n chose {content!r}"


async def run_load(
    client: httpx.AsyncClient, url: str, plan: Sequence[str], concurrency: int, samples: int
) -> tuple[dict[str, KindStats], float]:
    """Send ``plan`` (route names) with ``concurrency`` closed-loop workers; (stats, wall)."""
    stats = {SINGLE_ROUTE: KindStats(), BEST_ROUTE: KindStats()}
    bodies = {SINGLE_ROUTE: SINGLE_BODY, BEST_ROUTE: BEST_BODY}
    todo = iter(plan)

    async def worker() -> None:
        for route in todo:  # shared iterator: one queue for every worker
            t0 = time.perf_counter()
            try:
                r = await client.post(url, content=bodies[route])
                problem = check_answer(route, r.status_code, r.content, samples)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
            if problem is None:
                stats[route].latencies_s.append(time.perf_counter() - t0)
            else:
                stats[route].errors.append(problem)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(plan), 1)))))
    return stats, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Streams


@dataclass
class StreamSide:
    """What the client saw of one side's concurrent streams."""

    gaps_s: array[float] = field(default_factory=lambda: array("d"))
    """Time between consecutive content chunks, over every stream."""
    ttfc_s: list[float] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    events: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    gateway_cpu_s: float = 0.0
    mock_cpu_s: float = 0.0


async def one_stream(
    client: httpx.AsyncClient, url: str, body: bytes, chunks: int, side: StreamSide
) -> None:
    """Read one stream event by event, timestamping each read; checks it is whole.

    Events 1..``chunks`` (0 is the role chunk) are the content chunks whose gaps count.
    A whole stream ends with ``data: [DONE]`` and carries no ``error`` event.
    """
    splitter = EventSplitter()
    gaps = side.gaps_s
    index = 0
    last_t = 0.0
    last_event = b""
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, content=body) as r:
            if r.status_code != 200:
                await r.aread()
                side.errors.append(f"HTTP {r.status_code}: {r.content[:200]!r}")
                return
            async for raw in r.aiter_raw():
                now = time.perf_counter()
                for event in splitter.feed(raw):
                    if 1 <= index <= chunks:
                        if index == 1:
                            side.ttfc_s.append(now - t0)
                        else:
                            gaps.append(now - last_t)
                        last_t = now
                    if event.startswith(b'data: {"error"'):
                        side.errors.append(f"error event: {event[:200]!r}")
                    index += 1
                    last_event = event
    except httpx.HTTPError as e:
        side.errors.append(f"{type(e).__name__}: {e}")
        return
    side.events += index
    side.durations_s.append(time.perf_counter() - t0)
    if last_event != b"data: [DONE]\n\n" or index < chunks + 3:
        side.errors.append(f"incomplete stream: {index} events, last {last_event[:80]!r}")


async def run_streams(url: str, body: bytes, streams: int, chunks: int) -> StreamSide:
    """``streams`` concurrent streams, each on its own connection of one fresh client."""
    side = StreamSide()
    async with httpx.AsyncClient(
        trust_env=False,
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(max_connections=streams, max_keepalive_connections=streams),
        headers={"content-type": "application/json"},
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_stream(client, url, body, chunks, side) for _ in range(streams)))
        side.wall_s = time.perf_counter() - t0
    return side


def gap_stats(gaps_s: Sequence[float]) -> dict[str, float]:
    """Inter-chunk delays in ms: p50, p90, p99, p99.9, max, mean (empty → zeros)."""
    if not gaps_s:
        return {k: 0.0 for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")}
    xs = sorted(gaps_s)
    return {
        "p50_ms": percentile(xs, 50) * 1000,
        "p90_ms": percentile(xs, 90) * 1000,
        "p99_ms": percentile(xs, 99) * 1000,
        "p999_ms": percentile(xs, 99.9) * 1000,
        "max_ms": xs[-1] * 1000,
        "mean_ms": sum(xs) / len(xs) * 1000,
    }


def stream_summary(side: StreamSide) -> dict[str, Any]:
    events = max(side.events, 1)
    ttfc = sorted(side.ttfc_s)
    return {
        "streams_ok": len(side.durations_s),
        "events": side.events,
        "errors": len(side.errors),
        "first_errors": side.errors[:5],
        "inter_chunk": gap_stats(side.gaps_s),
        "gaps": len(side.gaps_s),
        "ttfc_p50_ms": percentile(ttfc, 50) * 1000 if ttfc else None,
        "ttfc_p99_ms": percentile(ttfc, 99) * 1000 if ttfc else None,
        "wall_s": side.wall_s,
        "client_cpu_s": side.client_cpu_s,
        "client_cpu_us_per_event": side.client_cpu_s / events * 1e6,
        "gateway_cpu_s": side.gateway_cpu_s,
        "gateway_cpu_us_per_event": side.gateway_cpu_s / events * 1e6,
        "mock_cpu_s": side.mock_cpu_s,
        "mock_cpu_us_per_event": side.mock_cpu_s / events * 1e6,
    }


async def measured_streams(
    url: str, body: bytes, opts: Options, gateway_pid: int, mock_pid: int
) -> StreamSide:
    """One stream phase, with the CPU of this process, the gateway and the mock around it."""
    c0, g0, m0 = time.process_time(), process_cpu_s(gateway_pid), process_cpu_s(mock_pid)
    side = await run_streams(url, body, opts.streams, opts.chunks)
    side.client_cpu_s = time.process_time() - c0
    side.gateway_cpu_s = process_cpu_s(gateway_pid) - g0
    side.mock_cpu_s = process_cpu_s(mock_pid) - m0
    return side


# --------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Options:
    """Resolved command-line options (``--quick`` already applied)."""

    single: int
    best_of_n: int
    concurrency: int
    streams: int
    chunks: int
    stream_rounds: int
    chunk_interval_ms: float
    warmup_requests: int
    warmup_chunks: int
    settle_s: float
    sample_every_s: float
    policy: Path
    output: Path
    cpus: set[int] | None
    quick: bool


async def soak(
    opts: Options, config: dict[str, Any], gw_url: str, mock_url: str, gw_pid: int, mock_pid: int
) -> dict[str, Any]:
    """Every phase against the running mock and gateway; the report's measured part."""
    probe = Probe(gw_pid)
    probe.take("start")
    sampler = asyncio.create_task(probe.run(opts.sample_every_s))
    samples = best_of_n_samples(config)
    chat = "/v1/chat/completions"
    try:
        async with httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(120.0, connect=5.0),
            limits=httpx.Limits(max_connections=opts.concurrency + 2),
            headers={"content-type": "application/json"},
        ) as client:
            phase("warm-up")
            warm_best = opts.warmup_requests // 6  # the load phase's mix: 1 in 6
            warm_plan = request_plan(opts.warmup_requests - warm_best, warm_best)
            warm, _ = await run_load(client, gw_url + chat, warm_plan, opts.concurrency, samples)
            warm_streams = await run_streams(
                gw_url + chat,
                stream_body(SINGLE_ROUTE, opts.warmup_chunks, direct=False),
                opts.streams,
                opts.warmup_chunks,
            )
            warm_errors = [e for k in warm.values() for e in k.errors] + warm_streams.errors
            if warm_errors:
                raise BenchError(
                    f"{len(warm_errors)} error(s) in the warm-up, first: {warm_errors[0]}"
                )
            await settle(opts.settle_s)
            baseline = probe.take("baseline")
            console.print(f"  baseline: {describe(baseline)}")

            phase(f"load: {opts.single} single-pass + {opts.best_of_n} best-of-n")
            cpu0 = process_cpu_s(gw_pid)
            plan = request_plan(opts.single, opts.best_of_n)
            load, load_wall = await run_load(client, gw_url + chat, plan, opts.concurrency, samples)
            load_cpu = process_cpu_s(gw_pid) - cpu0
            after_load = probe.take("after_load")
            console.print(f"  after load: {describe(after_load)} ({load_wall:.1f} s)")

        phase(f"streams: {opts.streams} x {opts.chunks} chunks, direct to the mock")
        direct = await measured_streams(
            mock_url + chat, stream_body(MOCK_MODEL, opts.chunks, True), opts, gw_pid, mock_pid
        )
        rounds: list[StreamSide] = []
        for r in range(1, opts.stream_rounds + 1):
            of = f" (round {r}/{opts.stream_rounds})" if opts.stream_rounds > 1 else ""
            phase(f"streams: {opts.streams} x {opts.chunks} chunks, through the gateway{of}")
            peak_task = asyncio.create_task(sample_midway(probe, opts, r))
            body = stream_body(SINGLE_ROUTE, opts.chunks, False)
            rounds.append(await measured_streams(gw_url + chat, body, opts, gw_pid, mock_pid))
            await peak_task
            probe.take("after_streams" if r == 1 else f"after_streams_{r}")
            await settle(opts.settle_s)
            settled = probe.take("final" if r == opts.stream_rounds else f"settled_{r}")
            console.print(f"  {settled.label}: {describe(settled)}")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return {
        "load": {
            "wall_s": load_wall,
            "requests": len(plan),
            "gateway_cpu_s": load_cpu,
            "gateway_cpu_ms_per_request": load_cpu / max(len(plan), 1) * 1000,
            "kinds": {k: v.summary(load_wall) for k, v in load.items()},
        },
        "streams": {"direct": stream_summary(direct), "gateway": stream_summary(rounds[0])},
        "extra_gateway_rounds": [stream_summary(side) for side in rounds[1:]],
        "samples": [asdict(s) for s in probe.samples],
    }


async def sample_midway(probe: Probe, opts: Options, stream_round: int) -> None:
    """A labelled reading halfway through a gateway stream round (all streams open)."""
    await asyncio.sleep(opts.chunks * opts.chunk_interval_ms / 1000 / 2)
    probe.take("mid_streams" if stream_round == 1 else f"mid_streams_{stream_round}")


async def settle(seconds: float) -> None:
    if seconds > 0:
        console.print(f"  settling {seconds:.0f} s")
        await asyncio.sleep(seconds)


def phase(title: str) -> None:
    console.rule(title)


def describe(s: Sample) -> str:
    return f"RSS {s.rss_bytes / MB:.1f} MB, {s.fds} open fds, CPU {s.cpu_s:.1f} s"


def figures(measured: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and targets from the measured part of the report."""
    by_label = {s["label"]: s for s in measured["samples"] if s["label"]}
    base, final = by_label["baseline"], by_label["final"]
    direct, gateway = measured["streams"]["direct"], measured["streams"]["gateway"]
    rss_growth_mb = (final["rss_bytes"] - base["rss_bytes"]) / MB
    peak_rss = max(s["rss_bytes"] for s in measured["samples"])
    client_per_event = direct["client_cpu_us_per_event"]
    extra = measured.get("extra_gateway_rounds", [])
    errors = (
        sum(k["errors"] for k in measured["load"]["kinds"].values())
        + direct["errors"]
        + gateway["errors"]
        + sum(side["errors"] for side in extra)
    )
    settled = [s for s in measured["samples"] if s["label"].startswith("settled_")]
    return {
        "rss_baseline_mb": base["rss_bytes"] / MB,
        "rss_after_load_mb": by_label["after_load"]["rss_bytes"] / MB,
        "rss_final_mb": final["rss_bytes"] / MB,
        "rss_peak_mb": peak_rss / MB,
        "rss_growth_mb": rss_growth_mb,
        "rss_after_each_stream_round_mb": [s["rss_bytes"] / MB for s in [*settled, final]],
        "rss_target_mb": RSS_TARGET_MB,
        "rss_target_met": rss_growth_mb <= RSS_TARGET_MB,
        "fds_start": by_label["start"]["fds"],
        "fds_baseline": base["fds"],
        "fds_mid_streams": by_label.get("mid_streams", {}).get("fds"),
        "fds_final": final["fds"],
        "gateway_cpu_us_per_chunk": gateway["gateway_cpu_us_per_event"],
        "direct_client_cpu_us_per_chunk": client_per_event,
        "cpu_per_chunk_ratio": (
            gateway["gateway_cpu_us_per_event"] / client_per_event if client_per_event else None
        ),
        "inter_chunk_p99_direct_ms": direct["inter_chunk"]["p99_ms"],
        "inter_chunk_p99_gateway_ms": gateway["inter_chunk"]["p99_ms"],
        "added_p99_inter_chunk_ms": gateway["inter_chunk"]["p99_ms"]
        - direct["inter_chunk"]["p99_ms"],
        "errors": errors,
        "errors_target_met": errors == 0,
    }


# --------------------------------------------------------------------------------------------
# Tables


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def load_rows(measured: dict[str, Any]) -> list[list[str]]:
    """One row per request kind of the load phase."""
    rows = []
    for kind, s in measured["load"]["kinds"].items():
        rows.append(
            [
                kind,
                str(s["ok"] + s["errors"]),
                str(s["errors"]),
                _f(s.get("p50_ms"), 3),
                _f(s.get("p99_ms"), 3),
                _f(s.get("req_per_s"), 0),
            ]
        )
    return rows


def stream_rows(measured: dict[str, Any]) -> list[list[str]]:
    """One row per stream side: client-side delays and every process's CPU per event."""
    rows = []
    for side in ("direct", "gateway"):
        s = measured["streams"][side]
        gaps = s["inter_chunk"]
        rows.append(
            [
                side,
                str(s["streams_ok"]),
                str(s["events"]),
                str(s["errors"]),
                _f(gaps["p50_ms"]),
                _f(gaps["p99_ms"]),
                _f(gaps["p999_ms"]),
                _f(gaps["max_ms"]),
                _f(s["ttfc_p99_ms"]),
                _f(s["client_cpu_us_per_event"], 1),
                _f(s["gateway_cpu_us_per_event"], 1) if side == "gateway" else "-",
                _f(s["mock_cpu_us_per_event"], 1),
            ]
        )
    return rows


def summary_rows(fig: dict[str, Any]) -> list[list[str]]:
    """The headline figures: (figure, value, target / verdict)."""

    def verdict(met: bool) -> str:
        return "[green]met[/green]" if met else "[red]NOT met[/red]"

    ratio = fig["cpu_per_chunk_ratio"]
    per_round = fig.get("rss_after_each_stream_round_mb", [])
    rounds = (
        [
            [
                "RSS after each gateway stream round",
                " / ".join(f"{x:.1f}" for x in per_round) + " MB",
                "a leak grows every round",
            ]
        ]
        if len(per_round) > 1
        else []
    )
    return [
        [
            "RSS growth after warm-up",
            f"{fig['rss_growth_mb']:+.1f} MB",
            f"<= {fig['rss_target_mb']:.0f} MB: {verdict(fig['rss_target_met'])}",
        ],
        [
            "RSS baseline / after load / final / peak",
            f"{fig['rss_baseline_mb']:.1f} / {fig['rss_after_load_mb']:.1f} / "
            f"{fig['rss_final_mb']:.1f} / {fig['rss_peak_mb']:.1f} MB",
            "",
        ],
        *rounds,
        [
            "open fds start / baseline / mid-streams / final",
            f"{fig['fds_start']} / {fig['fds_baseline']} / {fig['fds_mid_streams']} / "
            f"{fig['fds_final']}",
            "final = baseline" if fig["fds_final"] == fig["fds_baseline"] else "final != baseline",
        ],
        [
            "gateway CPU per relayed chunk",
            f"{fig['gateway_cpu_us_per_chunk']:.1f} µs",
            f"direct client: {fig['direct_client_cpu_us_per_chunk']:.1f} µs/chunk",
        ],
        ["CPU per chunk, gateway / direct client", "-" if ratio is None else f"{ratio:.2f}×", ""],
        [
            "added p99 inter-chunk delay",
            f"{fig['added_p99_inter_chunk_ms']:+.2f} ms",
            f"gateway {fig['inter_chunk_p99_gateway_ms']:.2f} vs direct "
            f"{fig['inter_chunk_p99_direct_ms']:.2f} ms",
        ],
        ["errors", str(fig["errors"]), f"0: {verdict(fig['errors_target_met'])}"],
    ]


def table(title: str, columns: Sequence[str], rows: list[list[str]], left: int = 1) -> Table:
    """A rich table; the first ``left`` columns are left-aligned, the others right-aligned."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        t.add_row(*row)
    return t


def print_tables(measured: dict[str, Any], fig: dict[str, Any]) -> None:
    console.print(
        table(
            "Load phase (non-streaming, through the gateway)",
            ("route", "requests", "errors", "p50 ms", "p99 ms", "req/s"),
            load_rows(measured),
        )
    )
    console.print(
        table(
            "Long streams (inter-chunk delay at the client, ms; CPU µs per SSE event)",
            (
                "side",
                "streams",
                "events",
                "errors",
                "gap p50",
                "gap p99",
                "gap p99.9",
                "gap max",
                "TTFC p99",
                "client CPU",
                "gw CPU",
                "mock CPU",
            ),
            stream_rows(measured),
        )
    )
    console.print(table("Soak figures", ("figure", "value", "target / note"), summary_rows(fig), 3))


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="Smoke run of a few seconds.")
    p.add_argument("--single", type=int, help="single-pass requests (10000; 200 quick).")
    p.add_argument("--best-of-n", type=int, help="best-of-n requests (2000; 40 quick).")
    p.add_argument("--concurrency", type=int, default=8, help="Load-phase workers (8).")
    p.add_argument("--streams", type=int, help="Concurrent long streams (256; 16 quick).")
    p.add_argument("--chunks", type=int, help="Content chunks per stream (1000; 50 quick).")
    p.add_argument(
        "--stream-rounds",
        type=int,
        default=1,
        help="Gateway stream rounds, each followed by a settle and a reading (1): a leak "
        "grows with every round, a high-water mark only once. Figures use round 1.",
    )
    p.add_argument(
        "--chunk-interval-ms",
        type=float,
        help="The mock's pause between chunks (50, i.e. 20 tokens/s per stream; 2 quick).",
    )
    p.add_argument("--warmup-requests", type=int, help="Warm-up requests (600; 24 quick).")
    p.add_argument("--warmup-chunks", type=int, help="Chunks per warm-up stream (20; 5 quick).")
    p.add_argument(
        "--settle-s",
        type=float,
        help="Idle time before the baseline and the final sample (12; 0.5 quick): more than "
        "the mock's keep-alive timeout (5 s) plus the pool's health interval (5 s).",
    )
    p.add_argument("--sample-every-s", type=float, default=1.0, help="Sampler period (1 s).")
    p.add_argument("--policy", type=Path, default=SHIPPED_POLICY, help="Policy to derive from.")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file.")
    p.add_argument("--cpus", default="1", help="CPUs to pin everything to ('none'; default 1).")
    a = p.parse_args(argv)
    q = a.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    opts = Options(
        single=pick(a.single, 10_000, 200),
        best_of_n=pick(a.best_of_n, 2_000, 40),
        concurrency=a.concurrency,
        streams=pick(a.streams, 256, 16),
        chunks=pick(a.chunks, 1000, 50),
        stream_rounds=a.stream_rounds,
        chunk_interval_ms=pick(a.chunk_interval_ms, 50.0, 2.0),
        warmup_requests=pick(a.warmup_requests, 600, 24),
        warmup_chunks=pick(a.warmup_chunks, 20, 5),
        settle_s=pick(a.settle_s, 12.0, 0.5),
        sample_every_s=a.sample_every_s,
        policy=a.policy,
        output=a.output,
        cpus=parse_cpus(a.cpus),
        quick=q,
    )
    if min(opts.single, opts.best_of_n) < 0 or min(opts.concurrency, opts.streams) < 1:
        p.error("request counts must be >= 0, concurrency and streams >= 1")
    if opts.stream_rounds < 1:
        p.error("--stream-rounds must be >= 1")
    if opts.chunks < 2 or opts.warmup_chunks < 1:
        p.error("--chunks must be >= 2 (a gap needs two chunks), --warmup-chunks >= 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # same teardown as Ctrl-C
    started = time.monotonic()
    load_before = os.getloadavg()
    policy = anchored(yaml.safe_load(opts.policy.read_text()), opts.policy.parent)
    try:
        with contextlib.ExitStack() as stack:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlb-soak-")))
            affinity = pin_cpus(opts.cpus)
            mock_args = ["--chunk-interval-ms", str(opts.chunk_interval_ms)]
            mock_url, mock_pid = stack.enter_context(mock_server(log_dir, mock_args))
            config = bench_config(policy, mock_url)
            env = {"DELIBERATE_LOG_LEVEL": "info"}  # the access log on, as in production
            gw_url, gw_pid = stack.enter_context(gateway_server(config, log_dir, "gateway", env))
            console.rule(f"gateway pid {gw_pid}, mock pid {mock_pid}, cpus {sorted(affinity)}")
            measured = run_event_loop(soak(opts, config, gw_url, mock_url, gw_pid, mock_pid))
            problems = log_problems(log_dir / "gateway.log")
    except KeyboardInterrupt:
        console.print("[red]interrupted: everything started was stopped[/red]")
        return 130
    except BenchError as e:
        console.print(f"[red]benchmark failed: {e}[/red]")
        return 1
    fig = figures(measured) | {"gateway_log_problems": len(problems)}
    print_tables(measured, fig)
    if problems:
        console.print(f"[red]{len(problems)} ERROR/traceback line(s) in the gateway log[/red]")
    report = {
        "benchmark": "soak",
        "description": __doc__,
        "machine": machine_info()
        | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {k: str(v) if isinstance(v, Path | set) else v for k, v in asdict(opts).items()}
        | {"bench_cpu_affinity": sorted(affinity), "policy_routes": [SINGLE_ROUTE, BEST_ROUTE]},
        "figures": fig,
        "gateway_log_problems": problems[:20],
        **measured,
        "duration_s": round(time.monotonic() - started, 1),
    }
    write_json(opts.output, report)
    console.print(f"results: {opts.output} (run took {report['duration_s']:.0f} s)")
    ok = fig["errors_target_met"] and not problems
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
