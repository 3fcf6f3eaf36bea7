"""One completion request, start to finish. Read this file to see the whole data path.

parse + validate → resolve the route → check limits → run the route's strategy → respond.
Metrics are recorded by the HTTP layer from the ``RequestContext`` once the response (or
its stream) is over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from budgets.estimates import kv_tokens, worst_case_tokens
from budgets.limits import (
    check_context,
    check_shape,
    completion_cap,
    prompt_token_upper_bound,
)
from budgets.tenants import Tenant
from gateway.backends.pool import Pool
from gateway.backends.upstream import Upstream, open_upstream, read_json
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
from gateway.errors import (
    BackendError,
    BackendTimeout,
    ContextLengthExceeded,
    DeliberateError,
    InvalidRequest,
)
from gateway.escalation import run_ladder
from gateway.parsing import parse_payload
from gateway.passthrough import force_stream_usage, read_json_body, relay_stream
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

    def translated(
        self, translate: Callable[[AsyncGenerator[bytes, None]], AsyncGenerator[bytes, None]]
    ) -> Answer:
        """The same answer with its stream passed through ``translate`` (closed together)."""
        assert self.stream is not None
        return Answer(stream=translate(self.stream), upstream=self.upstream, source=self.stream)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        if self.source is not None:  # a translator never started does not close its source
            await self.source.aclose()
        if self.upstream is not None:
            await self.upstream.aclose()


async def complete(
    services: Services, endpoint: Endpoint, raw: bytes, ctx: RequestContext, tenant: Tenant
) -> Answer:
    """Serve one ``/v1/chat/completions`` or ``/v1/completions`` request body for ``tenant``."""
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
    apply_sampling(route, state.config, payload, ctx)
    n = 1
    if route.strategy == "single-pass" and route.escalate_to is None:
        apply_single_pass_caps(route, payload, endpoint)
        n = payload["n"] if isinstance(payload.get("n"), int) else 1
    shape = request_shape(route, payload, prompt_tokens, pool.max_model_len, state.config)
    ctx.token_ceiling = worst_case_tokens(prompt_tokens, shape, n)
    if (kv_shape := pool.config.kv.shape) is not None:
        per_token = kv_shape.kv_bytes_per_token
        ctx.kv_bytes = (
            kv_tokens(prompt_tokens, shape) * per_token,
            kv_tokens(prompt_tokens, shape, shared=False) * per_token,
        )
    with tracer.span(BUDGET_SPAN) as span:
        if tracer.enabled:
            span.set_attribute("deliberate.token_ceiling", ctx.token_ceiling)
        await services.budgets.reserve(tenant, ctx.token_ceiling, ctx)

    streaming = bool(payload.get("stream"))
    if route.strategy != "single-pass" or route.escalate_to is not None:
        opts = payload.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False

        def run(
            note: Callable[[str], None] | None = None,
        ) -> Awaitable[tuple[Route, StrategyResult]]:
            return run_ladder(
                route,
                state.config,
                services.pools,
                payload,
                ctx,
                services.metrics,
                note,
                state.router.online,
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
                pool,
                _PATHS[endpoint],
                orjson.dumps(payload),
                ctx.request_id,
                deadline=deadline,
                deadline_counts=True,  # the call is the request: too slow for it is a failure
            )
            if not streaming:
                return Answer(body=await read_json_body(upstream, ctx))
    except TimeoutError as e:
        raise BackendTimeout(
            f"route {route.name!r} reached its deadline of {route.budget.deadline_s}s"
        ) from e
    stream = relay_stream(upstream, ctx, client_wants_usage=client_wants_usage, deadline=deadline)
    return Answer(stream=stream, upstream=upstream)


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
    if cap is not None and cap[1] >= max_len:  # no prompt is short enough: no need to count
        raise ContextLengthExceeded(
            f"{cap[0]}={cap[1]} leaves no room for a prompt in this model's context of "
            f"{max_len} tokens",
            param=cap[0],
        )
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
    try:
        upstream = await open_upstream(
            pool, "/tokenize", orjson.dumps(req), ctx.request_id + "-tok"
        )
    except BackendError as e:
        if e.status == 404:
            return None  # a backend without /tokenize (not vLLM)
        raise
    try:
        _, data = await read_json(upstream)
    except DeliberateError:
        return None
    count = data.get("count") if isinstance(data, dict) else None
    return count if isinstance(count, int) else None


def prompt_preview(payload: dict[str, Any]) -> str:
    """The last user message (or the prompt), cut to 500 characters, for the access log."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = message_text(users[-1].get("content")) if users else ""
    else:
        text = str(payload.get("prompt", ""))
    return text[:500]
