"""One completion request, start to finish. Read this file to see the whole data path.

parse + validate → resolve the route → check limits → run the route's strategy → respond.
Metrics are recorded by the HTTP layer from the ``RequestContext`` once the response (or
its stream) is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from budgets.estimates import kv_tokens, worst_case_tokens
from budgets.limits import check_shape
from budgets.tenants import Tenant
from gateway.backends.pool import Pool
from gateway.backends.scheduling import hints_for
from gateway.backends.upstream import Upstream, open_upstream
from gateway.compute import render_json, render_sse, stream_route
from gateway.context import RequestContext
from gateway.decide import (
    Endpoint,
    admit_route,
    check_route_serves,
    decide,
    request_shape,
    sampling_plan,
)
from gateway.engine_drops import charge_evicted, lower_route, note_step_down
from gateway.errors import (
    BackendError,
    BackendTimeout,
    DeliberateError,
    EngineEvicted,
    EngineRejected,
    InvalidRequest,
)
from gateway.escalation import run_ladder
from gateway.parsing import parse_payload
from gateway.passthrough import force_stream_usage, read_json_body, relay_stream
from gateway.policy_state import PolicyState
from gateway.prompt_fit import check_prompt_fits, count_prompt_tokens
from gateway.responses import Translation
from gateway.responses_forward import RESPONSES_PATH, ResponsesDialect, forward_body
from gateway.schemas import ChatCompletionRequest, CompletionRequest
from gateway.services import Services
from gateway.tracing import (
    ADMISSION_SPAN,
    BUDGET_SPAN,
    ROUTE_SPAN,
    note_admission,
    note_decision,
    note_request_body,
)
from routing.config import DeliberateConfig, Route
from routing.features import message_text
from routing.sampling import SAMPLING_FIELDS
from strategies.base import Deadline, StrategyResult

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
    source: AsyncGenerator[bytes, None] | None = None  # what ``stream`` translates, if anything
    dialect: Literal["chat", "responses"] = "chat"  # what the body or stream already speaks

    def translated(
        self, translate: Callable[[AsyncGenerator[bytes, None]], AsyncGenerator[bytes, None]]
    ) -> Answer:
        """The same answer with its stream passed through ``translate`` (closed together)."""
        assert self.stream is not None
        return Answer(
            stream=translate(self.stream),
            upstream=self.upstream,
            source=self.stream,
            dialect="responses",
        )

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self.source is not None:  # a translator never started does not close its source
            await self.source.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()


async def complete(
    services: Services,
    endpoint: Endpoint,
    raw: bytes,
    ctx: RequestContext,
    tenant: Tenant,
    responses: Translation | None = None,
) -> Answer:
    """Serve one ``/v1/chat/completions`` or ``/v1/completions`` request body for ``tenant``.

    ``responses``: the body is a ``/v1/responses`` request's chat translation; a single-pass
    route then forwards the Responses request itself where the pool serves it (the answer's
    ``dialect`` says which one came back)."""
    state = services.state  # one policy for the whole request, whatever reloads meanwhile
    tracer = services.tracer
    payload = parse_payload(raw, _SCHEMAS[endpoint])
    if services.settings.log_prompts:
        ctx.prompt_preview = prompt_preview(payload)
    if tracer.enabled:
        note_request_body(ctx.span, payload)
    with tracer.span(ROUTE_SPAN) as span:
        decision = decide(services, state, endpoint, payload, len(raw), tenant)
        if tracer.enabled:
            note_decision(span, decision)
    ctx.decision = decision
    requested = state.config.route(decision.route)
    ctx.route, ctx.strategy, ctx.backend = requested.name, requested.strategy, requested.backend
    limits = state.config.limits
    if (
        v := check_shape(payload, max_messages=limits.max_messages, max_n=limits.max_n)
    ) is not None:
        raise InvalidRequest(v.message, param=v.param, code=v.code)
    pool = services.pools[requested.backend]
    ctx.scheduling = hints_for(requested, tenant.name, None)
    prompt_tokens = await check_prompt_fits(pool, endpoint, payload, len(raw), ctx)
    check_route_serves(requested, endpoint, payload, state.config)

    with tracer.span(ADMISSION_SPAN) as span:
        route = admit_route(services, state, requested, payload, prompt_tokens, ctx, endpoint)
        if tracer.enabled:
            note_admission(span, requested.name, route.name, ctx)
    if route is not requested:
        ctx.route, ctx.strategy, ctx.backend = route.name, route.strategy, route.backend
        check_route_serves(route, endpoint, payload, state.config)
        if route.backend != requested.backend:
            pool = services.pools[route.backend]
            prompt_tokens = await check_prompt_fits(pool, endpoint, payload, len(raw), ctx)
    client_payload = dict(payload)  # as sent, before the route patches it
    reserve = True
    while True:
        try:
            return await serve(
                services,
                state,
                route,
                endpoint,
                payload,
                prompt_tokens,
                ctx,
                tenant,
                reserve,
                responses,
            )
        except EngineRejected as e:
            lower = lower_route(services, state, route, endpoint, client_payload, prompt_tokens)
            if lower is None:
                raise
            note_step_down(services, ctx, route, lower, e)
            route, payload, reserve = lower, dict(client_payload), False
            if lower.backend != pool.name:
                pool = services.pools[lower.backend]
                prompt_tokens = await check_prompt_fits(pool, endpoint, payload, len(raw), ctx)
        except EngineEvicted:
            with contextlib.suppress(DeliberateError):
                prompt_tokens = (
                    await count_prompt_tokens(pool, endpoint, payload, ctx) or prompt_tokens
                )
            charge_evicted(ctx, prompt_tokens)
            raise


async def serve(
    services: Services,
    state: PolicyState,
    route: Route,
    endpoint: Endpoint,
    payload: dict[str, Any],
    prompt_tokens: int,
    ctx: RequestContext,
    tenant: Tenant,
    reserve: bool,
    responses: Translation | None = None,
) -> Answer:
    """Serve the request on ``route`` (admitted): patch the body with the route's sampling
    and caps, reserve the tenant's worst case (``reserve``: not yet done), run or relay
    (``responses``: see ``complete``)."""
    pool = services.pools[route.backend]
    apply_sampling(route, state.config, payload, ctx)
    n = 1
    if route.strategy == "single-pass" and route.escalate_to is None:
        apply_single_pass_caps(route, payload, endpoint)
        n = payload["n"] if isinstance(payload.get("n"), int) else 1
    shape = request_shape(route, payload, prompt_tokens, pool.max_model_len, state.config)
    ctx.scheduling = hints_for(route, tenant.name, shape.per_sequence_tokens)
    ctx.token_ceiling = worst_case_tokens(prompt_tokens, shape, n)
    if (kv_shape := pool.config.kv.shape) is not None:
        per_token = kv_shape.kv_bytes_per_token
        ctx.kv_bytes = (
            kv_tokens(prompt_tokens, shape) * per_token,
            kv_tokens(prompt_tokens, shape, shared=False) * per_token,
        )
    if reserve:  # a step-down keeps the first route's reservation (a cheaper route fits it)
        tracer = services.tracer
        with tracer.span(BUDGET_SPAN) as span:
            if tracer.enabled:
                span.set_attribute("deliberate.token_ceiling", ctx.token_ceiling)
            await services.budgets.reserve(tenant, ctx.token_ceiling, ctx)

    streaming = bool(payload.get("stream"))
    if route.strategy != "single-pass" or route.escalate_to is not None:
        opts = payload.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False

        async def run(note: Callable[[str], None] | None = None) -> tuple[Route, StrategyResult]:
            served, result = await run_ladder(
                route,
                state.config,
                services.pools,
                payload,
                ctx,
                services.metrics,
                note,
                state.router.online,
            )
            if services.traces is not None:  # queued, never awaited: off the response path
                services.traces.offer(
                    route, served, result, messages_of(payload), ctx, state.config
                )
            return served, result

        if streaming and route.stream_progress:
            return Answer(stream=stream_route(pool.model, ctx, include_usage, run))
        served, result = await run()
        if streaming:
            return Answer(stream=render_sse(served, result, ctx, pool.model, include_usage))
        return Answer(body=render_json(served, result, ctx, pool.model))

    # single-pass: a faithful pass-through to one replica, bytes relayed as they come.
    payload["model"] = pool.model
    deadline = Deadline.after(route.budget.deadline_s)
    key = pool.affinity_key(payload)
    if responses is not None and pool.serves_responses:
        try:
            return await _pass_through(
                pool,
                RESPONSES_PATH,
                forward_body(responses, payload, pool.model),
                route,
                ctx,
                deadline,
                streaming,
                client_wants_usage=True,
                dialect=ResponsesDialect(),
                key=key,
            )
        except BackendError as e:
            if e.status != 404:
                raise
            pool.serves_responses = False  # an engine without /v1/responses: translate
    client_wants_usage = force_stream_usage(payload) if streaming else False
    return await _pass_through(
        pool,
        _PATHS[endpoint],
        orjson.dumps(payload),
        route,
        ctx,
        deadline,
        streaming,
        client_wants_usage=client_wants_usage,
        key=key,
    )


async def _pass_through(
    pool: Pool,
    path: str,
    body: bytes,
    route: Route,
    ctx: RequestContext,
    deadline: Deadline,
    streaming: bool,
    *,
    client_wants_usage: bool,
    dialect: ResponsesDialect | None = None,
    key: str | None = None,
) -> Answer:
    """One call to one replica, its answer relayed as it comes (in the dialect it speaks)."""
    spoken: Literal["chat", "responses"] = "chat" if dialect is None else "responses"
    try:
        async with asyncio.timeout(deadline.remaining_s):
            upstream = await open_upstream(
                pool,
                path,
                body,
                ctx.request_id,
                deadline=deadline,
                deadline_counts=True,  # the call is the request: too slow for it is a failure
                key=key,
                headers=pool.hint_headers(ctx.scheduling),
            )
            if not streaming:
                return Answer(body=await read_json_body(upstream, ctx), dialect=spoken)
    except TimeoutError as e:
        raise BackendTimeout(
            f"route {route.name!r} reached its deadline of {route.budget.deadline_s}s"
        ) from e
    stream = relay_stream(
        upstream, ctx, client_wants_usage=client_wants_usage, deadline=deadline, dialect=dialect
    )
    return Answer(stream=stream, upstream=upstream, dialect=spoken)


def apply_sampling(
    route: Route, config: DeliberateConfig, payload: dict[str, Any], ctx: RequestContext
) -> None:
    """Patch the body once with the route's sampling, by the precedence of
    ``routing.sampling`` (recorded on ``ctx`` for the rungs of a ladder and for explain)."""
    ctx.client_sampling = {k: payload[k] for k in SAMPLING_FIELDS if payload.get(k) is not None}
    plan = sampling_plan(route, config, payload, ctx.decision)
    ctx.sampling = plan
    payload.update(plan.patch)


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


def messages_of(payload: dict[str, Any]) -> list[Any]:
    """The request's messages (a completions prompt as one user message)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return messages
    return [{"role": "user", "content": str(payload.get("prompt", ""))}]


def prompt_preview(payload: dict[str, Any]) -> str:
    """The last user message (or the prompt), cut to 500 characters, for the access log."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = message_text(users[-1].get("content")) if users else ""
    else:
        text = str(payload.get("prompt", ""))
    return text[:500]
