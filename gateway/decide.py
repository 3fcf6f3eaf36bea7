"""The routing step of a request: the router's decision, admission's verdict on it, and the
``/v1/route/explain`` dry run of both. Called by ``gateway.pipeline``."""

from __future__ import annotations

import math
from typing import Any, Literal

from budgets.admission import Downgrade, Reject, RungCheck, admit, check_rung
from budgets.estimates import (
    CostShape,
    cost_shape,
    ladder_shape,
    predict_ttft_s,
    queue_s,
    summary,
    worst_case_tokens,
)
from budgets.limits import check_shape, completion_cap, prompt_token_upper_bound
from budgets.tenants import Tenant
from gateway.backends.pool import Pool
from gateway.backends.scheduling import hints_for
from gateway.compute import check_request
from gateway.context import RequestContext
from gateway.errors import InvalidRequest, ModelNotFound, Overloaded
from gateway.parsing import parse_payload
from gateway.policy_state import PolicyState
from gateway.schemas import ChatCompletionRequest
from gateway.services import Services
from routing.config import DeliberateConfig, Route
from routing.decision import Decision
from routing.policy import LiveLatency
from routing.resolve import AUTO
from routing.sampling import SamplingPlan, plan_sampling

Endpoint = Literal["chat", "completions"]


async def explain(services: Services, raw: bytes, tenant: Tenant) -> dict[str, Any]:
    """The decision for a chat request body, as JSON, with admission's dry-run verdict.
    Nothing is generated or reserved."""
    state = services.state
    payload = parse_payload(raw, ChatCompletionRequest)
    decision = decide(services, state, "chat", payload, len(raw), tenant, record=False)
    route = state.config.route(decision.route)
    pool = services.pools[route.backend]
    prompt = prompt_token_upper_bound(len(raw), len(payload["messages"]))
    shape = request_shape(route, payload, prompt, pool.max_model_len, state.config)
    ctx = RequestContext("explain")
    verdict: dict[str, Any]
    try:  # the checks the real request would meet first, then admission's dry run
        limits = state.config.limits
        if (
            v := check_shape(payload, max_messages=limits.max_messages, max_n=limits.max_n)
        ) is not None:
            raise InvalidRequest(v.message, param=v.param, code=v.code)
        check_route_serves(route, "chat", payload, state.config)
        served = admit_route(services, state, route, payload, prompt, ctx, "chat", dry_run=True)
        verdict = {"verdict": "admit" if served is route else "downgrade", "route": served.name}
        if ctx.downgrade_cause:
            verdict["cause"] = ctx.downgrade_cause
    except Overloaded as e:
        verdict = {"verdict": "reject", "status": 503, "message": e.message}
    except InvalidRequest as e:
        verdict = {"verdict": "invalid", "status": e.status, "message": e.message}
    bytes_per_token = pool.config.kv.shape.kv_bytes_per_token if pool.config.kv.shape else None
    served_route = state.config.route(verdict.get("route", route.name))
    plan = sampling_plan(served_route, state.config, payload, decision)
    served_pool = services.pools[served_route.backend]
    served_shape = request_shape(
        served_route, payload, prompt, served_pool.max_model_len, state.config
    )
    hints = hints_for(served_route, tenant.name, served_shape.per_sequence_tokens)
    return {
        "object": "route.decision",
        **decision.to_json(),
        "admission": verdict,
        "sampling": {"route": served_route.name, **plan.to_json()},
        "ladder": [
            {"rung": i + 1, "label": r.label, "verifier": r.verifier, "threshold": r.threshold}
            for i, r in enumerate(served_route.escalate_to or ())
        ],
        "scheduler_headers": served_pool.hint_headers(hints),
        "estimates": {
            **summary(prompt, shape, bytes_per_token),
            "tenant_reservation_tokens": worst_case_tokens(prompt, shape),
        },
    }


def sampling_plan(
    route: Route, config: DeliberateConfig, payload: dict[str, Any], decision: Decision | None
) -> SamplingPlan:
    """Whose sampling this request runs with on ``route`` (``routing.sampling``)."""
    auto = decision is not None and decision.source != "explicit"
    honour = config.policy is not None and config.policy.client_sampling == "honour"
    return plan_sampling(
        route.sampling.fields(),
        payload,
        auto=auto,
        honour_client=honour,
        locked=route.lock_sampling,
    )


def check_route_serves(
    route: Route, endpoint: Endpoint, payload: dict[str, Any], config: DeliberateConfig
) -> None:
    """400 when a multi-call route (or a cascade, which scores its first answer before the
    client sees it) is asked for what it cannot do (completions, n, tools)."""
    if route.strategy == "single-pass" and route.escalate_to is None:
        return
    kind = route.strategy if route.escalate_to is None else f"{route.strategy}, a cascade"
    if endpoint != "chat":
        raise InvalidRequest(
            f"route {route.name!r} ({kind}) serves chat completions only; "
            "/v1/completions needs a plain single-pass route",
            param="model",
        )
    check_request(route, payload)
    for rung in route.escalate_to or ():
        if rung.route is not None:
            check_request(config.route(rung.route), payload)


def request_shape(
    route: Route,
    payload: dict[str, Any],
    prompt_tokens: int,
    max_model_len: int | None,
    config: DeliberateConfig | None = None,
) -> CostShape:
    """The route's cost shape for this request: its caps, the client's, the context room;
    with ``config``, a route with an escalation ladder gets the whole ladder's worst case."""
    room = None if max_model_len is None else max(1, max_model_len - prompt_tokens)
    max_tokens = payload.get("max_tokens")
    if route.escalate_to and config is not None:
        return _ladder_shape(route, payload, prompt_tokens, max_model_len, config)
    if route.strategy == "single-pass":
        cap = completion_cap(payload)
        return cost_shape(route, cap[1] if cap else None, room)
    total = payload.get("max_completion_tokens")
    return cost_shape(
        route,
        total if isinstance(total, int) else None,
        room,
        max_tokens if isinstance(max_tokens, int) else None,
    )


def _ladder_shape(
    route: Route,
    payload: dict[str, Any],
    prompt_tokens: int,
    max_model_len: int | None,
    config: DeliberateConfig,
) -> CostShape:
    first = request_shape(route, payload, prompt_tokens, max_model_len)
    visible = first.per_sequence_tokens
    rungs: list[CostShape] = []
    candidates = first.parallel
    check_calls = 0
    for rung in route.escalate_to or ():
        # Candidates a backend-calling verifier may have to score before this rung runs.
        if rung.verifier != "arithmetic":
            check_calls += candidates
        if rung.samples is not None:
            n = rung.samples
            rungs.append(CostShape(n, visible, visible, n * visible, 1, 0))
        else:
            target = config.route(str(rung.route))
            rungs.append(request_shape(target, payload, prompt_tokens, max_model_len))
            n = rungs[-1].parallel
        candidates += n
    last = (route.escalate_to or [])[-1:]
    if last and last[0].verifier != "arithmetic":
        check_calls += candidates  # the final selection scores what the last rung added
    b = route.budget
    client = payload.get("max_completion_tokens")
    caps = [x for x in (b.max_total_tokens, client if isinstance(client, int) else None) if x]
    return ladder_shape(
        first,
        rungs,
        check_calls=check_calls,
        check_growth=visible + _CHECK_TEMPLATE_TOKENS if check_calls else 0,
        cap=min(caps) if caps else None,
    )


# Room for a verifier's own prompt around the candidate it scores (judge template, role tags).
_CHECK_TEMPLATE_TOKENS = 96


def decide(
    services: Services,
    state: PolicyState,
    endpoint: Endpoint,
    payload: dict[str, Any],
    body_bytes: int,
    tenant: Tenant,
    *,
    record: bool = True,
) -> Decision:
    """The router's decision (404 when ``model`` names nothing known); ``record`` counts it."""
    model = payload["model"]
    if endpoint == "completions":
        prompt = payload.get("prompt")
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": prompt if isinstance(prompt, str) else ""}
        ]
    else:
        messages = payload["messages"]

    def unfit(route: Route) -> str | None:
        try:
            check_route_serves(route, endpoint, payload, state.config)
        except InvalidRequest as e:
            return e.param or "request"
        return None

    n_messages = len(messages)

    def live(route: Route) -> LiveLatency | None:
        if services.scraper is None:
            return None
        load = services.scraper.load(route.backend)
        pool = services.pools[route.backend]
        prompt = prompt_token_upper_bound(body_bytes, n_messages)
        shape = request_shape(route, payload, prompt, pool.max_model_len, state.config)
        adm = state.config.admission
        ttft = predict_ttft_s(
            prompt,
            shape,
            load,
            prefill_tokens_per_s=adm.prefill_tokens_per_s,
            default_decode_tokens_per_s=adm.default_decode_tokens_per_s,
        )
        rate = (load.decode_tokens_per_s if load else None) or adm.default_decode_tokens_per_s
        unmeasured = (ttft - queue_s(load) + shape.per_sequence_tokens / rate) * 1000
        up = any(r.healthy for r in pool.replicas)
        return LiveLatency(queue_s(load) * 1000, unmeasured, up)

    decision = state.router.decide(
        model,
        messages,
        metadata=payload.get("metadata"),
        reasoning_effort=payload.get("reasoning_effort"),
        tenant_route=tenant.default_route if model == AUTO else None,
        live=live,
        unfit=unfit,
    )
    if decision is not None and record:
        services.metrics.decisions.labels(
            decision.request_class, decision.route, decision.source
        ).inc()
    if decision is None:
        shown = model if len(model) <= 100 else model[:97] + "..."  # the client's text
        raise ModelNotFound(
            f"model {shown!r} is not a route, a backend model or 'auto'; "
            f"available: {state.routes.model_ids()}",
            param="model",
        )
    return decision


def admit_route(
    services: Services,
    state: PolicyState,
    requested: Route,
    payload: dict[str, Any],
    prompt_tokens: int,
    ctx: RequestContext,
    endpoint: Endpoint,
    *,
    dry_run: bool = False,
) -> Route:
    """The route admission lets this request run on now (``requested`` or a cheaper one);
    503 + Retry-After when no rung of the ladder fits. ``dry_run`` records no metrics."""
    adm = state.config.admission
    if not adm.enabled:
        return requested

    def check(route: Route) -> RungCheck:
        pool = services.pools[route.backend]
        unfit = unfit_reason(route, endpoint, payload, prompt_tokens, pool, state.config)
        if unfit is not None:
            return RungCheck(route.name, False, 0.0, None, f"unfit:{unfit}")
        shape = request_shape(route, payload, prompt_tokens, pool.max_model_len, state.config)
        load = services.scraper.load(route.backend) if services.scraper else None
        return check_rung(route, shape, prompt_tokens, load, pool.config.kv, adm)

    verdict = admit(state.config.ladder(requested.name), check, adm.retry_after_s)
    if isinstance(verdict, Reject):
        if not dry_run:
            services.metrics.reject(requested.name, "overloaded")
        raise Overloaded(
            f"overloaded: no route on the ladder from {requested.name!r} fits right now "
            f"({verdict.cause}); retry later",
            headers={"retry-after": str(max(1, math.ceil(verdict.retry_after_s)))},
        )
    if isinstance(verdict, Downgrade):
        ctx.requested_route, ctx.downgrade_cause = requested.name, verdict.cause
        if ctx.decision is not None:
            ctx.decision = ctx.decision.with_extra(down_from=requested.name, cause=verdict.cause)
        if not dry_run:
            services.metrics.downgrade(requested.name, verdict.route.name, verdict.cause)
    return verdict.route


def unfit_reason(
    route: Route,
    endpoint: Endpoint,
    payload: dict[str, Any],
    prompt_tokens: int,
    pool: Pool,
    config: DeliberateConfig,
) -> str | None:
    """Why a lower rung could not serve this request at all (so admission skips it)."""
    try:
        check_route_serves(route, endpoint, payload, config)
    except InvalidRequest as e:
        return e.param or "request"
    if pool.max_model_len is not None and prompt_tokens >= pool.max_model_len:
        return "context"
    return None
