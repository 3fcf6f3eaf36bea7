"""Cascades: answer on a cheap route, check the answer with a verifier, and run the stronger
route only when the check fails — keeping the first answer as one of its candidates.

Every token of the first attempt that is not returned (its answer, when the stronger route
picks another one, and the check itself) is counted as hidden.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.backends.generator import VLLMGenerator
from gateway.backends.pool import Pool
from gateway.compute import run_route
from gateway.context import RequestContext
from gateway.errors import DeliberateError
from metrics.registry import Metrics
from routing.config import DeliberateConfig, Route
from strategies.answers import ExtractSpec, extract_answer
from strategies.base import StrategyResult
from strategies.best_of_n import question_of
from strategies.ports import Candidate, GenChoice, Score
from strategies.usage import Usage
from strategies.verifiers.registry import VerifierContext, build_verifier


async def run_cascade(
    route: Route,
    config: DeliberateConfig,
    pools: Mapping[str, Pool],
    payload: dict[str, Any],
    ctx: RequestContext,
    metrics: Metrics,
    note: Callable[[str], None] | None = None,
) -> tuple[Route, StrategyResult]:
    """Run ``route``; escalate to its ``escalate_to`` route when the verifier rejects the
    answer. Returns the route that produced the answer and the combined result."""
    first = await run_route(route, pools, payload, ctx, note)
    esc = route.escalate_to
    if esc is None:
        return route, first
    target = config.route(esc.route)
    spec = getattr(route.params, "answer", None) or getattr(target.params, "answer", None)
    text = first.choices[0].text
    generator = VLLMGenerator(pools[route.backend], ctx.request_id)
    verifier = build_verifier(esc.verifier, VerifierContext(generator=generator), {})
    answer = extract_answer(text, spec if isinstance(spec, ExtractSpec) else ExtractSpec())
    question = question_of(payload["messages"])
    try:  # the check may not outlive the cheap route's deadline
        async with asyncio.timeout(route.budget.deadline_s):
            [score] = await verifier.score(question, [Candidate(0, text, answer)])
    except TimeoutError:
        score = Score(1.0, "check timed out: the first answer stands")
    check = Usage(prompt=score.usage.prompt, hidden=score.usage.completion)
    ctx.usage = first.usage + check  # what the stronger route's share of the reservation sees
    klass = ctx.decision.request_class if ctx.decision else "none"
    info = {
        "from_route": route.name,
        "to_route": target.name,
        "verifier": esc.verifier,
        "score": round(score.value, 4),
        "threshold": esc.threshold,
    }
    if score.value >= esc.threshold:
        metrics.escalations.labels(klass, route.name, target.name, "kept").inc()
        usage = first.usage + check
        ctx.usage = usage
        ctx.hidden_sources = {**ctx.hidden_sources, "judge": check.completion}
        ctx.ttft_s = None
        ctx.mark_first_token()  # the answer is released after the check
        result = replace(
            first, usage=usage, info={**first.info, "escalation": {**info, "escalated": False}}
        )
        return route, result
    metrics.escalations.labels(klass, route.name, target.name, "escalated").inc()
    ctx.route, ctx.strategy, ctx.backend = target.name, target.strategy, target.backend
    if note is not None:
        note(
            f"first answer scored {score.value:.2f} < {esc.threshold}; escalating to {target.name}\n"
        )
    c = first.choices[0]
    seed = GenChoice(0, c.text, first.usage.visible, c.finish_reason, reasoning=c.reasoning)
    ctx.ttft_s = None  # the answer the client sees now comes after the stronger route
    try:
        second = await run_route(target, pools, payload, ctx, note, seeds=(seed,))
    except DeliberateError as e:  # deadline, caps, backend: the first answer is still an answer
        ctx.usage = first.usage + check
        ctx.mark_first_token()
        failed = {**info, "escalated": False, "escalation_failed": e.message}
        return route, replace(first, usage=ctx.usage, info={**first.info, "escalation": failed})
    seed_won = bool(second.info.get("seed_chosen"))
    generated = first.usage.completion + second.usage.completion + check.completion
    visible = first.usage.visible if seed_won else second.usage.visible
    usage = Usage(
        prompt=first.usage.prompt + second.usage.prompt + check.prompt,
        visible=visible,
        hidden=generated - visible,
    )
    ctx.usage = usage
    # Hidden by source: the first attempt (and the check) vs what the stronger route hid.
    first_hidden = first.usage.completion + check.completion - (visible if seed_won else 0)
    (source,) = ctx.hidden_sources or {"candidates": 0}  # set by the second run_route
    ctx.hidden_sources = {source: usage.hidden - first_hidden, "escalation": first_hidden}
    result = replace(
        second,
        usage=usage,
        info={
            **second.info,
            "escalation": {**info, "escalated": True, "first_answer_kept": seed_won},
        },
    )
    return target, result
