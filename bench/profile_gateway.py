"""Where does the gateway's time go per request? Three complementary views, all against the mock.

Every mode starts the mock (and the gateway) like bench/overhead.py does — free ports, same
CPU pinning, ``DELIBERATE_LOG_LEVEL=warning`` — drives non-streaming requests at concurrency 1
(``max_tokens=1``, the overhead benchmark's body) and tears everything down.

- ``spans`` (default): the real gateway started through bench/gateway_spans.py, which adds
  each step's *process CPU time* to a span (no sampling). Prints µs of gateway CPU per request
  per component, exclusive of nested spans: uvicorn outside the app, FastAPI/Starlette, the
  response write, the gateway's endpoint, its disconnect watcher, request validation, the
  upstream httpx send and body read, metrics.
- ``layers``: CPU per request of servers that rebuild the stack one layer at a time
  (bench/layer_apps.py: bare uvicorn, + FastAPI, + the gateway's httpx client, ...), next to
  the mock itself and the real gateway, so each layer's cost is a difference of two rows.
- ``pyspy``: a py-spy sampling profile of the real gateway, listing the functions with the
  largest inclusive and self shares. Caveat measured here: py-spy's samples cluster at syscall
  sites (socket writes, ``getpid`` inside ``asyncio.current_task``), which ``perf`` shows to be
  cheap, so use it for *which functions*, and ``spans``/``layers`` for *how much*. py-spy is
  not a project dependency: ``pip install --target /tmp/pyspy py-spy`` and pass
  ``--py-spy /tmp/pyspy/bin/py-spy``.

CPU per request is read from /proc (user + system time of the server process) over thousands
of requests, so it does not depend on how the processes share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from overhead import (
    MOCK_MODEL,
    MOCK_ROUTE,
    REPO_ROOT,
    BenchError,
    free_port,
    gateway_config,
    gateway_server,
    make_client,
    mock_server,
    parse_cpus,
    pin_cpus,
    process_cpu_s,
    run_phase,
    service,
    timed_request,
    write_config,
)
from rich.console import Console
from rich.table import Table

BENCH_DIR = REPO_ROOT / "bench"
PROJECT_PACKAGES = ("gateway/", "routing/", "strategies/", "budgets/", "metrics/")
console = Console(width=None if sys.stdout.isatty() else 140)


# --------------------------------------------------------------------------------------------
# Driving requests


def chat_body(model: str) -> bytes:
    """The overhead benchmark's non-streaming body, for ``model``."""
    return (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":'
        b'"Reply with one word: hello."}],"max_tokens":1,"temperature":0}'
    )


async def _drive(url: str, body: bytes, n: int, warmup: int, concurrency: int = 1) -> float:
    """``warmup`` then ``n`` requests with ``concurrency`` closed-loop workers, each with its own
    single-connection client (so the load generator stays cheap); returns the p50 in seconds."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(make_client(1)) for _ in range(concurrency)]

        def request(client: httpx.AsyncClient) -> Awaitable[float]:
            return timed_request(client, url, body)

        if warmup:
            await run_phase(request, clients, warmup, concurrency)
        run = await run_phase(request, clients, n, concurrency) if n else None
    latencies = sorted(run.latencies_s) if run else []
    return latencies[len(latencies) // 2] if latencies else 0.0


@dataclass(frozen=True)
class CpuRun:
    """``n`` requests: p50 latency, and CPU per request of the server and of the mock."""

    n: int
    p50_ms: float
    server_cpu_us: float
    mock_cpu_us: float


def measure_cpu(
    url: str, body: bytes, n: int, server_pid: int, mock_pid: int, concurrency: int = 1
) -> CpuRun:
    """Warm up, then ``n`` requests at ``concurrency``, reading both processes' CPU around them."""
    asyncio.run(_drive(url, body, 0, max(200, 4 * concurrency), concurrency))
    s0, m0 = process_cpu_s(server_pid), process_cpu_s(mock_pid)
    p50 = asyncio.run(_drive(url, body, n, 0, concurrency))
    s1, m1 = process_cpu_s(server_pid), process_cpu_s(mock_pid)
    return CpuRun(n, p50 * 1e3, (s1 - s0) / n * 1e6, (m1 - m0) / n * 1e6)


@contextlib.contextmanager
def mock_and_dir() -> Iterator[tuple[Path, str, int]]:
    """A temp dir for logs and configs, and the mock: yields (dir, mock URL, mock pid)."""
    with tempfile.TemporaryDirectory(prefix="dlb-prof-") as tmp:
        log_dir = Path(tmp)
        with mock_server(log_dir) as (mock_url, mock_pid):
            yield log_dir, mock_url, mock_pid


# --------------------------------------------------------------------------------------------
# spans: deterministic CPU accounting inside the real gateway

SPAN_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (label, span, nested spans subtracted to make it exclusive)
    ("uvicorn outside the app (HTTP parsing, socket reads, task, loop)", "", ()),
    ("FastAPI/Starlette (middleware stack, routing, Request/Response)", "asgi", ("asgi.send", "_completion")),
    ("uvicorn send: response start + body (header encoding, socket write)", "asgi.send", ()),
    ("gateway.http.api._completion own code (context, headers, Response)", "_completion", ("read_body", "until_disconnect", "Metrics.record")),
    ("gateway.http.api.read_body", "read_body", ()),
    ("gateway.http.api.until_disconnect (job + watcher tasks, asyncio.wait)", "until_disconnect", ("complete",)),
    ("gateway.pipeline.complete own code (route, limits, orjson.dumps)", "complete", ("parse_payload", "check_prompt_fits", "open_upstream", "read_json_body")),
    ("gateway.pipeline.parse_payload (orjson + pydantic validation)", "parse_payload", ()),
    ("gateway.pipeline.check_prompt_fits", "check_prompt_fits", ()),
    ("gateway.backends.upstream.open_upstream (httpx send, until headers)", "open_upstream", ()),
    ("gateway.passthrough.read_json_body (httpx aread/aclose + usage parse)", "read_json_body", ()),
    ("metrics.registry.Metrics.record (prometheus)", "Metrics.record", ()),
)  # fmt: skip


def span_rows(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, exclusive µs per request) from a ``/_bench/spans`` report."""
    n = max(int(report["requests"]), 1)
    spans = {k: v["ns"] for k, v in report["spans"].items()}
    rows = []
    for label, name, nested in SPAN_ROWS:
        if name:
            ns = spans.get(name, 0) - sum(spans.get(x, 0) for x in nested)
        else:
            ns = report["process_cpu_ns"] - spans.get("asgi", 0)
        rows.append((label, ns / n / 1e3))
    return rows


def run_spans(requests: int) -> None:
    """Start the instrumented gateway on the mock and print the per-component CPU table.

    Concurrency 1 only: with several requests in flight, the CPU used while one span awaits
    would belong to other requests.
    """
    with mock_and_dir() as (log_dir, mock_url, mock_pid):
        config = write_config(gateway_config(mock_url, None), log_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(BENCH_DIR / "gateway_spans.py"), "--config", str(config)]
        with service("gateway-spans", argv + ["--port", str(port)], url + "/health", log_dir):
            body = chat_body(MOCK_ROUTE)
            chat = url + "/v1/chat/completions"
            asyncio.run(_drive(chat, body, 0, 300))
            with httpx.Client(trust_env=False) as client:
                client.post(url + "/_bench/reset")
                p50 = asyncio.run(_drive(chat, body, requests, 0))
                report = client.get(url + "/_bench/spans").json()
    rows = span_rows(report)
    total_us = report["process_cpu_ns"] / max(report["requests"], 1) / 1e3
    table = Table(
        title=f"Gateway CPU per request by component ({report['requests']} requests, c=1)"
    )
    table.add_column("component (exclusive of the rows below it)")
    table.add_column("µs/req", justify="right")
    table.add_column("share", justify="right")
    for label, us in rows:
        table.add_row(label, f"{us:.0f}", f"{100 * us / total_us:.0f}%")
    table.add_row("[bold]total (process CPU)[/bold]", f"[bold]{total_us:.0f}[/bold]", "100%")
    console.print(table)
    console.print(f"p50 through the instrumented gateway: {p50 * 1e3:.3f} ms")


# --------------------------------------------------------------------------------------------
# layers: the stack rebuilt one layer at a time


@contextlib.contextmanager
def layer_server(name: str, mock_url: str, log_dir: Path) -> Iterator[tuple[str, int]]:
    """``bench/layer_apps.py:<name>`` under uvicorn (as the gateway runs); yields (URL, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH_DIR), f"layer_apps:{name}"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    argv += ["--log-level", "warning", "--no-access-log", "--loop", "auto", "--http", "auto"]
    health = url + ("/openapi.json" if name.startswith("fastapi") else "/")
    env = {"LAYER_BACKEND_URL": mock_url}
    with service(name, argv, health, log_dir, extra_env=env) as proc:
        yield url, proc.pid


LAYER_NOTES = {
    "mock (direct)": "the backend alone: the load generator talks to the mock",
    "raw_const": "bare uvicorn (uvloop + httptools), fixed answer",
    "fastapi_const": "+ FastAPI/Starlette route, fixed answer",
    "raw_streams": "bare uvicorn + minimal asyncio-streams HTTP/1.1 client to the mock",
    "raw_httpx": "bare uvicorn + the gateway's httpx.AsyncClient to the mock",
    "fastapi_httpx": "FastAPI + the gateway's httpx client: the gateway minus its own logic",
    "gateway": "the real gateway (deliberate serve), route 'mock'",
}


def run_layers(requests: int, concurrency: int) -> None:
    """Measure every layer server, the mock alone and the gateway; print one table.

    CPU per request stays meaningful at any ``concurrency`` (it is the process total), so
    ``--concurrency 32`` shows which layers get more expensive per request under load.
    """
    from layer_apps import LAYERS

    runs: dict[str, CpuRun] = {}
    with mock_and_dir() as (log_dir, mock_url, mock_pid):
        chat = "/v1/chat/completions"
        direct = chat_body(MOCK_MODEL)
        c = concurrency
        runs["mock (direct)"] = measure_cpu(
            mock_url + chat, direct, requests, mock_pid, mock_pid, c
        )
        for name in LAYERS:
            with layer_server(name, mock_url, log_dir) as (url, pid):
                runs[name] = measure_cpu(url + chat, direct, requests, pid, mock_pid, c)
        with gateway_server(gateway_config(mock_url, None), log_dir) as (url, pid):
            body = chat_body(MOCK_ROUTE)
            runs["gateway"] = measure_cpu(url + chat, body, requests, pid, mock_pid, c)
    table = Table(
        title=f"CPU per request, one layer at a time ({requests} requests each, c={concurrency})"
    )
    for col in ("server", "what it is"):
        table.add_column(col)
    for col in ("server CPU µs/req", "mock CPU µs/req", "p50 ms"):
        table.add_column(col, justify="right")
    for name, run in runs.items():
        server = "—" if name == "mock (direct)" else f"{run.server_cpu_us:.0f}"
        table.add_row(
            name, LAYER_NOTES[name], server, f"{run.mock_cpu_us:.0f}", f"{run.p50_ms:.3f}"
        )
    console.print(table)


# --------------------------------------------------------------------------------------------
# pyspy: sampling profile of the real gateway


@dataclass(frozen=True)
class Frame:
    """One stack frame as py-spy's raw format names it: ``function (file:line)``."""

    function: str
    file: str

    @property
    def key(self) -> str:
        return f"{self.function} ({self.file})"

    @property
    def is_project(self) -> bool:
        return self.file.startswith(PROJECT_PACKAGES)


def parse_frame(text: str) -> Frame:
    """``handle (/repo/gateway/http/api.py:42)`` → Frame("handle", "gateway/http/api.py")."""
    name, _, where = text.rpartition(" (")
    if not name:
        return Frame(text, "")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return Frame(name, file.removeprefix(str(REPO_ROOT) + "/"))


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    """py-spy ``--format raw`` (``root;...;leaf count``) → (frames below the event loop, count).

    Frames down to the event loop's ``Runner.run`` (the CLI, typer, uvicorn's start-up) are
    ancestors of every sample and are dropped; an empty list means the loop's own C code.
    """
    stacks: list[tuple[list[Frame], int]] = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [parse_frame(f) for f in stack.split(";")]
        loop = next((i for i, f in enumerate(frames) if f.function == "Runner.run"), -1)
        stacks.append((frames[loop + 1 :], int(count)))
    return stacks


def shares(stacks: Sequence[tuple[list[Frame], int]]) -> tuple[Counter[str], Counter[str], int]:
    """(inclusive counts, self counts, total samples); inclusive counts each key once a stack."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        for key in {f.key for f in frames}:
            inclusive[key] += count
        self_[frames[-1].key if frames else "(event loop C code)"] += count
    return inclusive, self_, total


def print_top(title: str, counts: Counter[str], total: int, keep: int, only_project: bool) -> None:
    console.print(f"\n[bold]{title}[/bold]")
    shown = 0
    for key, n in counts.most_common():
        if only_project and not parse_frame(key).is_project:
            continue
        console.print(f"  {100 * n / total:5.1f}%  {key}", highlight=False)
        shown += 1
        if shown >= keep:
            break


def run_pyspy(a: argparse.Namespace) -> None:
    """py-spy the real gateway for ``a.seconds`` of c=1 traffic; print the top functions."""
    with mock_and_dir() as (log_dir, mock_url, _):
        with gateway_server(gateway_config(mock_url, None), log_dir) as (gw_url, gw_pid):
            raw = log_dir / "gateway.collapsed"
            argv = [a.py_spy, "record", "--pid", str(gw_pid), "--rate", str(a.rate)]
            argv += ["--format", "raw", "--output", str(raw)] + (["--native"] if a.native else [])
            spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let py-spy attach
            url, body = gw_url + "/v1/chat/completions", chat_body(MOCK_ROUTE)
            n = max(int(a.seconds * 500), 1)  # ~2 ms a request under the profiler
            asyncio.run(_drive(url, body, n, 50))
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if not raw.exists():
                raise BenchError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
            lines = raw.read_text().splitlines()
            if a.keep:
                shutil.copy(raw, a.keep)
    inclusive, self_, total = shares(parse_collapsed(lines))
    console.print(f"{n} requests, {total} busy samples")
    print_top("inclusive, project code:", inclusive, total, a.top, only_project=True)
    print_top("inclusive, everything:", inclusive, total, a.top, only_project=False)
    print_top("self:", self_, total, a.top, only_project=False)


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Where the gateway's time goes, per request.")
    p.add_argument("mode", nargs="?", choices=("spans", "layers", "pyspy"), default="spans")
    p.add_argument("--requests", type=int, default=5000, help="Measured requests (spans/layers).")
    p.add_argument(
        "--concurrency", type=int, default=1, help="layers: concurrent closed-loop workers."
    )
    p.add_argument("--cpus", default="1", help="CPU pinning, as in overhead.py ('none').")
    p.add_argument("--seconds", type=float, default=15.0, help="pyspy: profiled traffic.")
    p.add_argument("--rate", type=int, default=500, help="pyspy: samples per second.")
    p.add_argument("--native", action="store_true", help="pyspy: include C frames.")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--keep", type=Path, help="pyspy: keep the collapsed stacks here.")
    a = p.parse_args(argv)
    pin_cpus(parse_cpus(a.cpus))
    os.environ.setdefault("DELIBERATE_LOG_LEVEL", "warning")
    try:
        if a.mode == "spans":
            run_spans(a.requests)
        elif a.mode == "layers":
            run_layers(a.requests, a.concurrency)
        else:
            run_pyspy(a)
    except BenchError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
