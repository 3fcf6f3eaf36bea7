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
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
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
from routing.policy_file import rewrite
from routing.predictor import Predictor, request_text

AUTO = "auto"
CACHE_FILE = "results.jsonl"
HELDOUT_FILE = "heldout.jsonl"
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
    escalations: dict[str, cal.Escalation]  # per class: the route that measured a gain
    heldout: HeldOutCheck | None


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
    budget: int | None  # None: the route as configured (``auto`` and the held-out check)

    @property
    def model(self) -> str:
        return self.route if self.budget is None else cal.variant_name(self.route, self.budget)


async def measure(client: httpx.AsyncClient, job: Job) -> cal.Outcome:
    """Send one item to one route variant as a streaming chat request; check the answer."""
    item, budget = job.item, job.budget
    body: dict[str, Any] = {
        "model": job.model,
        "messages": item.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if job.strategy == "single-pass" and budget is not None:
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
    cache: IO[str] | None,
    concurrency: int,
    progress: bool,
    transport_factory: TransportFactory,
    config_path: Path | None = None,
) -> list[cal.Outcome]:
    settings = Settings(reload_interval_s=0, access_log=False)
    if config_path is not None:  # the predictor path is relative to the policy file
        settings = Settings(config=config_path, reload_interval_s=0, access_log=False)
    app = create_app(settings, config, transport_factory=transport_factory)
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
                    if cache is not None:
                        cache.write(json.dumps(o.to_json()) + "\n")
                        cache.flush()
                    done.append(o)
                    bar.advance(task)

                await asyncio.gather(*(one(job) for job in jobs))
    return done


HEADER = "# Calibrated by `deliberate calibrate`"


@dataclass(frozen=True)
class HeldOutCheck:
    """``auto`` on the calibrated policy against the greedy cheap route, on held-out items."""

    outcomes: list[cal.Outcome]
    cells: list[cal.Cell]  # route "auto" and the cheap route, per class and "all"
    diff: tuple[float, float, float]  # auto − cheap: mean and paired-bootstrap 95 % CI
    cheap: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cheap": self.cheap,
            "auto_minus_cheap": {"diff": self.diff[0], "ci": list(self.diff[1:])},
            "cells": [c.to_json() for c in self.cells],
        }


async def run_calibration(
    config_path: str | Path,
    items: Sequence[EvalItem],
    routes: Sequence[str] | None,
    budgets: Sequence[int],
    out_dir: str | Path,
    concurrency: int = 2,
    progress: bool = True,
    *,
    slo_ms: float | None = None,
    transport_factory: TransportFactory = build_transport,
    heldout: Sequence[EvalItem] = (),
    write_config: str | Path | None = None,
) -> CalibrationReport:
    """Measure every (item, route, budget) not in the cache, then write ``eval.md``,
    ``eval.csv``, ``eval.json``, ``accuracy-<class>.png``, ``predictor.json`` to ``out_dir``
    and the calibrated policy (validated, comments kept) to ``write_config`` (default
    ``out_dir/routes.calibrated.yaml``; it may be ``config_path`` itself). ``routes`` None =
    every route of the policy. With ``heldout`` items, ``auto`` on the written policy and the
    greedy cheap route answer them too (``heldout.jsonl``; never cached, never fitted on), and
    auto's point joins the plots. ``slo_ms`` overrides every route's latency SLO (default:
    ``routing.calibration.route_slos``). Raises ``ValueError`` for an unknown route or a
    budget < 1, ``ConfigError`` for an invalid policy file."""
    config_path, out = Path(config_path), Path(out_dir)
    cfg = load_config(config_path)
    source = config_path.read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(source)
    known = [r.name for r in cfg.routes]
    routes = known if routes is None else routes
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
    classes = {item.id: item_class(item, classifier) for item in [*items, *heldout]}
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
    config_out = Path(write_config) if write_config is not None else out / CALIBRATED_CONFIG
    predictor_path = _train_predictor(out, items, outcomes, chosen)
    rel = None
    if predictor_path is not None:
        rel = os.path.relpath(predictor_path.resolve(), config_out.resolve().parent)
    ladders = [r.name for r in cfg.routes if r.escalate_to and r.name in routes]
    voters = [r.name for r in cfg.routes if r.strategy != "single-pass" and r.name in routes]
    exact = [
        r.name for r in cfg.routes if r.escalate_to and r.escalate_to[0].verifier == "arithmetic"
    ]
    escalations = cal.choose_escalations(raw, cells, chosen, ladders, voters, outcomes, exact)
    calibrated = cal.apply_escalations(cal.updated_config(raw, cells, chosen, rel), escalations)
    note = f"{HEADER} from {config_path.name} ({len(items)} items; see {out}/eval.md)."
    kept = "".join(line for line in source.splitlines(True) if not line.startswith(HEADER))
    text = rewrite(kept, calibrated, note)
    tmp = config_out.with_name(f".{config_out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_config(tmp)  # the written file must pass check-config before it replaces anything
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(config_out)

    check = None
    if heldout:
        check = await _check_heldout(
            config_out, heldout, classes, strategy, concurrency, progress, transport_factory
        )
        with (out / HELDOUT_FILE).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(o.to_json()) + "\n" for o in check.outcomes)
    _write_tables(out, cells, chosen, slos, escalations, check)
    plots = plot_accuracy(cells, out, chosen, check.cells if check else ())
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
        escalations=escalations,
        heldout=check,
    )


async def _check_heldout(
    config_path: Path,
    items: Sequence[EvalItem],
    classes: Mapping[str, str],
    strategy: Mapping[str, str],
    concurrency: int,
    progress: bool,
    transport_factory: TransportFactory,
) -> HeldOutCheck:
    """``auto`` and the greedy cheap route on held-out items, through the written policy
    (tenants and admission off, as for the route variants: this measures the routing)."""
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw.pop("tenants", None)
    raw["admission"] = {**(raw.get("admission") or {}), "enabled": False}
    cfg = DeliberateConfig.model_validate(raw)
    cheap = cfg.default_route
    jobs = [
        Job(item, classes[item.id], model, strategy.get(model, "auto"), None)
        for item in items
        for model in (AUTO, cheap)
    ]
    outcomes = await _run_pending(
        cfg, jobs, None, concurrency, progress, transport_factory, config_path
    )
    by = {(o.item_id, o.route): o for o in outcomes}
    ordered = [by[(item.id, m)] for item in items for m in (AUTO, cheap)]
    auto_ok = [by[(item.id, AUTO)].correct for item in items]
    cheap_ok = [by[(item.id, cheap)].correct for item in items]
    return HeldOutCheck(
        ordered, cal.summarize(ordered), cal.paired_bootstrap(auto_ok, cheap_ok), cheap
    )


def _write_tables(
    out: Path,
    cells: list[cal.Cell],
    chosen: dict[str, int | None],
    slos: dict[str, float | None],
    escalations: dict[str, cal.Escalation],
    check: HeldOutCheck | None,
) -> None:
    text = (
        "# Calibration\n\n"
        + cal.markdown_table(cells, chosen)
        + "\nChosen budget per route (best accuracy whose p95 latency meets the SLO): "
        + ", ".join(f"{r}: {b} (SLO {slos.get(r)} ms)" for r, b in chosen.items())
        + "\n\nEscalation per class (a gain over the cheap route of at least the class's "
        + "min_gain, with the paired 95 % CI's lower end not below 0; it becomes the class's "
        + "gain-rule escalation): "
        + (
            ", ".join(
                f"{c}: {e.route} ({'ladder' if e.ladder else 'multi-sample'}, {e.gain:+.3f}, "
                f"CI low {e.gain_low if e.gain_low is None else f'{e.gain_low:+.3f}'})"
                for c, e in escalations.items()
            )
            or "nothing pays"
        )
        + "\n"
    )
    if check is not None:
        d, lo, hi = check.diff
        text += (
            f"\n## Held-out check: `auto` on the written policy vs {check.cheap}\n\n"
            + cal.markdown_table(check.cells)
            + f"\nauto − {check.cheap}: {d:+.3f} (paired bootstrap 95 % CI {lo:+.3f} to "
            + f"{hi:+.3f}) over {len(check.outcomes) // 2} held-out items.\n"
        )
    (out / "eval.md").write_text(text, encoding="utf-8")
    with (out / "eval.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(cal.csv_rows(cells))
    doc = {
        "cells": [c.to_json() for c in cells],
        "chosen": chosen,
        "slo_ms": slos,
        "escalations": {c: dataclasses.asdict(e) for c, e in escalations.items()},
        "heldout": check.to_json() if check else None,
    }
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
