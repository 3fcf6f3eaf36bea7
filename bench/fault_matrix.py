"""What a client sees, and how soon, for every backend fault: the figures behind the fault table.

The same set-up as ``tests/integration/test_fault_matrix.py``: one gateway process, one
replica (``tests.faulty_backend.FaultyBackend``, real sockets) with ``timeouts.read_s`` 10 s
and a trickle of one byte every 5 s, two routes with ``deadline_s`` = ``--deadline-s``:
``single`` (single-pass) and ``multi`` (adaptive-consistency, waves [2, 2], several backend
calls, ``stream_progress: true``). For each fault × route × stream or not, ``--repeats``
requests (fault switched off and one healthy request in between): the status, the error's
code (the SSE ``error`` event's for a stream that had started), whether the stream ended
with ``data: [DONE]``, and the median time to the error.

    .venv/bin/python bench/fault_matrix.py
"""

from __future__ import annotations

import argparse
import json
import statistics
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

from bench.replica_failover import start_gateway  # noqa: E402
from tests.faulty_backend import Fault, FaultyBackend  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "fault_matrix.json"


def config(url: str, deadline_s: float) -> dict[str, Any]:
    budget = {"deadline_s": deadline_s}
    return {
        "version": 1,
        "default_route": "single",
        "backends": [
            {
                "name": "solo",
                "model": "fault-model",
                "replicas": [url],
                "timeouts": {"connect_s": 1.0, "read_s": 10.0},
                "health_interval_s": 0.5,
            }
        ],
        "routes": [
            {"name": "single", "strategy": "single-pass", "backend": "solo", "budget": budget},
            {
                "name": "multi",
                "strategy": "adaptive-consistency",
                "backend": "solo",
                "params": {"waves": [2, 2]},
                "stream_progress": True,
                "budget": budget,
            },
        ],
    }


def one(client: httpx.Client, route: str, stream: bool) -> dict[str, Any]:
    body = {
        "model": route,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 16,
        "stream": stream,
    }
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    sse = r.headers.get("content-type", "").startswith("text/event-stream")
    if sse:
        events = [e.removeprefix("data: ") for e in r.text.strip().split("\n\n")]
        errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
        code = errors[-1]["code"] if errors else None
        done = events[-1] == "[DONE]"
    else:
        code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
        done = None
    return {"status": r.status_code, "sse": sse, "code": code, "done": done, "ms": elapsed_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deadline-s", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args()

    backend = FaultyBackend("fault-model", trickle_s=5.0).start()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routes.yaml"
        path.write_text(yaml.safe_dump(config(backend.url, args.deadline_s), sort_keys=False))
        proc, url = start_gateway(path, Path(tmp) / "gateway.log")
        try:
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
                for fault in (f for f in Fault if f is not Fault.NONE):
                    for route in ("single", "multi"):
                        for stream in (False, True):
                            runs = []
                            for _ in range(args.repeats):
                                backend.fault = fault
                                runs.append(one(client, route, stream))
                                backend.fault = Fault.NONE
                                after = one(client, route, stream)
                                assert after["status"] == 200 and after["code"] is None, after
                            first = runs[0]
                            assert all(
                                (r["status"], r["code"]) == (first["status"], first["code"])
                                for r in runs
                            ), runs
                            rows.append(
                                {
                                    "fault": fault.value,
                                    "route": route,
                                    "stream": stream,
                                    "status": first["status"],
                                    "sse_error": first["sse"],
                                    "code": first["code"],
                                    "ends_with_done": first["done"],
                                    "median_ms": round(statistics.median(r["ms"] for r in runs), 1),
                                    "max_ms": round(max(r["ms"] for r in runs), 1),
                                    "next_request_ok": True,
                                }
                            )
        finally:
            proc.terminate()
            proc.wait(30)
            backend.stop()
    table = Table(title=f"Backend faults (deadline_s {args.deadline_s}, read_s 10, trickle 5 s)")
    for col in ("fault", "route", "mode", "client sees", "code", "[DONE]", "median ms", "max ms"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["fault"],
            row["route"],
            "stream" if row["stream"] else "json",
            "200 + SSE error" if row["sse_error"] else f"HTTP {row['status']}",
            str(row["code"]),
            "-" if row["ends_with_done"] is None else str(row["ends_with_done"]),
            f"{row['median_ms']:.0f}",
            f"{row['max_ms']:.0f}",
        )
    Console(width=160).print(table)
    out = {
        "bench": "fault_matrix",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": {"deadline_s": args.deadline_s, "read_s": 10.0, "trickle_s": 5.0},
        "repeats": args.repeats,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    Console().print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
