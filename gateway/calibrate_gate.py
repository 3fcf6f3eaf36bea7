"""Calibration of the learned second-stage gate (``learned-gate`` ladder rungs).

A policy that gates a ladder rung with ``verifier: learned-gate`` needs the gate's weights.
``deliberate calibrate`` fits them before it measures any route that uses them:

1. the gate's *source* route — the cheap route of a gain rule whose ladder has a learned-gate
   rung (else the default route) — answers the fit items with ``logprobs: true``; each answer's
   gate features are computed exactly as a ladder computes them when it serves (the arithmetic
   checker, the confidence of the answer's own tokens, cut-off, ...);
2. ``routing.gate_fit.fit_gate`` fits P(right | features) on those answers;
3. every learned-gate rung of the policy gets the fitted ``{bias, weights}`` as its
   ``verifier_params``, in the route variants that are then measured and in the written file.

The held-out check's cheap-route answers carry features too, so the report gives the gate's
AUROC on items it was not fitted on, beside each raw signal's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from routing.config import DeliberateConfig
from routing.gate_fit import GateFit, GateRow
from strategies.ports import Candidate, TokenLogprob
from strategies.verifiers.arithmetic import ArithmeticConsistencyVerifier
from strategies.verifiers.confidence import ConfidenceVerifier
from strategies.verifiers.gate import answer_features

GATE = "learned-gate"


def gated_routes(config: DeliberateConfig) -> list[str]:
    """Routes with at least one learned-gate rung."""
    return [r.name for r in config.routes if any(g.verifier == GATE for g in (r.escalate_to or []))]


def source_route(config: DeliberateConfig) -> str | None:
    """The route whose answers the gate is fitted on (None: the policy has no gated rung)."""
    gated = set(gated_routes(config))
    if not gated:
        return None
    for klass in config.policy.classes.values() if config.policy else ():
        if klass.gain is not None and klass.gain.ladder in gated:
            return klass.gain.cheap
    return config.default_route


async def features(
    question: str, text: str, finish_reason: str | None, logprobs: Sequence[TokenLogprob]
) -> dict[str, float]:
    """The gate features of one answer, as a serving ladder computes them (no backend call:
    the confidence comes from the answer's own token logprobs)."""
    candidate = Candidate(0, text, logprobs=tuple(logprobs) or None, finish_reason=finish_reason)
    (checked,) = await ArithmeticConsistencyVerifier().score(question, [candidate])
    (confident,) = await ConfidenceVerifier().score(question, [candidate])
    return answer_features(question, candidate, checked.value, confident.value)


def rows_of(outcomes: Sequence[Any]) -> list[GateRow]:
    """Fit rows from outcomes that carry gate features (errored ones are left out)."""
    return [
        GateRow(o.gate_features, o.correct)
        for o in outcomes
        if o.gate_features is not None and o.error is None
    ]


def with_gate(raw: Mapping[str, Any], fit: GateFit) -> dict[str, Any]:
    """A copy of the policy file where every learned-gate rung carries the fitted params."""
    out = copy.deepcopy(dict(raw))
    for route in out.get("routes") or []:
        rungs = route.get("escalate_to") or []
        for rung in [rungs] if isinstance(rungs, dict) else rungs:
            if isinstance(rung, dict) and rung.get("verifier") == GATE:
                rung["verifier_params"] = fit.params()
    return out
