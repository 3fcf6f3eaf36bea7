"""The ``Metrics`` object: every gateway metric, bound to an injected ``CollectorRegistry``.

Labels are low-cardinality by construction: route and strategy names come from the policy
file, ``outcome`` and ``kind`` from fixed sets. Prompts, keys and tenants never become labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.detail import Detail, DetailMetrics
from metrics.traces import TraceMetrics
from strategies.usage import Usage

Outcome = Literal[
    "ok",
    "client_error",
    "rate_limited",
    "overloaded",
    "backend_error",
    "unavailable",
    "timeout",
    "cancelled",
    "internal_error",
]
RejectReason = Literal["unauthorized", "rate_limited", "overloaded", "budget_store"]
LadderOutcome = Literal["first_passed", "won", "first_kept", "unverified"]
"""How a ladder request ended: its first answer passed (nothing escalated); escalated and a
different answer passed (a win); escalated and the first answer's answer passed; escalated (or
tried to) and nothing passed."""

# Seconds. TTFT of a reasoning route can be tens of seconds; single-pass is milliseconds.
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one finished request contributes to the metrics (recorded exactly once)."""

    route: str
    strategy: str
    outcome: Outcome
    duration_s: float
    ttft_s: float | None = None
    usage: Usage = Usage()
    detail: Detail = Detail()


class Metrics:
    """All gateway metrics. Build one per app with the registry the app exposes on /metrics."""

    def __init__(self, registry: CollectorRegistry, version: str = "unknown") -> None:
        self.registry = registry
        self.requests = Counter(
            "deliberate_requests",
            "Completion requests by serving route, strategy and outcome.",
            ["route", "strategy", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "deliberate_request_duration_seconds",
            "End-to-end request latency as the gateway sees it.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "deliberate_ttft_seconds",
            "Time to the first visible token as the client sees it (whole answer when not streaming).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "deliberate_tokens",
            "Tokens by kind: prompt (sent to backends), visible (returned), hidden (generated, not returned).",
            ["route", "kind"],
            registry=registry,
        )
        self.downgrades = Counter(
            "deliberate_admission_downgrades",
            "Requests stepped down the ladder, by requested and serving route and cause (slo, "
            "kv: admission; engine: the pool's scheduler rejected every replica).",
            ["requested_route", "route", "cause"],
            registry=registry,
        )
        self.rejections = Counter(
            "deliberate_admission_rejections",
            "Requests refused before any backend work, by requested route and reason.",
            ["route", "reason"],
            registry=registry,
        )
        self.reservations_in_flight = Gauge(
            "deliberate_budget_reservations_in_flight",
            "Tenant token reservations held by requests still running on this replica.",
            registry=registry,
        )
        self.settled_tokens = Counter(
            "deliberate_budget_settled_tokens",
            "Tokens charged to tenant budgets at settlement (prompt + visible + hidden).",
            registry=registry,
        )
        self.store_errors = Counter(
            "deliberate_budget_store_errors",
            "Budget-store (Redis) operations that failed, by operation.",
            ["op"],
            registry=registry,
        )
        for op in ("reserve", "settle"):
            self.store_errors.labels(op)
        self.config_reloads = Counter(
            "deliberate_config_reloads",
            "Policy-file reloads by result (error: the old policy was kept).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.decisions = Counter(
            "deliberate_route_decisions",
            "Routing decisions by request class, chosen route and source (explicit, policy...).",
            ["class", "route", "source"],
            registry=registry,
        )
        self.escalations = Counter(
            "deliberate_escalations",
            "Escalation-ladder rungs by class and route: ran (escalated) or skipped because the best answer passed its check (kept).",
            ["class", "from_route", "to_route", "outcome"],
            registry=registry,
        )
        self.ladder_outcomes = Counter(
            "deliberate_ladder_outcomes",
            "Escalation-ladder requests by class, ladder route and outcome: first_passed, won "
            "(escalated to a different verified answer), first_kept, unverified.",
            ["class", "route", "outcome"],
            registry=registry,
        )
        self.escalation_wins = Counter(
            "deliberate_escalation_wins",
            "Escalation wins (ladder outcome won) by class, ladder route and the rung whose "
            "candidate was chosen.",
            ["class", "route", "rung"],
            registry=registry,
        )
        self.ladder_hidden_tokens = Counter(
            "deliberate_ladder_hidden_tokens",
            "Hidden tokens of escalation-ladder requests by class, ladder route and outcome.",
            ["class", "route", "outcome"],
            registry=registry,
        )
        self.tenant_remaining = Gauge(
            "deliberate_tenant_budget_remaining_tokens",
            "Tokens left in a tenant's window (only with DELIBERATE_METRICS_TENANT_LABELS=true).",
            ["tenant", "window"],
            registry=registry,
        )
        # Slow clients and per-tenant concurrency (gateway/http/timeouts.py, budgeting.py).
        self.client_timeouts = Counter(
            "deliberate_client_timeouts",
            "Requests cut off (408, connection closed) because the client sent its headers or "
            "its body too slowly, by phase.",
            ["phase"],
            registry=registry,
        )
        for phase in ("headers", "body"):
            self.client_timeouts.labels(phase)
        self.tenant_concurrency_rejections = Counter(
            "deliberate_tenant_concurrency_rejections",
            "Requests refused with 429 tenant_concurrency_exceeded: their tenant already had "
            "max_concurrent_requests running on this replica (nothing reserved or charged).",
            registry=registry,
        )
        self.tenant_in_flight = Gauge(
            "deliberate_tenant_requests_in_flight",
            "Completion requests running per tenant on this replica (only with "
            "DELIBERATE_METRICS_TENANT_LABELS=true).",
            ["tenant"],
            registry=registry,
        )
        self.detail = DetailMetrics(registry)
        self.traces = TraceMetrics(registry)
        # Backend outlier ejection (gateway.backends.outlier): one contiguous block.
        self.backend_ejections = Counter(
            "deliberate_backend_ejections",
            "Replicas ejected by outlier detection (consecutive failed calls), by pool and replica.",
            ["pool", "replica"],
            registry=registry,
        )
        self.backend_ejected = Gauge(
            "deliberate_backend_ejected",
            "1 while outlier detection keeps the replica out of rotation, else 0.",
            ["pool", "replica"],
            registry=registry,
        )
        self.engine_drops = Counter(
            "deliberate_engine_drops",
            "Backend calls an engine-side scheduler (llm-d) answered 429/503 with a dropped "
            "reason, by pool and reason (rejected-*: no work done, retried or stepped down; "
            "evicted-*: work done and charged).",
            ["pool", "reason"],
            registry=registry,
        )
        self.build_info = Gauge(
            "deliberate_build_info",
            "Gateway version (value is always 1).",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(version=version).set(1)

    def init_routes(
        self,
        routes: Sequence[tuple[str, str]],
        ladders: Sequence[tuple[str, str]] = (),
        cascades: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Create every route's series at zero ((name, strategy) pairs), and those of its
        rare events (outcomes, rejections, each ``downgrade_to`` step, each escalation rung:
        (route, rung label) pairs, with the ladder outcomes of the route), so that ``rate()``
        sees the first one and dashboards and alerts have series before traffic."""
        for name, strategy in routes:
            for outcome in get_args(Outcome):
                self.requests.labels(name, strategy, outcome)
            for reason in get_args(RejectReason):
                self.rejections.labels(name, reason)
            self.request_duration.labels(name)
            self.ttft.labels(name)
            for kind in ("prompt", "visible", "hidden"):
                self.tokens.labels(name, kind)
            self.detail.init_route(name)
        for requested, lower in ladders:
            for cause in ("slo", "kv", "engine"):
                self.downgrades.labels(requested, lower, cause)
        for cheap, strong in cascades:
            for outcome in ("kept", "escalated"):
                self.escalations.labels("explicit", cheap, strong, outcome)
            self.escalation_wins.labels("explicit", cheap, strong)
        for route in dict.fromkeys(cheap for cheap, _ in cascades):
            for end in get_args(LadderOutcome):
                self.ladder_outcomes.labels("explicit", route, end)
                self.ladder_hidden_tokens.labels("explicit", route, end)

    def record_ladder(
        self,
        klass: str,
        route: str,
        outcome: LadderOutcome,
        hidden_tokens: int,
        won_by: str | None = None,
    ) -> None:
        """Record one finished ladder request: its outcome, its hidden tokens under that
        outcome, and for a win (``outcome == "won"``) the label of the rung ``won_by`` whose
        candidate was chosen (``first`` for another candidate of the route's own strategy)."""
        self.ladder_outcomes.labels(klass, route, outcome).inc()
        self.ladder_hidden_tokens.labels(klass, route, outcome).inc(max(hidden_tokens, 0))
        if outcome == "won" and won_by is not None:
            self.escalation_wins.labels(klass, route, won_by).inc()

    def watch_replica(self, pool: str, replica: str, ejected: Callable[[], bool]) -> None:
        """Create the replica's ejection series; the gauge reads ``ejected()`` at scrape time."""
        self.backend_ejections.labels(pool, replica)
        self.backend_ejected.labels(pool, replica).set_function(lambda: float(ejected()))

    def eject(self, pool: str, replica: str) -> None:
        """Count one ejection of ``replica`` (see ``watch_replica`` for the gauge)."""
        self.backend_ejections.labels(pool, replica).inc()

    def engine_drop(self, pool: str, reason: str) -> None:
        """Count one dropped call; ``reason`` is already normalised to a bounded set."""
        self.engine_drops.labels(pool, reason).inc()

    def reject(self, route: str, reason: RejectReason) -> None:
        self.rejections.labels(route, reason).inc()

    def downgrade(self, requested: str, route: str, cause: str) -> None:
        """``cause`` is ``kind:detail``; only the kind (slo, kv, engine) becomes a label."""
        self.downgrades.labels(requested, route, cause.partition(":")[0]).inc()

    def record(self, rec: RequestRecord) -> None:
        """Record one finished request."""
        self.requests.labels(rec.route, rec.strategy, rec.outcome).inc()
        self.request_duration.labels(rec.route).observe(rec.duration_s)
        if rec.ttft_s is not None:
            self.ttft.labels(rec.route).observe(rec.ttft_s)
        for kind, n in (
            ("prompt", rec.usage.prompt),
            ("visible", rec.usage.visible),
            ("hidden", rec.usage.hidden),
        ):
            if n:
                self.tokens.labels(rec.route, kind).inc(n)
        u = rec.usage
        self.detail.record(rec.route, u.completion, u.hidden, u.prompt + u.completion, rec.detail)
