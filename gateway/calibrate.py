"""``deliberate calibrate``: run an eval set through route variants against the live backends.

One in-process gateway serves the whole run, on the policy file plus one route variant per
route × budget (``routing.calibration.variant_config``); each item is sent as a client would
send it (a streaming chat request) so TTFT, latency and usage are what clients see. Outcomes
are appended to ``results.jsonl`` in the output directory, keyed by (item, route, budget):
a second run skips what is there (errored outcomes are retried). Then the pure code in
``routing.calibration`` summarises, chooses budgets and writes the calibrated policy file.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.app import create_app
from gateway.backends.pool import build_transport
from gateway.calibration_plots import plot_accuracy
from gateway.calibration_transport import StreamingASGITransport
from gateway.settings import Settings
from routing import calibration as cal
from routing.classify import Classifier
from routing.config import BackendPool, DeliberateConfig
from routing.evalset import EvalItem, check_answer
from routing.features import extract
from routing.loader import load_config
from routing.predictor import Predictor, request_text

CACHE_FILE = "results.jsonl"
CALIBRATED_CONFIG = "routes.calibrated.yaml"
PREDICTOR_FILE = "predictor.json"
TransportFactory = Callable[[BackendPool], httpx.AsyncBaseTransport]


@dataclass(frozen=True)
class CalibrationReport:
    """What a run measured and wrote."""

    out_dir: Path
    outcomes: list[cal.Outcome]
    cells: list[cal.Cell]
    chosen: dict[str, int | None]
    slo_ms: dict[str, float | None]
    sent: int  # requests sent by this run (0 when everything came from the cache)
    config_path: Path
    predictor_path: Path | None
    plots: list[Path]


def load_cache(path: Path) -> dict[tuple[str, str, int | None], cal.Outcome]:
    """Outcomes cached by earlier runs (the last line of a key wins; torn lines skipped)."""
    cached: dict[tuple[str, str, int | None], cal.Outcome] = {}
    if not path.exists():
        return cached
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            o = cal.Outcome.from_json(json.loads(line))
        except (ValueError, TypeError):
            continue
        cached[o.key] = o
    return cached


def item_class(item: EvalItem, classifier: Classifier) -> str:
    """The item's class, else the class the router's rules give it (its tags as metadata)."""
    if item.request_class:
        return item.request_class
    metadata = {"tags": ",".join(item.tags)} if item.tags else None
    return classifier.classify(extract(item.messages, metadata)).name


@dataclass(frozen=True)
class Job:
    item: EvalItem
    request_class: str
    route: str
    strategy: str
    budget: int


async def measure(client: httpx.AsyncClient, job: Job) -> cal.Outcome:
    """Send one item to one route variant as a streaming chat request; check the answer."""
    item, budget = job.item, job.budget
    body: dict[str, Any] = {
        "model": cal.variant_name(job.route, budget),
        "messages": item.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if job.strategy == "single-pass":
        body["max_tokens"] = budget
    text: list[str] = []
    usage: dict[str, Any] = {}
    ttft: float | None = None
    error: str | None = None
    done = False
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                error = f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    if (data := line[5:].strip()) == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = f"stream error: {json.dumps(event['error'])[:300]}"
                        break
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        if piece := (choice.get("delta") or {}).get("content"):
                            if ttft is None:
                                ttft = (time.perf_counter() - start) * 1000
                            text.append(piece)
                if error is None and not done:
                    error = "the stream ended without [DONE]"
    except (httpx.HTTPError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    latency = (time.perf_counter() - start) * 1000
    hidden = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    answer = "".join(text)
    return cal.Outcome(
        item_id=item.id,
        request_class=job.request_class,
        family=str(item.family),
        difficulty=str(item.difficulty),
        route=job.route,
        budget=budget,
        correct=error is None and check_answer(item, answer),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        visible_tokens=max(0, completion - hidden),
        hidden_tokens=hidden,
        ttft_ms=ttft,
        latency_ms=latency,
        error=error,
    )


async def _run_pending(
    config: DeliberateConfig,
    jobs: list[Job],
    cache: IO[str],
    concurrency: int,
    progress: bool,
    transport_factory: TransportFactory,
) -> list[cal.Outcome]:
    app = create_app(Settings(), config, transport_factory=transport_factory)
    sem = asyncio.Semaphore(max(1, concurrency))
    done: list[cal.Outcome] = []
    columns = (TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    async with app.router.lifespan_context(app):
        transport = StreamingASGITransport(app)  # httpx's ASGITransport buffers streams
        timeout = httpx.Timeout(None)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw", timeout=timeout
        ) as client:
            with Progress(*columns, disable=not progress, transient=False) as bar:
                task = bar.add_task("calibrating", total=len(jobs))

                async def one(job: Job) -> None:
                    async with sem:
                        o = await measure(client, job)
                    cache.write(json.dumps(o.to_json()) + "\n")
                    cache.flush()
                    done.append(o)
                    bar.advance(task)

                await asyncio.gather(*(one(job) for job in jobs))
    return done


async def run_calibration(
    config_path: str | Path,
    items: Sequence[EvalItem],
    routes: Sequence[str],
    budgets: Sequence[int],
    out_dir: str | Path,
    concurrency: int = 2,
    progress: bool = True,
    *,
    slo_ms: float | None = None,
    transport_factory: TransportFactory = build_transport,
) -> CalibrationReport:
    """Measure every (item, route, budget) not in the cache, then write ``eval.md``,
    ``eval.csv``, ``eval.json``, ``accuracy-<class>.png``, ``predictor.json`` and
    ``routes.calibrated.yaml`` (validated) to ``out_dir``. ``slo_ms`` overrides every
    route's latency SLO (default: ``routing.calibration.route_slos``). Raises ``ValueError``
    for an unknown route or a budget < 1, ``ConfigError`` for an invalid policy file."""
    config_path, out = Path(config_path), Path(out_dir)
    cfg = load_config(config_path)
    raw: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    known = [r.name for r in cfg.routes]
    if unknown := [r for r in routes if r not in known]:
        raise ValueError(f"unknown route(s) {unknown}; routes in {config_path}: {known}")
    if bad := [b for b in budgets if b < 1]:
        raise ValueError(f"budgets must be >= 1, got {bad}")
    routes, budgets = list(dict.fromkeys(routes)), sorted(set(budgets))
    variants = DeliberateConfig.model_validate(cal.variant_config(raw, routes, budgets))
    strategy = {r.name: r.strategy for r in cfg.routes}

    out.mkdir(parents=True, exist_ok=True)
    cached = load_cache(out / CACHE_FILE)
    wanted = [(item, r, b) for item in items for r in routes for b in budgets]
    classifier = Classifier(cfg.classes, cfg.policy.default_class if cfg.policy else "default")
    classes = {item.id: item_class(item, classifier) for item in items}
    jobs = [
        Job(item, classes[item.id], r, strategy[r], b)
        for item, r, b in wanted
        if (o := cached.get((item.id, r, b))) is None or o.error is not None
    ]
    with (out / CACHE_FILE).open("a", encoding="utf-8") as cache:
        fresh = await _run_pending(variants, jobs, cache, concurrency, progress, transport_factory)
    results = {**cached, **{o.key: o for o in fresh}}
    outcomes = [results[(item.id, r, b)] for item, r, b in wanted]

    cells = cal.summarize(outcomes)
    slos: dict[str, float | None] = (
        cal.route_slos(cfg) if slo_ms is None else dict.fromkeys(known, slo_ms)
    )
    chosen = cal.choose_budgets(cells, slos)
    _write_tables(out, cells, chosen, slos)
    plots = plot_accuracy(cells, out, chosen)
    predictor_path = _train_predictor(out, items, outcomes, chosen)
    rel = PREDICTOR_FILE if predictor_path is not None else None
    calibrated = cal.updated_config(raw, cells, chosen, rel)
    config_out = out / CALIBRATED_CONFIG
    header = f"# Written by `deliberate calibrate` from {config_path} (see eval.md).\n"
    config_out.write_text(header + yaml.safe_dump(calibrated, sort_keys=False), encoding="utf-8")
    load_config(config_out)  # the written file must pass check-config
    return CalibrationReport(
        out_dir=out,
        outcomes=outcomes,
        cells=cells,
        chosen=chosen,
        slo_ms={r: slos.get(r) for r in routes},
        sent=len(fresh),
        config_path=config_out,
        predictor_path=predictor_path,
        plots=plots,
    )


def _write_tables(
    out: Path,
    cells: list[cal.Cell],
    chosen: dict[str, int | None],
    slos: dict[str, float | None],
) -> None:
    (out / "eval.md").write_text(
        "# Calibration\n\n"
        + cal.markdown_table(cells, chosen)
        + "\nChosen budget per route (best accuracy whose p95 latency meets the SLO): "
        + ", ".join(f"{r}: {b} (SLO {slos.get(r)} ms)" for r, b in chosen.items())
        + "\n",
        encoding="utf-8",
    )
    with (out / "eval.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(cal.csv_rows(cells))
    doc = {"cells": [c.to_json() for c in cells], "chosen": chosen, "slo_ms": slos}
    (out / "eval.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _train_predictor(
    out: Path,
    items: Sequence[EvalItem],
    outcomes: Sequence[cal.Outcome],
    chosen: dict[str, int | None],
) -> Path | None:
    """Train on each route's outcomes at its chosen budget; None when there is nothing to
    learn from (no chosen budget, or no item answered by every such route)."""
    ids, labels = cal.training_data(outcomes, chosen)
    if not ids:
        return None
    text = {item.id: request_text(item.messages) for item in items}
    predictor = Predictor.train([text[i] for i in ids], labels)
    path = out / PREDICTOR_FILE
    predictor.save(path)
    return path
