"""Per-request state the pipeline fills in as it learns it, and the headers derived from it."""

from __future__ import annotations

import re
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

from budgets.ledger import Reservation
from gateway.backends.scheduling import SchedulingHints
from metrics.detail import Detail, StrategyStats
from metrics.registry import Outcome, RequestRecord
from routing.decision import Decision
from routing.sampling import SamplingPlan
from strategies.tracing import NO_SPAN, OpenSpan
from strategies.usage import Usage

MAX_REQUEST_ID = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]+")


def request_id_from(header: str | None) -> str:
    """The client's ``x-request-id`` when it is a sane token (``[A-Za-z0-9._:@/+=-]``, 1 to 128
    characters), else a fresh one; a rejected value is never echoed back or logged."""
    if header is not None and len(header) <= MAX_REQUEST_ID and _SAFE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    """What is known about one request so far. Metrics are recorded from it exactly once."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    strategy: str | None = None
    backend: str | None = None
    outcome: Outcome = "ok"
    ttft_s: float | None = None
    usage: Usage = Usage()
    dropped_usage: Usage = Usage()
    """Spent on attempts the engine's scheduler dropped (earlier calls of a multi-call route,
    an evicted call's prompt): charged and counted in metrics, not in the answer's usage."""
    stream_done: bool = False  # the backend's stream was relayed to its end
    tenant: str | None = None
    running_as: str | None = None  # counted in this tenant's concurrency until settled
    decision: Decision | None = None
    reservation: Reservation | None = None  # held until settled, exactly once
    token_ceiling: int | None = None  # worst case of prompt + generated tokens (reserved)
    requested_route: str | None = None  # set when admission stepped the route down
    downgrade_cause: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*
    hidden_sources: dict[str, int] = field(default_factory=dict)
    thinking_events: int = 0  # streamed thinking deltas before the first answer token
    token_gaps_s: array[float] = field(default_factory=lambda: array("d"))
    """Seconds between streamed content chunks, as C doubles: 8 bytes a gap where a list of
    floats takes ~40, held until the stream ends. In bench/soak.py, 256 concurrent 1,000-chunk
    streams raised the gateway's RSS by 10 MB with a list, by 2.7 MB with this array."""
    stats: StrategyStats | None = None
    kv_bytes: tuple[float, float] | None = None
    prompt_preview: str | None = None  # only with DELIBERATE_LOG_PROMPTS
    client_sampling: dict[str, Any] = field(default_factory=dict)  # before the route's patch
    sampling: SamplingPlan | None = None  # whose sampling the request runs with
    candidate_detail: list[dict[str, Any]] | None = None
    """The strategy's per-candidate detail, kept for the trace export when the response
    leaves it out (more candidates than the route's ``candidate_detail``)."""
    scheduling: SchedulingHints | None = None  # for the engine's scheduler, on every call
    span: OpenSpan = NO_SPAN  # the request's server span (tracing on), ended by the HTTP layer
    _recorded: bool = False
    _last_token: float | None = None

    def headers(self) -> dict[str, str]:
        """``x-deliberate-*`` headers for what is known, plus ``x-request-id``."""
        h = {"x-request-id": self.request_id}
        if self.decision is not None:
            h["x-deliberate-class"] = self.decision.request_class
            h["x-deliberate-reason"] = self.decision.header_reason()
        if self.route is not None:
            h["x-deliberate-route"] = self.route
        if self.strategy is not None:
            h["x-deliberate-strategy"] = self.strategy
        if self.backend is not None:
            h["x-deliberate-backend"] = self.backend
        if self.requested_route is not None:
            h["x-deliberate-requested-route"] = self.requested_route
            h["x-deliberate-downgrade"] = self.downgrade_cause or ""
        h.update(self.extra_headers)
        return h

    def admission_info(self) -> dict[str, Any]:
        """For the response's ``deliberate`` object: the requested route and why it changed,
        when admission stepped it down (empty otherwise)."""
        if self.requested_route is None:
            return {}
        return {"requested_route": self.requested_route, "downgrade_cause": self.downgrade_cause}

    def decision_info(self) -> dict[str, Any]:
        """The router's class and reason, for a multi-call route's ``deliberate`` object
        (pass-through answers carry them in the headers only)."""
        if self.decision is None or self.decision.source != "policy":
            return {}
        return {"class": self.decision.request_class, "decision": self.decision.header_reason()}

    @property
    def spent(self) -> Usage:
        """Everything the request spent: the answer's usage and that of dropped attempts."""
        return self.usage + self.dropped_usage

    def mark_first_token(self) -> None:
        if self.ttft_s is None:
            self._last_token = time.perf_counter()
            self.ttft_s = self._last_token - self.started

    def mark_token(self) -> None:
        """A later streamed content chunk: note the gap since the previous one."""
        now = time.perf_counter()
        if self._last_token is not None:
            self.token_gaps_s.append(now - self._last_token)
        self._last_token = now

    def finish(self) -> RequestRecord | None:
        """The metrics record, the first time only (later calls return None)."""
        if self._recorded:
            return None
        self._recorded = True
        return RequestRecord(
            route=self.route or "none",
            strategy=self.strategy or "none",
            outcome=self.outcome,
            duration_s=time.perf_counter() - self.started,
            ttft_s=self.ttft_s,
            usage=self.spent,
            detail=Detail(self.hidden_sources, self.token_gaps_s, self.stats, self.kv_bytes),
        )
