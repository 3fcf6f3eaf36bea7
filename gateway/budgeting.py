"""Tenant budgets on the request path: who is calling, reserve their worst case, settle.

The store decides (``budgets.ledger``); this module turns its answers into HTTP: 401 for an
unknown key, 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers, and the same
headers on every admitted response. ``settle`` runs exactly once per request, from whichever
cleanup path ends it, and is shielded from cancellation so a leaving client cannot leak its
reservation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

from budgets.failover import FailoverStore
from budgets.ledger import BudgetStore, Denied, Granted, Quota, StoreUnavailable
from budgets.memory_store import MemoryStore
from budgets.redis_store import RedisStore
from budgets.tenants import Tenant, TenantDirectory
from gateway.context import RequestContext
from gateway.errors import (
    AuthenticationFailed,
    BudgetStoreUnavailable,
    PermissionDenied,
    RateLimited,
    TenantConcurrencyExceeded,
)
from metrics.registry import Metrics
from routing.config import DeliberateConfig

log = logging.getLogger(__name__)


def build_store(config: DeliberateConfig, redis_url: str | None, metrics: Metrics) -> BudgetStore:
    """In memory by default; Redis (with the configured fail mode) when a URL is given."""
    if not redis_url:
        return MemoryStore()
    primary = RedisStore.from_url(redis_url, prefix=config.budget_store.key_prefix)
    return FailoverStore(
        primary,
        MemoryStore(origin="fallback"),
        fail_open=config.budget_store.fail_mode == "open",
        on_error=lambda op: metrics.store_errors.labels(op).inc(),
    )


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, secs = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def ratelimit_headers(quotas: tuple[Quota, ...]) -> dict[str, str]:
    """OpenAI's six headers, from the tightest limit of each kind (least remaining)."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        mine = [q for q in quotas if q.kind == kind]
        if not mine:
            continue
        q = min(mine, key=lambda x: (x.remaining, x.window != "minute"))
        headers[f"x-ratelimit-limit-{kind}"] = str(q.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(q.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_reset(q.reset_s)
    return headers


class BudgetService:
    """Tenants of the loaded config and the store that counts what they spend."""

    def __init__(
        self,
        config: DeliberateConfig,
        store: BudgetStore,
        metrics: Metrics,
        env: Mapping[str, str] | None = None,
        tenant_labels: bool = False,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.tenants = TenantDirectory.build(config.tenants, os.environ if env is None else env)
        for warning in self.tenants.warnings:
            log.warning("config: %s", warning)
        self._in_flight = 0
        self._running: dict[str, int] = {}  # completion requests per tenant name, right now
        self._tenant_labels = tenant_labels
        self._background: set[asyncio.Future[Any]] = set()

    def authenticate(self, authorization: str | None) -> Tenant:
        tenant = self.tenants.authenticate(authorization)
        if tenant is None:
            what = "no API key was given" if not authorization else "the API key is not valid"
            raise AuthenticationFailed(
                f"{what}; send `Authorization: Bearer <key>` with a key configured for a tenant"
            )
        return tenant

    def authorize_admin(self, authorization: str | None) -> Tenant:
        """The caller of an admin-only endpoint: anyone while no tenants are configured (open
        access), else a tenant marked ``admin``; 401 for no or an unknown key, 403 for a
        tenant key without the flag. The messages name no tenant, route or limit."""
        tenant = self.authenticate(authorization)
        if self.tenants.configured and not tenant.admin:
            raise PermissionDenied("this endpoint needs an admin API key")
        return tenant

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the caller may see admin detail (always, while access is open)."""
        try:
            self.authorize_admin(authorization)
        except (AuthenticationFailed, PermissionDenied):
            return False
        return True

    def enter(self, tenant: Tenant, ctx: RequestContext) -> None:
        """Count a completion request against its tenant's ``max_concurrent_requests`` until
        ``settle``; over it, 429 before anything is reserved (so nothing is charged)."""
        running = self._running.get(tenant.name, 0)
        if tenant.max_concurrent is not None and running >= tenant.max_concurrent:
            self.metrics.tenant_concurrency_rejections.inc()
            raise TenantConcurrencyExceeded(
                f"this API key already has {running} requests running, its limit; "
                "retry when one has finished",
                headers={"retry-after": "1"},
            )
        self._running[tenant.name] = running + 1
        ctx.running_as = tenant.name
        self._show_running(tenant.name)

    def _leave(self, ctx: RequestContext) -> None:
        name, ctx.running_as = ctx.running_as, None
        if name is None:
            return
        left = self._running.get(name, 1) - 1
        if left > 0:
            self._running[name] = left
        else:
            self._running.pop(name, None)
        self._show_running(name)

    def _show_running(self, name: str) -> None:
        if self._tenant_labels:  # opt-in: tenant names become label values
            self.metrics.tenant_in_flight.labels(name).set(self._running.get(name, 0))

    async def reserve(self, tenant: Tenant, tokens: int, ctx: RequestContext) -> None:
        """Hold ``tokens`` of the tenant's budget for this request, or raise 429/503."""
        if not tenant.limits.limits:
            return
        job = asyncio.ensure_future(self.store.reserve(tenant.limits, tokens, uuid.uuid4().hex))
        try:
            # Shielded: a client leaving mid-reserve must not strand a reservation the store
            # already committed; it is released as soon as the answer arrives.
            result = await asyncio.shield(job)
        except asyncio.CancelledError:
            self._background.add(job)
            job.add_done_callback(self._release_orphan)
            raise
        except StoreUnavailable as e:
            raise BudgetStoreUnavailable(
                "the budget store is unreachable and this gateway is configured to fail closed",
                headers={"retry-after": "1"},
            ) from e
        if isinstance(result, Denied):
            raise self._denied(result, tokens)
        ctx.reservation = result.reservation
        ctx.extra_headers.update(ratelimit_headers(result.quotas))
        if self._tenant_labels:  # opt-in: tenant names become label values
            for q in result.quotas:
                if q.kind == "tokens":
                    self.metrics.tenant_remaining.labels(tenant.name, q.window).set(q.remaining)
        self._in_flight += 1
        self.metrics.reservations_in_flight.set(self._in_flight)

    def _release_orphan(self, job: asyncio.Future[Granted | Denied]) -> None:
        self._background.discard(job)
        if job.cancelled() or job.exception() is not None:
            return
        result = job.result()
        if isinstance(result, Granted):
            task = asyncio.ensure_future(self.store.release(result.reservation))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for settlements still running, e.g. of requests cancelled at
        shutdown, so the store is not closed under them."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self._in_flight or self._background) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)

    def _denied(self, denied: Denied, tokens: int) -> RateLimited:
        q = denied.blocking
        headers = ratelimit_headers(denied.quotas)
        if denied.retry_after_s is None:
            return RateLimited(
                f"this request may use up to {tokens} tokens (prompt + max tokens), more than "
                f"the tenant's whole budget of {q.limit} tokens per {q.window}; "
                "lower max_completion_tokens / max_tokens",
                param="max_completion_tokens",
                code="request_too_large",
                headers=headers,
            )
        headers["retry-after"] = str(max(1, math.ceil(denied.retry_after_s)))
        if q.kind == "requests":
            what = f"request limit of {q.limit} per {q.window} reached"
        else:
            what = (
                f"token budget: this request may use up to {tokens} tokens and "
                f"{q.remaining} of {q.limit} per {q.window} are left"
            )
        return RateLimited(
            f"rate limit exceeded ({what}); retry after {headers['retry-after']} s",
            headers=headers,
        )

    async def settle(self, ctx: RequestContext) -> None:
        """Charge what the request used (release if nothing is known to have been used).
        Idempotent, and it completes even if the caller is being cancelled. Also ends the
        request's turn in its tenant's concurrency count."""
        self._leave(ctx)
        reservation, ctx.reservation = ctx.reservation, None
        if reservation is None:
            return
        used = ctx.spent.prompt + ctx.spent.completion
        log.debug(
            "request %s: %s %d of %d reserved tokens (outcome %s)",
            ctx.request_id,
            "settling" if used else "releasing",
            used,
            reservation.tokens,
            ctx.outcome,
        )
        self._in_flight -= 1
        self.metrics.reservations_in_flight.set(self._in_flight)
        if used:
            self.metrics.settled_tokens.inc(used)
            op = self.store.settle(reservation, used)
        else:
            op = self.store.release(reservation)
        try:
            await asyncio.shield(op)
        except StoreUnavailable:
            log.warning("budget store: could not settle reservation of %s", reservation.tenant)
            self.metrics.store_errors.labels("settle").inc()
