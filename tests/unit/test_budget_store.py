"""MemoryStore semantics (table-driven and property-based) and FailoverStore's policy."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from budgets.failover import FailoverStore
from budgets.ledger import (
    Denied,
    Granted,
    Kind,
    Limit,
    Quota,
    Reservation,
    StoreUnavailable,
    TenantLimits,
    WindowName,
    bucket_of,
    reset_after,
)
from budgets.memory_store import MemoryStore, charge

T = TypeVar("T")
T0 = 1_000_000_035.0  # 15 s into a minute (the minute window resets in 45 s)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that must never suspend (MemoryStore's never await anything)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("a MemoryStore operation suspended")


def tenant(*limits: Limit) -> TenantLimits:
    return TenantLimits("acme", limits)


TOK_MIN = Limit("tokens", "minute", 100)
REQ_MIN = Limit("requests", "minute", 3)
TOK_DAY = Limit("tokens", "day", 150)


@dataclass(frozen=True)
class Case:
    name: str
    limits: TenantLimits
    prior: tuple[tuple[float, int], ...]
    """Reservations made before, as (seconds to advance first, tokens)."""
    tokens: int
    blocking: int | None
    """Index of the limit that must refuse, or None: granted."""
    can_retry: bool = True
    """For a denial: retry after the blocking window's reset (else: can never fit)."""


CASES = [
    Case("fits exactly", tenant(TOK_MIN, REQ_MIN, TOK_DAY), (), 100, None),
    Case("minute tokens full", tenant(TOK_MIN, REQ_MIN), ((0, 60),), 41, 0),
    Case("fits the rest", tenant(TOK_MIN, REQ_MIN), ((0, 60),), 40, None),
    Case("day blocks", tenant(TOK_MIN, TOK_DAY), ((0, 100), (60, 0)), 60, 1),
    Case("requests block", tenant(TOK_MIN, REQ_MIN), ((0, 0), (0, 0), (0, 0)), 0, 1),
    Case(
        "next minute fits", tenant(TOK_MIN, REQ_MIN), ((0, 100), (0, 0), (0, 0), (60, 0)), 99, None
    ),
    Case("never fits", tenant(TOK_MIN, TOK_DAY), (), 101, 0, can_retry=False),
    Case("first failing limit blocks", tenant(TOK_DAY, TOK_MIN), ((0, 90),), 70, 0),
    Case("zero requests allowed", tenant(Limit("requests", "day", 0)), (), 1, 0, can_retry=False),
    Case("no limits", TenantLimits("acme"), (), 10**9, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reserve_decisions(case: Case) -> None:
    clock = Clock()
    store = MemoryStore(clock)
    limits = case.limits.limits
    for i, (advance, tokens) in enumerate(case.prior):
        clock.now += advance
        assert isinstance(run(store.reserve(case.limits, tokens, f"prior-{i}")), Granted)
    before = [run(store.committed("acme", lim.window, lim.kind)) for lim in limits]
    result = run(store.reserve(case.limits, case.tokens, "r"))
    after = [run(store.committed("acme", lim.window, lim.kind)) for lim in limits]
    if case.blocking is None:
        assert isinstance(result, Granted)
        assert after == [
            b + charge(lim, case.tokens) for b, lim in zip(before, limits, strict=True)
        ]
        assert [q.remaining for q in result.quotas] == [
            max(0, lim.limit - a) for a, lim in zip(after, limits, strict=True)
        ]
        return
    assert isinstance(result, Denied)
    assert after == before, "a denial commits nothing"
    blocking = limits[case.blocking]
    assert (result.blocking.kind, result.blocking.window) == (blocking.kind, blocking.window)
    assert result.blocking.reset_s == reset_after(clock.now, blocking.window)
    assert result.retry_after_s == (result.blocking.reset_s if case.can_retry else None)
    assert [q.remaining for q in result.quotas] == [
        max(0, lim.limit - b) for b, lim in zip(before, limits, strict=True)
    ]


def test_quotas_report_remaining_and_reset() -> None:
    store = MemoryStore(Clock())
    result = run(store.reserve(tenant(TOK_MIN, REQ_MIN, TOK_DAY), 30, "r"))
    assert isinstance(result, Granted)
    assert [(q.kind, q.window, q.limit, q.remaining) for q in result.quotas] == [
        ("tokens", "minute", 100, 70),
        ("requests", "minute", 3, 2),
        ("tokens", "day", 150, 120),
    ]
    assert result.quotas[0].reset_s == 45
    assert result.quotas[2].reset_s == reset_after(T0, "day")
    assert result.reservation.buckets == (
        ("minute", bucket_of(T0, "minute")),
        ("day", bucket_of(T0, "day")),
    )
    assert result.reservation.origin == "primary"
    assert run(MemoryStore(Clock(), origin="fallback").reserve(tenant(TOK_MIN), 1, "x")) == Granted(
        Reservation("x", "acme", 1, (("minute", bucket_of(T0, "minute")),), "fallback"),
        (Quota("tokens", "minute", 100, 99, 45),),
    )


def test_settle_acts_exactly_once() -> None:
    store = MemoryStore(Clock())
    limits = tenant(TOK_MIN, REQ_MIN)
    granted = run(store.reserve(limits, 50, "r"))
    assert isinstance(granted, Granted) and store.open_reservations() == 1
    run(store.settle(granted.reservation, 20))
    assert run(store.committed("acme", "minute")) == 20
    run(store.settle(granted.reservation, 20))
    run(store.release(granted.reservation))
    run(store.settle(granted.reservation, 99))
    assert run(store.committed("acme", "minute")) == 20
    assert run(store.committed("acme", "minute", "requests")) == 1
    assert store.open_reservations() == 0


def test_release_gives_tokens_back_but_keeps_the_request() -> None:
    store = MemoryStore(Clock())
    limits = tenant(TOK_MIN, REQ_MIN)
    granted = run(store.reserve(limits, 50, "r"))
    assert isinstance(granted, Granted)
    run(store.release(granted.reservation))
    assert run(store.committed("acme", "minute")) == 0
    assert run(store.committed("acme", "minute", "requests")) == 1


def test_settle_above_the_reservation_charges_actual_usage() -> None:
    store = MemoryStore(Clock())
    limits = tenant(TOK_MIN)
    granted = run(store.reserve(limits, 10, "r"))
    assert isinstance(granted, Granted)
    run(store.settle(granted.reservation, 95))
    assert run(store.committed("acme", "minute")) == 95
    denied = run(store.reserve(limits, 6, "s"))
    assert isinstance(denied, Denied) and denied.blocking.remaining == 5


def test_window_rollover() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    limits = tenant(TOK_MIN, TOK_DAY)
    first = run(store.reserve(limits, 100, "a"))
    assert isinstance(first, Granted)
    assert isinstance(run(store.reserve(limits, 1, "b")), Denied)
    clock.now += 45  # the next minute, same day
    assert run(store.committed("acme", "minute")) == 0
    second = run(store.reserve(limits, 40, "c"))
    assert isinstance(second, Granted)
    assert len(store._counters) == 2, "the old minute's counter was dropped"
    # Settling into the dropped minute must not recreate it; the day still gets the refund.
    run(store.settle(first.reservation, 10))
    assert run(store.committed("acme", "minute")) == 40
    assert run(store.committed("acme", "day")) == 50
    assert len(store._counters) == 2
    clock.now += 86_400
    assert run(store.committed("acme", "day")) == 0
    assert isinstance(run(store.reserve(limits, 100, "d")), Granted)


def test_reserving_an_open_id_again_commits_nothing() -> None:
    store = MemoryStore(Clock())
    limits = tenant(TOK_MIN)
    first = run(store.reserve(limits, 30, "r"))
    again = run(store.reserve(limits, 30, "r"))
    assert isinstance(first, Granted) and isinstance(again, Granted)
    assert again.reservation == first.reservation
    assert run(store.committed("acme", "minute")) == 30


def test_unlimited_tenant_is_never_counted() -> None:
    store = MemoryStore(Clock())
    granted = run(store.reserve(TenantLimits("free"), 10**9, "r"))
    assert (
        isinstance(granted, Granted) and granted.quotas == () and granted.reservation.buckets == ()
    )
    assert store.open_reservations() == 0
    run(store.settle(granted.reservation, 5))
    with pytest.raises(ValueError):
        run(store.reserve(tenant(TOK_MIN), -1, "neg"))


class FlakyStore:
    """A MemoryStore primary that raises StoreUnavailable while ``down``; with ``lose_replies``
    a reserve is committed and then fails (its reply lost, as after a Redis timeout)."""

    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False
        self.lose_replies = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("redis is down") from ConnectionRefusedError()

    async def reserve(
        self, limits: TenantLimits, tokens: int, reservation_id: str
    ) -> Granted | Denied:
        self._check()
        result = await self.inner.reserve(limits, tokens, reservation_id)
        if self.lose_replies:
            raise StoreUnavailable("reply lost") from TimeoutError()
        return result

    async def settle(self, reservation: Reservation, used: int) -> None:
        self._check()
        await self.inner.settle(reservation, used)

    async def release(self, reservation: Reservation) -> None:
        self._check()
        await self.inner.release(reservation)

    async def abandon(self, reservation_id: str) -> None:
        self._check()
        await self.inner.abandon(reservation_id)

    async def committed(self, tenant: str, window: WindowName, kind: Kind = "tokens") -> int:
        self._check()
        return await self.inner.committed(tenant, window, kind)

    async def aclose(self) -> None:
        pass


def failover(
    fail_open: bool, max_pending: int = 10_000
) -> tuple[FailoverStore, FlakyStore, list[str], Clock]:
    clock = Clock()
    primary = FlakyStore(clock)
    errors: list[str] = []
    store = FailoverStore(
        primary,
        MemoryStore(clock, origin="fallback"),
        fail_open=fail_open,
        on_error=errors.append,
        max_pending=max_pending,
        clock=clock,
    )
    return store, primary, errors, clock


@pytest.mark.anyio
async def test_fail_open_serves_from_the_fallback() -> None:
    store, primary, errors, _ = failover(fail_open=True)
    limits = tenant(TOK_MIN, REQ_MIN)
    up = await store.reserve(limits, 10, "up")
    assert isinstance(up, Granted) and up.reservation.origin == "primary"
    primary.down = True
    down = await store.reserve(limits, 95, "down")
    assert isinstance(down, Granted) and down.reservation.origin == "fallback"
    assert errors == ["reserve"]
    assert await store.committed("acme", "minute") == 95  # the fallback's view
    await store.settle(down.reservation, 5)  # goes to the fallback: no error, nothing queued
    assert errors == ["reserve"]
    assert store.pending_settlements() == 1  # the abandon of the reserve that failed over
    assert await store.committed("acme", "minute") == 5
    primary.down = False
    assert await store.committed("acme", "minute") == 10  # the primary never saw "down"


@pytest.mark.anyio
async def test_fail_closed_raises() -> None:
    store, primary, _, _ = failover(fail_open=False)
    primary.down = True
    with pytest.raises(StoreUnavailable):
        await store.reserve(tenant(TOK_MIN), 10, "r")
    with pytest.raises(StoreUnavailable):
        await store.committed("acme", "minute")


@pytest.mark.anyio
async def test_settlements_queued_in_an_outage_are_replayed_after_it() -> None:
    store, primary, errors, _ = failover(fail_open=False)
    limits = tenant(TOK_MIN, REQ_MIN)
    a, b = (await store.reserve(limits, 40, "a")), (await store.reserve(limits, 40, "b"))
    assert isinstance(a, Granted) and isinstance(b, Granted)
    primary.down = True
    await store.settle(a.reservation, 15)  # must not raise
    await store.release(b.reservation)
    assert errors == ["settle", "settle"] and store.pending_settlements() == 2
    primary.down = False
    assert await store.committed("acme", "minute") == 80
    for _ in range(5):  # the replay runs in the background after a successful primary call
        await anyio.sleep(0)
    assert store.pending_settlements() == 0
    assert await store.committed("acme", "minute") == 15
    assert await store.committed("acme", "minute", "requests") == 2
    assert primary.inner.open_reservations() == 0
    await store.settle(a.reservation, 15)  # replayed already: a no-op
    assert await store.committed("acme", "minute") == 15
    await store.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_reserve_whose_reply_was_lost_is_abandoned(fail_open: bool) -> None:
    store, primary, _, _ = failover(fail_open=fail_open)
    limits = tenant(TOK_MIN, REQ_MIN)
    primary.lose_replies = True
    if fail_open:
        served = await store.reserve(limits, 40, "lost")
        assert isinstance(served, Granted) and served.reservation.origin == "fallback"
    else:
        with pytest.raises(StoreUnavailable):
            await store.reserve(limits, 40, "lost")
    primary.lose_replies = False
    assert primary.inner.open_reservations() == 1  # the primary did commit it
    with anyio.fail_after(2):  # replayed by the retry loop, with no other traffic
        while store.pending_settlements():
            await anyio.sleep(0.01)
    assert primary.inner.open_reservations() == 0
    assert await primary.inner.committed("acme", "minute") == 0, "not charged"
    await store.aclose()


@pytest.mark.anyio
async def test_settlements_are_replayed_without_traffic_once_the_primary_is_back() -> None:
    store, primary, _, _ = failover(fail_open=False)
    granted = await store.reserve(tenant(TOK_MIN), 40, "a")
    assert isinstance(granted, Granted)
    primary.down = True
    await store.settle(granted.reservation, 7)
    await anyio.sleep(0.3)  # the loop tried and failed at least once meanwhile
    assert store.pending_settlements() == 1
    primary.down = False
    with anyio.fail_after(2):
        while store.pending_settlements():
            await anyio.sleep(0.01)
    assert await primary.inner.committed("acme", "minute") == 7
    await store.aclose()


@pytest.mark.anyio
async def test_pending_settlements_are_bounded_and_replay_stops_at_the_next_failure() -> None:
    store, primary, errors, _ = failover(fail_open=True, max_pending=3)
    limits = tenant(Limit("tokens", "minute", 1000))
    reservations = []
    for i in range(5):
        granted = await store.reserve(limits, 10, f"r{i}")
        assert isinstance(granted, Granted)
        reservations.append(granted.reservation)
    primary.down = True
    for reservation in reservations:
        await store.settle(reservation, 1)
    assert store.pending_settlements() == 3
    assert await store.flush_pending() == 3  # still down: kept
    primary.down = False
    assert await store.flush_pending() == 0
    # The two oldest were dropped: their reservations stay at the reserved 10 tokens.
    assert await store.committed("acme", "minute") == 10 + 10 + 1 + 1 + 1


@pytest.mark.anyio
async def test_outage_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    store, primary, errors, clock = failover(fail_open=True)
    primary.down = True
    with caplog.at_level(logging.WARNING, logger="budgets.failover"):
        for i in range(5):
            await store.reserve(tenant(TOK_MIN), 1, f"r{i}")
        clock.now += 11
        await store.reserve(tenant(TOK_MIN), 1, "later")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "4 similar suppressed" in warnings[1]
    assert errors == ["reserve"] * 6


# --- properties -----------------------------------------------------------------------------

MACHINE_LIMITS = tenant(
    Limit("tokens", "minute", 100),
    Limit("tokens", "minute", 150),  # two limits on one counter: committed once
    Limit("requests", "minute", 4),
    Limit("tokens", "day", 300),
)
WINDOWS: tuple[WindowName, ...] = ("minute", "day")


class BudgetMachine(RuleBasedStateMachine):
    """MemoryStore against a model: settled usage plus open reservations, per window."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.open: dict[str, Reservation] = {}
        self.closed: list[Reservation] = []
        self.settled: Counter[tuple[WindowName, int]] = Counter()
        self.requests: Counter[tuple[WindowName, int]] = Counter()
        self.next_id = 0

    def expected(self, window: WindowName) -> int:
        bucket = (window, bucket_of(self.clock.now, window))
        held = sum(r.tokens for r in self.open.values() if bucket in r.buckets)
        return self.settled[bucket] + held

    def counters(self) -> list[int]:
        kinds: tuple[Kind, ...] = ("tokens", "requests")
        return [run(self.store.committed("acme", w, k)) for w in WINDOWS for k in kinds]

    @rule(tokens=st.integers(0, 120))
    def reserve(self, tokens: int) -> None:
        before = {
            lim: run(self.store.committed("acme", lim.window, lim.kind))
            for lim in MACHINE_LIMITS.limits
        }
        failing = [
            lim for lim in MACHINE_LIMITS.limits if before[lim] + charge(lim, tokens) > lim.limit
        ]
        self.next_id += 1
        rid = f"r{self.next_id}"
        result = run(self.store.reserve(MACHINE_LIMITS, tokens, rid))
        if failing:
            assert isinstance(result, Denied)
            assert (result.blocking.kind, result.blocking.limit) == (
                failing[0].kind,
                failing[0].limit,
            )
            never = charge(failing[0], tokens) > failing[0].limit
            assert (result.retry_after_s is None) == never
            return
        assert isinstance(result, Granted)
        self.open[rid] = result.reservation
        self.requests[("minute", bucket_of(self.clock.now, "minute"))] += 1

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), used=st.integers(0, 200), release=st.booleans())
    def close(self, data: st.DataObject, used: int, release: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open)))
        reservation = self.open.pop(rid)
        if release:
            used = 0
            run(self.store.release(reservation))
        else:
            run(self.store.settle(reservation, used))
        for bucket in reservation.buckets:
            self.settled[bucket] += used
        self.closed.append(reservation)

    @precondition(lambda self: bool(self.closed))
    @rule(data=st.data(), used=st.integers(0, 200), release=st.booleans())
    def close_again(self, data: st.DataObject, used: int, release: bool) -> None:
        reservation = data.draw(st.sampled_from(self.closed))
        before = self.counters()
        if release:
            run(self.store.release(reservation))
        else:
            run(self.store.settle(reservation, used))
        assert self.counters() == before

    @rule(seconds=st.sampled_from([0.5, 1, 20, 45, 60, 61, 3_600, 86_400]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def committed_matches_the_model(self) -> None:
        for window in WINDOWS:
            committed = run(self.store.committed("acme", window))
            assert committed >= 0
            assert committed == self.expected(window)
        minute: tuple[WindowName, int] = ("minute", bucket_of(self.clock.now, "minute"))
        assert run(self.store.committed("acme", "minute", "requests")) == self.requests[minute]
        assert self.store.open_reservations() == len(self.open)

    def teardown(self) -> None:
        for reservation in list(self.open.values()):
            run(self.store.release(reservation))
        assert self.store.open_reservations() == 0, "closing every reservation leaves none open"
        assert all(v >= 0 for v in self.counters())


BudgetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_memory_store_model = BudgetMachine.TestCase
