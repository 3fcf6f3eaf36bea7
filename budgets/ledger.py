"""Tenant token budgets and request rate limits: the ``BudgetStore`` port and its values.

Windows are fixed and aligned to the epoch (a minute window is ``floor(now / 60)``), so every
gateway replica sharing a store agrees on them without coordination, and a window's counters
can expire with it. A counter holds the window's *committed* tokens: settled usage plus the
worst case of every reservation still open.

Lifecycle of one request: ``reserve`` its worst case at admission → ``settle`` its actual use
(the counter moves by ``used - reserved``) or ``release`` it (``used = 0``) on error or
cancellation. Settle and release act at most once per reservation, so a retry or a second
cleanup path can never charge twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["tokens", "requests"]
WindowName = Literal["minute", "day"]
WINDOW_SECONDS: dict[WindowName, int] = {"minute": 60, "day": 86_400}


class StoreUnavailable(Exception):
    """The store could not be reached; the caller applies its fail-open/fail-closed policy."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` tokens (or requests) per ``window``."""

    kind: Kind
    window: WindowName
    limit: int


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's limits; a tenant with none is never counted."""

    tenant: str
    limits: tuple[Limit, ...] = ()


@dataclass(frozen=True, slots=True)
class Quota:
    """One limit's state as of an operation (drives the ``x-ratelimit-*`` headers)."""

    kind: Kind
    window: WindowName
    limit: int
    remaining: int
    reset_s: float
    """Seconds until the window rolls over and its counter starts from zero."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens held for one request, in the windows current when it was admitted."""

    id: str
    tenant: str
    tokens: int
    buckets: tuple[tuple[WindowName, int], ...]
    """(window, bucket index) pairs the tokens were committed to."""
    origin: str = "primary"
    """Which store holds it (a fail-open fallback keeps its own)."""


@dataclass(frozen=True, slots=True)
class Granted:
    reservation: Reservation
    quotas: tuple[Quota, ...]


@dataclass(frozen=True, slots=True)
class Denied:
    """The reservation does not fit. Nothing was committed."""

    quotas: tuple[Quota, ...]
    blocking: Quota
    retry_after_s: float | None
    """When the blocking window frees enough; None when the request can never fit."""


class BudgetStore(Protocol):
    """Where committed tokens and request counts live (one process, or Redis for many)."""

    async def reserve(
        self, limits: TenantLimits, tokens: int, reservation_id: str
    ) -> Granted | Denied:
        """Commit ``tokens`` and one request to every window of ``limits`` if all fit."""
        ...

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Replace the reservation by ``used`` tokens. No-op if already settled or released."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give the whole reservation back (the request still counts as a request)."""
        ...

    async def abandon(self, reservation_id: str) -> None:
        """Undo a ``reserve`` of this id whose outcome is unknown (the call failed): release
        it if it was committed, and make a copy of it arriving later commit nothing."""
        ...

    async def committed(self, tenant: str, window: WindowName, kind: Kind = "tokens") -> int:
        """The current window's committed count (inspection, tests)."""
        ...

    async def aclose(self) -> None: ...


def bucket_of(now: float, window: WindowName) -> int:
    """Index of the fixed window containing ``now`` (seconds since the epoch)."""
    return math.floor(now / WINDOW_SECONDS[window])


def reset_after(now: float, window: WindowName) -> float:
    """Seconds from ``now`` until the window containing it ends."""
    size = WINDOW_SECONDS[window]
    return (bucket_of(now, window) + 1) * size - now
