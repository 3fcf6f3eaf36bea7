"""What the pipeline does when a pool's engine-side scheduler (llm-d) drops a request.

``open_upstream`` has already retried a ``rejected-*`` drop on the pool's other replicas;
what reaches here is the pool's verdict:

* ``EngineRejected`` (no engine work was done): step down the route's ``downgrade_to`` ladder,
  as admission does under KV pressure, to the next route that can serve the request
  (``lower_route``); with none left the client gets the 503, code ``engine_rejected``.
* ``EngineEvicted`` (work was done, then thrown away): the prompt the engine prefilled is
  charged as spent (``charge_evicted``) and the client gets the 503, code ``engine_evicted``;
  it is not retried, since another try may well be evicted again after as much work.
"""

from __future__ import annotations

from typing import Any

from gateway.context import RequestContext
from gateway.decide import Endpoint, unfit_reason
from gateway.errors import EngineRejected
from gateway.policy_state import PolicyState
from gateway.services import Services
from routing.config import Route
from strategies.usage import Usage


def lower_route(
    services: Services,
    state: PolicyState,
    route: Route,
    endpoint: Endpoint,
    payload: dict[str, Any],
    prompt_tokens: int,
) -> Route | None:
    """The first route below ``route`` on its ``downgrade_to`` ladder that can serve this
    request at all (the same fit check admission makes), or None."""
    for lower in state.config.ladder(route.name)[1:]:
        pool = services.pools[lower.backend]
        if unfit_reason(lower, endpoint, payload, prompt_tokens, pool, state.config) is None:
            return lower
    return None


def note_step_down(
    services: Services, ctx: RequestContext, route: Route, lower: Route, error: EngineRejected
) -> None:
    """Record on ``ctx`` (headers, ``deliberate`` object) and in metrics that the request
    moved from ``route`` to ``lower`` because the engine's scheduler rejected it."""
    cause = f"engine:{error.reason}"
    if ctx.requested_route is None:
        ctx.requested_route = route.name
    ctx.downgrade_cause = cause
    if ctx.decision is not None:
        ctx.decision = ctx.decision.with_extra(down_from=route.name, cause=cause)
    ctx.route, ctx.strategy, ctx.backend = lower.name, lower.strategy, lower.backend
    services.metrics.downgrade(route.name, lower.name, cause)


def charge_evicted(ctx: RequestContext, prompt_tokens: int) -> None:
    """Count the evicted call's prompt as spent: the engine prefilled it (what it generated
    before the eviction is not reported, so it cannot be charged)."""
    ctx.dropped_usage = ctx.dropped_usage + Usage(prompt=prompt_tokens)
