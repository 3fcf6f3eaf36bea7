"""Outlier ejection (like Envoy's) as pure policy: what call outcomes and probes do to a replica.

A replica that fails ``consecutive_failures`` calls in a row (5xx, connect errors, timeouts,
bodies that break off or are not JSON; a 4xx is the client's fault and counts as a success)
is ejected for ``base_ejection_s × 2^(k-1)``, k being its ejections in a row, capped at
``max_ejection_s``. It comes back when that time is up, or earlier when the health probe,
having seen it fail during the ejection, sees it pass again: a probe that passed all along
(``/health`` OK while completions fail) tells nothing new and does not end an ejection.

A replica that came back is on probation: its next failure ejects it again, for longer; a
success (also one served while it was ejected, because every replica was) clears its record.

No I/O and no clock of its own: every method takes ``now`` (seconds, monotonic).
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import OutlierDetection


@dataclass
class OutlierState:
    """One replica's record (mutated only by ``OutlierPolicy``)."""

    failures: int = 0
    """Failed calls in a row since the last success or ejection."""
    ejections: int = 0
    """Ejections in a row (no success in between): the exponent of the ejection time."""
    ejected_until: float | None = None
    """End of the current or last ejection; set and in the past = on probation."""
    probe_failed: bool = False
    """The health probe saw the replica fail during the current ejection."""


class OutlierPolicy:
    """Applies ``config`` to ``OutlierState`` records."""

    def __init__(self, config: OutlierDetection) -> None:
        self.config = config

    def ejection_s(self, ejections: int) -> float:
        """Length of the ``ejections``-th ejection in a row (1 = the first)."""
        c = self.config
        return float(min(c.base_ejection_s * 2.0 ** max(ejections - 1, 0), c.max_ejection_s))

    def is_ejected(self, s: OutlierState, now: float) -> bool:
        return s.ejected_until is not None and now < s.ejected_until

    def record_failure(self, s: OutlierState, now: float) -> bool:
        """Count one failed call; True when it ejects the replica (now)."""
        if not self.config.enabled or self.is_ejected(s, now):
            return False
        s.failures += 1
        on_probation = s.ejected_until is not None
        if s.failures < self.config.consecutive_failures and not on_probation:
            return False
        s.ejections += 1
        s.ejected_until = now + self.ejection_s(s.ejections)
        s.failures = 0
        s.probe_failed = False
        return True

    def record_success(self, s: OutlierState, now: float) -> bool:
        """A call succeeded: the record is cleared. True when that ended an ejection."""
        was_ejected = self.is_ejected(s, now)
        s.failures = s.ejections = 0
        s.ejected_until = None
        s.probe_failed = False
        return was_ejected

    def record_probe(self, s: OutlierState, ok: bool, now: float) -> bool:
        """A health probe's result; True when a pass ended an ejection (on probation now)."""
        if not self.is_ejected(s, now):
            return False
        if not ok:
            s.probe_failed = True
            return False
        if not s.probe_failed:
            return False  # it passed all along: the calls, not /health, are what fail
        s.ejected_until = now
        s.probe_failed = False
        return True
