"""Outlier ejection: the pure policy (times passed in) and the pool's use of it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from gateway.backends.outlier import OutlierPolicy, OutlierState
from gateway.backends.pool import Pool
from gateway.backends.upstream import open_upstream
from routing.config import BackendPool, OutlierDetection
from strategies.base import Deadline

POLICY = OutlierPolicy(
    OutlierDetection(consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=35.0)
)


def fail(s: OutlierState, times: int, now: float) -> list[bool]:
    return [POLICY.record_failure(s, now) for _ in range(times)]


def test_ejects_after_consecutive_failures_only() -> None:
    s = OutlierState()
    assert fail(s, 2, 0.0) == [False, False]
    POLICY.record_success(s, 1.0)  # a success breaks the run
    assert fail(s, 2, 2.0) == [False, False] and not POLICY.is_ejected(s, 2.0)
    assert POLICY.record_failure(s, 3.0) is True
    assert POLICY.is_ejected(s, 3.0) and POLICY.is_ejected(s, 12.9)
    assert not POLICY.is_ejected(s, 13.0)  # base_ejection_s later


def test_failures_while_ejected_do_not_extend_it() -> None:
    s = OutlierState()
    fail(s, 3, 0.0)
    assert fail(s, 5, 5.0) == [False] * 5
    assert s.ejected_until == 10.0


def test_ejection_time_doubles_in_a_row_up_to_the_cap() -> None:
    s = OutlierState()
    assert fail(s, 3, 0.0)[-1] is True
    lengths = [10.0]
    for _ in range(3):
        back = s.ejected_until
        assert back is not None
        assert POLICY.record_failure(s, back) is True  # on probation: one failure is enough
        assert s.ejected_until is not None
        lengths.append(s.ejected_until - back)
    assert lengths == [10.0, 20.0, 35.0, 35.0]


def test_success_clears_the_record_and_ends_an_ejection() -> None:
    s = OutlierState()
    fail(s, 3, 0.0)
    assert POLICY.record_success(s, 1.0) is True  # served while every replica was ejected
    assert not POLICY.is_ejected(s, 1.0)
    assert s == OutlierState()
    # no longer on probation: it takes the full run of failures again
    assert fail(s, 3, 2.0) == [False, False, True]
    assert s.ejected_until == 12.0  # the first ejection in a row again


def test_probe_ends_an_ejection_only_after_seeing_the_replica_fail() -> None:
    s = OutlierState()
    fail(s, 3, 0.0)
    # /health passed all along (completions fail, /health is fine): the ejection stands
    assert POLICY.record_probe(s, True, 2.0) is False and POLICY.is_ejected(s, 2.0)
    assert POLICY.record_probe(s, False, 4.0) is False  # now the probe sees it down...
    assert POLICY.record_probe(s, True, 6.0) is True  # ...and back: it returns early
    assert not POLICY.is_ejected(s, 6.0)
    assert POLICY.record_failure(s, 7.0) is True  # on probation: one failure ejects again
    assert s.ejected_until == 7.0 + 20.0


def test_probe_of_a_replica_in_rotation_changes_nothing() -> None:
    s = OutlierState(failures=2)
    assert POLICY.record_probe(s, False, 0.0) is False
    assert s == OutlierState(failures=2)


def test_disabled_never_ejects() -> None:
    policy = OutlierPolicy(OutlierDetection(enabled=False, consecutive_failures=1))
    s = OutlierState()
    assert not any(policy.record_failure(s, 0.0) for _ in range(10))


def test_config_rejects_a_cap_below_the_base() -> None:
    with pytest.raises(ValidationError, match="max_ejection_s"):
        OutlierDetection(base_ejection_s=60.0, max_ejection_s=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_pool(clock: Clock, ejected: list[tuple[str, str]]) -> Pool:
    config = BackendPool(
        name="p",
        model="m",
        replicas=["http://a:1", "http://b:1", "http://c:1"],
        outlier=OutlierDetection(consecutive_failures=2, base_ejection_s=30.0),
    )
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    return Pool(config, transport, clock, lambda pool, url: ejected.append((pool, url)))


def test_pool_leaves_ejected_replicas_out_while_others_are_in() -> None:
    clock, ejected = Clock(), []
    pool = make_pool(clock, ejected)
    a, b, c = pool.replicas
    for _ in range(2):
        pool.record_failure(a, "HTTP 500")
    assert ejected == [("p", "http://a:1")] and pool.is_ejected(a)
    for _ in range(20):
        assert a not in pool.ordered()
    c.healthy = False  # unhealthy but not ejected: still tried, last
    assert pool.ordered()[-1] is c
    clock.now += 30.0
    assert not pool.is_ejected(a) and a in pool.ordered()


def test_pool_with_every_replica_ejected_tries_the_one_back_soonest_first() -> None:
    clock, ejected = Clock(), []
    pool = make_pool(clock, ejected)
    a, b, c = pool.replicas
    for rep in (b, a, c):
        pool.record_failure(rep, "refused")
        pool.record_failure(rep, "refused")
        clock.now += 1.0
    assert len(ejected) == 3
    assert pool.ordered() == [b, a, c]
    pool.record_success(a)  # a fallback call got through: a is back at once
    assert pool.ordered() == [a]


@pytest.mark.anyio
async def test_probe_brings_back_an_ejected_replica_it_saw_fail() -> None:
    clock, ejected = Clock(), []
    health = {"status": 200}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(health["status"])  # /v1/models too: empty, not JSON

    config = BackendPool(
        name="p",
        model="m",
        replicas=["http://a:1", "http://b:1"],
        outlier=OutlierDetection(consecutive_failures=1, base_ejection_s=60.0),
    )
    pool = Pool(config, httpx.MockTransport(handle), clock, lambda p, u: ejected.append(u))
    a = pool.replicas[0]
    pool.record_failure(a, "HTTP 500")
    assert pool.is_ejected(a)
    # /health fine all along: it stays out (and a /v1/models that is not JSON is no crash)
    assert await pool.probe(a) and pool.is_ejected(a)
    health["status"] = 503
    assert not await pool.probe(a) and pool.is_ejected(a)
    health["status"] = 200
    assert await pool.probe(a) and not pool.is_ejected(a)  # seen down, then up: back early
    pool.record_failure(a, "HTTP 500")  # on probation: one failure, twice as long
    assert a.outlier.ejected_until == clock.now + 120.0
    assert ejected == ["http://a:1", "http://a:1"]
    await pool.client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("counts", [True, False])
async def test_a_call_cut_by_the_deadline_fails_the_replica_only_when_it_is_the_request(
    counts: bool,
) -> None:
    config = BackendPool(
        name="p",
        model="m",
        replicas=["http://a:1"],
        outlier=OutlierDetection(consecutive_failures=1),
    )
    pool = Pool(config, httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    passed = Deadline(at=10.0, clock=lambda: 11.0)
    upstream = await open_upstream(pool, "/v1/chat/completions", b"{}", "rid", None, passed, counts)
    await upstream.aclose()  # no verdict: the caller was cancelled at the deadline
    # single-pass: the replica was too slow for the request; a strategy's own cancellation
    # of its outstanding calls at the deadline is by design, not the replica's failure
    assert pool.is_ejected(pool.replicas[0]) is counts
    assert pool.replicas[0].in_flight == 0
    await pool.client.aclose()
