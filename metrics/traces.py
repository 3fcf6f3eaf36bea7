"""Metrics of the distillation trace export (``gateway.traces``).

Labels are fixed sets or policy names: ``route`` (the route that ran), ``outcome``
(exported, not_verified, tenant_not_opted_in), ``sink`` (file, redis) and ``reason``
(queue_full, build_error, sink_error). Never a tenant, never a prompt.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter

TraceOutcome = Literal["exported", "not_verified", "tenant_not_opted_in"]
TraceFailure = Literal["queue_full", "build_error", "sink_error"]


class TraceMetrics:
    """Counters of the trace export, bound to the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "deliberate_trace_records",
            "Requests of trace-exporting routes by outcome: exported (written by the sink), "
            "not_verified (no verifier, or its score of the answer below min_score), "
            "tenant_not_opted_in.",
            ["route", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "deliberate_trace_export_failures",
            "Trace records lost: the export queue was full, the record could not be built, "
            "or the sink (file, Redis) failed. The client's request is never affected.",
            ["sink", "reason"],
            registry=registry,
        )

    def init(self, sink: str, routes: list[str]) -> None:
        """Create the series at zero for ``sink`` and the routes that export."""
        for reason in get_args(TraceFailure):
            self.failures.labels(sink, reason)
        for route in routes:
            for outcome in get_args(TraceOutcome):
                self.records.labels(route, outcome)

    def outcome(self, route: str, outcome: TraceOutcome, n: int = 1) -> None:
        self.records.labels(route, outcome).inc(n)

    def failure(self, sink: str, reason: TraceFailure, n: int = 1) -> None:
        self.failures.labels(sink, reason).inc(n)
