"""Latency of the learned route predictor (``routing.predictor.Predictor.predict``).

Trains a predictor with 6 fitted routes on the calibration eval set (``routing.evalset``,
synthetic outcomes: only the model's size and sparsity matter here), saves and reloads it the
way the gateway would, then times ``predict`` alone (no class rules, no HTTP) over ``--calls``
calls per scenario after a warm-up:

- a 300-character prompt, the same text every call (the token → column memo is warm);
- a 300-character prompt with the memo cleared before every call (first sight of every token);
- a 1200-character prompt (warm), and a 20000-character one (clipped to ``MAX_CHARS``);
- ``request_text`` + ``predict`` on a 300-character single-message conversation (warm).

Usage (repo root): ``.venv/bin/python bench/predictor_latency.py [--calls N]``. Prints a table
(p50 / p99 / mean in µs) and writes ``bench/results/predictor_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from rich.console import Console
from rich.table import Table

from routing.evalset import make_eval_set
from routing.predictor import Predictor, request_text

RESULTS = Path(__file__).resolve().parent / "results" / "predictor_latency.json"
ROUTES = ("single-pass", "bounded-low", "bounded-high", "best-of-n", "self-consistency", "adaptive")
BASE = (
    "A shop sells 4 notebooks for 36 dollars and pencils at 3 dollars each. Sam buys 7 notebooks "
    "and 12 pencils and pays with a 100 dollar note. How much change does Sam get, and how much "
    "would 5 more notebooks cost? Show the steps briefly. Give the final answer as a number at "
    "the end. Please double-check the arithmetic before answering, thanks."
)


def prompt(chars: int) -> str:
    """``BASE`` repeated and cut to exactly ``chars`` characters."""
    return (BASE * (chars // len(BASE) + 1))[:chars]


def train_predictor(n_items: int, seed: int) -> tuple[Predictor, float, int]:
    """A predictor with every route fitted (synthetic outcomes), via save + load."""
    items = make_eval_set(n_items, seed=seed)
    texts = [request_text(i.messages) for i in items]
    rng = random.Random(seed)
    outcomes = {
        route: [
            rng.random() < (0.8 - 0.1 * k if i.difficulty == "easy" else 0.2 + 0.1 * k)
            for i in items
        ]
        for k, route in enumerate(ROUTES)
    }
    started = time.perf_counter()
    predictor = Predictor.train(texts, outcomes, seed=seed)
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictor.json"
        predictor.save(path)
        size = path.stat().st_size
        loaded = Predictor.load(path)
    return loaded, train_s, size


def timed(
    fn: Callable[[], object], calls: int, before: Callable[[], None] | None = None
) -> dict[str, float]:
    """p50 / p99 / mean / max of ``fn()`` in µs over ``calls`` calls (``before`` untimed)."""
    for _ in range(min(200, calls)):
        fn()
    samples = []
    for _ in range(calls):
        if before is not None:
            before()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    p50, p99 = np.percentile(samples, [50, 99])
    return {
        "p50_us": float(p50),
        "p99_us": float(p99),
        "mean_us": statistics.fmean(samples),
        "max_us": max(samples),
        "calls": calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--train-items", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    predictor, train_s, size = train_predictor(args.train_items, args.seed)
    short, long_, huge = prompt(300), prompt(1200), prompt(20000)
    messages = [{"role": "user", "content": short}]
    scenarios: list[tuple[str, Callable[[], object], Callable[[], None] | None]] = [
        ("predict, 300 chars, 6 routes", lambda: predictor.predict(short), None),
        (
            "predict, 300 chars, 6 routes, cold token memo",
            lambda: predictor.predict(short),
            predictor.features._cache.clear,
        ),
        ("predict, 1200 chars, 6 routes", lambda: predictor.predict(long_), None),
        ("predict, 20000 chars (clipped), 6 routes", lambda: predictor.predict(huge), None),
        (
            "request_text + predict, 300 chars",
            lambda: predictor.predict(request_text(messages)),
            None,
        ),
    ]
    rows: list[dict[str, Any]] = []
    for name, fn, before in scenarios:
        rows.append({"scenario": name, **timed(fn, args.calls, before)})

    table = Table(title=f"Predictor.predict latency ({args.calls} calls per row)")
    for col in ("scenario", "p50 µs", "p99 µs", "mean µs", "max µs"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(
            r["scenario"], *(f"{r[k]:.0f}" for k in ("p50_us", "p99_us", "mean_us", "max_us"))
        )
    console = Console()
    console.print(table)
    console.print(
        f"trained on {args.train_items} items in {train_s:.2f} s; artefact {size / 1024:.0f} KiB; "
        f"routes {len(predictor.routes)}; n_features {predictor.features.n_features}"
    )

    result: dict[str, Any] = {
        "rows": rows,
        "routes": list(predictor.routes),
        "train_items": args.train_items,
        "train_seconds": train_s,
        "artefact_bytes": size,
        "n_features": predictor.features.n_features,
        "machine": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
