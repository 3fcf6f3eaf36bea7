"""The trace export for distillation: verified answers of opted-in routes and tenants, as
JSONL records, written off the response path.

``offer`` runs on the request path once a multi-call route has its result. It only decides
(route opted in, tenant on the allow-list, the chosen answer scored at least the route's
``min_score`` by a verifier) and queues what the record needs; it never raises and never
waits. A worker task builds, redacts and encodes records and hands them to the sink in
batches. A full queue, a record that cannot be built and a sink failure each drop records
and count them in ``deliberate_trace_export_failures_total{sink,reason}``: the client's
request never sees the export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.context import RequestContext
from gateway.settings import Settings
from gateway.trace_record import (
    Redactor,
    TraceInput,
    build_record,
    encode,
    verification_of,
)
from gateway.trace_sinks import FileSink, RedisStreamSink, SinkError, TraceSink
from metrics.traces import TraceMetrics
from routing.config import DeliberateConfig, Route
from routing.trace_config import TracesConfig
from strategies.base import StrategyResult

log = logging.getLogger(__name__)
BATCH = 64
"""Most records handed to the sink at once."""


def build_sink(settings: Settings) -> TraceSink | None:
    """The sink ``DELIBERATE_TRACE_SINK`` names (None: no export)."""
    if settings.trace_sink == "file":
        return FileSink(
            settings.trace_file, settings.trace_file_max_bytes, settings.trace_file_backups
        )
    if settings.trace_sink == "redis":
        url = settings.trace_redis_url or settings.redis_url
        assert url is not None  # the settings validator requires one
        return RedisStreamSink.from_url(url, settings.trace_stream, settings.trace_stream_maxlen)
    return None


class TraceExporter:
    """Queue + worker in front of one sink. ``start`` in the lifespan, ``aclose`` at the end."""

    def __init__(
        self,
        sink: TraceSink,
        metrics: TraceMetrics,
        queue_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink, self.metrics, self.clock = sink, metrics, clock
        self.queue: asyncio.Queue[tuple[TraceInput, TracesConfig]] = asyncio.Queue(queue_size)
        self._redactor: tuple[TracesConfig, Redactor] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, config: DeliberateConfig) -> None:
        self.metrics.init(self.sink.name, [r.name for r in config.routes if r.trace_export])
        self._task = asyncio.create_task(self._run())

    def offer(
        self,
        route: Route,
        served: Route,
        result: StrategyResult,
        messages: Sequence[Any],
        ctx: RequestContext,
        config: DeliberateConfig,
    ) -> None:
        """Queue the request for export if ``route`` and its tenant opted in and a verifier
        passed its answer; never raises (a failure is counted and logged)."""
        knob = route.trace_export
        if knob is None:
            return
        try:
            tenant = ctx.tenant or "anonymous"
            if tenant not in config.traces.tenants:
                self.metrics.outcome(route.name, "tenant_not_opted_in")
                return
            verification = verification_of(result.info)
            if verification is None or verification.score < knob.min_score:
                self.metrics.outcome(route.name, "not_verified")
                return
            decision = ctx.decision
            inp = TraceInput(
                request_id=ctx.request_id,
                ts=self.clock(),
                tenant=tenant,
                route=route.name,
                served_route=served.name,
                strategy=route.strategy,
                request_class=decision.request_class if decision is not None else None,
                messages=list(messages),
                result=result,
                verification=verification,
                min_score=knob.min_score,
                requested_route=ctx.requested_route,
                candidate_detail=ctx.candidate_detail,
            )
            self.queue.put_nowait((inp, config.traces))
        except asyncio.QueueFull:
            self.metrics.failure(self.sink.name, "queue_full")
        except Exception:  # the export must never fail a request
            log.exception("trace export: could not queue request %s", ctx.request_id)
            self.metrics.failure(self.sink.name, "build_error")

    def _redactor_for(self, traces: TracesConfig) -> Redactor:
        if self._redactor is None or self._redactor[0] is not traces:  # a reloaded policy
            self._redactor = (traces, Redactor.of(traces.rules()))
        return self._redactor[1]

    def _encode(self, inp: TraceInput, traces: TracesConfig) -> bytes | None:
        try:
            record = build_record(inp, self._redactor_for(traces), traces.candidate_texts)
            return encode(record)
        except Exception:
            log.exception("trace export: could not build the record of %s", inp.request_id)
            self.metrics.failure(self.sink.name, "build_error")
            return None

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._flush(batch)
            for _ in batch:
                self.queue.task_done()

    async def _flush(self, batch: list[tuple[TraceInput, TracesConfig]]) -> None:
        lines: list[bytes] = []
        routes: list[str] = []
        for inp, traces in batch:
            if (line := self._encode(inp, traces)) is not None:
                lines.append(line)
                routes.append(inp.route)
        if not lines:
            return
        try:
            await self.sink.write(lines)
        except SinkError as e:
            log.warning("trace export: %d records lost: %s", len(lines), e)
            self.metrics.failure(self.sink.name, "sink_error", len(lines))
            return
        except Exception:
            log.exception("trace export: %d records lost", len(lines))
            self.metrics.failure(self.sink.name, "sink_error", len(lines))
            return
        for route in routes:
            self.metrics.outcome(route, "exported")

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every queued record went to the sink."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout_s``), stop the worker, close the sink."""
        if self._task is not None:
            await self.drain(timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sink.aclose()
