"""A ``BudgetStore`` for one process: counters in a dict.

Every operation runs without awaiting anything, so under asyncio the check and the commit of a
reservation can never interleave with another task's: the store is exact for one process. It
is the store of a single gateway and the fail-open fallback of a shared (Redis) one.

The helpers at the top (``charge``, ``quota``, ``denial``, ``token_windows``) are the limit
arithmetic both stores share; the Redis store runs the same decision in Lua.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from budgets.ledger import (
    WINDOW_SECONDS,
    Denied,
    Granted,
    Kind,
    Limit,
    Quota,
    Reservation,
    TenantLimits,
    WindowName,
    bucket_of,
    reset_after,
)

CounterKey = tuple[str, Kind, WindowName, int]
"""(tenant, kind, window, bucket index)."""


def charge(limit: Limit, tokens: int) -> int:
    """What one request adds to ``limit``'s counter: its tokens, or 1 for a requests limit."""
    return tokens if limit.kind == "tokens" else 1


def quota(limit: Limit, committed: int, now: float) -> Quota:
    """``limit``'s state when its current window holds ``committed``."""
    return Quota(
        kind=limit.kind,
        window=limit.window,
        limit=limit.limit,
        remaining=max(0, limit.limit - committed),
        reset_s=reset_after(now, limit.window),
    )


def denial(quotas: Sequence[Quota], blocking: int, amount: int) -> Denied:
    """The refusal when ``amount`` does not fit the limit at index ``blocking``.

    ``retry_after_s`` is the blocking window's reset, or None when ``amount`` exceeds the limit
    itself and so can never fit, however long the caller waits.
    """
    block = quotas[blocking]
    retry = None if amount > block.limit else block.reset_s
    return Denied(quotas=tuple(quotas), blocking=block, retry_after_s=retry)


def token_windows(limits: TenantLimits) -> tuple[WindowName, ...]:
    """The windows that hold token counters for ``limits``, each once, in configured order."""
    return tuple(dict.fromkeys(lim.window for lim in limits.limits if lim.kind == "tokens"))


class MemoryStore:
    """Exact budgets for one process.

    Counters are keyed by (tenant, kind, window, bucket); buckets older than the current ones
    are dropped lazily at the next reservation. Open reservations live in a dict keyed by id,
    so the first ``settle``/``release`` of a reservation pops it and any later one is a no-op.
    Reservation ids must be unique; reserving an id that is still open returns that same
    reservation again and commits nothing (an idempotent retry).
    """

    def __init__(self, clock: Callable[[], float] = time.time, origin: str = "primary") -> None:
        self._clock = clock
        self._origin = origin
        self._counters: dict[CounterKey, int] = {}
        self._open: dict[str, Reservation] = {}
        self._swept: dict[WindowName, int] = {}

    @property
    def origin(self) -> str:
        """The ``origin`` stamped on this store's reservations."""
        return self._origin

    def open_reservations(self) -> int:
        """Reservations neither settled nor released yet (for a gauge)."""
        return len(self._open)

    async def reserve(
        self, limits: TenantLimits, tokens: int, reservation_id: str
    ) -> Granted | Denied:
        """Commit ``tokens`` and one request to every limit's current window, if all fit.

        Denied commits nothing; its ``blocking`` quota is the first limit that does not fit.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        now = self._clock()
        self._sweep(now)
        keys = [self._key(limits.tenant, lim, now) for lim in limits.limits]
        existing = self._open.get(reservation_id)
        if existing is not None:
            return Granted(existing, self._quotas(limits, keys, now))
        for i, lim in enumerate(limits.limits):
            amount = charge(lim, tokens)
            if self._counters.get(keys[i], 0) + amount > lim.limit:
                return denial(self._quotas(limits, keys, now), i, amount)
        for key in dict.fromkeys(keys):
            self._counters[key] = self._counters.get(key, 0) + (tokens if key[1] == "tokens" else 1)
        buckets = tuple((w, bucket_of(now, w)) for w in token_windows(limits))
        reservation = Reservation(reservation_id, limits.tenant, tokens, buckets, self._origin)
        if buckets:
            self._open[reservation_id] = reservation
        return Granted(reservation, self._quotas(limits, keys, now))

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Replace the reservation's tokens by ``used`` in the windows it was committed to.

        Acts once per reservation. A window dropped since (it rolled over) is left alone.
        """
        held = self._open.pop(reservation.id, None)
        if held is None:
            return
        delta = max(0, used) - held.tokens
        for window, bucket in held.buckets:
            key: CounterKey = (held.tenant, "tokens", window, bucket)
            if key in self._counters:
                self._counters[key] = max(0, self._counters[key] + delta)

    async def release(self, reservation: Reservation) -> None:
        """Give the reserved tokens back; the request itself stays counted."""
        await self.settle(reservation, 0)

    async def abandon(self, reservation_id: str) -> None:
        """Release ``reservation_id`` if it is open (in memory no reserve arrives late)."""
        held = self._open.get(reservation_id)
        if held is not None:
            await self.release(held)

    async def committed(self, tenant: str, window: WindowName, kind: Kind = "tokens") -> int:
        """The current window's counter for ``tenant``."""
        return self._counters.get((tenant, kind, window, bucket_of(self._clock(), window)), 0)

    async def aclose(self) -> None:
        """Nothing to close."""

    def _key(self, tenant: str, limit: Limit, now: float) -> CounterKey:
        return (tenant, limit.kind, limit.window, bucket_of(now, limit.window))

    def _quotas(
        self, limits: TenantLimits, keys: list[CounterKey], now: float
    ) -> tuple[Quota, ...]:
        return tuple(
            quota(lim, self._counters.get(key, 0), now)
            for lim, key in zip(limits.limits, keys, strict=True)
        )

    def _sweep(self, now: float) -> None:
        """Drop the counters of windows that have ended (once per window rollover)."""
        for window in WINDOW_SECONDS:
            current = bucket_of(now, window)
            last = self._swept.get(window)
            if last is not None and current <= last:
                continue
            self._swept[window] = current
            stale = [k for k in self._counters if k[2] == window and k[3] < current]
            for key in stale:
                del self._counters[key]
