"""The routing decision as a value object, with its reasons (headers, explain, metrics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Source = Literal["explicit", "tenant", "effort", "policy", "default"]
QualitySource = Literal["measured", "predicted", "blend", "unknown"]


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate route as the policy judged it."""

    route: str
    quality: float | None
    quality_source: QualitySource
    latency_ms: float | None
    """Predicted p95 end-to-end latency, with the backend's current queue."""
    tokens: float | None
    cost: float
    kept: bool
    why: str


@dataclass(frozen=True, slots=True)
class GainView:
    """Predicted P(cheap rung right), P(ladder right) and their difference, and whether the
    request can be verified (a ladder only climbs on a failed check)."""

    p_cheap: float | None
    p_ladder: float | None
    gain: float | None
    verifiable: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """Which route serves a request and why."""

    request_class: str
    route: str
    source: Source
    reason: str
    """Why this route, e.g. ``cheapest q>=0.6``, ``best quality within SLO``."""
    class_why: str = ""
    candidates: tuple[CandidateView, ...] = ()
    escalate_to: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    """More ``key=value`` pairs for the reason header (admission's ``down_from``, ``cause``)."""
    gain: GainView | None = None
    """The gain rule's estimate, when the class routes by predicted gain."""
    start_rung: int = 0
    """Where the chosen route's ladder starts (0: its own first answer; k: rung k)."""

    def chosen(self) -> CandidateView | None:
        return next((c for c in self.candidates if c.route == self.route), None)

    def header_reason(self) -> str:
        """``;``-separated ``key=value`` pairs, short: the ``x-deliberate-reason`` header."""
        parts = [f"class={self.request_class}", f"route={self.route}", f"by={self.source}"]
        c = self.chosen()
        if c is not None and c.quality is not None:
            parts.append(f"q={c.quality:.2f}")
        if c is not None and c.latency_ms is not None:
            parts.append(f"p95_ms={c.latency_ms:.0f}")
        if self.escalate_to:
            parts.append(f"escalate={self.escalate_to}")
        if self.gain is not None and self.gain.gain is not None:
            parts.append(f"gain={self.gain.gain:+.2f}")
        if self.start_rung:
            parts.append(f"start_rung={self.start_rung}")
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return "; ".join(parts)

    def with_extra(self, **pairs: str) -> Decision:
        return Decision(
            self.request_class,
            self.route,
            self.source,
            self.reason,
            self.class_why,
            self.candidates,
            self.escalate_to,
            {**self.extra, **pairs},
            self.gain,
            self.start_rung,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
