"""Budget safety under Redis faults, through REAL gateway processes and a REAL Redis.

Each test starts its own throwaway redis-server (never the machine's 6379), a mock OpenAI
backend process (bench/mock_openai.py, answering after a short delay so requests are in
flight when the fault hits) and one or two gateway processes failing closed. 50 concurrent
requests, half of them streams, go out while Redis is killed and restarted, or paused
(SIGSTOP/SIGCONT: a partition as clients see it). Invariants, once the gateways have
replayed what they queued:

* every answer is a 200, an OpenAI-shaped 429, or an OpenAI-shaped 503 ``budget_store_unavailable``
  (with ``Retry-After``); no request hangs;
* the tenant's total in Redis equals the sum of the ``usage`` the clients were shown for the
  requests that succeeded: failed requests are not charged, nothing is charged twice;
* the total never exceeds the limit by more than one reservation, and no reservation is left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tests.integration.conftest import MODEL, free_port, gateway_process, http_process
from tests.integration.test_budgets import AUTH, SHORT, committed, gateway_env, write_config
from tests.redis_server import RedisServer, throwaway_redis

pytestmark = pytest.mark.integration

MOCK_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "mock_openai.py"
MOCK_DELAY_MS = 400
LIMIT = 1500
"""Tokens per day: ~6 reservations (243 tokens each, a conservative prompt estimate + 16), so
the limit binds while the burst is in flight and some requests get 429s."""
REQUESTS = 50
SPACING_S = 0.02
"""Requests start this far apart: some before the fault, some during it, some after."""
FAULT_AT_S = 0.3
SETTLED_WITHIN_S = 20.0
"""Queued settlements are replayed with backoff up to 5 s; this bounds the wait for them."""
BODY = SHORT


@contextlib.contextmanager
def mock_backend(delay_ms: float = MOCK_DELAY_MS) -> Iterator[str]:
    """bench/mock_openai.py as a process serving MODEL; yields its URL."""
    port = free_port()
    cmd = [sys.executable, str(MOCK_SCRIPT), "--port", str(port), "--model", MODEL]
    with http_process([*cmd, "--delay-ms", str(delay_ms)], port) as url:
        yield url


@dataclass
class Outcome:
    """What one client saw."""

    status: int
    seconds: float
    usage: int = 0
    """total_tokens shown to the client (200s only)."""
    error: dict[str, Any] = field(default_factory=dict)


def openai_error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}, error
    return error


async def one_request(client: httpx.AsyncClient, url: str, stream: bool) -> Outcome:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}} if stream else BODY
    started = time.monotonic()
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH) as r:
        raw = await r.aread()
        elapsed = time.monotonic() - started
        if r.status_code != 200:
            error = openai_error(json.loads(raw))
            if r.status_code == 503:
                assert error["code"] == "budget_store_unavailable", error
                assert r.headers["retry-after"] == "1"
            else:
                assert r.status_code == 429 and error["code"] == "rate_limit_exceeded", error
            return Outcome(r.status_code, elapsed, error=error)
        if not stream:
            return Outcome(200, elapsed, json.loads(raw)["usage"]["total_tokens"])
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert not [c for c in chunks if "error" in c], chunks
        (usage,) = [c["usage"] for c in chunks if c.get("usage")]
        return Outcome(200, elapsed, usage["total_tokens"])


def open_reservations(url: str, prefix: str) -> int:
    """Reservation records still open (abandon tombstones, ``[0]``, hold nothing)."""
    r = redis.Redis.from_url(url)
    try:
        return sum(r.get(key) != b"[0]" for key in r.scan_iter(f"{prefix}:res:*"))
    finally:
        r.close()


Fault = Callable[[RedisServer], Awaitable[None]]


async def restart(server: RedisServer) -> None:
    """SIGKILL, then the same server on the same port half a second later."""
    server.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)


async def pause(server: RedisServer) -> None:
    """SIGSTOP for 1.5 s (longer than the gateway's 0.75 s Redis timeout), then SIGCONT."""
    server.pause()
    await asyncio.sleep(1.5)
    server.resume()


async def no_fault(server: RedisServer) -> None:
    pass


async def peak_committed(url: str, prefix: str, until: asyncio.Future[Any]) -> int:
    """The highest day counter seen, read every 10 ms (skipping reads Redis cannot answer)."""
    key = f"{prefix}:team:tokens:day:{int(time.time() // 86400)}"
    client = aioredis.from_url(url, socket_connect_timeout=0.1, socket_timeout=0.1)
    peak = 0
    try:
        while not until.done():
            with contextlib.suppress(redis.RedisError, OSError):
                peak = max(peak, int(await client.get(key) or 0))
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()
    return peak


async def load_with_fault(
    gateways: list[str],
    server: RedisServer,
    fault: Fault,
    prefix: str,
    spacing_s: float = SPACING_S,
) -> tuple[list[Outcome], float, int]:
    """REQUESTS requests spread over the gateways, ``fault`` injected at FAULT_AT_S; also
    returns when the fault ended (monotonic) and the peak of the tenant's counter meanwhile."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client:

        async def staggered(i: int) -> Outcome:
            await asyncio.sleep(i * spacing_s)
            return await one_request(client, gateways[i % len(gateways)], stream=i % 2 == 1)

        async def inject() -> float:
            await asyncio.sleep(FAULT_AT_S)
            await fault(server)
            return time.monotonic()

        jobs = [asyncio.ensure_future(staggered(i)) for i in range(REQUESTS)]
        everything = asyncio.gather(*jobs)
        peak = asyncio.ensure_future(peak_committed(server.url, prefix, everything))
        fault_ended = await inject()
        return list(await everything), fault_ended, await peak


def run_scenario(
    tmp_path: Path, fault: Fault, n_gateways: int, durable: bool, fail_mode: str = "closed"
) -> dict[str, Any]:
    """Run the load with ``fault`` and check the invariants; returns the figures.

    Failing open, requests served through an outage are counted by the gateway's local
    fallback, not in Redis: there Redis must hold no more than the clients were shown.
    """
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    with (
        throwaway_redis(durable=durable) as server,
        mock_backend() as backend,
        contextlib.ExitStack() as stack,
    ):
        cfg = write_config(tmp_path, backend, prefix, fail_mode, tokens_per_day=LIMIT)
        env = gateway_env(server.url)
        gateways = [stack.enter_context(gateway_process(cfg, tmp_path, env))[0]]
        gateways += [
            stack.enter_context(gateway_process(cfg, tmp_path, env))[0]
            for _ in range(n_gateways - 1)
        ]
        # Before the load: one request gives the size of a reservation; a burst fills each
        # gateway's Redis connection pool, as steady traffic does, so that commands sent into
        # a paused Redis go out on open connections and run when it resumes.
        warm, remaining = asyncio.run(no_fault_request(gateways[0]))
        reservation = LIMIT - remaining
        warm_burst, _, _ = asyncio.run(load_with_fault(gateways, server, no_fault, prefix, 0))
        outcomes, fault_ended, peak = asyncio.run(load_with_fault(gateways, server, fault, prefix))
        served = [o for o in outcomes + warm_burst if o.status == 200]
        expected = warm + sum(o.usage for o in served)
        deadline = time.monotonic() + SETTLED_WITHIN_S

        def settled() -> bool:
            total = committed(server.url, prefix, "day")
            exact = total == expected if fail_mode == "closed" else total <= expected
            return exact and open_reservations(server.url, prefix) == 0

        while not settled():
            assert time.monotonic() < deadline, (
                f"Redis holds {committed(server.url, prefix, 'day')} tokens and "
                f"{open_reservations(server.url, prefix)} open reservations; clients were "
                f"shown {expected}: {[(o.status, o.usage) for o in outcomes]}"
            )
            time.sleep(0.1)
        converged_after = time.monotonic() - fault_ended
        assert expected <= LIMIT + reservation
        assert peak <= LIMIT + reservation, "committed (settled + held) while under load"
        assert [o for o in outcomes if o.status == 200], "some requests were served"
        statuses = [o.status for o in outcomes]
        return {
            "requests": len(outcomes),
            "ok": statuses.count(200),
            "rate_limited_429": statuses.count(429),
            "store_unavailable_503": statuses.count(503),
            "max_503_s": round(max((o.seconds for o in outcomes if o.status == 503), default=0), 3),
            "max_200_s": round(max(o.seconds for o in outcomes if o.status == 200), 3),
            "shown_tokens": expected,
            "redis_tokens": committed(server.url, prefix, "day"),
            "limit": LIMIT,
            "reservation_tokens": reservation,
            "peak_committed_tokens": peak,
            "settled_s_after_fault": round(converged_after, 3),
        }


async def no_fault_request(url: str) -> tuple[int, int]:
    """(usage, x-ratelimit-remaining-tokens) of one request."""
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.post(url + "/v1/chat/completions", json=BODY, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["total_tokens"], int(r.headers["x-ratelimit-remaining-tokens"])


def report(name: str, figures: dict[str, Any]) -> None:
    sys.stderr.write(f"budget fault figures [{name}]: {json.dumps(figures)}\n")


def test_redis_killed_and_restarted_mid_burst(tmp_path: Path) -> None:
    figures = run_scenario(tmp_path, restart, n_gateways=1, durable=True)
    report("restart", figures)
    assert figures["store_unavailable_503"] > 0, "the outage was seen by some requests"


def test_redis_paused_mid_burst_gives_503s_not_hangs(tmp_path: Path) -> None:
    figures = run_scenario(tmp_path, pause, n_gateways=1, durable=False)
    report("pause", figures)
    assert figures["store_unavailable_503"] > 0, "the pause was seen by some requests"


def test_two_gateways_share_one_redis_under_load(tmp_path: Path) -> None:
    figures = run_scenario(tmp_path, no_fault, n_gateways=2, durable=False)
    report("two gateways", figures)
    assert figures["store_unavailable_503"] == 0
    assert figures["rate_limited_429"] > 0, "the shared limit bound"


def test_two_gateways_through_a_redis_restart(tmp_path: Path) -> None:
    figures = run_scenario(tmp_path, restart, n_gateways=2, durable=True)
    report("two gateways, restart", figures)


def test_failing_open_a_paused_redis_serves_and_never_overcharges(tmp_path: Path) -> None:
    figures = run_scenario(tmp_path, pause, n_gateways=1, durable=False, fail_mode="open")
    report("pause, fail open", figures)
    assert figures["store_unavailable_503"] == 0, "failing open: served from the local fallback"
