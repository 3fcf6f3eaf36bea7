"""Online updates of the ``measured`` quality tables from live verified outcomes (opt-in).

Each observation moves a (route, class) quality by a bounded step toward the outcome,
``q ← q + step · (outcome − q)`` — an exponential moving average whose every change is at
most ``step`` — starting from the file's measured quality (0.5 when unmeasured). The tables
live in memory, survive policy reloads (keyed by route and class names) and are written out
only by an explicit ``deliberate policy export``. Pure: no I/O.

The outcome of a ladder request is the verifier's verdict, not ground truth: the cheap route's
observation is whether its answer passed the ladder's first check, the ladder's whether the
answer it returned was verified. On a model whose checks are wrong that often, keep this off.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routing.config import DeliberateConfig

UNMEASURED_PRIOR = 0.5


@dataclass
class OnlineTables:
    step: float
    _q: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def quality(self, route: str, klass: str) -> float | None:
        """The live quality of ``route`` on ``klass`` (None before any observation)."""
        entry = self._q.get((route, klass))
        return entry[0] if entry is not None else None

    def observe(self, route: str, klass: str, ok: bool, prior: float | None) -> float:
        """One verified outcome; returns the new quality. ``prior``: the measured quality the
        first observation starts from."""
        start = prior if prior is not None else UNMEASURED_PRIOR
        q, n = self._q.get((route, klass), (start, 0))
        q += self.step * ((1.0 if ok else 0.0) - q)
        self._q[(route, klass)] = (min(1.0, max(0.0, q)), n + 1)
        return self._q[(route, klass)][0]

    def snapshot(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{route: {class: {quality, observations}}}``."""
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for (route, klass), (q, n) in sorted(self._q.items()):
            out.setdefault(route, {})[klass] = {"quality": round(q, 4), "observations": n}
        return out


def exported(raw: Mapping[str, Any], tables: OnlineTables) -> dict[str, Any]:
    """The policy file ``raw`` (as parsed YAML) with every live quality written into its
    route's ``measured`` table: the class's entry gets the new quality and ``items`` grows by
    the observations; a class with no entry gets one from the route's ``all`` entry (latency
    and tokens as measured there), or is left out when the route has none."""
    out = copy.deepcopy(dict(raw))
    snap = tables.snapshot()
    for route in out.get("routes", []):
        live = snap.get(route.get("name", ""))
        if not live:
            continue
        measured = dict(route.get("measured") or {})
        for klass, value in live.items():
            base = measured.get(klass) or measured.get("all")
            if base is None:
                continue
            entry = dict(base)
            entry["quality"] = value["quality"]
            entry["items"] = int(entry.get("items", 0)) + int(value["observations"])
            measured[klass] = entry
        route["measured"] = measured
    return out


def observe_ladder(
    tables: OnlineTables,
    config: DeliberateConfig,
    ladder_route: str,
    klass: str,
    first_passed: bool | None,
    verified: bool,
) -> None:
    """Record one ladder request routed by a class's gain rule: the cheap route's outcome is
    whether the first answer passed the first check (``None``: the ladder started higher), the
    ladder's whether its answer was verified. Routes without a measured entry are skipped."""
    policy = config.policy.classes.get(klass) if config.policy else None
    rule = policy.gain if policy is not None else None
    if rule is None or rule.ladder != ladder_route:
        return

    def prior(name: str) -> float | None:
        measured = config.route(name).measured
        m = measured.get(klass) or measured.get("all")
        return m.quality if m is not None else None

    if first_passed is not None and (p := prior(rule.cheap)) is not None:
        tables.observe(rule.cheap, klass, first_passed, p)
    if (p := prior(ladder_route)) is not None:
        tables.observe(ladder_route, klass, verified, p)
