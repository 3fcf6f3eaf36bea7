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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway import calibrate_gate as gates
from gateway.app import create_app
from gateway.backends.pool import build_transport
from gateway.calibrate_jobs import Job, measure
from gateway.calibration_plots import plot_accuracy
from gateway.calibration_transport import StreamingASGITransport
from gateway.settings import Settings
from routing import calibration as cal
from routing.classify import Classifier
from routing.config import BackendPool, DeliberateConfig
from routing.evalset import EvalItem
from routing.features import extract
from routing.gate_fit import GateFit, evaluate, fit_gate
from routing.loader import load_config
from routing.policy_file import rewrite
from routing.predictor import Predictor, request_text

AUTO = "auto"
CACHE_FILE = "results.jsonl"
HELDOUT_FILE = "heldout.jsonl"
CALIBRATED_CONFIG = "routes.calibrated.yaml"
PREDICTOR_FILE = "predictor.json"
GATE_FILE = "gate.json"
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
    gate: dict[str, Any] | None = None  # the learned gate's fit and held-out AUROC


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
    gate_route = gates.source_route(cfg)
    gated = set(gates.gated_routes(cfg))
    if gate_route is not None and gate_route not in routes:
        raise ValueError(
            f"the learned gate is fitted on route {gate_route!r}'s answers: include it in routes"
        )

    def stale(o: cal.Outcome | None, route: str) -> bool:
        return o is None or o.error is not None or (route == gate_route and o.gate_features is None)

    def pending(selected: Sequence[str]) -> list[Job]:
        return [
            Job(item, classes[item.id], r, strategy[r], b, gate=r == gate_route)
            for item, r, b in wanted
            if r in selected and stale(cached.get((item.id, r, b)), r)
        ]

    fresh: list[cal.Outcome] = []
    gate: GateFit | None = None
    with (out / CACHE_FILE).open("a", encoding="utf-8") as cache:
        if gate_route is not None:  # phase 1: the gate's source route, then the fit
            fresh = await _run_pending(
                variants, pending([gate_route]), cache, concurrency, progress, transport_factory
            )
            measured = {**cached, **{o.key: o for o in fresh}}
            rows = gates.rows_of([measured[(i.id, gate_route, b)] for i in items for b in budgets])
            gate = fit_gate(rows)
            if _gate_changed(out, gate):  # gated routes measured with other weights
                cached = {k: o for k, o in cached.items() if o.route not in gated}
            raw = gates.with_gate(raw, gate)
            variants = DeliberateConfig.model_validate(cal.variant_config(raw, routes, budgets))
        rest = [r for r in routes if r != gate_route]
        fresh += await _run_pending(
            variants, pending(rest), cache, concurrency, progress, transport_factory
        )
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
            config_out,
            heldout,
            classes,
            strategy,
            concurrency,
            progress,
            transport_factory,
            gate_route=gate_route,
        )
        with (out / HELDOUT_FILE).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(o.to_json()) + "\n" for o in check.outcomes)
    gate_report = None
    if gate is not None:
        held = gates.rows_of(check.outcomes) if check is not None else []
        gate_report = {
            "route": gate_route,
            "fit": gate.to_json(),
            "heldout": {"rows": len(held), "auroc": evaluate(gate.model, held)} if held else None,
        }
    _write_tables(out, cells, chosen, slos, escalations, check, gate_report)
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
        gate=gate_report,
    )


def _gate_changed(out: Path, fit: GateFit) -> bool:
    """Whether ``fit`` differs from the gate the cached outcomes were measured with (it is
    saved in ``gate.json``, which this call updates)."""
    path = out / GATE_FILE
    try:
        before = json.loads(path.read_text(encoding="utf-8")).get("params")
    except (OSError, ValueError, AttributeError):
        before = None
    path.write_text(json.dumps({"params": fit.params(), **fit.to_json()}, indent=2) + "\n")
    return bool(before != fit.params())


async def _check_heldout(
    config_path: Path,
    items: Sequence[EvalItem],
    classes: Mapping[str, str],
    strategy: Mapping[str, str],
    concurrency: int,
    progress: bool,
    transport_factory: TransportFactory,
    gate_route: str | None = None,
) -> HeldOutCheck:
    """``auto`` and the greedy cheap route on held-out items, through the written policy
    (tenants and admission off, as for the route variants: this measures the routing)."""
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw.pop("tenants", None)
    raw["admission"] = {**(raw.get("admission") or {}), "enabled": False}
    cfg = DeliberateConfig.model_validate(raw)
    cheap = cfg.default_route
    jobs = [
        Job(item, classes[item.id], model, strategy.get(model, "auto"), None, model == gate_route)
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
    gate: Mapping[str, Any] | None = None,
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
    if gate is not None:
        text += _gate_section(gate)
    (out / "eval.md").write_text(text, encoding="utf-8")
    with (out / "eval.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(cal.csv_rows(cells))
    doc = {
        "cells": [c.to_json() for c in cells],
        "chosen": chosen,
        "slo_ms": slos,
        "escalations": {c: dataclasses.asdict(e) for c, e in escalations.items()},
        "heldout": check.to_json() if check else None,
        "gate": gate,
    }
    (out / "eval.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _gate_section(gate: Mapping[str, Any]) -> str:
    fit = gate["fit"]

    def auroc(values: Mapping[str, float | None]) -> str:
        return ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in values.items())

    weights = ", ".join(f"{f} {w:+.3f}" for f, w in fit["weights"].items()) or "none"
    text = (
        f"\n## Learned gate (fitted on {gate['route']}'s answers)\n\n"
        f"{fit['rows']} answers, {fit['right']} right; bias {fit['bias']:+.3f}; "
        f"weights: {weights}.\n\nAUROC on the fit answers: {auroc(fit['auroc'])}.\n"
    )
    if held := gate.get("heldout"):
        text += f"AUROC on {held['rows']} held-out answers: {auroc(held['auroc'])}.\n"
    return text


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
