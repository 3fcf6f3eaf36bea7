"""Running a test-time-compute strategy for one request, and rendering its result as an
OpenAI chat completion (JSON or SSE) with the ``deliberate`` extension object."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from budgets.estimates import generation_cap, visible_cap
from gateway.backends.generator import VLLMGenerator
from gateway.backends.pool import Pool
from gateway.backends.prm import PrmVerifier
from gateway.backends.scheduling import SchedulingHints
from gateway.context import RequestContext
from gateway.errors import BackendTimeout, DeliberateError, EngineDropped, InvalidRequest
from gateway.sse import DONE_EVENT, format_event
from gateway.tracing import STRATEGY_SPAN, note_strategy
from metrics.detail import StrategyStats
from routing.config import Route
from strategies.base import (
    BudgetExhausted,
    BudgetGuard,
    Deadline,
    Strategy,
    StrategyContext,
    StrategyRequest,
    StrategyResult,
    TokenBudget,
)
from strategies.best_of_n import DeadlineExceeded
from strategies.ports import GenChoice, Generator
from strategies.prm_search import PrmSearch, PrmSearchParams
from strategies.registry import STRATEGIES

# Fields the strategy controls itself; everything else is passed to every backend call.
_OWN_FIELDS = {
    "model",
    "messages",
    "n",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "user",
    "metadata",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}


def check_request(route: Route, payload: dict[str, Any]) -> None:
    """Refuse what a multi-call route cannot honour, naming the parameter and the route."""
    spec = STRATEGIES[route.strategy]
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest(
            f"route {route.name!r} ({route.strategy}) returns one answer; "
            f"n={n} is not supported on it",
            param="n",
        )
    tool_choice = payload.get("tool_choice")
    if payload.get("tools") or (tool_choice is not None and tool_choice != "none"):
        why = (
            "it votes over candidates and tool calls cannot be voted on"
            if spec.votes
            else "its answer is produced in several backend calls"
        )
        raise InvalidRequest(
            f"route {route.name!r} ({route.strategy}) does not take tools: {why}; "
            "use a single-pass route for tool calling",
            param="tools" if payload.get("tools") else "tool_choice",
        )


def strategy_request(payload: dict[str, Any]) -> StrategyRequest:
    return StrategyRequest(
        messages=payload["messages"],
        max_tokens=payload.get("max_tokens"),
        sampling={k: v for k, v in payload.items() if k not in _OWN_FIELDS},
        logprobs=bool(payload.get("logprobs")),
        top_logprobs=payload.get("top_logprobs"),
        reasoning_effort=payload.get("reasoning_effort"),
    )


def build_strategy(
    route: Route,
    pools: Mapping[str, Pool],
    request_id: str,
    hints: SchedulingHints | None = None,
) -> Strategy:
    """The route's strategy; a PRM-scored search gets the client of its PRM pool."""
    params = route.params
    if isinstance(params, PrmSearchParams) and params.scorer == "prm":
        assert params.prm_backend is not None  # validated with the config
        prm_pool = pools[params.prm_backend]
        verifier = PrmVerifier(prm_pool, request_id, prm_pool.config.prm, hints)
        return PrmSearch(params, step_verifier=verifier)
    return STRATEGIES[route.strategy].build(params)


def route_budget(
    route: Route, payload: dict[str, Any], total_limit: int | None = None
) -> TokenBudget:
    """The route's caps, lowered by the client's ``max_completion_tokens`` (visible + hidden);
    ``total_limit`` (prompt + generated) is the tenant reservation, when there is one."""
    b = route.budget
    client = payload.get("max_completion_tokens")
    max_tokens = payload.get("max_tokens")
    visible = visible_cap(route, max_tokens if isinstance(max_tokens, int) else None)
    return TokenBudget(
        generation_cap(route, client if isinstance(client, int) else None, None, visible),
        total_limit=total_limit,
        hidden_limit=b.max_hidden_tokens,
        max_calls=b.max_backend_calls,
        max_candidates=b.max_candidates,
    )


async def run_route(
    route: Route,
    pools: Mapping[str, Pool],
    payload: dict[str, Any],
    ctx: RequestContext,
    note: Callable[[str], None] | None = None,
    seeds: tuple[GenChoice, ...] = (),
    strategy_for: Callable[[Generator], Strategy] | None = None,
) -> StrategyResult:
    """Run the route's strategy under its caps and deadline; record usage on ``ctx``.
    ``seeds``: answers already generated for the request. ``strategy_for``: builds the
    strategy to run instead (an escalation ladder) from the route's budget-guarded generator."""
    pool = pools[route.backend]
    reserved = None
    if ctx.reservation is not None:  # what is left of it (a cascade's second run)
        reserved = max(0, ctx.reservation.tokens - ctx.usage.prompt - ctx.usage.completion)
    budget = route_budget(route, payload, reserved)
    deadline = Deadline.after(route.budget.deadline_s)
    guarded = BudgetGuard(VLLMGenerator(pool, ctx.request_id, deadline, ctx.scheduling), budget)
    if strategy_for is not None:
        strategy = strategy_for(guarded)
    else:
        strategy = build_strategy(route, pools, ctx.request_id, ctx.scheduling)
    tracer = pool.tracer
    sctx = StrategyContext(guarded, budget, deadline, tracer=tracer)
    if note is not None:
        sctx.note = note
    request = replace(strategy_request(payload), seeds=seeds)
    if (visible := route.budget.max_visible_tokens) is not None:
        request = replace(request, max_tokens=min(request.max_tokens or visible, visible))
    try:
        with tracer.span(STRATEGY_SPAN) as span:
            if tracer.enabled:
                span.set_attribute("deliberate.route", route.name)
                span.set_attribute("deliberate.strategy", route.strategy)
            result = await strategy.run(request, sctx)
            if tracer.enabled:
                note_strategy(span, result, budget.calls)
    except DeadlineExceeded as e:
        raise BackendTimeout(
            f"route {route.name!r} reached its deadline of "
            f"{route.budget.deadline_s}s before any answer existed"
        ) from e
    except EngineDropped:
        # The calls that succeeded before the drop did real work: charged with the request.
        ctx.dropped_usage = ctx.dropped_usage + budget.spent
        raise
    except BudgetExhausted as e:
        raise DeliberateError(
            f"route {route.name!r} ran out of its {e} cap before any answer existed: the "
            "route's caps are too low for its strategy (see its budget in the policy file)",
            code="route_caps_too_low",
        ) from e
    if budget.exhausted_by is not None and result.stop_reason == "budget":
        result = replace(result, info={**result.info, "cap": budget.exhausted_by})
    detail = result.info.get("candidates")
    if isinstance(detail, list) and len(detail) > route.candidate_detail:
        ctx.candidate_detail = detail
        result = replace(result, info={k: v for k, v in result.info.items() if k != "candidates"})
    ctx.usage = result.usage
    ctx.stats = strategy_stats(result)
    ctx.hidden_sources = {_HIDDEN_SOURCE.get(route.strategy, "candidates"): result.usage.hidden}
    ctx.mark_first_token()
    return result


# What a strategy's hidden tokens mostly are (metrics: deliberate_hidden_tokens_total{source}).
_HIDDEN_SOURCE = {"bounded-reasoning": "thinking", "refine": "critique"}


def _number(info: Mapping[str, Any], key: str) -> float | None:
    value = info.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def strategy_stats(result: StrategyResult) -> StrategyStats:
    """The metrics view of a strategy's ``deliberate`` info."""
    info = result.info
    samples, calls = _number(info, "samples"), _number(info, "backend_calls")
    verifier = info.get("verifier") or info.get("scorer")
    return StrategyStats(
        samples=int(samples) if samples is not None else None,
        backend_calls=int(calls) if calls is not None else None,
        stop_reason=result.stop_reason,
        verifier=str(verifier) if verifier else None,
        # best-of-n scores every candidate once when it uses a verifier
        verifier_calls=int(_number(info, "verifier_calls") or (samples if verifier else 0) or 0),
        verifier_seconds=_number(info, "prm_seconds"),
        vote_margin=_number(info, "vote_margin"),
    )


def _extension(route: Route, result: StrategyResult, ctx: RequestContext) -> dict[str, Any]:
    return {
        "route": route.name,
        "strategy": route.strategy,
        **ctx.decision_info(),
        **ctx.admission_info(),
        "stop_reason": result.stop_reason,
        **result.info,
        "tokens": {
            "prompt": result.usage.prompt,
            "visible": result.usage.visible,
            "hidden": result.usage.hidden,
        },
    }


def _usage(result: StrategyResult) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "completion_tokens_details": {"reasoning_tokens": u.hidden},
    }


def render_json(route: Route, result: StrategyResult, ctx: RequestContext, model: str) -> bytes:
    choices = []
    for i, c in enumerate(result.choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        if c.reasoning is not None:
            message["reasoning"] = message["reasoning_content"] = c.reasoning
        choices.append(
            {
                "index": i,
                "message": message,
                "finish_reason": c.finish_reason,
                "logprobs": c.logprobs,
            }
        )
    return orjson.dumps(
        {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model or model,
            "choices": choices,
            "usage": _usage(result),
            "deliberate": _extension(route, result, ctx),
        }
    )


async def render_sse(
    route: Route, result: StrategyResult, ctx: RequestContext, model: str, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The finished result as a chat-completion stream (reasoning as ``delta.reasoning``)."""
    base = {
        "id": f"chatcmpl-{ctx.request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": result.model or model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return format_event(
            orjson.dumps(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    ],
                    **extra,
                }
            )
        )

    c = result.choices[0]
    yield chunk({"role": "assistant", "content": ""})
    if c.reasoning:
        yield chunk({"reasoning": c.reasoning, "reasoning_content": c.reasoning})
    yield chunk({"content": c.text})
    yield chunk({}, c.finish_reason, deliberate=_extension(route, result, ctx))
    if include_usage:
        yield format_event(orjson.dumps({**base, "choices": [], "usage": _usage(result)}))
    yield DONE_EVENT
    ctx.stream_done = True


Runner = Callable[[Callable[[str], None] | None], Awaitable[tuple[Route, StrategyResult]]]


async def stream_route(
    model: str, ctx: RequestContext, include_usage: bool, run: Runner
) -> AsyncGenerator[bytes, None]:
    """Run the strategy while streaming its progress notes as ``delta.reasoning``, then the
    answer. The response has started, so a failure becomes an SSE ``error`` event."""
    notes: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(run(notes.put_nowait))
    task.add_done_callback(lambda _: notes.put_nowait(None))
    base = {
        "id": f"chatcmpl-{ctx.request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    try:
        while (note := await notes.get()) is not None:
            delta = {"reasoning": note, "reasoning_content": note}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            yield format_event(orjson.dumps({**base, "choices": [choice]}))
        try:
            served, result = await task
        except DeliberateError as e:
            ctx.outcome = "timeout" if isinstance(e, BackendTimeout) else "backend_error"
            ctx.stream_done = True
            yield format_event(orjson.dumps(e.body()))
            yield DONE_EVENT
            return
        async for chunk in render_sse(served, result, ctx, model, include_usage):
            yield chunk
    finally:
        if not task.done():
            task.cancel()  # the client left: stop the strategy and its backend calls
