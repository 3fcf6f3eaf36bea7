"""Where does the gateway spend its time per request? A sampling profile of the real process.

Starts the mock backend and the gateway exactly as bench/overhead.py does (same pinning, same
config), attaches py-spy to the gateway process, drives non-streaming (or ``--stream``)
requests at concurrency 1 through it for ``--seconds``, then prints:

- the gateway's CPU time per request (from /proc, not from the profiler);
- the functions with the largest *inclusive* share of the gateway's busy samples (a function
  counts once per sample in which it is anywhere on the stack), split into the project's own
  code (gateway/, routing/, strategies/, budgets/, metrics/) and libraries;
- the largest *self* shares (the frame on top of the stack).

py-spy is not a project dependency: install it anywhere (``pip install --target /tmp/pyspy
py-spy``) and pass ``--py-spy /tmp/pyspy/bin/py-spy`` (default: ``py-spy`` on PATH). Idle samples
(the event loop waiting in epoll) are dropped by py-spy, so shares are of busy time.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from overhead import (
    REPO_ROOT,
    Target,
    gateway_config,
    gateway_server,
    make_client,
    mock_server,
    parse_cpus,
    pin_cpus,
    timed_first_chunk,
    timed_request,
)

PROJECT_PACKAGES = ("gateway/", "routing/", "strategies/", "budgets/", "metrics/")


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
        rel = self.file.removeprefix(str(REPO_ROOT) + "/")
        return rel.startswith(PROJECT_PACKAGES)


def parse_frame(text: str) -> Frame:
    """``handle (gateway/http/api.py:42)`` → Frame("handle", "gateway/http/api.py")."""
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


CATEGORIES: tuple[tuple[str, str], ...] = (
    ("RequestResponseCycle.send", "uvicorn: write the response to the client"),
    ("open_upstream", "gateway.backends.upstream.open_upstream (httpx send to backend)"),
    ("read_json_body", "gateway.passthrough.read_json_body (httpx body read + usage)"),
    ("relay_stream", "gateway.passthrough.relay_stream (SSE relay)"),
    ("parse_payload", "gateway.pipeline.parse_payload (orjson + pydantic)"),
    ("Metrics.record", "metrics.registry.Metrics.record (prometheus)"),
    ("until_disconnect", "gateway.http.api.until_disconnect (tasks + watcher)"),
    ("project:", "other project code (gateway/, routing/, budgets/...)"),
    ("lib:starlette/", "starlette/fastapi (routing, request, response objects)"),
    ("lib:fastapi/", "starlette/fastapi (routing, request, response objects)"),
    ("lib:uvicorn/", "uvicorn protocol (parse request, callbacks)"),
    ("lib:httpx/", "httpx/httpcore/anyio outside the gateway's calls"),
    ("lib:httpcore/", "httpx/httpcore/anyio outside the gateway's calls"),
    ("lib:anyio/", "httpx/httpcore/anyio outside the gateway's calls"),
)
"""First match wins: a function name, ``project:`` (any project frame) or ``lib:<dir>``."""
EVENT_LOOP = "event loop itself (uvloop C code under Runner.run: epoll, socket I/O)"


def category(frames: Sequence[Frame]) -> str:
    """The component a sample belongs to (see ``CATEGORIES``; the first match wins)."""
    for marker, name in CATEGORIES:
        for f in frames:
            if marker.startswith("project:"):
                hit = f.is_project
            elif marker.startswith("lib:"):
                hit = f"/{marker[4:]}" in f"/{f.file}"
            else:
                hit = f.function == marker
            if hit:
                return name
    return "other" if frames else EVENT_LOOP


def breakdown(stacks: Sequence[tuple[list[Frame], int]]) -> Counter[str]:
    """Samples per component (``category``)."""
    out: Counter[str] = Counter()
    for frames, count in stacks:
        out[category(frames)] += count
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(target: Target, seconds: float, stream: bool) -> int:
    """Requests through the gateway at concurrency 1 for ``seconds``; returns how many."""
    timer = timed_first_chunk if stream else timed_request
    url, body = target.url("gateway"), target.body("gateway", stream)
    done = 0
    async with make_client(1) as client:
        for _ in range(50):
            await timer(client, url, body)  # warm-up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await timer(client, url, body)
            done += 1
    return done


def print_top(title: str, counts: Counter[str], total: int, keep: int, only_project: bool) -> None:
    print(f"\n{title}")
    shown = 0
    for key, n in counts.most_common():
        if only_project and not parse_frame(key).is_project:
            continue
        print(f"  {100 * n / total:5.1f}%  {key}")
        shown += 1
        if shown >= keep:
            break


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Profile the gateway process with py-spy.")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--stream", action="store_true", help="Profile streaming requests.")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second.")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--cpus", default="1", help="CPUs of the load generator and mock ('none').")
    p.add_argument(
        "--gateway-cpus",
        help="Move the gateway alone to these CPUs (e.g. 0), so it is never preempted by the "
        "load generator and busy samples approximate its CPU time.",
    )
    p.add_argument("--keep", type=Path, help="Also keep the collapsed stacks here.")
    a = p.parse_args(argv)
    pin_cpus(parse_cpus(a.cpus))
    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlb-prof-")))
        mock_url = stack.enter_context(mock_server(log_dir))
        gw_url, gw_pid = stack.enter_context(
            gateway_server(gateway_config(mock_url, None), log_dir)
        )
        if (gw_cpus := parse_cpus(a.gateway_cpus or "none")) is not None:
            os.sched_setaffinity(gw_pid, gw_cpus)
        target = Target("mock", mock_url, gw_url, "mock-model", "mock", 0)
        raw = log_dir / "gateway.collapsed"
        spy = subprocess.Popen(
            [a.py_spy, "record", "--pid", str(gw_pid), "--rate", str(a.rate)]
            + ["--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let py-spy attach
        cpu0 = process_cpu_s(gw_pid)
        n = asyncio.run(drive(target, a.seconds, a.stream))
        cpu = process_cpu_s(gw_pid) - cpu0
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=30)
        if not raw.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)
            return 1
        lines = raw.read_text().splitlines()
        if a.keep:
            shutil.copy(raw, a.keep)
    print(f"{n} requests at concurrency 1 ({'stream' if a.stream else 'non-stream'}), ")
    print(f"gateway CPU: {1000 * cpu / max(n, 1):.3f} ms per request (incl. ~py-spy overhead)")
    stacks = parse_collapsed(lines)
    inclusive, self_, total = shares(stacks)
    busy = total / (a.rate * a.seconds)
    cpu_share = cpu / a.seconds
    print(f"{total} busy samples: busy {100 * busy:.0f}% of the time vs CPU {100 * cpu_share:.0f}%")
    per_request_us = 1e6 * cpu / max(n, 1)
    print("\nby component (share of busy samples, ≈ µs of gateway CPU per request):")
    for name, count in breakdown(stacks).most_common():
        share = count / total
        print(f"  {100 * share:5.1f}%  {share * per_request_us:6.0f} µs  {name}")
    print_top("inclusive, project code:", inclusive, total, a.top, only_project=True)
    print_top("inclusive, everything:", inclusive, total, a.top, only_project=False)
    print_top("self time:", self_, total, a.top, only_project=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
