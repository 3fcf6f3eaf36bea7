"""One completion request, start to finish. Read this file to see the whole data path.

parse + validate → resolve the route → check limits → run the route's strategy → respond.
Metrics are recorded by the HTTP layer from the ``RequestContext`` once the response (or
its stream) is over.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from budgets.admission import Downgrade, Reject, RungCheck, admit, check_rung
from budgets.estimates import (
    CostShape,
    cost_shape,
    predict_ttft_s,
    queue_s,
    summary,
    worst_case_tokens,
)
from budgets.limits import (
    check_context,
    check_shape,
    completion_cap,
    prompt_token_upper_bound,
)
from budgets.tenants import Tenant
from gateway.backends.pool import Pool
from gateway.backends.upstream import Upstream, open_upstream
from gateway.compute import check_request, render_json, render_sse, stream_route
from gateway.context import RequestContext
from gateway.errors import (
    BackendTimeout,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
)
from gateway.escalation import run_cascade
from gateway.passthrough import force_stream_usage, read_json_body, relay_stream
from gateway.policy_state import PolicyState
from gateway.schemas import ChatCompletionRequest, CompletionRequest
from gateway.services import Services
from routing.config import Route
from routing.decision import Decision
from routing.loader import format_loc
from routing.policy import LiveLatency
from routing.resolve import AUTO
from strategies.base import Deadline, StrategyResult

Endpoint = Literal["chat", "completions"]
_PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_SCHEMAS: dict[Endpoint, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
}


@dataclass
class Answer:
    """A finished JSON body, or a stream of SSE bytes still to be relayed.

    A stream holds a backend response open: ``aclose`` (idempotent) releases it and must be
    called once the relay is over, whether or not the stream was ever iterated.
    """

    body: bytes | None = None
    stream: AsyncGenerator[bytes, None] | None = None
    upstream: Upstream | None = None

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()


async def complete(
    services: Services, endpoint: Endpoint, raw: bytes, ctx: RequestContext, tenant: Tenant
) -> Answer:
    """Serve one ``/v1/chat/completions`` or ``/v1/completions`` request body for ``tenant``."""
    state = services.state  # one policy for the whole request, whatever reloads meanwhile
    payload = parse_payload(raw, _SCHEMAS[endpoint])
    decision = decide(services, state, endpoint, payload, len(raw), tenant)
    ctx.decision = decision
    requested = state.config.route(decision.route)
    ctx.route, ctx.strategy, ctx.backend = requested.name, requested.strategy, requested.backend
    limits = state.config.limits
    if (
        v := check_shape(payload, max_messages=limits.max_messages, max_n=limits.max_n)
    ) is not None:
        raise InvalidRequest(v.message, param=v.param, code=v.code)
    pool = services.pools[requested.backend]
    prompt_tokens = await check_prompt_fits(pool, endpoint, payload, len(raw), ctx)
    check_route_serves(requested, endpoint, payload)

    route = admit_route(services, state, requested, payload, prompt_tokens, ctx, endpoint)
    if route is not requested:
        ctx.route, ctx.strategy, ctx.backend = route.name, route.strategy, route.backend
        check_route_serves(route, endpoint, payload)
        if route.backend != requested.backend:
            pool = services.pools[route.backend]
            prompt_tokens = await check_prompt_fits(pool, endpoint, payload, len(raw), ctx)
    n = 1
    if route.strategy == "single-pass":
        apply_single_pass_caps(route, payload, endpoint)
        n = payload["n"] if isinstance(payload.get("n"), int) else 1
    shape = request_shape(route, payload, prompt_tokens, pool.max_model_len)
    ctx.token_ceiling = worst_case_tokens(prompt_tokens, shape, n)
    if route.escalate_to is not None:  # the cascade may run both routes (+ one check)
        target = state.config.route(route.escalate_to.route)
        target_pool = services.pools[target.backend]
        target_shape = request_shape(target, payload, prompt_tokens, target_pool.max_model_len)
        ctx.token_ceiling += worst_case_tokens(prompt_tokens, target_shape) + prompt_tokens + 1
    await services.budgets.reserve(tenant, ctx.token_ceiling, ctx)

    streaming = bool(payload.get("stream"))
    if route.strategy != "single-pass" or route.escalate_to is not None:
        opts = payload.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False

        def run(
            note: Callable[[str], None] | None = None,
        ) -> Awaitable[tuple[Route, StrategyResult]]:
            return run_cascade(
                route, state.config, services.pools, payload, ctx, services.metrics, note
            )

        if streaming and route.stream_progress:
            return Answer(stream=stream_route(pool.model, ctx, include_usage, run))
        served, result = await run()
        if streaming:
            return Answer(stream=render_sse(served, result, ctx, pool.model, include_usage))
        return Answer(body=render_json(served, result, ctx, pool.model))

    # single-pass: a faithful pass-through to one replica, bytes relayed as they come.
    payload["model"] = pool.model
    client_wants_usage = force_stream_usage(payload) if streaming else False
    deadline = Deadline.after(route.budget.deadline_s)
    try:
        async with asyncio.timeout(deadline.remaining_s):
            upstream = await open_upstream(
                pool, _PATHS[endpoint], orjson.dumps(payload), ctx.request_id
            )
            if not streaming:
                return Answer(body=await read_json_body(upstream, ctx))
    except TimeoutError as e:
        raise BackendTimeout(
            f"route {route.name!r} reached its deadline of {route.budget.deadline_s}s"
        ) from e
    stream = relay_stream(upstream, ctx, client_wants_usage=client_wants_usage, deadline=deadline)
    return Answer(stream=stream, upstream=upstream)


async def explain(services: Services, raw: bytes, tenant: Tenant) -> dict[str, Any]:
    """The decision for a chat request body, as JSON, with admission's dry-run verdict.
    Nothing is generated or reserved."""
    state = services.state
    payload = parse_payload(raw, ChatCompletionRequest)
    decision = decide(services, state, "chat", payload, len(raw), tenant, record=False)
    route = state.config.route(decision.route)
    pool = services.pools[route.backend]
    prompt = prompt_token_upper_bound(len(raw), len(payload["messages"]))
    shape = request_shape(route, payload, prompt, pool.max_model_len)
    ctx = RequestContext("explain")
    verdict: dict[str, Any]
    try:
        served = admit_route(services, state, route, payload, prompt, ctx, "chat", dry_run=True)
        verdict = {"verdict": "admit" if served is route else "downgrade", "route": served.name}
        if ctx.downgrade_cause:
            verdict["cause"] = ctx.downgrade_cause
    except Overloaded as e:
        verdict = {"verdict": "reject", "status": 503, "message": e.message}
    except InvalidRequest as e:
        verdict = {"verdict": "invalid", "status": e.status, "message": e.message}
    bytes_per_token = pool.config.kv.shape.kv_bytes_per_token if pool.config.kv.shape else None
    return {
        "object": "route.decision",
        **decision.to_json(),
        "admission": verdict,
        "estimates": {
            **summary(prompt, shape, bytes_per_token),
            "tenant_reservation_tokens": worst_case_tokens(prompt, shape),
        },
    }


def check_route_serves(route: Route, endpoint: Endpoint, payload: dict[str, Any]) -> None:
    """400 when a multi-call route is asked for what it cannot do (completions, n, tools)."""
    if route.strategy == "single-pass":
        return
    if endpoint != "chat":
        raise InvalidRequest(
            f"route {route.name!r} ({route.strategy}) serves chat "
            "completions only; /v1/completions is single-pass",
            param="model",
        )
    check_request(route, payload)


def request_shape(
    route: Route, payload: dict[str, Any], prompt_tokens: int, max_model_len: int | None
) -> CostShape:
    """The route's cost shape for this request: its caps, the client's, the context room."""
    room = None if max_model_len is None else max(1, max_model_len - prompt_tokens)
    max_tokens = payload.get("max_tokens")
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
    if endpoint == "completions":  # legacy completions are single-pass: auto = default route
        messages: list[dict[str, Any]] = [{"role": "user", "content": payload.get("prompt")}]
        if model == AUTO:
            model = state.config.default_route
    else:
        messages = payload["messages"]
    n_messages = len(messages)

    def live(route: Route) -> LiveLatency | None:
        if services.scraper is None:
            return None
        load = services.scraper.load(route.backend)
        pool = services.pools[route.backend]
        prompt = prompt_token_upper_bound(body_bytes, n_messages)
        shape = request_shape(route, payload, prompt, pool.max_model_len)
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
        return LiveLatency(queue_s(load) * 1000, unmeasured)

    decision = state.router.decide(
        model,
        messages,
        metadata=payload.get("metadata"),
        reasoning_effort=payload.get("reasoning_effort"),
        tenant_route=tenant.default_route if model == AUTO else None,
        live=live,
    )
    if decision is not None and record:
        services.metrics.decisions.labels(
            decision.request_class, decision.route, decision.source
        ).inc()
    if decision is None:
        raise ModelNotFound(
            f"model {model!r} is not a route, a backend model or 'auto'; "
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
        if (unfit := unfit_reason(route, endpoint, payload, prompt_tokens, pool)) is not None:
            return RungCheck(route.name, False, 0.0, None, f"unfit:{unfit}")
        shape = request_shape(route, payload, prompt_tokens, pool.max_model_len)
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
    route: Route, endpoint: Endpoint, payload: dict[str, Any], prompt_tokens: int, pool: Pool
) -> str | None:
    """Why a lower rung could not serve this request at all (so admission skips it)."""
    try:
        check_route_serves(route, endpoint, payload)
    except InvalidRequest as e:
        return e.param or "request"
    if pool.max_model_len is not None and prompt_tokens >= pool.max_model_len:
        return "context"
    return None


def apply_single_pass_caps(route: Route, payload: dict[str, Any], endpoint: Endpoint) -> None:
    """Cut the client's completion cap to the route's (the ``max_tokens`` sent to vLLM is
    what the budget allows); with ``n`` choices the total is shared between them."""
    b = route.budget
    n = payload.get("n") if isinstance(payload.get("n"), int) else 1
    assert isinstance(n, int)
    if b.max_candidates is not None and n > b.max_candidates:
        raise InvalidRequest(
            f"n={n} exceeds route {route.name!r}'s max_candidates of {b.max_candidates}",
            param="n",
        )
    caps = [x // max(n, 1) for x in (b.max_total_tokens,) if x is not None]
    caps += [x for x in (b.max_visible_tokens,) if x is not None]
    if not caps:
        return
    limit = max(1, min(caps))
    keys = [k for k in ("max_completion_tokens", "max_tokens") if isinstance(payload.get(k), int)]
    if endpoint == "completions":
        keys = ["max_tokens"]
    for key in keys or ["max_tokens"]:
        value = payload.get(key)
        payload[key] = min(value, limit) if isinstance(value, int) else limit


def parse_payload(raw: bytes, schema: type[BaseModel]) -> dict[str, Any]:
    """The body as a dict, validated against ``schema``; 400 naming the field otherwise."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    try:
        schema.model_validate(payload)
    except ValidationError as e:
        param, message = describe_validation_error(e)
        raise InvalidRequest(message, param=param) from e
    return payload


# pydantic names the member of a union that failed ("str", "list[str]", "ChatMessage"...) in
# the error location; clients need the field, so the location is cut before such a tag.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Z]\w*)$")


def describe_validation_error(error: ValidationError) -> tuple[str | None, str]:
    """The OpenAI ``param`` (e.g. ``messages[0].role``) and a message for the first problem."""
    located: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        cut = next(
            (i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_TAG.match(p)), None
        )
        located.append((format_loc(loc[:cut]), str(err["msg"])))
    param = located[0][0]
    reasons = list(dict.fromkeys(msg for p, msg in located if p == param))
    where = f"'{param}'" if param else "the request body"
    return (param or None), f"Invalid value for {where}: {'; or '.join(reasons)}"


async def check_prompt_fits(
    pool: Pool, endpoint: Endpoint, payload: dict[str, Any], body_bytes: int, ctx: RequestContext
) -> int:
    """400 before dispatch when the prompt cannot fit the backend's context length; returns
    an upper bound on the prompt's tokens (exact when it had to be counted).

    Cheap bound first (no tokenizer); only a request near the limit is counted exactly
    with the backend's ``/tokenize``. Unknown context length → vLLM remains the judge.
    """
    cap = completion_cap(payload)
    messages = payload.get("messages")
    n_messages = len(messages) if isinstance(messages, list) else 1
    bound = prompt_token_upper_bound(body_bytes, n_messages)
    max_len = pool.max_model_len
    if max_len is None or check_context(bound, cap, max_len, "messages") is None:
        return bound
    count = await count_prompt_tokens(pool, endpoint, payload, ctx)
    if count is None:
        return min(bound, max_len)
    prompt_param = "messages" if endpoint == "chat" else "prompt"
    if (v := check_context(count, cap, max_len, prompt_param)) is not None:
        raise ContextLengthExceeded(v.message, param=v.param)
    return count


async def count_prompt_tokens(
    pool: Pool, endpoint: Endpoint, payload: dict[str, Any], ctx: RequestContext
) -> int | None:
    """Exact prompt length from the backend's ``/tokenize``; None if it cannot tell."""
    if endpoint == "chat":
        req: dict[str, Any] = {"model": pool.model, "messages": payload["messages"]}
        for key in (
            "tools",
            "add_generation_prompt",
            "continue_final_message",
            "chat_template_kwargs",
        ):
            if key in payload:
                req[key] = payload[key]
    else:
        prompt = payload["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return len(prompt)
        if not isinstance(prompt, str):
            return None  # batched prompts: leave it to vLLM
        req = {"model": pool.model, "prompt": prompt}
    upstream = await open_upstream(pool, "/tokenize", orjson.dumps(req), ctx.request_id + "-tok")
    try:
        data = orjson.loads(await upstream.response.aread())
    except (orjson.JSONDecodeError, httpx.HTTPError):
        return None
    finally:
        await upstream.aclose()
    count = data.get("count") if isinstance(data, dict) else None
    return count if isinstance(count, int) else None
