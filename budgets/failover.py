"""A shared budget store with a per-process fallback for when it cannot be reached.

``FailoverStore`` reserves on the primary (Redis). When the primary raises
``StoreUnavailable``:

* at reserve, fail-open reserves on the in-process fallback instead (the reservation's origin
  becomes ``"fallback"``, so its settle goes there too) and fail-closed re-raises;
* at settle/release, nothing is raised (the request is already served): the settlement is kept
  in a bounded queue and replayed in the background -- at once after the next successful
  primary call, else retried with backoff (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``) -- so
  an outage does not lose usage once the primary is back, even with no traffic. Settle acts
  once per reservation, so a replay that races another can never charge twice.
* a reserve that failed may still have been committed (a timeout after Redis ran the script,
  or a command Redis runs when a paused server resumes), so it is queued as an ``abandon`` of
  its id in both modes: the failed request is never charged.

Failures are logged at most once per ``LOG_EVERY_S`` per kind, and reported to ``on_error``
(the operation: ``"reserve"`` when failing open, ``"settle"`` for settle and release).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from budgets.ledger import (
    BudgetStore,
    Denied,
    Granted,
    Kind,
    Reservation,
    StoreUnavailable,
    TenantLimits,
    WindowName,
)
from budgets.memory_store import MemoryStore

log = logging.getLogger(__name__)

FALLBACK_ORIGIN = "fallback"
MAX_PENDING = 10_000
LOG_EVERY_S = 10.0
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0

Op = Literal["settle", "release", "abandon"]
Pending = tuple[Op, Reservation, int]
"""A settlement to replay: (op, reservation, used); an abandon's reservation has only an id."""


class FailoverStore:
    """``primary`` with ``fallback`` behind it; see the module docstring for the policy."""

    def __init__(
        self,
        primary: BudgetStore,
        fallback: MemoryStore,
        fail_open: bool,
        on_error: Callable[[str], None],
        *,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._fail_open = fail_open
        self._on_error = on_error
        self._max_pending = max_pending
        self._clock = clock
        self._pending: deque[Pending] = deque()
        self._replay: asyncio.Task[None] | None = None
        self._primary_back = asyncio.Event()
        self._logged_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def pending_settlements(self) -> int:
        """Settlements waiting for the primary to come back."""
        return len(self._pending)

    async def reserve(
        self, limits: TenantLimits, tokens: int, reservation_id: str
    ) -> Granted | Denied:
        """Reserve on the primary; if it is unreachable, on the fallback or not at all."""
        try:
            result = await self._primary.reserve(limits, tokens, reservation_id)
        except StoreUnavailable as exc:
            ghost = Reservation(reservation_id, limits.tenant, 0, ())
            self._enqueue(("abandon", ghost, 0))
            if not self._fail_open:
                raise
            self._warn(
                "reserve", "budget store unavailable, failing open to the local one: %s", exc
            )
            self._on_error("reserve")
            result = await self._fallback.reserve(limits, tokens, reservation_id)
            if isinstance(result, Granted):
                reservation = dataclasses.replace(result.reservation, origin=FALLBACK_ORIGIN)
                result = dataclasses.replace(result, reservation=reservation)
            return result
        self._primary_ok()
        return result

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Settle on the store holding the reservation; never raises ``StoreUnavailable``."""
        await self._close(("settle", reservation, used))

    async def release(self, reservation: Reservation) -> None:
        """Release on the store holding the reservation; never raises ``StoreUnavailable``."""
        await self._close(("release", reservation, 0))

    async def abandon(self, reservation_id: str) -> None:
        """Abandon on the primary (queued if it is down); never raises ``StoreUnavailable``."""
        await self._close(("abandon", Reservation(reservation_id, "", 0, ()), 0))

    async def committed(self, tenant: str, window: WindowName, kind: Kind = "tokens") -> int:
        """The primary's counter; the fallback's when failing open through an outage."""
        try:
            value = await self._primary.committed(tenant, window, kind)
        except StoreUnavailable:
            if not self._fail_open:
                raise
            return await self._fallback.committed(tenant, window, kind)
        self._primary_ok()
        return value

    async def flush_pending(self) -> int:
        """Replay queued settlements on the primary now; returns how many are still queued."""
        while self._pending:
            item = self._pending[0]
            try:
                await self._apply(item)
            except StoreUnavailable:
                break
            except Exception:
                log.exception("dropping a budget settlement the primary store rejected")
            # A concurrent flush may have replayed (and popped) this one already.
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
        return len(self._pending)

    async def aclose(self) -> None:
        """Stop the replay loop, try the queue once more, then close both stores."""
        if self._replay is not None:
            self._replay.cancel()
            with contextlib.suppress(BaseException):
                await self._replay
        if self._pending:
            with contextlib.suppress(Exception):
                await self.flush_pending()  # one last try before giving up on them
        if self._pending:
            log.warning("closing with %d budget settlements not applied", len(self._pending))
        try:
            await self._primary.aclose()
        finally:
            await self._fallback.aclose()

    async def _close(self, item: Pending) -> None:
        if item[1].origin == FALLBACK_ORIGIN:
            await self._apply(item, self._fallback)
            return
        try:
            await self._apply(item)
        except StoreUnavailable as exc:
            self._warn("settle", "budget store unavailable, settlement queued: %s", exc)
            self._on_error("settle")
            self._enqueue(item)
            return
        self._primary_ok()

    def _enqueue(self, item: Pending) -> None:
        """Queue ``item`` for the primary and make sure the replay loop runs."""
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._warn("drop", "budget settlement queue full, dropping the oldest")
        self._pending.append(item)
        if self._replay is None or self._replay.done():
            self._replay = asyncio.get_running_loop().create_task(self._replay_pending())

    async def _apply(self, item: Pending, store: BudgetStore | None = None) -> None:
        op, reservation, used = item
        target = self._primary if store is None else store
        if op == "abandon":
            await target.abandon(reservation.id)
        elif op == "release":
            await target.release(reservation)
        else:
            await target.settle(reservation, used)

    def _primary_ok(self) -> None:
        """After a successful primary call: wake the replay loop (it is waiting out a backoff)."""
        if self._pending:
            self._primary_back.set()

    async def _replay_pending(self) -> None:
        """Replay the queue until it is empty: retried with backoff, or at once when a primary
        call succeeds meanwhile."""
        delay = RETRY_MIN_S
        while self._pending:
            self._primary_back.clear()
            try:
                left = await self.flush_pending()
            except Exception:  # never let a background replay crash the loop
                log.exception("replaying budget settlements failed")
                left = len(self._pending)
            if left == 0:
                log.info("budget store back: queued settlements applied")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._primary_back.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """``log.warning`` at most once per ``LOG_EVERY_S`` for each ``kind``."""
        now = self._clock()
        last = self._logged_at.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._logged_at[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        log.warning(message, *args)
