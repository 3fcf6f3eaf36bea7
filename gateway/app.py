"""The application factory. Nothing is built at import time: everything starts here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from budgets.snapshot import fresh
from gateway.backends.pool import Pool, build_transport
from gateway.backends.scraper import BackendScraper
from gateway.budgeting import BudgetService, build_store
from gateway.http.access import AccessPolicy
from gateway.http.api import router
from gateway.http.errors import install_error_handlers
from gateway.http.timeouts import BodyDeadline
from gateway.metrics_server import start_metrics_server
from gateway.policy_state import build_state, init_metrics
from gateway.reload import ConfigWatcher, file_stamp
from gateway.services import Services
from gateway.settings import Settings
from gateway.traces import TraceExporter, build_sink
from gateway.tracing import Tracing, tracing_from_env
from metrics.backends import BackendCollector, ReplicaView
from metrics.registry import Metrics
from routing.config import BackendPool, DeliberateConfig
from routing.loader import load_config
from routing.online import OnlineTables
from routing.resolve import clashes

log = logging.getLogger(__name__)


def gateway_version() -> str:
    try:
        return version("deliberate-gateway")
    except PackageNotFoundError:
        return "unknown"


def replica_views(scraper: BackendScraper) -> list[ReplicaView]:
    """Every scraped replica for the backend collector (``up`` = healthy and fresh)."""
    now = scraper.clock()
    views = []
    for pool in scraper.pools.values():
        for replica in pool.replicas:
            snap = scraper.snapshot(replica.url)
            age = None if snap is None else now - snap.sample.taken_at
            up = (
                snap is not None and fresh(snap, now, scraper.stale_after_s) and snap.sample.healthy
            )
            views.append(ReplicaView(pool.name, replica.url, up, age, snap))
    return views


def _no_framework_tracing() -> dict[str, Any]:
    """FastAPI releases with native OpenTelemetry (the ``telemetry`` argument) trace every
    request through the *global* provider once one is configured (by auto-instrumentation or
    ``FASTAPI_OTEL_AUTO_CONFIGURE``): a second server span beside the gateway's own. The
    gateway's tracing (``gateway.tracing``) is the one: turn FastAPI's off where it exists."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False}}
    return {}


def create_app(
    settings: Settings,
    config: DeliberateConfig | None = None,
    registry: CollectorRegistry | None = None,
    transport_factory: Callable[[BackendPool], httpx.AsyncBaseTransport] = build_transport,
    tracing: Tracing | None = None,
) -> FastAPI:
    """Build the gateway.

    ``config`` defaults to ``settings.config`` read from disk (at start-up, in the lifespan);
    ``registry`` to a fresh one, exposed on ``/metrics``; ``transport_factory`` builds each
    pool's connection pool (tests pass a fake transport); ``tracing`` to what the ``OTEL_*``
    environment asks for, decided here once (off unless it asks: ``gateway.tracing``).
    """
    tracing = tracing if tracing is not None else tracing_from_env(os.environ, gateway_version())
    tracer = tracing.tracer

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        seen = file_stamp(settings.config)  # before reading: an edit meanwhile is not missed
        cfg = config if config is not None else load_config(settings.config)
        for warning in clashes(cfg):
            log.warning("config: %s", warning)
        metrics = Metrics(registry or CollectorRegistry(), gateway_version())
        pools = {
            b.name: Pool(
                b,
                transport_factory(b),
                on_eject=metrics.eject,
                tracer=tracer,
                on_drop=lambda pool, drop: metrics.engine_drop(pool, drop.reason),
            )
            for b in cfg.backends
        }
        for pool in pools.values():
            for replica in pool.replicas:
                metrics.watch_replica(
                    pool.name, replica.url, functools.partial(pool.is_ejected, replica)
                )
        store = build_store(cfg, settings.redis_url, metrics)
        scraper = BackendScraper(
            [pools[name] for name in cfg.pools_in_use()],
            interval_s=cfg.admission.scrape_interval_s,
            stale_after_s=cfg.admission.stale_after_s,
        )
        online = OnlineTables(cfg.policy.online_update.step if cfg.policy else 0.02)
        sink = build_sink(settings)
        if sink is None and (exporting := [r.name for r in cfg.routes if r.trace_export]):
            log.warning(
                "config: routes %s set trace_export but DELIBERATE_TRACE_SINK is none", exporting
            )
        traces = (
            None if sink is None else TraceExporter(sink, metrics.traces, settings.trace_queue_size)
        )
        app.state.services = Services(
            settings=settings,
            state=build_state(cfg, settings.config, online),
            pools=pools,
            metrics=metrics,
            budgets=BudgetService(
                cfg, store, metrics, tenant_labels=settings.metrics_tenant_labels
            ),
            scraper=scraper,
            online=online,
            traces=traces,
            tracer=tracer,
        )
        if traces is not None:
            traces.start(cfg)
        # First probe before serving, so max_model_len and health are known; never blocks
        # start-up for long, and a down backend just starts marked down.
        await asyncio.gather(*(p.probe_all(settings.ready_timeout_s) for p in pools.values()))
        await scraper.scrape_once()  # admission starts with live state, not "unknown"
        init_metrics(metrics, cfg)
        metrics.registry.register(BackendCollector(lambda: replica_views(scraper)))
        loops = [asyncio.create_task(p.health_loop()) for p in pools.values()]
        loops.append(asyncio.create_task(scraper.run()))
        if config is None and settings.reload_interval_s > 0:
            watcher = ConfigWatcher(
                settings.config, app.state.services, settings.reload_interval_s, seen
            )
            loops.append(asyncio.create_task(watcher.run()))
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, watcher.reload)
        stop_metrics = (
            start_metrics_server(settings.metrics_bind, metrics.registry)
            if settings.metrics_bind
            else None
        )
        try:
            yield
        finally:
            if stop_metrics is not None:
                await asyncio.to_thread(stop_metrics)  # joins its thread: off the loop
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            # Requests cancelled at the end of a drain are still settling: let them finish.
            await app.state.services.budgets.drain(timeout_s=5.0)
            await asyncio.gather(*(p.client.aclose() for p in pools.values()))
            await store.aclose()
            if traces is not None:
                await traces.aclose(timeout_s=5.0)
            if tracing.shutdown is not None:
                await tracing.shutdown()  # flushes the exporters' last batch

    app = FastAPI(
        title="Deliberate",
        version=gateway_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        **_no_framework_tracing(),
    )
    install_error_handlers(app)
    # /docs stays off: Swagger UI loads its script from a CDN and a browser cannot send the
    # admin key; /openapi.json (under the access policy) is the machine-readable contract.
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s)
    app.add_middleware(AccessPolicy)
    app.include_router(router)
    return app
