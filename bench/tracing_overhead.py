"""What OpenTelemetry tracing costs the gateway per request: off, on, and on but sampled out.

One run, one mock backend (bench/mock_openai.py, answers instantly, so differences are the
gateway's own cost), and three gateway processes on the same policy, differing only in their
environment:

- ``off``: no ``OTEL_*`` at all (the default): the gateway runs on the null tracer and never
  loads the OpenTelemetry SDK;
- ``on``: ``OTEL_TRACES_EXPORTER=otlp`` to a local OTLP/HTTP sink started here (the SDK's
  ``BatchSpanProcessor`` and OTLP/protobuf exporter, exactly as in production; the sink decodes
  each export and counts its spans, so the run proves the spans left the process);
- ``sampled-out``: the same with ``OTEL_TRACES_SAMPLER=always_off`` (spans are started but
  not recorded; ``traceparent`` still goes to the backend).

Scenarios (concurrency 1, non-streaming, ``max_tokens=1``): ``single-pass`` (a pass-through:
server span + route, admission, budget and one backend span) and ``ladder`` (a single-pass
route with two ``samples`` rungs at threshold 1.0: strategy, rung, verifier and three backend
spans). ``direct`` sends the single-pass body straight to the mock, for the gateway's added
latency.

Per (scenario, mode): p50/p95 latency, the gateway process's CPU time per request (from
/proc: it includes the exporter's thread, which latency alone would hide on an idle core),
and both as ratios to ``off``. Modes are measured in rotating order over ``--blocks`` blocks,
each after a warm-up, so drift hits all alike. Every process is pinned to ``--cpus``.

In-process (the ASGI app on a scripted backend, no sockets), the process CPU per request
with tracing off, on with a no-op exporter (what creating the spans costs) and on with the
OTLP/HTTP exporter to the sink (what encoding and sending them adds, in the batch thread),
min over interleaved rounds: less noisy than the process measurements on a shared machine.

"Off costs nothing" is checked directly too: an in-process run counts the null tracer's calls
during one request of each scenario, and a micro-benchmark times those calls; their product
is what tracing-off adds to a request (compared with the gateway CPU per request).

Usage: ``.venv/bin/python bench/tracing_overhead.py`` (~3 min) or ``--quick``.
Results: ``bench/results/tracing_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.table import Table

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import overhead as oh  # noqa: E402  (the house helpers: processes, pinning, percentiles)

DEFAULT_OUTPUT = BENCH / "results" / "tracing_overhead.json"
MODES = ("off", "on", "sampled-out")
SCENARIOS = ("single-pass", "ladder")
console = oh.console


# --------------------------------------------------------------------------------------------
# The OTLP/HTTP sink (runs as its own process: ``--sink-port``)


def sink_app() -> Any:
    """A raw ASGI app: ``POST /v1/traces`` decodes the protobuf export and counts its spans;
    ``GET /spans`` returns the count; ``GET /health`` 200."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counts = {"spans": 0, "exports": 0}
    ok = ExportTraceServiceResponse().SerializeToString()

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, ctype, out = 200, b"application/json", b"{}"
        if scope["path"] == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            counts["exports"] += 1
            counts["spans"] += sum(
                len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans
            )
            ctype, out = b"application/x-protobuf", ok
        elif scope["path"] == "/spans":
            out = json.dumps(counts).encode()
        elif scope["path"] != "/health":
            status = 404
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
        )
        await send({"type": "http.response.body", "body": out})

    return app


def run_sink(port: int) -> None:
    import uvicorn

    uvicorn.run(sink_app(), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def sink_server(log_dir: Path) -> Iterator[str]:
    port = oh.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(Path(__file__).resolve()), "--sink-port", str(port)]
    with oh.service("otlp-sink", argv, url + "/health", log_dir):
        yield url


# --------------------------------------------------------------------------------------------
# Policy, environments, requests


def policy(mock_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "default_route": "single-pass",
        "backends": [{"name": "mock", "model": oh.MOCK_MODEL, "replicas": [mock_url]}],
        "routes": [
            {"name": "single-pass", "strategy": "single-pass", "backend": "mock"},
            {
                "name": "ladder",
                "strategy": "single-pass",
                "backend": "mock",
                "sampling": {"temperature": 0},
                "escalate_to": [
                    {"samples": 2, "verifier": "arithmetic", "threshold": 1.0},
                    {"samples": 2, "verifier": "arithmetic", "threshold": 1.0},
                ],
            },
        ],
    }


def mode_env(mode: str, sink_url: str) -> dict[str, str]:
    blank = {
        k: ""
        for k in (
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_TRACES_SAMPLER",
            "OTEL_SDK_DISABLED",
        )
    }
    if mode == "off":
        return blank
    env = {
        **blank,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "deliberate-bench",
    }
    if mode == "sampled-out":
        env["OTEL_TRACES_SAMPLER"] = "always_off"
    return env


def body(model: str) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": oh.PROMPT}],
            "max_tokens": 1,
            "temperature": 0,
        }
    )


@dataclass
class Samples:
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    errors: int = 0

    def stats(self) -> dict[str, float]:
        xs = sorted(self.latencies_s)
        n = max(len(xs), 1)
        return {
            "requests": len(xs),
            "errors": self.errors,
            "p50_ms": oh.percentile(xs, 50) * 1000,
            "p95_ms": oh.percentile(xs, 95) * 1000,
            "cpu_us_per_request": self.cpu_s / n * 1e6,
        }


async def measure(
    targets: Mapping[str, tuple[str, int | None]],
    scenarios: Mapping[str, str],
    requests: int,
    blocks: int,
    warmup: int,
) -> dict[str, dict[str, Samples]]:
    """``targets``: mode → (base URL, gateway pid or None for direct); ``scenarios``:
    scenario → the model to name. Rotates the order of the modes block by block."""
    out: dict[str, dict[str, Samples]] = {s: {} for s in scenarios}
    client = oh.make_client(1)
    try:
        for scenario, model in scenarios.items():
            modes = [m for m in targets if scenario == "single-pass" or m != "direct"]
            payload = body(model)
            for block, n in enumerate(oh.block_sizes(requests, blocks)):
                order = modes[block % len(modes) :] + modes[: block % len(modes)]
                for mode in order:
                    url, pid = targets[mode]
                    sent = body(oh.MOCK_MODEL) if mode == "direct" else payload

                    def request(c: httpx.AsyncClient, u: str = url, b: bytes = sent) -> Any:
                        return oh.timed_request(c, u + "/v1/chat/completions", b)

                    await oh.run_phase(request, [client], warmup, 1)
                    cpu0 = oh.process_cpu_s(pid) if pid is not None else 0.0
                    run = await oh.run_phase(request, [client], n, 1)
                    s = out[scenario].setdefault(mode, Samples())
                    s.latencies_s += run.latencies_s
                    s.errors += run.errors
                    if pid is not None:
                        s.cpu_s += oh.process_cpu_s(pid) - cpu0
                    p50 = oh.percentile(sorted(run.latencies_s), 50) * 1000
                    console.print(
                        f"  {scenario:<12} block {block + 1}/{blocks} {mode:<12} p50 {p50:7.3f} ms"
                    )
    finally:
        await client.aclose()
    return out


# --------------------------------------------------------------------------------------------
# In-process: what the spans cost and what the OTLP export adds, apart


INPROC_MODES = ("off", "on-noop-exporter", "on-otlp")


def inproc_tracing(mode: str, sink_url: str) -> tuple[Any, Any]:
    """(``Tracing``, provider or None) for an in-process mode."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from gateway.otel import OtelTracer
    from gateway.tracing import Tracing

    class NoopExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if mode == "off":
        return Tracing(), None
    exporter: SpanExporter = (
        NoopExporter() if mode == "on-noop-exporter" else OTLPSpanExporter(sink_url + "/v1/traces")
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(OtelTracer(provider, "bench")), provider


async def inproc_cpu_us(mode: str, model: str, sink_url: str, n: int) -> float:
    """Process CPU µs per request (the event loop and the exporter's thread) of ``n``
    in-process requests through the ASGI app to a scripted backend, export flushed."""
    from prometheus_client import CollectorRegistry

    from gateway.app import create_app
    from gateway.settings import Settings
    from routing.config import DeliberateConfig
    from tests.fakes import FakeVLLM

    fake = FakeVLLM(model=oh.MOCK_MODEL)
    transport = fake.transport()

    def transports(_: object) -> httpx.AsyncBaseTransport:
        return transport

    tracing, provider = inproc_tracing(mode, sink_url)
    cfg = DeliberateConfig.model_validate(policy("http://mock:1"))
    app = create_app(Settings(access_log=False), cfg, CollectorRegistry(), transports, tracing)
    payload = body(model)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        ) as c:
            for _ in range(50):
                await c.post("/v1/chat/completions", content=payload)
            if provider is not None:
                provider.force_flush()
            fake.received.clear()
            t0 = time.process_time()
            for _ in range(n):
                await c.post("/v1/chat/completions", content=payload)
                fake.received.clear()
            if provider is not None:
                provider.force_flush()  # the export of these requests' spans counts too
            cpu = time.process_time() - t0
    if provider is not None:
        provider.shutdown()
    return cpu / n * 1e6


async def inproc(sink_url: str, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """Min over ``rounds`` interleaved rounds of ``inproc_cpu_us`` per scenario and mode."""
    out: dict[str, dict[str, float]] = {}
    for scenario in SCENARIOS:
        best = dict.fromkeys(INPROC_MODES, float("inf"))
        for r in range(rounds):
            for mode in INPROC_MODES[r % 3 :] + INPROC_MODES[: r % 3]:
                best[mode] = min(best[mode], await inproc_cpu_us(mode, scenario, sink_url, n))
        out[scenario] = best
        console.print(
            f"  in-process {scenario:<12} " + "  ".join(f"{m} {v:.0f} µs" for m, v in best.items())
        )
    return out


# --------------------------------------------------------------------------------------------
# Tracing off: the null tracer's calls per request, and what they cost


class CountingNullTracer:
    """The null tracer, counting what a request asks of it."""

    def __init__(self) -> None:
        from strategies.tracing import NO_TRACING

        self.inner = NO_TRACING
        self.calls = 0

    @property
    def enabled(self) -> bool:
        self.calls += 1
        return False

    def span(self, name: str, attributes: Any = None) -> AbstractContextManager[Any]:
        self.calls += 1
        return self.inner.span(name, attributes)

    def start(
        self, name: str, kind: Any = "internal", attributes: Any = None, carrier: Any = None
    ) -> Any:
        self.calls += 1
        return self.inner.start(name, kind, attributes, carrier)


async def null_calls_per_request(scenario_models: Mapping[str, str]) -> dict[str, int]:
    """One in-process request per scenario against a scripted backend, counting the null
    tracer's calls (``enabled`` reads, ``span``/``start``); the null span's own methods
    (``end``, ``activate``) are counted by the micro-benchmark's per-request pattern."""
    from prometheus_client import CollectorRegistry

    from gateway.app import create_app
    from gateway.settings import Settings
    from gateway.tracing import Tracing
    from routing.config import DeliberateConfig
    from tests.fakes import FakeVLLM

    fake = FakeVLLM(model=oh.MOCK_MODEL)
    counts: dict[str, int] = {}
    cfg = DeliberateConfig.model_validate(policy("http://mock:1"))
    for scenario, model in scenario_models.items():
        tracer = CountingNullTracer()
        transport = fake.transport()

        def transports(
            _: object, t: httpx.AsyncBaseTransport = transport
        ) -> httpx.AsyncBaseTransport:
            return t

        app = create_app(Settings(), cfg, CollectorRegistry(), transports, Tracing(tracer))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw"
            ) as c:
                await c.post("/v1/chat/completions", content=body(model))  # warm
                tracer.calls = 0
                r = await c.post("/v1/chat/completions", content=body(model))
                assert r.status_code == 200, r.text
        counts[scenario] = tracer.calls
    return counts


def null_call_ns(rounds: int = 200_000) -> dict[str, float]:
    """ns per null-tracer operation: an ``enabled`` read, and a ``with span(...)`` block."""
    from strategies.tracing import NO_TRACING

    t = NO_TRACING
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        _ = t.enabled
    enabled_ns = (time.perf_counter_ns() - t0) / rounds
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        with t.span("x"):
            pass
    span_ns = (time.perf_counter_ns() - t0) / rounds
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        pass
    loop_ns = (time.perf_counter_ns() - t0) / rounds
    return {"enabled_ns": max(0.0, enabled_ns - loop_ns), "span_ns": max(0.0, span_ns - loop_ns)}


# --------------------------------------------------------------------------------------------
# Run and report


def results_table(stats: Mapping[str, Mapping[str, dict[str, float]]]) -> Table:
    table = Table(title="Gateway cost of tracing (concurrency 1, mock backend)")
    for col in ("scenario", "mode"):
        table.add_column(col)
    for col in ("p50 ms", "p95 ms", "added p50 ms", "CPU µs/req", "p50 / off", "CPU / off"):
        table.add_column(col, justify="right")
    for scenario, modes in stats.items():
        off = modes["off"]
        direct = stats["single-pass"].get("direct")
        for mode, s in modes.items():
            added = (
                ""
                if direct is None or mode == "direct"
                else f"{s['p50_ms'] - direct['p50_ms']:.3f}"
            )
            cpu = "" if mode == "direct" else f"{s['cpu_us_per_request']:.0f}"
            r50 = "" if mode == "direct" else f"{s['p50_ms'] / off['p50_ms']:.3f}"
            rcpu = (
                ""
                if mode == "direct"
                else f"{s['cpu_us_per_request'] / off['cpu_us_per_request']:.3f}"
            )
            table.add_row(
                scenario, mode, f"{s['p50_ms']:.3f}", f"{s['p95_ms']:.3f}", added, cpu, r50, rcpu
            )
    return table


def inproc_table(cpu: Mapping[str, Mapping[str, float]]) -> Table:
    table = Table(title="In-process CPU per request (µs; min of rounds; scripted backend)")
    table.add_column("scenario")
    for col in (*INPROC_MODES, "spans (noop) / off", "OTLP export adds"):
        table.add_column(col, justify="right")
    for scenario, m in cpu.items():
        table.add_row(
            scenario,
            *(f"{m[k]:.0f}" for k in INPROC_MODES),
            f"{m['on-noop-exporter'] / m['off']:.3f}",
            f"{m['on-otlp'] - m['on-noop-exporter']:.0f}",
        )
    return table


async def run(args: argparse.Namespace) -> dict[str, Any]:
    oh.pin_cpus(args.cpus)
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as tmp:
        logs = Path(tmp)
        with contextlib.ExitStack() as stack:
            mock_url, _ = stack.enter_context(oh.mock_server(logs))
            sink_url = stack.enter_context(sink_server(logs))
            targets: dict[str, tuple[str, int | None]] = {"direct": (mock_url, None)}
            for mode in MODES:
                url, pid = stack.enter_context(
                    oh.gateway_server(
                        policy(mock_url), logs, f"gw-{mode}", mode_env(mode, sink_url)
                    )
                )
                targets[mode] = (url, pid)
            scenarios = {s: s for s in SCENARIOS}
            samples = await measure(targets, scenarios, args.requests, args.blocks, args.warmup)
            await asyncio.sleep(6)  # the batch processor exports every 5 s: let it flush
            async with httpx.AsyncClient() as c:
                sunk = (await c.get(sink_url + "/spans")).json()
            in_process = await inproc(sink_url, args.inproc_requests, args.inproc_rounds)
    stats = {sc: {m: s.stats() for m, s in modes.items()} for sc, modes in samples.items()}
    calls = await null_calls_per_request({s: s for s in SCENARIOS})
    micro = null_call_ns()
    # every null call costs at most a ``with span`` block: an upper bound
    off_cost = {s: n * micro["span_ns"] / 1000 for s, n in calls.items()}
    traced_requests = sum(
        s.stats()["requests"] + args.warmup * args.blocks
        for s in (m["on"] for m in samples.values())
    )
    return {
        "bench": "tracing_overhead",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": oh.machine_info(),
        "settings": vars(args) | {"cpus": sorted(args.cpus or [])},
        "stats": stats,
        "ratios_vs_off": {
            sc: {
                m: {
                    "p50": s["p50_ms"] / modes["off"]["p50_ms"],
                    "cpu": s["cpu_us_per_request"] / modes["off"]["cpu_us_per_request"],
                }
                for m, s in modes.items()
                if m != "direct"
            }
            for sc, modes in stats.items()
        },
        "sink": sunk | {"requests_traced": traced_requests},
        "in_process_cpu_us_per_request": in_process,
        "tracing_off": {
            "null_calls_per_request": calls,
            "null_call_ns": micro,
            "upper_bound_us_per_request": off_cost,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="measured per scenario and mode")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--cpus", type=lambda s: {int(x) for x in s.split(",")}, default={1})
    parser.add_argument("--inproc-requests", type=int, default=600)
    parser.add_argument("--inproc-rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run (few requests)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink_port is not None:
        run_sink(args.sink_port)
        return
    if args.quick:
        args.requests, args.blocks, args.warmup = 120, 3, 10
        args.inproc_requests, args.inproc_rounds = 100, 2
    output = args.output
    del args.output, args.sink_port
    result = asyncio.run(run(args))
    console.print(results_table(result["stats"]))
    console.print(inproc_table(result["in_process_cpu_us_per_request"]))
    off = result["tracing_off"]
    sink = result["sink"]
    console.print(
        f"OTLP sink: {sink['spans']} spans in {sink['exports']} exports from the 'on' gateway's "
        f"{sink['requests_traced']} requests ({sink['spans'] / sink['requests_traced']:.1f} a request)"
    )
    for scenario, n in off["null_calls_per_request"].items():
        console.print(
            f"tracing off, {scenario}: {n} null-tracer calls/request ≤ "
            f"{off['upper_bound_us_per_request'][scenario]:.2f} µs/request "
            f"(a null `with span` block: {off['null_call_ns']['span_ns']:.0f} ns)"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
