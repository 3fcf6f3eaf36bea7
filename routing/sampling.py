"""Who decides a request's sampling: the route or the client. Pure.

- ``model: "auto"``: the client delegated the decision, so the route's ``sampling`` wins,
  unless the policy says ``client_sampling: honour``.
- an explicit route (or a backend model name): the client's values win, unless the route
  sets ``lock_sampling: true``.

Fields only one side sets are taken from that side. The result is one patch applied once to
the request body, which then reaches the pass-through relay or the strategy unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from strategies.sampling import SAMPLING_FIELDS

__all__ = ["SAMPLING_FIELDS", "SamplingPlan", "plan_sampling"]

Source = Literal["route", "client"]
Rule = Literal["route-wins", "client-wins"]


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    """``patch``: fields to set on the request body; ``sources``: who set each sampling field
    of the final request; ``rule`` and ``why`` say which precedence applied."""

    patch: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    rule: Rule = "client-wins"
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "why": self.why, "applied": self.patch, "sources": self.sources}


def plan_sampling(
    route_fields: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    auto: bool,
    honour_client: bool,
    locked: bool,
) -> SamplingPlan:
    """The precedence rule above, for one request. ``route_fields``: the route's ``sampling``
    (set fields only); ``payload``: the client's body (a field set to null counts as unset)."""
    if locked:
        rule: Rule = "route-wins"
        why = "the route locks its sampling (lock_sampling: true)"
    elif auto and not honour_client:
        rule, why = "route-wins", 'model "auto": the route\'s sampling wins'
    elif auto:
        rule, why = "client-wins", 'model "auto" with client_sampling: honour'
    else:
        rule, why = "client-wins", "an explicit route: the client's sampling wins"
    patch: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    n = payload.get("n")
    several = isinstance(n, int) and not isinstance(n, bool) and n > 1
    for key in SAMPLING_FIELDS:
        client_set = payload.get(key) is not None
        if key == "temperature" and several and route_fields.get(key) == 0:
            # n > 1 choices need sampling (vLLM refuses greedy with n > 1): not applied
            why += "; its greedy temperature is not applied to a request for n > 1 choices"
            if client_set:
                sources[key] = "client"
            continue
        if key in route_fields and (rule == "route-wins" or not client_set):
            patch[key] = route_fields[key]
            sources[key] = "route"
        elif client_set:
            sources[key] = "client"
    return SamplingPlan(patch, sources, rule, why)
