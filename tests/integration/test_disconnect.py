"""A client that gives up stops costing compute: the gateway makes the REAL vLLM abort."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.integration

LONG = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def vllm_metric(backend_url: str, name: str) -> float:
    """The sum of vLLM's own series called ``name`` (over its labels), read from /metrics."""
    text = httpx.get(backend_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def running(backend_url: str) -> float:
    """vLLM's own gauge of requests being generated right now."""
    return vllm_metric(backend_url, "vllm:num_requests_running")


def wait_idle(backend_url: str, within_s: float) -> float:
    """Seconds until vLLM runs nothing (fails the test after ``within_s``)."""
    start = time.monotonic()
    while running(backend_url) > 0:
        if time.monotonic() - start > within_s:
            pytest.fail(f"vLLM still generating {within_s}s after the client left")
        time.sleep(0.1)
    return time.monotonic() - start


def test_non_streaming_disconnect_aborts(gateway_url: str, backend_url: str) -> None:
    wait_idle(backend_url, 30)
    with pytest.raises(httpx.ReadTimeout):
        # The client stops waiting after 2 s of a ~25 s generation and closes the connection.
        httpx.post(
            gateway_url + "/v1/chat/completions", json=LONG, timeout=httpx.Timeout(10, read=2.0)
        )
    wait_idle(backend_url, 5)


def test_streaming_disconnect_aborts(gateway_url: str, backend_url: str) -> None:
    wait_idle(backend_url, 30)
    with httpx.stream(
        "POST", gateway_url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=30
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        assert running(backend_url) >= 1
    wait_idle(backend_url, 5)
