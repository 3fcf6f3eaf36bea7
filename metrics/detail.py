"""Per-request detail metrics: hidden-token sources, stream pacing, strategy internals, KV
estimates. Bound to the same registry as ``Metrics``; recorded from the same record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

HIDDEN_SOURCES = ("candidates", "thinking", "critique", "judge", "escalation")
_SHARE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_COUNT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_BYTES_BUCKETS = tuple(float(2**k) for k in range(16, 36, 2))  # 64 KiB .. 16 GiB
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class StrategyStats:
    """What a multi-call strategy did, from its ``deliberate`` info."""

    samples: int | None = None
    backend_calls: int | None = None
    stop_reason: str | None = None
    verifier: str | None = None
    verifier_calls: int = 0
    verifier_seconds: float | None = None
    vote_margin: float | None = None


@dataclass(frozen=True, slots=True)
class Detail:
    """The detail part of a request's record."""

    hidden_sources: Mapping[str, int] = field(default_factory=dict)
    token_gaps_s: Sequence[float] = ()
    stats: StrategyStats | None = None
    kv_bytes: tuple[float, float] | None = None
    """Estimated KV-cache bytes (prefix shared, unshared) at admission."""


class DetailMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(
            name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ("route",)
        ) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=buckets, registry=registry)

        self.hidden_ttft_share = hist(
            "deliberate_hidden_ttft_share",
            "Share of the work before the first visible token spent on hidden tokens "
            "(hidden / generated tokens of the request).",
            _SHARE_BUCKETS,
        )
        self.inter_token = hist(
            "deliberate_inter_token_latency_seconds",
            "Gap between consecutive streamed content chunks as relayed to the client.",
            _GAP_BUCKETS,
        )
        self.hidden_tokens = Counter(
            "deliberate_hidden_tokens",
            "Hidden tokens by source: candidates not returned, thinking, critiques, judge calls, "
            "a cascade's first attempt.",
            ["route", "source"],
            registry=registry,
        )
        self.request_tokens = hist(
            "deliberate_request_tokens",
            "Tokens per request (prompt + visible + hidden), for outlier alerts.",
            _TOKEN_BUCKETS,
        )
        self.samples = hist(
            "deliberate_strategy_samples", "Candidates sampled per request.", _COUNT_BUCKETS
        )
        self.stops = Counter(
            "deliberate_strategy_stops",
            "Why multi-call strategies stopped (completed, converged, budget, deadline, ...).",
            ["route", "reason"],
            registry=registry,
        )
        self.backend_calls = hist(
            "deliberate_strategy_backend_calls",
            "Backend generation calls per request (waves, rounds, beam steps).",
            _COUNT_BUCKETS,
        )
        self.verifier_calls = Counter(
            "deliberate_verifier_calls",
            "Verifier (judge, PRM) calls by route and verifier.",
            ["route", "verifier"],
            registry=registry,
        )
        self.verifier_seconds = hist(
            "deliberate_verifier_seconds",
            "Time spent in verifier calls per request.",
            _SECONDS_BUCKETS,
        )
        self.vote_margin = hist(
            "deliberate_vote_margin",
            "Winner's vote share minus the runner-up's, for voting strategies.",
            _SHARE_BUCKETS,
        )
        self.kv_estimate = hist(
            "deliberate_kv_estimate_bytes",
            "The gateway's KV-cache estimate per request: prompt once + continuations (shared) "
            "or a full copy per sequence (unshared).",
            _BYTES_BUCKETS,
            ("route", "sharing"),
        )

    def init_route(self, route: str) -> None:
        """Create the route's series at zero so dashboards show them before traffic."""
        for h in (
            self.hidden_ttft_share,
            self.inter_token,
            self.request_tokens,
            self.samples,
            self.backend_calls,
            self.verifier_seconds,
            self.vote_margin,
        ):
            h.labels(route)
        for source in HIDDEN_SOURCES:
            self.hidden_tokens.labels(route, source)
        for sharing in ("shared", "unshared"):
            self.kv_estimate.labels(route, sharing)
        self.stops.labels(route, "completed")

    def record(self, route: str, generated: int, hidden: int, total: int, d: Detail) -> None:
        if generated:
            self.hidden_ttft_share.labels(route).observe(hidden / generated)
        if total:
            self.request_tokens.labels(route).observe(total)
        if d.token_gaps_s:
            h = self.inter_token.labels(route)
            for gap in d.token_gaps_s:
                h.observe(gap)
        for source, n in d.hidden_sources.items():
            if n > 0:
                self.hidden_tokens.labels(route, source).inc(n)
        if d.kv_bytes is not None:
            self.kv_estimate.labels(route, "shared").observe(d.kv_bytes[0])
            self.kv_estimate.labels(route, "unshared").observe(d.kv_bytes[1])
        s = d.stats
        if s is None:
            return
        if s.samples is not None:
            self.samples.labels(route).observe(s.samples)
        if s.backend_calls is not None:
            self.backend_calls.labels(route).observe(s.backend_calls)
        if s.stop_reason is not None:
            self.stops.labels(route, s.stop_reason).inc()
        if s.verifier is not None and s.verifier_calls:
            self.verifier_calls.labels(route, s.verifier).inc(s.verifier_calls)
        if s.verifier_seconds is not None:
            self.verifier_seconds.labels(route).observe(s.verifier_seconds)
        if s.vote_margin is not None:
            self.vote_margin.labels(route).observe(s.vote_margin)
