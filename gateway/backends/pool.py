"""Backend pools: replica state, least-loaded selection and health probing.

A pool owns one pooled ``httpx.AsyncClient`` shared by its replicas. Replica state lives in
the gateway process (in-flight counts, health, outlier record) and is only ever touched from
the event loop, so plain attributes need no locks. Replicas that keep failing calls are
ejected (``gateway.backends.outlier``): they get no traffic while any other replica is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.backends.affinity import HashRing, pick, prefix_key
from gateway.backends.outlier import OutlierPolicy, OutlierState
from gateway.backends.scheduling import Drop, SchedulingHints, hint_headers
from routing.config import BackendPool
from strategies.tracing import NO_TRACING, Tracer

OnEject = Callable[[str, str], None]
"""Called with (pool name, replica URL) when a replica is ejected."""
OnDrop = Callable[[str, Drop], None]
"""Called with (pool name, drop) when the pool's scheduler dropped a request."""

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """One vLLM server. ``healthy`` starts optimistic: the first probe or call corrects it."""

    url: str
    in_flight: int = 0
    healthy: bool = True
    max_model_len: int | None = None
    models: tuple[str, ...] = field(default_factory=tuple)
    outlier: OutlierState = field(default_factory=OutlierState)


class Pool:
    """Interchangeable replicas serving ``config.model``, behind one connection pool."""

    def __init__(
        self,
        config: BackendPool,
        transport: httpx.AsyncBaseTransport,
        clock: Callable[[], float] = time.monotonic,
        on_eject: OnEject | None = None,
        on_drop: OnDrop | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self.config = config
        self.on_drop = on_drop
        self.tracer = tracer  # spans of the calls to this pool's replicas
        self.clock = clock
        self.outliers = OutlierPolicy(config.outlier)
        self.on_eject = on_eject
        t = config.timeouts
        self.timeouts = {
            "connect": t.connect_s,
            "read": t.read_s,
            "write": t.write_s,
            "pool": t.pool_s,
        }
        self.transport = transport
        # One pooled client per pool (probes, /ready); completions go straight to its
        # transport (see ``send``). Closing the client closes the transport.
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(**self.timeouts),
            # SSE is forwarded byte for byte: no compression between us and the backend.
            headers={"accept-encoding": "identity"},
            trust_env=False,
        )
        self.replicas = [Replica(url) for url in config.replica_urls]
        self._turn = 0
        self.ring = HashRing(config.replica_urls)
        # Cleared when the backend answers 404 on /v1/responses: translate from then on.
        self.serves_responses = config.responses_api == "forward"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def max_model_len(self) -> int | None:
        """Smallest context length any replica reported (None until one did)."""
        known = [r.max_model_len for r in self.replicas if r.max_model_len is not None]
        return min(known) if known else None

    def ordered(self, key: str | None = None, turn: bool = True) -> list[Replica]:
        """Replicas in the order to try them: healthy first, by the pool's ``balance`` policy.

        least-loaded: by fewest in-flight requests, ties rotating so equal replicas share the
        load; round-robin: in turn. prefix-affinity (with ``key``, the request's prefix): the
        first healthy replica on the hash ring within the load bound, then the rest
        least-loaded. Unhealthy replicas come last rather than never, since a probe may
        simply not have noticed a recovery yet. Ejected replicas are left out, unless all
        are: then all, the one back soonest first. ``turn``: this call takes a turn of the
        rotation (a lookup such as ``/tokenize`` does not).
        """
        n = len(self.replicas)
        if turn:
            self._turn = (self._turn + 1) % n
        rotated = self.replicas[self._turn :] + self.replicas[: self._turn]
        now = self.clock()
        live = [r for r in rotated if not self.outliers.is_ejected(r.outlier, now)]
        if not live:
            return sorted(rotated, key=lambda r: (r.outlier.ejected_until or 0.0, r.in_flight))
        policy = self.config.balance.policy
        if policy == "round-robin":
            return sorted(live, key=lambda r: not r.healthy)
        by_load = sorted(live, key=lambda r: (not r.healthy, r.in_flight))
        if policy != "prefix-affinity" or key is None or n == 1:
            return by_load
        index = {id(r): i for i, r in enumerate(self.replicas)}
        usable = {index[id(r)] for r in live if r.healthy}
        order = [i for i in self.ring.walk(key) if i in usable]
        loads = {i: self.replicas[i].in_flight for i in order}
        chosen = pick(order, loads, self.config.balance.load_factor)
        if chosen is None:
            return by_load
        first = self.replicas[chosen]
        return [first, *(r for r in by_load if r is not first)]

    def affinity_key(self, payload: Mapping[str, Any]) -> str | None:
        """The request's prefix key when this pool balances by prefix affinity."""
        b = self.config.balance
        if b.policy != "prefix-affinity" or len(self.replicas) == 1:
            return None
        return prefix_key(payload, b.prefix_chars)

    def is_ejected(self, replica: Replica) -> bool:
        return self.outliers.is_ejected(replica.outlier, self.clock())

    def record_success(self, replica: Replica) -> None:
        """A call on ``replica`` succeeded (any answer but a 5xx, read to its end)."""
        if self.outliers.record_success(replica.outlier, self.clock()):
            log.info("backend %s replica %s is back: a call succeeded", self.name, replica.url)

    def record_failure(self, replica: Replica, reason: str) -> None:
        """A call on ``replica`` failed (5xx, connect error, timeout, broken or invalid body)."""
        if self.outliers.record_failure(replica.outlier, self.clock()):
            seconds = self.outliers.ejection_s(replica.outlier.ejections)
            log.warning(
                "backend %s replica %s ejected for %.1fs (ejection %d in a row): %s",
                self.name,
                replica.url,
                seconds,
                replica.outlier.ejections,
                reason,
            )
            if self.on_eject is not None:
                self.on_eject(self.name, replica.url)

    def record_drop(self, drop: Drop) -> None:
        """The pool's scheduler dropped a request (``gateway.backends.scheduling``)."""
        log.info("backend %s: the scheduler dropped a request (%s)", self.name, drop.reason)
        if self.on_drop is not None:
            self.on_drop(self.name, drop)

    def hint_headers(self, hints: SchedulingHints | None) -> dict[str, str]:
        """The scheduler hint headers of a call to this pool (empty unless forwarding)."""
        return hint_headers(self.config.scheduler, hints)

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST ``body`` to ``url`` on the pool's connections; the response is still open.

        This is the single-pass hot path, so it goes to the transport directly: the client's
        auth/redirect/cookie machinery costs ~0.15 ms of CPU a request and none of it applies
        to a backend we address by URL (measured in bench/overhead.py).
        """
        request = httpx.Request(
            "POST",
            url,
            content=body,
            headers={"accept-encoding": "identity", **headers},
            extensions={"timeout": self.timeouts},
        )
        return await self.transport.handle_async_request(request)

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            log.warning("backend %s replica %s marked down: %s", self.name, replica.url, reason)
        replica.healthy = False

    async def probe(self, replica: Replica, timeout_s: float = 2.0) -> bool:
        """GET /health (and /v1/models until its context length is known). Updates ``replica``."""
        try:
            r = await self.client.get(f"{replica.url}/health", timeout=timeout_s)
            ok = r.status_code == 200
            if ok and replica.max_model_len is None:
                await self._read_models(replica, timeout_s)
        except httpx.HTTPError as e:
            ok = False
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            reason = f"/health answered {r.status_code}"
        if ok and not replica.healthy:
            log.info("backend %s replica %s is healthy again", self.name, replica.url)
        if ok:
            replica.healthy = True
        else:
            self.mark_down(replica, reason)
        if self.outliers.record_probe(replica.outlier, ok, self.clock()):
            log.info(
                "backend %s replica %s is back: its probe passes again", self.name, replica.url
            )
        return ok

    async def _read_models(self, replica: Replica, timeout_s: float) -> None:
        r = await self.client.get(f"{replica.url}/v1/models", timeout=timeout_s)
        if r.status_code != 200:
            return
        try:
            data = r.json()
        except ValueError:  # not JSON: leave the context length unknown, keep probing
            log.warning("backend %s replica %s: /v1/models is not JSON", self.name, replica.url)
            return
        listed = data.get("data") if isinstance(data, dict) else None
        cards = [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
        replica.models = tuple(str(c.get("id")) for c in cards)
        lens = [c["max_model_len"] for c in cards if isinstance(c.get("max_model_len"), int)]
        if self.model not in replica.models:
            log.warning(
                "backend %s replica %s does not serve model %r (it serves %s)",
                self.name,
                replica.url,
                self.model,
                list(replica.models),
            )
        if lens:
            replica.max_model_len = min(lens)

    async def probe_all(self, timeout_s: float = 2.0) -> list[bool]:
        return list(await asyncio.gather(*(self.probe(r, timeout_s) for r in self.replicas)))

    async def health_loop(self) -> None:
        """Probe every replica every ``health_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.probe_all()
            except Exception as e:  # an odd answer must not end the probing for good
                log.warning(
                    "backend %s: health probe failed: %s: %s", self.name, type(e).__name__, e
                )


def build_transport(config: BackendPool) -> httpx.AsyncBaseTransport:
    """The pooled connections of one pool: httpx's transport API over aiohttp's pool.

    Measured in bench/overhead.py: httpcore cost ~0.2 ms more CPU per request than aiohttp on
    the single-pass path.
    """
    return AiohttpTransport(
        limits=httpx.Limits(max_connections=config.max_connections, keepalive_expiry=30.0),
        trust_env=False,
    )
