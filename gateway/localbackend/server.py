"""Start, stop and inspect local vLLM servers, each identified by `(kind, port)`.

A server runs detached in its own session (it outlives the CLI that started it); the pid file
in `run_dir` is the only link back to it. Nothing is ever signalled unless /proc confirms it is
a vLLM process of a group we started, so a stale pid file can never hurt an unrelated process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.localbackend.install import model_complete
from gateway.localbackend.paths import BackendPaths, BackendSetupError, Progress
from gateway.localbackend.procs import (
    is_alive,
    is_vllm,
    owned_group,
    port_is_free,
    read_pid,
    reap,
    spawn_detached,
    tail,
    terminate_group,
    write_pid,
)
from gateway.localbackend.spec import ServerSpec, log_file, pid_file, server_command, server_env

REPORT_EVERY_S = 10.0
POLL_EVERY_S = 1.0


@dataclass(frozen=True)
class ServerStatus:
    """A snapshot of one server. `url` is the root (OpenAI routes live under `url + "/v1"`).

    `running`: the pid file names a live vLLM process; `healthy`: its GET /health answered 200.
    `pid` is set only when running; `detail` is a one-line human explanation.
    """

    running: bool
    healthy: bool
    pid: int | None
    url: str
    log_path: Path
    detail: str


def health_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True if GET `url`/health answers 200 within `timeout_s`."""
    try:
        # trust_env=False: an HTTP(S)_PROXY meant for the outside world must not swallow localhost.
        with httpx.Client(trust_env=False, timeout=timeout_s) as client:
            return client.get(url + "/health").status_code == 200
    except httpx.HTTPError:
        return False


def status(paths: BackendPaths, spec: ServerSpec) -> ServerStatus:
    """Inspect the server of `spec` without changing anything (a stale pid file is reported)."""
    pid = read_pid(pid_file(paths, spec))
    log = log_file(paths, spec)
    if pid is not None and is_vllm(pid):
        healthy = health_ok(spec.url)
        detail = "healthy" if healthy else "running, /health not answering 200 (starting?)"
        return ServerStatus(True, healthy, pid, spec.url, log, f"pid {pid}: {detail}")
    if pid is not None:
        why = "not a vLLM process" if is_alive(pid) else "gone"
        detail = f"not running (stale pid file: pid {pid} is {why})"
        if why == "gone" and (lingering := owned_group(pid)):
            detail += (
                f"; {len(lingering)} engine process(es) of its group still run "
                "(start or stop ends them)"
            )
    else:
        detail = "not running"
    if not port_is_free(spec.host, spec.port):
        detail += f"; port {spec.port} is in use by another process"
    return ServerStatus(False, False, None, spec.url, log, detail)


@contextlib.contextmanager
def _start_lock(paths: BackendPaths, spec: ServerSpec) -> Iterator[None]:
    # Two concurrent `start`s of one server would both see "not running" and both spawn; the
    # second one waits here and then finds the first one's server healthy.
    with (paths.run_dir / f"{spec.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _require_setup(paths: BackendPaths) -> None:
    missing = [
        str(p)
        for p, ok in (
            (paths.venv_python, paths.venv_python.exists()),
            (paths.model_dir, model_complete(paths.model_dir)),
        )
        if not ok
    ]
    if missing:
        raise BackendSetupError(
            f"the local backend is not set up ({', '.join(missing)} missing or incomplete). "
            "Run the backend setup first (`deliberate backend setup`)."
        )


def _spawn(paths: BackendPaths, spec: ServerSpec) -> int:
    log = log_file(paths, spec)
    if log.exists():
        log.replace(log.with_name(f"{spec.name}.prev.log"))  # keep the previous run's story
    # Own session and process group: survives the CLI's terminal and Ctrl-C, and `stop` can
    # signal the API server together with its engine-core children.
    return spawn_detached(server_command(paths, spec), server_env(spec, os.environ), log)


def _kill(paths: BackendPaths, spec: ServerSpec, pid: int) -> None:
    if owned_group(pid) or is_vllm(pid):
        terminate_group(pid, timeout_s=10.0)
    pid_file(paths, spec).unlink(missing_ok=True)


def _last_log_line(paths: BackendPaths, spec: ServerSpec) -> str:
    line = tail(log_file(paths, spec), 1).strip()
    return line if len(line) <= 160 else line[:157] + "..."


def _wait_healthy(
    paths: BackendPaths,
    spec: ServerSpec,
    pid: int,
    progress: Progress,
    wait_s: float,
) -> ServerStatus:
    started = time.monotonic()
    next_report = started + REPORT_EVERY_S
    failure = ""
    try:
        while not failure:
            exit_code = reap(pid)  # None unless this process spawned it
            if exit_code is not None or not is_alive(pid):
                code = "" if exit_code is None else f" (status {exit_code})"
                failure = f"exited during start-up{code}"
            elif health_ok(spec.url):
                elapsed = time.monotonic() - started
                progress(f"{spec.name}: healthy after {elapsed:.0f} s at {spec.url} (pid {pid})")
                return ServerStatus(True, True, pid, spec.url, log_file(paths, spec), "healthy")
            elif time.monotonic() - started > wait_s:
                failure = f"did not answer /health within {wait_s:.0f} s"
            else:
                if time.monotonic() >= next_report:
                    elapsed = time.monotonic() - started
                    last = _last_log_line(paths, spec)
                    progress(f"{spec.name}: waiting for /health ({elapsed:.0f} s) | {last}")
                    next_report += REPORT_EVERY_S
                time.sleep(POLL_EVERY_S)
    except BaseException:
        _kill(paths, spec, pid)  # Ctrl-C during start-up must not leave a half-started server
        raise
    _kill(paths, spec, pid)
    log = log_file(paths, spec)
    raise BackendSetupError(
        f"vLLM {spec.name} server (pid {pid}) {failure}; it was stopped.\n"
        f"--- last lines of {log} ---\n{tail(log, 30)}\n"
        "What to do: fix the cause shown in the log, then start again "
        "(a slow machine may need a longer wait)."
    )


def start(
    paths: BackendPaths, spec: ServerSpec, progress: Progress, wait_s: float = 600.0
) -> ServerStatus:
    """Make sure the server of `spec` runs and is healthy; idempotent.

    Already healthy: report and return. Ours but still starting: wait for it. Otherwise spawn
    it detached (log `run_dir/<kind>-<port>.log`, pid `run_dir/<kind>-<port>.pid`) and poll
    GET /health every second, reporting every ~10 s. Raises BackendSetupError (after stopping
    the server) if it exits early or is not healthy within `wait_s`, and before spawning if
    setup has not run or the port is taken by something that is not our server.
    """
    _require_setup(paths)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    with _start_lock(paths, spec):
        current = status(paths, spec)
        if current.running and current.pid is not None:
            if current.healthy:
                progress(f"{spec.name}: already running at {spec.url} (pid {current.pid})")
                return current
            progress(f"{spec.name}: pid {current.pid} is starting; waiting for /health")
            return _wait_healthy(paths, spec, current.pid, progress, wait_s)
        stale = read_pid(pid_file(paths, spec))
        if stale is not None and not is_alive(stale) and owned_group(stale):
            # The API server died (SIGKILL, OOM) and left its engine processes running: they
            # never exit by themselves and hold gigabytes. Stop them before starting anew.
            progress(f"{spec.name}: pid {stale} is gone but its engine processes linger; stopping")
            terminate_group(stale, timeout_s=10.0)
        pid_file(paths, spec).unlink(missing_ok=True)  # stale, if anything
        if not port_is_free(spec.host, spec.port):
            who = (
                "a server answering /health (not started from this run dir)"
                if health_ok(spec.url)
                else "another process"
            )
            raise BackendSetupError(
                f"cannot start vLLM {spec.name}: port {spec.port} on {spec.host} is taken by "
                f"{who}. Stop that process or choose another port."
            )
        pid = _spawn(paths, spec)
        write_pid(pid_file(paths, spec), pid)
        progress(
            f"{spec.name}: started pid {pid}; waiting for /health (usually 35-90 s; "
            f"log: {log_file(paths, spec)})"
        )
        return _wait_healthy(paths, spec, pid, progress, wait_s)


def stop(
    paths: BackendPaths, spec: ServerSpec, progress: Progress, timeout_s: float = 30.0
) -> bool:
    """Stop the server of `spec`: SIGTERM its process group, SIGKILL after `timeout_s`.

    Returns True if a server was stopped. The pid file is removed in every case; a pid that is
    not (any longer) our vLLM process is reported and never signalled.
    """
    pf = pid_file(paths, spec)
    pid = read_pid(pf)
    if pid is None:
        progress(f"{spec.name}: not running")
        return False
    # A live leader that is not vLLM means the pid was recycled: never signal it.
    members = [] if is_alive(pid) and not is_vllm(pid) else owned_group(pid)
    if not members:
        pf.unlink(missing_ok=True)
        progress(f"{spec.name}: not running (removed stale pid file for pid {pid})")
        return False
    progress(f"{spec.name}: stopping pid {pid}")
    if not terminate_group(pid, timeout_s):
        raise BackendSetupError(
            f"vLLM {spec.name} (process group {pid}) survived SIGKILL; check `ps -g {pid}`."
        )
    pf.unlink(missing_ok=True)
    progress(f"{spec.name}: stopped")
    return True
