"""Scrapes every replica's vLLM ``/metrics`` on an interval into immutable snapshots.

Admission reads the latest snapshots (``load``) and never waits for a scrape. Health comes
from the pool's own ``/health`` loop (``Replica.healthy``); a failed scrape makes the sample
unhealthy and empty, and a snapshot older than ``stale_after_s`` counts as unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import httpx

from budgets.estimates import PoolLoad
from budgets.snapshot import (
    BackendSample,
    BackendSnapshot,
    advance,
    parse_vllm_metrics,
    pool_load,
)
from gateway.backends.pool import Pool, Replica

log = logging.getLogger(__name__)

OnScrape = Callable[[str, str, BackendSnapshot], None]
"""Called with (pool name, replica URL, new snapshot) after every scrape."""

_LOG_EVERY_S = 60.0


class BackendScraper:
    """Live state of every replica of ``pools``, refreshed every ``interval_s``."""

    def __init__(
        self,
        pools: Sequence[Pool],
        interval_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_scrape: OnScrape | None = None,
    ) -> None:
        self.pools = {p.name: p for p in pools}
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.timeout_s = min(2.0, interval_s)
        self.clock = clock
        self.on_scrape = on_scrape
        self.snapshots: dict[str, BackendSnapshot] = {}
        """Replica URL -> latest snapshot; the dict is replaced whole, never mutated."""
        self._logged_at: dict[str, float] = {}

    def snapshot(self, replica_url: str) -> BackendSnapshot | None:
        return self.snapshots.get(replica_url.rstrip("/"))

    def load(self, pool_name: str, now: float | None = None) -> PoolLoad | None:
        """The pool's live load, or None when unknown (no fresh, healthy replica)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return None
        snaps = self.snapshots
        current = [snaps[r.url] for r in pool.replicas if r.url in snaps]
        return pool_load(current, self.clock() if now is None else now, self.stale_after_s)

    async def scrape_once(self) -> None:
        """Scrape every replica once, concurrently, then publish the new snapshots."""
        pairs = [(pool, r) for pool in self.pools.values() for r in pool.replicas]
        targets: dict[str, tuple[Pool, Replica]] = {}
        for pool, r in pairs:
            targets.setdefault(r.url, (pool, r))  # a URL shared by pools is scraped once
        samples = await asyncio.gather(*(self._sample(p, r) for p, r in targets.values()))
        snaps = dict(self.snapshots)
        for url, sample in zip(targets, samples, strict=True):
            snaps[url] = advance(snaps.get(url), sample, url)
        self.snapshots = snaps
        if self.on_scrape is not None:
            for pool, r in pairs:
                try:
                    self.on_scrape(pool.name, r.url, snaps[r.url])
                except Exception:
                    log.exception("on_scrape hook failed for %s", r.url)

    async def run(self) -> None:
        """Scrape every ``interval_s`` until cancelled; never raises otherwise. Starts with a
        scrape unless ``scrape_once`` already ran (two scrapes close together give noisy rates)."""
        if self.snapshots:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.scrape_once()
            except Exception as e:  # keep scraping whatever happened
                self._warn("*", f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.interval_s)

    async def _sample(self, pool: Pool, replica: Replica) -> BackendSample:
        url = f"{replica.url}/metrics"
        try:
            r = await pool.client.get(url, timeout=self.timeout_s)
            if r.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"answered {r.status_code}", request=r.request, response=r
                )
            text = r.text
        except Exception as e:  # transport errors, timeouts, bad status, anything
            self._warn(replica.url, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            return BackendSample(taken_at=self.clock(), healthy=False)
        return parse_vllm_metrics(text, self.clock(), replica.healthy)

    def _warn(self, replica_url: str, reason: str) -> None:
        now = time.monotonic()
        last = self._logged_at.get(replica_url)
        if last is None or now - last >= _LOG_EVERY_S:
            self._logged_at[replica_url] = now
            log.warning("backend scrape of %s failed: %s", replica_url, reason)
        else:
            log.debug("backend scrape of %s failed: %s", replica_url, reason)
