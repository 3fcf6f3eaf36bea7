"""What an engine-side scheduler (llm-d, an InferencePool's endpoint picker) is told about a
request, and how its refusals are read. Pure: no I/O.

Outbound, every backend call of a request carries the same hints (``SchedulingHints``),
rendered under the header names of the pool it goes to (``hint_headers``). Inbound, a 429/503
may name why the scheduler dropped the request (``classify_drop``): ``rejected-*`` means no
engine work was done (safe to retry elsewhere or step down), ``evicted-*`` that work was done
and thrown away (charged, not retried).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from routing.config import Route
from routing.scheduler_config import SchedulerHeaders

DropKind = Literal["rejected", "evicted"]
DROP_STATUSES = frozenset({429, 503})
_REASON = re.compile(r"(rejected|evicted)-[a-z0-9]+(?:[-_][a-z0-9]+)*")
_MAX_REASON = 48


@dataclass(frozen=True, slots=True)
class SchedulingHints:
    """One request's hints; ``None`` fields are not sent."""

    fairness_id: str | None = None
    objective: str | None = None
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    predicted_output_tokens: int | None = None

    def without_output(self) -> SchedulingHints:
        """The same hints for a call that generates nothing (``/tokenize``, PRM scoring)."""
        return replace(self, predicted_output_tokens=None)


@dataclass(frozen=True, slots=True)
class Drop:
    """A scheduler's refusal: its kind and its reason, normalised to a bounded label."""

    kind: DropKind
    reason: str


def hints_for(route: Route, tenant: str, output_tokens: int | None) -> SchedulingHints:
    """The scheduler hints of a request served on ``route`` for ``tenant``."""
    return SchedulingHints(
        fairness_id=tenant,
        objective=route.objective,
        ttft_slo_ms=route.slo.ttft_ms,
        tpot_slo_ms=route.slo.tpot_ms,
        predicted_output_tokens=output_tokens,
    )


def hint_headers(config: SchedulerHeaders, hints: SchedulingHints | None) -> dict[str, str]:
    """The hint headers for a pool with ``config`` (empty unless ``config.forward``).

    Invariant: every value is printable ASCII (names are validated, numbers are integers)."""
    if not config.forward or hints is None:
        return {}
    pairs = (
        (config.fairness_id, hints.fairness_id),
        (config.objective, hints.objective),
        (config.ttft_slo_ms, _ms(hints.ttft_slo_ms)),
        (config.tpot_slo_ms, _ms(hints.tpot_slo_ms)),
        (config.predicted_output_tokens, _int(hints.predicted_output_tokens)),
    )
    return {name: value for name, value in pairs if name is not None and value is not None}


def _ms(value: float | None) -> str | None:
    # Whole milliseconds, at least 1: schedulers parse these as integers.
    return None if value is None else str(max(1, round(value)))


def _int(value: int | None) -> str | None:
    return None if value is None or value < 1 else str(value)


def classify_drop(config: SchedulerHeaders, status: int, value: str | None) -> Drop | None:
    """The drop a ``status`` answer with dropped-reason header ``value`` reports; None when it
    is no scheduler drop (another status, no header, or a reason of neither kind).

    The reason is lower-cased and kept when it is a plain ``rejected-<words>`` or
    ``evicted-<words>`` of at most 48 characters, else becomes ``rejected-other`` /
    ``evicted-other``: it is a metric label, so its values must stay few."""
    if config.dropped_reason is None or status not in DROP_STATUSES or value is None:
        return None
    text = value.strip().lower()
    kind: DropKind
    if text.startswith("rejected"):
        kind = "rejected"
    elif text.startswith("evicted"):
        kind = "evicted"
    else:
        return None
    if len(text) > _MAX_REASON or _REASON.fullmatch(text) is None:
        return Drop(kind, f"{kind}-other")
    return Drop(kind, text)
