"""RedisStore against a real Redis: semantics, concurrency across clients, TTLs, outages.

Needs only Redis (see tests/redis_server.py), never the vLLM backend.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from budgets.failover import FailoverStore
from budgets.ledger import (
    Denied,
    Granted,
    Limit,
    StoreUnavailable,
    TenantLimits,
    WindowName,
    bucket_of,
    reset_after,
)
from budgets.memory_store import MemoryStore
from budgets.redis_store import EXPIRY_MARGIN_S, RESERVATION_TTL_S, RedisStore
from tests.redis_server import SessionRedis, throwaway_redis

pytestmark = pytest.mark.anyio

TOK_MIN = Limit("tokens", "minute", 100)
REQ_MIN = Limit("requests", "minute", 3)
TOK_DAY = Limit("tokens", "day", 150)


@pytest.fixture
def prefix(redis_session: SessionRedis) -> str:
    """A key prefix of this test's own (under the session's, which is cleaned up)."""
    return f"{redis_session.prefix}:{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def stores(url: str, prefix: str, n: int = 1) -> AsyncIterator[list[RedisStore]]:
    """``n`` stores, each with its own client and connection pool."""
    made = [RedisStore.from_url(url, prefix=prefix) for _ in range(n)]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()


@contextlib.asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def server_now(client: aioredis.Redis) -> float:
    sec, usec = await client.time()
    return float(sec + usec / 1_000_000)


async def clear_of_rollover(client: aioredis.Redis, window: WindowName = "minute") -> None:
    """Wait out the end of the current window if it is near, so a short test stays in one."""
    left = reset_after(await server_now(client), window)
    if left < 5:
        await anyio.sleep(left + 0.1)


async def test_reserve_settle_release(redis_url: str, prefix: str) -> None:
    limits = TenantLimits("acme", (TOK_MIN, REQ_MIN, TOK_DAY))
    async with stores(redis_url, prefix) as [store], raw_client(redis_url) as client:
        await clear_of_rollover(client)
        first = await store.reserve(limits, 60, "a")
        assert isinstance(first, Granted)
        assert [q.remaining for q in first.quotas] == [40, 2, 90]
        denied = await store.reserve(limits, 41, "b")
        assert isinstance(denied, Denied) and denied.blocking.window == "minute"
        assert denied.retry_after_s == denied.blocking.reset_s and 0 < denied.retry_after_s <= 60
        never = await store.reserve(limits, 101, "c")
        assert isinstance(never, Denied) and never.retry_after_s is None
        assert await store.committed("acme", "minute") == 60, "denials commit nothing"

        await store.settle(first.reservation, 70)  # more than reserved: actual usage counts
        await store.settle(first.reservation, 1)
        await store.release(first.reservation)
        assert await store.committed("acme", "minute") == 70
        assert await store.committed("acme", "day") == 70

        second = await store.reserve(limits, 30, "d")
        assert isinstance(second, Granted)
        await store.release(second.reservation)
        assert await store.committed("acme", "minute") == 70
        assert await store.committed("acme", "minute", "requests") == 2, "release keeps it"

        await store.reserve(limits, 0, "e")
        blocked = await store.reserve(limits, 0, "f")
        assert isinstance(blocked, Denied) and blocked.blocking.kind == "requests"
        again = await store.reserve(limits, 0, "e")  # an open id: idempotent, nothing added
        assert isinstance(again, Granted)
        assert await store.committed("acme", "minute", "requests") == 3


async def test_concurrent_reserves_from_two_clients_never_overcommit(
    redis_url: str, prefix: str
) -> None:
    tokens = TenantLimits("acme", (Limit("tokens", "day", 100), Limit("requests", "day", 1000)))
    requests = TenantLimits("beta", (Limit("requests", "day", 7),))
    async with stores(redis_url, prefix, 2) as pair, raw_client(redis_url) as client:
        await clear_of_rollover(client, "day")
        results: list[Granted | Denied] = []

        async def one(i: int, limits: TenantLimits, amount: int) -> None:
            results.append(await pair[i % 2].reserve(limits, amount, f"{limits.tenant}-{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i, tokens, 10)
                tg.start_soon(one, i, requests, 0)
        granted = [r for r in results if isinstance(r, Granted)]
        assert sum(r.reservation.tenant == "acme" for r in granted) == 10
        assert sum(r.reservation.tenant == "beta" for r in granted) == 7
        assert await pair[0].committed("acme", "day") == 100
        assert await pair[1].committed("beta", "day", "requests") == 7
        assert await pair[1].committed("acme", "day", "requests") == 10


async def test_settle_is_exactly_once_across_clients(redis_url: str, prefix: str) -> None:
    limits = TenantLimits("acme", (Limit("tokens", "day", 10_000),))
    async with stores(redis_url, prefix, 2) as (a, b), raw_client(redis_url) as client:
        await clear_of_rollover(client, "day")
        reservations = []
        for i in range(20):
            granted = await a.reserve(limits, 100, f"r{i}")
            assert isinstance(granted, Granted)
            reservations.append(granted.reservation)
        async with anyio.create_task_group() as tg:
            for i, reservation in enumerate(reservations):
                for store in (a, b, a, b):
                    tg.start_soon(store.settle, reservation, i)
        assert await b.committed("acme", "day") == sum(range(20)), "each settled once"
        async with anyio.create_task_group() as tg:
            for reservation in reservations:
                tg.start_soon(a.release, reservation)
                tg.start_soon(b.settle, reservation, 10_000)
        assert await a.committed("acme", "day") == sum(range(20)), "later closes are no-ops"
        assert await client.keys(f"{prefix}:res:*") == []


async def test_keys_expire_and_settle_never_recreates_a_window(redis_url: str, prefix: str) -> None:
    limits = TenantLimits("acme", (TOK_MIN, REQ_MIN, TOK_DAY))
    async with stores(redis_url, prefix) as [store], raw_client(redis_url) as client:
        await clear_of_rollover(client)
        granted = await store.reserve(limits, 50, "r")
        assert isinstance(granted, Granted)
        (_, minute), (_, day) = granted.reservation.buckets
        minute_key = f"{prefix}:acme:tokens:minute:{minute}"
        day_key = f"{prefix}:acme:tokens:day:{day}"
        assert 0 < await client.ttl(minute_key) <= 60 + EXPIRY_MARGIN_S
        assert (
            0 < await client.ttl(f"{prefix}:acme:requests:minute:{minute}") <= 60 + EXPIRY_MARGIN_S
        )
        assert 0 < await client.ttl(day_key) <= 86_400 + EXPIRY_MARGIN_S
        assert 86_400 < await client.ttl(f"{prefix}:res:r") <= RESERVATION_TTL_S

        await client.delete(minute_key)  # as if the minute had expired
        await store.settle(granted.reservation, 10)
        assert await client.exists(minute_key) == 0, "an expired window is not recreated"
        assert await client.get(day_key) == "10"
        assert await client.exists(f"{prefix}:res:r") == 0


async def test_windows_follow_redis_server_time(redis_url: str, prefix: str) -> None:
    limits = TenantLimits("acme", (TOK_MIN, TOK_DAY))
    async with stores(redis_url, prefix) as [store], raw_client(redis_url) as client:
        await clear_of_rollover(client)
        before = await server_now(client)
        granted = await store.reserve(limits, 1, "r")
        after = await server_now(client)
        assert isinstance(granted, Granted)
        assert granted.reservation.buckets == (
            ("minute", bucket_of(before, "minute")),
            ("day", bucket_of(before, "day")),
        )
        for quota in granted.quotas:
            assert (
                reset_after(after, quota.window)
                <= quota.reset_s
                <= reset_after(before, quota.window)
            )


async def test_outage_failover_and_recovery(prefix: str) -> None:
    limits = TenantLimits("acme", (Limit("tokens", "day", 1000),))
    with throwaway_redis() as server:
        primary = RedisStore.from_url(server.url, prefix=prefix)
        errors: list[str] = []
        fallback = MemoryStore(origin="fallback")
        open_store = FailoverStore(primary, fallback, fail_open=True, on_error=errors.append)
        closed_store = FailoverStore(
            primary, MemoryStore(), fail_open=False, on_error=errors.append
        )
        async with raw_client(server.url) as client:
            await clear_of_rollover(client, "day")
        before = await open_store.reserve(limits, 100, "before")
        assert isinstance(before, Granted) and before.reservation.origin == "primary"

        server.stop()
        for operation in (
            primary.reserve(limits, 1, "x"),
            primary.settle(before.reservation, 1),
            primary.committed("acme", "day"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await operation
            assert time.monotonic() - started < 1.5
            assert info.value.__cause__ is not None
        served = await open_store.reserve(limits, 10, "during")
        assert isinstance(served, Granted) and served.reservation.origin == "fallback"
        assert errors == ["reserve"]
        with pytest.raises(StoreUnavailable):
            await closed_store.reserve(limits, 10, "refused")
        await open_store.settle(before.reservation, 40)  # queued, not raised
        await open_store.settle(served.reservation, 5)  # the fallback's own
        # queued: the settle, and the abandon of the reserve that failed over
        assert open_store.pending_settlements() == 2 and fallback.open_reservations() == 0

        server.start()  # same port, same data; the clients are not rebuilt
        after = await open_store.reserve(limits, 1, "after")
        assert isinstance(after, Granted) and after.reservation.origin == "primary"
        with anyio.fail_after(5):
            while open_store.pending_settlements():
                await anyio.sleep(0.05)
        assert await primary.committed("acme", "day") == 40 + 1

        server.stop()  # a restart between two requests: the pooled connection is stale
        server.start()
        assert isinstance(await primary.reserve(limits, 1, "after-restart"), Granted)
        assert await primary.committed("acme", "day") == 40 + 1 + 1
        await open_store.aclose()
        await closed_store.aclose()


async def test_a_reserve_lost_in_a_paused_redis_is_abandoned_not_charged(prefix: str) -> None:
    limits = TenantLimits("acme", (Limit("tokens", "day", 1000),))
    with throwaway_redis() as server:
        async with stores(server.url, prefix) as [store], raw_client(server.url) as client:
            await clear_of_rollover(client, "day")
            warm = await store.reserve(limits, 0, "warm")  # the script is loaded: EVALSHA runs
            assert isinstance(warm, Granted)
            server.pause()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.reserve(limits, 100, "lost")
            assert time.monotonic() - started < 1.5, "a paused Redis costs one timeout"
            server.resume()
            # Redis ran the command it had buffered while paused, after the client gave up.
            with anyio.fail_after(5):
                while await store.committed("acme", "day") != 100:
                    await anyio.sleep(0.02)
            await store.abandon("lost")
            assert await store.committed("acme", "day") == 0, "refunded"
            await store.abandon("lost")  # twice: still exactly once
            assert await store.committed("acme", "day") == 0

            await store.abandon("late")  # abandoned before Redis ever ran it: a tombstone
            held = await store.reserve(limits, 100, "late")
            assert isinstance(held, Granted) and held.reservation.tokens == 0
            assert await store.committed("acme", "day") == 0, "the late reserve commits nothing"


async def test_reservations_survive_a_killed_durable_redis(prefix: str) -> None:
    limits = TenantLimits("acme", (Limit("tokens", "day", 1000), Limit("tokens", "minute", 500)))
    with throwaway_redis(durable=True) as server:
        async with stores(server.url, prefix) as [store], raw_client(server.url) as client:
            await clear_of_rollover(client)
            granted = await store.reserve(limits, 100, "r")
            assert isinstance(granted, Granted)
            server.kill()
            with pytest.raises(StoreUnavailable):
                await store.settle(granted.reservation, 30)
            server.start()  # same port; the pooled connections are stale
            await store.settle(granted.reservation, 30)
            assert await store.committed("acme", "day") == 30
            assert await store.committed("acme", "minute") == 30
        async with raw_client(server.url) as client:
            assert await client.keys(f"{prefix}:res:*") == []
