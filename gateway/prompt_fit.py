"""Does the prompt fit the backend's context? A cheap bound first, the backend's own count
(``/tokenize``) only near the limit. Called by ``gateway.pipeline`` before dispatch."""

from __future__ import annotations

from typing import Any

import orjson

from budgets.limits import check_context, completion_cap, prompt_token_upper_bound
from gateway.backends.pool import Pool
from gateway.backends.upstream import open_upstream, read_json
from gateway.context import RequestContext
from gateway.decide import Endpoint
from gateway.errors import BackendError, ContextLengthExceeded, DeliberateError, EngineDropped


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
        hints = ctx.scheduling.without_output() if ctx.scheduling else None
        upstream = await open_upstream(
            pool,
            "/tokenize",
            orjson.dumps(req),
            ctx.request_id + "-tok",
            headers=pool.hint_headers(hints),
        )
    except BackendError as e:
        if e.status == 404:
            return None  # a backend without /tokenize (not vLLM)
        raise
    except EngineDropped:
        return None  # the scheduler is shedding load: let the completion call find out
    try:
        _, data = await read_json(upstream)
    except DeliberateError:
        return None
    count = data.get("count") if isinstance(data, dict) else None
    return count if isinstance(count, int) else None
