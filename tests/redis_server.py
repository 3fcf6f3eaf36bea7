"""A usable Redis for tests, and throwaway Redis servers a test can stop and restart.

``session_redis()`` picks, in order: ``DELIBERATE_TEST_REDIS_URL``; a Redis answering on
127.0.0.1:6379; a throwaway ``redis-server`` on a free port. Each session gets a unique key
prefix, and its keys are deleted at the end (they all carry TTLs anyway).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"
MISSING = (
    "no Redis for the tests: set DELIBERATE_TEST_REDIS_URL, run a Redis on 127.0.0.1:6379, "
    "or install redis-server so the tests can start one (Debian/Ubuntu: "
    "`sudo apt-get install redis-server`; macOS: `brew install redis`)"
)


class SessionRedis(NamedTuple):
    url: str
    prefix: str
    """Unique to this test session; every key the tests write starts with it."""


class RedisServer(NamedTuple):
    """A throwaway redis-server; ``stop`` saves its data, ``start`` restarts it on the port.

    Faults: ``kill`` is SIGKILL (with ``durable`` servers every acknowledged write survives it,
    as with ``appendfsync always`` in production); ``pause``/``resume`` SIGSTOP/SIGCONT it, a
    network partition as clients see it: connections are accepted by the kernel, nothing answers.
    """

    url: str
    stop: Callable[[], None]
    start: Callable[[], None]
    kill: Callable[[], None]
    pause: Callable[[], None]
    resume: Callable[[], None]


def answers_ping(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_redis(durable: bool = False) -> Iterator[RedisServer]:
    """Start a private redis-server on a free port; stop it (for good) on exit.

    No persistence while running (``--save ''``, no AOF) unless ``durable`` (AOF, fsync at every
    write); ``stop()`` does ``SHUTDOWN SAVE`` into a temporary directory so ``start()`` comes
    back with the same data, like a Redis restart in production.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(MISSING)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    workdir = Path(tempfile.mkdtemp(prefix="deliberate-redis-"))
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--dbfilename", "dump.rdb"]
    proc: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = (workdir / "redis.log").open("ab")
        proc.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        deadline = time.monotonic() + 10
        while not answers_ping(url, 0.2):
            if proc[-1].poll() is not None or time.monotonic() > deadline:
                log_text = (workdir / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start on port {port}:\n{log_text}")
            time.sleep(0.05)

    def stop() -> None:
        if not proc or proc[-1].poll() is not None:
            return
        client = redis.Redis.from_url(url, socket_timeout=5)
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown(save=True)  # the connection drops as the server exits
        client.close()
        try:
            proc[-1].wait(10)
        except subprocess.TimeoutExpired:
            proc[-1].kill()
            proc[-1].wait()

    def signal_it(sig: signal.Signals) -> None:
        if proc and proc[-1].poll() is None:
            proc[-1].send_signal(sig)

    def kill() -> None:
        signal_it(signal.SIGCONT)  # a paused server must be able to die
        signal_it(signal.SIGKILL)
        if proc:
            proc[-1].wait(10)

    start()
    try:
        yield RedisServer(
            url,
            stop,
            start,
            kill,
            lambda: signal_it(signal.SIGSTOP),
            lambda: signal_it(signal.SIGCONT),
        )
    finally:
        signal_it(signal.SIGCONT)  # never leave a paused server behind
        stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def session_redis() -> Iterator[SessionRedis]:
    """The Redis for a test session (see the module docstring) with a fresh key prefix."""
    prefix = f"deliberate-test-{uuid.uuid4().hex[:12]}"
    env_url = os.environ.get("DELIBERATE_TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if env_url:
            url = env_url
        elif answers_ping(DEFAULT_URL):
            url = DEFAULT_URL
        else:
            url = stack.enter_context(throwaway_redis()).url
        try:
            yield SessionRedis(url, prefix)
        finally:
            _delete_prefix(url, prefix)


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    with contextlib.suppress(redis.RedisError, OSError):
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    client.close()
