"""Cost estimates of serving a request on a route: tokens, KV-cache bytes, predicted TTFT.

Pure functions of the route's configuration, the prompt's size and the backend's live load.
The shape of each strategy (how many sequences decode at once, how many tokens sit on the
critical path before the first visible token) comes from its params; caps from the route's
``budget`` clip every figure, so a capped route is estimated as what it can actually spend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from routing.config import Route
from strategies.adaptive_consistency import AdaptiveConsistencyParams
from strategies.best_of_n import SamplingParams
from strategies.bounded_reasoning import BoundedReasoningParams
from strategies.prm_search import PrmSearchParams
from strategies.refine import RefineParams


@dataclass(frozen=True, slots=True)
class CostShape:
    """How a route spends tokens for one request."""

    parallel: int
    """Sequences decoding at once (candidates of one n=N call, beams x branches)."""
    per_sequence_tokens: int
    """Tokens each of those sequences may generate."""
    critical_path_tokens: int
    """Tokens decoded one after another before the first visible token exists."""
    generated_tokens: int
    """All tokens the strategy may generate (visible + hidden)."""
    calls: int = 1
    """Backend calls at most (generation, judges, PRM scoring); each one sends a prompt."""
    prompt_growth: int = 0
    """Tokens a later call's prompt may carry beyond the client's (partial answers, critiques)."""


def _sampling(p: SamplingParams, n: int, visible: int) -> CostShape:
    judged = getattr(p, "verifier", None) == "logprob-judge" and getattr(p, "selector", "") in (
        "verifier",
        "weighted",
    )
    return CostShape(n, visible, visible, n * visible, 1 + (n if judged else 0), visible)


def _shape_single(route: Route, visible: int) -> CostShape:
    return CostShape(1, visible, 0, visible)


def _shape_best_of_n(route: Route, visible: int) -> CostShape:
    p = route.params
    assert isinstance(p, SamplingParams)
    return _sampling(p, getattr(p, "n", 1), visible)


def _shape_adaptive(route: Route, visible: int) -> CostShape:
    p = route.params
    assert isinstance(p, AdaptiveConsistencyParams)
    waves = len(p.waves)
    return CostShape(max(p.waves), visible, waves * visible, sum(p.waves) * visible, waves)


def _shape_bounded(route: Route, visible: int) -> CostShape:
    p = route.params
    assert isinstance(p, BoundedReasoningParams)
    think = max([p.budget, *p.effort_budgets.values()])
    if route.budget.max_hidden_tokens is not None:
        think = min(think, route.budget.max_hidden_tokens)
    return CostShape(1, think + visible, think, think + visible, 2, think)


def _shape_refine(route: Route, visible: int) -> CostShape:
    p = route.params
    assert isinstance(p, RefineParams)
    path = visible + p.rounds * (p.critique_max_tokens + visible)
    scoring = 1 + p.rounds if p.verifier == "logprob-judge" else 0
    calls = 1 + 2 * p.rounds + scoring
    growth = visible + p.critique_max_tokens
    return CostShape(1, max(visible, p.critique_max_tokens), path, path, calls, growth)


def _shape_prm(route: Route, visible: int) -> CostShape:
    p = route.params
    assert isinstance(p, PrmSearchParams)
    parallel = p.beam_width * p.branch_factor
    path = p.max_steps * p.max_tokens + p.completion_max_tokens
    expansions = p.max_steps * p.beam_width
    scoring = p.max_steps if p.scorer == "prm" else 0
    if p.scorer == "logprob-judge":
        scoring = expansions * p.branch_factor
    growth = p.max_steps * p.max_tokens
    generated = parallel * p.max_steps * p.max_tokens + p.completion_max_tokens
    return CostShape(parallel, path, path, generated, expansions + 1 + scoring, growth)


SHAPES: dict[str, Callable[[Route, int], CostShape]] = {
    "single-pass": _shape_single,
    "bounded-reasoning": _shape_bounded,
    "best-of-n": _shape_best_of_n,
    "self-consistency": _shape_best_of_n,
    "adaptive-consistency": _shape_adaptive,
    "refine": _shape_refine,
    "prm-search": _shape_prm,
}


def visible_cap(route: Route, client_max_tokens: int | None) -> int:
    """Tokens one candidate (the answer) may have: the client's ``max_tokens`` or the
    route's default, clipped to ``max_visible_tokens``."""
    default = getattr(route.params, "max_tokens", None) or 256
    visible = client_max_tokens or default
    if route.budget.max_visible_tokens is not None:
        visible = min(visible, route.budget.max_visible_tokens)
    return visible


def generation_cap(
    route: Route, client_cap: int | None, room: int | None, visible: int
) -> int | None:
    """Tokens the request may generate: the route's caps (``max_hidden_tokens`` + the answer's
    cap), the client's ``max_completion_tokens`` and the context's room, whichever is least."""
    b = route.budget
    caps = [x for x in (b.max_total_tokens, client_cap, room) if x is not None]
    if b.max_hidden_tokens is not None:
        caps.append(b.max_hidden_tokens + visible)
    return min(caps) if caps else None


def cost_shape(
    route: Route,
    client_cap: int | None = None,
    room: int | None = None,
    client_max_tokens: int | None = None,
) -> CostShape:
    """The route's shape for one request, with its caps and the client's applied.

    ``client_cap`` is the client's bound on everything generated (``max_completion_tokens``;
    on single-pass also ``max_tokens``), ``client_max_tokens`` its bound on one candidate.
    """
    b = route.budget
    visible = visible_cap(route, client_max_tokens)
    if room is not None:
        visible = min(visible, room)
    if route.strategy == "single-pass" and client_cap is not None:
        visible = min(visible, client_cap)
    raw = SHAPES[route.strategy](route, visible)
    parallel = min(raw.parallel, b.max_candidates or raw.parallel)
    calls = min(raw.calls, b.max_backend_calls or raw.calls)
    generated = raw.generated_tokens
    if b.max_candidates is not None:
        generated = min(generated, b.max_candidates * raw.per_sequence_tokens)
    cap = generation_cap(route, client_cap, room, visible)
    if cap is not None:
        generated = min(generated, cap)
    return CostShape(
        parallel=parallel,
        per_sequence_tokens=min(raw.per_sequence_tokens, generated),
        critical_path_tokens=min(raw.critical_path_tokens, generated),
        generated_tokens=generated,
        calls=calls,
        prompt_growth=min(raw.prompt_growth, generated),
    )


def ladder_shape(
    first: CostShape,
    rungs: Sequence[CostShape],
    *,
    check_calls: int = 0,
    check_growth: int = 0,
    cap: int | None = None,
) -> CostShape:
    """An escalation ladder's worst case: the first answer, then every rung run in turn
    (``rungs``: each one's own shape), plus ``check_calls`` verifier calls whose prompts carry
    up to ``check_growth`` tokens more than the client's (a candidate to judge). ``cap``: the
    route's generation cap, which holds across the whole ladder."""
    generated = first.generated_tokens + sum(r.generated_tokens for r in rungs)
    if cap is not None:
        generated = min(generated, cap)
    return CostShape(
        parallel=max([first.parallel, *(r.parallel for r in rungs)]),
        per_sequence_tokens=min(
            generated, max([first.per_sequence_tokens, *(r.per_sequence_tokens for r in rungs)])
        ),
        critical_path_tokens=min(
            generated, first.critical_path_tokens + sum(r.critical_path_tokens for r in rungs)
        ),
        generated_tokens=generated,
        calls=first.calls + sum(r.calls for r in rungs) + check_calls,
        prompt_growth=max([first.prompt_growth, check_growth, *(r.prompt_growth for r in rungs)]),
    )


def worst_case_tokens(prompt_tokens: int, shape: CostShape, n: int = 1) -> int:
    """What a tenant is charged at most for one request: every call's prompt (the client's,
    plus what later calls carry) and everything generated; ``n`` choices of a single-pass
    request each generate up to the cap."""
    later = (shape.calls - 1) * shape.prompt_growth
    return shape.calls * prompt_tokens + later + n * shape.generated_tokens


def expected_tokens(
    prompt_tokens: int, shape: CostShape, mean_fill: float = 0.5, n: int = 1
) -> int:
    """A typical charge: the prompt plus ``mean_fill`` of what the route may generate (answers
    usually stop before their cap). Calibration replaces the default fill with measured means."""
    return shape.calls * prompt_tokens + round(n * shape.generated_tokens * mean_fill)


def kv_tokens(prompt_tokens: int, shape: CostShape, *, shared: bool = True) -> int:
    """KV-cache tokens held at peak: the prompt once plus every continuation when the prefix
    is shared (one n=N request, prefix caching), else a full copy per sequence."""
    if shared:
        return prompt_tokens + shape.parallel * shape.per_sequence_tokens
    return shape.parallel * (prompt_tokens + shape.per_sequence_tokens)


def kv_bytes(tokens: int, bytes_per_token: float) -> float:
    """``2 x layers x kv_heads x head_dim x bytes_per_value`` bytes for each token."""
    return tokens * bytes_per_token


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """A backend pool's live state as admission sees it (None = unknown, never zero)."""

    kv_usage: float | None = None
    kv_capacity_tokens: int | None = None
    running: int | None = None
    waiting: int | None = None
    decode_tokens_per_s: float | None = None
    """Per sequence, measured from the generation-token rate and the running count."""
    mean_request_s: float | None = None


def queue_s(load: PoolLoad | None) -> float:
    """Time a new request waits for a slot: the waiting requests ahead, each freeing when a
    running one finishes."""
    if load is None or not load.waiting or load.mean_request_s is None:
        return 0.0
    return (load.waiting + 1) * load.mean_request_s / max(load.running or 1, 1)


def predict_ttft_s(
    prompt_tokens: int,
    shape: CostShape,
    load: PoolLoad | None,
    *,
    prefill_tokens_per_s: float,
    default_decode_tokens_per_s: float,
) -> float:
    """Queue + prefill + the hidden tokens on the critical path at the decode rate."""
    rate = default_decode_tokens_per_s
    if load is not None and load.decode_tokens_per_s:
        rate = load.decode_tokens_per_s
    return queue_s(load) + prompt_tokens / prefill_tokens_per_s + shape.critical_path_tokens / rate


def summary(prompt_tokens: int, shape: CostShape, bytes_per_token: float | None) -> dict[str, Any]:
    """Estimates as a JSON-able dict (explain output, logs)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens_max": shape.generated_tokens,
        "tokens_expected": expected_tokens(prompt_tokens, shape),
        "tokens_worst_case": worst_case_tokens(prompt_tokens, shape),
        "parallel_sequences": shape.parallel,
        "kv_tokens_shared": kv_tokens(prompt_tokens, shape),
        "kv_tokens_unshared": kv_tokens(prompt_tokens, shape, shared=False),
    }
    if bytes_per_token is not None:
        out["kv_bytes_shared"] = kv_bytes(out["kv_tokens_shared"], bytes_per_token)
        out["kv_bytes_unshared"] = kv_bytes(out["kv_tokens_unshared"], bytes_per_token)
    return out
