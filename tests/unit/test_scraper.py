"""The backend scraper over httpx.MockTransport: snapshots per replica, failed scrapes,
staleness with a fake clock, the hook and the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from budgets.estimates import PoolLoad
from budgets.snapshot import BackendSnapshot
from gateway.backends.pool import Pool
from gateway.backends.scraper import BackendScraper
from routing.config import BackendPool
from tests.unit.test_snapshot import REAL, with_values

pytestmark = pytest.mark.anyio

A, B = "http://a:8000", "http://b:8000"


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMetrics:
    """Serves ``pages[base_url]`` on /metrics; a missing page refuses the connection."""

    pages: dict[str, str | int] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        assert request.url.path == "/metrics"
        self.hits.append(base)
        page = self.pages.get(base)
        if page is None:
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(page, int):
            return httpx.Response(page, text="error")
        return httpx.Response(200, text=page)


@pytest.fixture
def fake() -> FakeMetrics:
    return FakeMetrics(
        {
            A: with_values(REAL, kv_cache_usage_perc=0.5, num_requests_running=4.0),
            B: with_values(REAL, kv_cache_usage_perc=0.2, num_requests_running=1.0),
        }
    )


@pytest.fixture
async def pool(fake: FakeMetrics) -> AsyncIterator[Pool]:
    p = Pool(BackendPool(name="main", model="m", replicas=[A, B]), httpx.MockTransport(fake.handle))
    yield p
    await p.client.aclose()


def scraper(pools: list[Pool], clock: Clock, **kw: object) -> BackendScraper:
    return BackendScraper(pools, interval_s=2.0, stale_after_s=10.0, clock=clock, **kw)  # type: ignore[arg-type]


async def test_scrape_builds_snapshots_and_pool_load(pool: Pool) -> None:
    clock = Clock()
    s = scraper([pool], clock)
    assert s.load("main") is None and s.snapshot(A) is None
    await s.scrape_once()
    a = s.snapshot(A)
    assert a is not None and a.sample.healthy and a.sample.taken_at == 100.0
    assert (a.sample.kv_usage, a.sample.running, a.sample.kv_capacity_tokens) == (0.5, 4, 93184)
    assert s.snapshot(B + "/") is s.snapshots[B]
    load = s.load("main")
    assert load is not None
    assert (load.kv_usage, load.running, load.waiting) == (0.2, 1, 0)
    assert load.kv_capacity_tokens == 93184
    assert s.load("no-such-pool") is None


async def test_rates_over_two_scrapes(pool: Pool, fake: FakeMetrics) -> None:
    clock = Clock()
    s = scraper([pool], clock)
    await s.scrape_once()
    fake.pages[B] = with_values(
        REAL,
        kv_cache_usage_perc=0.2,
        num_requests_running=2.0,
        generation_tokens_total=116.0,
        e2e_request_latency_seconds_count=4.0,
        e2e_request_latency_seconds_sum=4.7256550788879395,
    )
    clock.now = 102.0
    await s.scrape_once()
    b = s.snapshot(B)
    assert b is not None
    assert b.decode_tokens_per_s == pytest.approx(50.0)
    assert b.per_sequence_decode_tokens_per_s == pytest.approx(25.0)
    assert b.mean_request_s == pytest.approx(2.0)
    load = s.load("main")
    assert load is not None and load.decode_tokens_per_s == pytest.approx(25.0)


@pytest.mark.parametrize("failure", [None, 500])
async def test_failed_scrape_is_unhealthy_and_ignored(
    pool: Pool, fake: FakeMetrics, failure: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    if failure is None:
        del fake.pages[B]
    else:
        fake.pages[B] = failure
    s = scraper([pool], Clock())
    with caplog.at_level(logging.DEBUG, logger="gateway.backends.scraper"):
        await s.scrape_once()
        await s.scrape_once()
    b = s.snapshot(B)
    assert b is not None and not b.sample.healthy and b.sample.kv_usage is None
    load = s.load("main")
    assert load is not None and load.kv_usage == 0.5  # only A counts
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and B in warnings[0].getMessage()  # once a minute per replica


async def test_pool_health_is_reused(pool: Pool) -> None:
    pool.replicas[1].healthy = False  # the /health loop marked B down
    s = scraper([pool], Clock())
    await s.scrape_once()
    b = s.snapshot(B)
    assert b is not None and not b.sample.healthy and b.sample.kv_usage == 0.2
    load = s.load("main")
    assert load is not None and load.kv_usage == 0.5
    pool.replicas[0].healthy = False
    await s.scrape_once()
    assert s.load("main") is None


async def test_stale_snapshots_are_unknown(pool: Pool, fake: FakeMetrics) -> None:
    clock = Clock()
    s = scraper([pool], clock)
    await s.scrape_once()
    assert s.load("main") is not None
    assert s.load("main", now=110.0) is not None
    clock.now = 110.5
    assert s.load("main") is None
    fake.pages.clear()  # the backends went away: scrapes fail from now on
    await s.scrape_once()
    assert s.load("main") is None


async def test_snapshots_are_replaced_not_mutated(pool: Pool) -> None:
    s = scraper([pool], Clock())
    await s.scrape_once()
    before = s.snapshots
    copy = dict(before)
    await s.scrape_once()
    assert s.snapshots is not before and before == copy


async def test_on_scrape_hook_and_shared_replicas(pool: Pool, fake: FakeMetrics) -> None:
    other = Pool(
        BackendPool(name="other", model="m", replicas=[A]), httpx.MockTransport(fake.handle)
    )
    seen: list[tuple[str, str, BackendSnapshot]] = []

    def hook(pool_name: str, url: str, snap: BackendSnapshot) -> None:
        seen.append((pool_name, url, snap))
        raise RuntimeError("a broken hook does not stop the scrape")

    s = scraper([pool, other], Clock(), on_scrape=hook)
    await s.scrape_once()
    await other.client.aclose()
    assert sorted(fake.hits) == [A, B]  # A scraped once though two pools hold it
    assert [(p, u) for p, u, _ in seen] == [("main", A), ("main", B), ("other", A)]
    assert seen[0][2] is seen[2][2] is s.snapshots[A]
    assert s.load("other") == PoolLoad(kv_usage=0.5, kv_capacity_tokens=93184, running=4, waiting=0)


async def test_run_loops_until_cancelled(pool: Pool, fake: FakeMetrics) -> None:
    s = BackendScraper([pool], interval_s=0.01, stale_after_s=10.0)
    fake.pages[A] = "garbage {{{"
    task = asyncio.create_task(s.run())
    for _ in range(200):
        if len(fake.hits) >= 6:
            break
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake.hits) >= 6
    a = s.snapshot(A)
    assert a is not None and a.sample.healthy and a.sample.kv_usage is None
    assert s.timeout_s == 0.01


async def test_run_after_a_first_scrape_waits_an_interval(pool: Pool, fake: FakeMetrics) -> None:
    s = BackendScraper([pool], interval_s=30.0, stale_after_s=60.0)
    await s.scrape_once()  # before serving, as the lifespan does
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake.hits) == 2  # A and B once: no second scrape right after the first
