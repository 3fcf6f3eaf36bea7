"""Escalation ladders at the gateway: build a route's ``strategies.ladder.Ladder`` from its
``escalate_to`` rungs, run it under the route's caps and deadline, and count each rung.

Sampling of the rungs: rung 0 runs with the request as patched by the route's sampling; a
``samples`` rung adds its own ``sampling`` on top (temperature 0.8 unless it sets one: more
greedy samples would all be the same); a route rung runs with the client's sampling and that
route's own, by the same precedence as a request naming it.

Every generated token that is not returned (other candidates, the first answer when a later
one wins) is hidden, and so is what a verifier spends.

Each finished ladder request is counted once by outcome (``ladder_outcome``): whether climbing
paid — a different answer passed — is the online, verified win rate of its rungs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.backends.pool import Pool
from gateway.compute import build_strategy, run_route
from gateway.context import RequestContext
from gateway.decide import sampling_plan
from metrics.registry import LadderOutcome, Metrics
from routing.config import DeliberateConfig, Route
from routing.online import OnlineTables, observe_ladder
from strategies.answers import ExtractSpec
from strategies.base import StrategyResult
from strategies.best_of_n import SamplingParams
from strategies.ladder import Ladder, RungPlan
from strategies.ports import Generator
from strategies.sampling import SAMPLING_FIELDS
from strategies.verifiers.registry import VerifierContext, build_verifier

RUNG_TEMPERATURE = 0.8
"""Temperature of a ``samples`` rung that sets none."""
FIRST_TEMPERATURE = 0.0
"""Temperature of a single-pass route's first answer when neither the route nor the client
sets one: the greedy answer is the best single sample (bench/test_time_scaling.py)."""


def ladder_params(route: Route, config: DeliberateConfig) -> SamplingParams:
    """Per-candidate defaults of the ladder's own samples: the route's sampling params when it
    has them, else greedy with the answer format of the first route rung that has one."""
    if isinstance(route.params, SamplingParams):
        return route.params
    spec = next(
        (
            s
            for rung in route.escalate_to or ()
            if rung.route is not None
            and isinstance(
                s := getattr(config.route(rung.route).params, "answer", None), ExtractSpec
            )
        ),
        ExtractSpec(),
    )
    max_tokens = getattr(route.params, "max_tokens", None) or 256
    return SamplingParams(temperature=FIRST_TEMPERATURE, max_tokens=max_tokens, answer=spec)


def build_ladder(
    route: Route,
    config: DeliberateConfig,
    pools: Mapping[str, Pool],
    ctx: RequestContext,
    generator: Generator,
) -> Ladder:
    """The route's ladder, its verifiers on the route's budget-guarded ``generator``."""
    vctx = VerifierContext(generator=generator)
    rungs: list[RungPlan] = []
    for rung in route.escalate_to or ():
        verifier = build_verifier(rung.verifier, vctx, rung.verifier_params)
        if rung.samples is not None:
            sampling = {"temperature": RUNG_TEMPERATURE, **rung.sampling.fields()}
            rungs.append(
                RungPlan(
                    rung.label, verifier, rung.threshold, samples=rung.samples, sampling=sampling
                )
            )
            continue
        target = config.route(str(rung.route))
        rungs.append(
            RungPlan(
                rung.label,
                verifier,
                rung.threshold,
                sampling=_route_rung_sampling(target, config, ctx),
                strategy=build_strategy(target, pools, ctx.request_id, ctx.scheduling),
            )
        )
    first = (
        None
        if route.strategy == "single-pass"
        else build_strategy(route, pools, ctx.request_id, ctx.scheduling)
    )
    decision = ctx.decision
    start = decision.start_rung if decision is not None and decision.route == route.name else 0
    return Ladder(tuple(rungs), ladder_params(route, config), first, start)


def _route_rung_sampling(
    target: Route, config: DeliberateConfig, ctx: RequestContext
) -> dict[str, Any]:
    """The sampling fields a route rung runs with: the client's and the target route's."""
    plan = sampling_plan(target, config, ctx.client_sampling, ctx.decision)
    fields = {**ctx.client_sampling, **plan.patch}
    return {k: fields.get(k) for k in SAMPLING_FIELDS}  # None: unset, the strategy's default


async def run_ladder(
    route: Route,
    config: DeliberateConfig,
    pools: Mapping[str, Pool],
    payload: dict[str, Any],
    ctx: RequestContext,
    metrics: Metrics,
    note: Callable[[str], None] | None = None,
    online: OnlineTables | None = None,
) -> tuple[Route, StrategyResult]:
    """Run ``route`` — through its ladder when it has one. Returns the route that produced
    the answer (a route rung's route when its answer won) and the result."""
    if not route.escalate_to:
        return route, await run_route(route, pools, payload, ctx, note)

    def strategy_for(generator: Generator) -> Ladder:
        return build_ladder(route, config, pools, ctx, generator)

    result = await run_route(route, pools, payload, ctx, note, strategy_for=strategy_for)
    ladder = result.info["ladder"]
    klass = ctx.decision.request_class if ctx.decision else "none"
    if online is not None and ctx.decision is not None and ctx.decision.source == "policy":
        first = ladder["path"][0].get("passed") if ladder["start_rung"] == 0 else None
        observe_ladder(online, config, route.name, klass, first, bool(ladder["verified"]))
    for step in ladder["path"]:
        if step["rung"] == 0 or step["rung"] > len(route.escalate_to):
            continue
        rung = route.escalate_to[step["rung"] - 1]
        metrics.escalations.labels(klass, route.name, rung.label, "escalated").inc()
    stopped = ladder["stopped_at"]
    if ladder["path"][-1].get("passed") and stopped < len(route.escalate_to):
        # the best answer passed the check of the next rung, which therefore did not run
        metrics.escalations.labels(
            klass, route.name, route.escalate_to[stopped].label, "kept"
        ).inc()
    outcome, won_by = ladder_outcome(result.info)
    metrics.record_ladder(klass, route.name, outcome, result.usage.hidden, won_by)
    escalated = stopped > 0
    source = "escalation" if escalated else "judge"
    ctx.hidden_sources = {source: result.usage.hidden}
    served = route
    wave = result.info.get("chosen_wave", 0)
    if wave > 0 and (rung_route := route.escalate_to[wave - 1].route) is not None:
        served = config.route(rung_route)
        ctx.route, ctx.strategy, ctx.backend = served.name, served.strategy, served.backend
    return served, result


def ladder_outcome(info: Mapping[str, Any]) -> tuple[LadderOutcome, str | None]:
    """How a ladder result ended, from its ``deliberate`` info, and for a win the label of
    the rung whose candidate was chosen (``first``: another of the first answer's candidates).

    The first answer is the one the ladder had before it climbed (``ladder.first_index``;
    index 0 of ``answers`` when absent). ``first_passed``: it passed and no rung ran. Otherwise
    the ladder escalated (or meant to, and a cap or the deadline stopped it): ``unverified``
    when nothing passed; else ``first_kept`` when the answer is the first answer's (same
    normalised answer, or the same candidate when there is none), ``won`` when it differs.
    """
    ladder = info["ladder"]
    path = ladder["path"]
    if len(path) == 1 and path[0].get("passed"):
        return "first_passed", None
    if not ladder.get("verified"):
        return "unverified", None
    answers = info.get("answers") or ()
    chosen, first = info.get("chosen_index", 0), ladder.get("first_index", 0)
    answer = answers[chosen] if chosen < len(answers) else None
    first_answer = answers[first] if first < len(answers) else None
    if chosen == first or (answer is not None and answer == first_answer):
        return "first_kept", None
    labels = ["first", *ladder["rungs"]]
    wave = info.get("chosen_wave", 0)
    return "won", labels[wave] if 0 <= wave < len(labels) else None
