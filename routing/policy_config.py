"""Policy-file sections for routing: request classes and the signals that define them, the
per-class policy (candidate routes, quality floor, latency SLO, cost weights), measured
quality tables written by calibration, escalation, and the learned predictor. Pure data."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strategies.sampling import SamplingOverrides

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
Effort = Literal["minimal", "low", "medium", "high"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchRules(_Strict):
    """Signals of a request class, read over the whole conversation. Every condition that is
    set must hold; within ``keywords``, ``regex`` and ``tags`` one match is enough."""

    keywords: list[str] = Field(
        default_factory=list, description="Case-insensitive whole words or phrases; any."
    )
    regex: list[str] = Field(
        default_factory=list, description="Python regular expressions (case-insensitive); any."
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Task tags in the request's metadata (`metadata.task` or comma-separated `metadata.tags`); any.",
    )
    has_code: bool | None = Field(None, description="Contains a fenced code block (or not).")
    min_digits: int | None = Field(None, ge=0, description="At least this many digits.")
    min_operators: int | None = Field(
        None, ge=0, description="At least this many arithmetic operators between numbers."
    )
    min_constraints: int | None = Field(
        None,
        ge=0,
        description="At least this many constraints (must/exactly/at most/list items...).",
    )
    min_chars: int | None = Field(None, ge=0, description="Conversation length at least.")
    max_chars: int | None = Field(None, ge=0, description="Conversation length at most.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"invalid regular expression {p!r}: {e}") from e
        return patterns


class RequestClass(_Strict):
    """A named kind of request. Classes are tried in order; the first that matches wins."""

    name: Name
    description: str = ""
    match: MatchRules = MatchRules()


class CostWeights(_Strict):
    """How a route's cost is scored: ``tokens`` × mean tokens + ``latency_s`` × p50 seconds."""

    tokens: float = Field(1.0, ge=0)
    latency_s: float = Field(0.0, ge=0)


class GainRule(_Strict):
    """The reference article's rule for one class: reason (escalate) only when the task is
    verifiable and the predicted gain of the ladder over its cheap rung reaches ``min_gain``.

    P(cheap right) and P(ladder right) are the predicted qualities of ``cheap`` and ``ladder``
    (measured tables blended with the learned predictor); gain = their difference.
    """

    cheap: Name = Field(description="The cheap route (e.g. greedy single-pass): never escalates.")
    ladder: Name = Field(
        description="The escalation route: a ladder (escalate_to; climbs only on a failed "
        "check) or a multi-sample route (best-of-n, votes, search; runs in full)."
    )
    min_gain: float = Field(
        0.05, ge=0, le=1, description="Escalate only when the predicted gain reaches this."
    )
    never_escalate_above: float = Field(
        0.9, ge=0, le=1, description="Predicted P(cheap right) at or above this: the cheap route."
    )
    start_high_below: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Predicted P(cheap right) below this: skip the cheap rung, start at rung 1.",
    )
    verifiable: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: the ladder's first check must be able to judge this request "
        "(arithmetic: the question is plain arithmetic; confidence: always); for a "
        "multi-sample route, its answers must be comparable (numbers or lettered options).",
    )


class ClassPolicy(_Strict):
    """How requests of one class are routed."""

    routes: list[Name] = Field(min_length=1, description="Candidate routes.")
    min_quality: float = Field(
        0.0, ge=0, le=1, description="Take the cheapest route predicted at least this good."
    )
    latency_slo_ms: float | None = Field(
        None, gt=0, description="Drop routes whose predicted p95 latency is above this."
    )
    cost_weights: CostWeights = CostWeights()
    gain: GainRule | None = Field(
        None, description="Choose between a cheap route and a ladder by predicted gain."
    )


class PredictorRef(_Strict):
    """The learned per-route success predictor written by calibration."""

    path: str = Field(min_length=1, description="Artefact path, relative to the policy file.")
    weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the prediction in predicted quality (rest: measured table).",
    )


class OnlineUpdate(_Strict):
    """Live updates of the measured quality tables from verified ladder outcomes."""

    enabled: bool = Field(False, description="Off by default: the file's tables are the truth.")
    step: float = Field(
        0.02, gt=0, le=0.2, description="Largest change of a quality per observation."
    )


class RoutingPolicy(_Strict):
    """The router: used for ``model: "auto"``."""

    default_class: Name = Field(description="Class of a request no class matches.")
    effort_routes: dict[Effort, Name] = Field(
        default_factory=dict,
        description="`reasoning_effort` → route, for model auto (a client hint; no classification).",
    )
    classes: dict[Name, ClassPolicy] = Field(min_length=1)
    predictor: PredictorRef | None = None
    online_update: OnlineUpdate = Field(
        OnlineUpdate(),
        description="Opt-in: move `measured` qualities by bounded steps from live verified "
        "outcomes; in memory only, written out by `deliberate policy export`.",
    )
    client_sampling: Literal["route", "honour"] = Field(
        "route",
        description="With model auto, whose sampling wins: the route's (the client delegated "
        "the decision) or the client's (`honour`).",
    )


class Measured(_Strict):
    """What calibration measured for one route on one class (editable by hand)."""

    quality: float = Field(ge=0, le=1, description="Share of items answered correctly.")
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    tokens: float = Field(ge=0, description="Mean tokens per request (prompt + visible + hidden).")
    items: int = Field(0, ge=0, description="Items measured.")
    budget: int | None = Field(None, description="The budget (max_tokens) it was measured at.")


VerifierName = Literal["arithmetic", "logprob-judge", "confidence", "learned-gate"]
MAX_RUNGS = 8


class Rung(_Strict):
    """One rung of an escalation ladder: a route, or a number of extra samples.

    The rung runs only when the best answer so far fails its check: ``verifier`` scores the
    pool of candidates and the best one must reach ``threshold``. Every candidate stays in the
    pool for later rungs (votes, scores and the first answer are reused).
    """

    route: Name | None = Field(
        None, description="Run this route, with every candidate so far as its seeds."
    )
    samples: int | None = Field(
        None, ge=1, le=64, description="Draw this many more samples (one n=samples call)."
    )
    verifier: VerifierName = Field(
        "arithmetic", description="Checks the best answer so far before this rung runs."
    )
    verifier_params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the verifier (e.g. confidence signal)."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="The best answer passes at this score.")
    sampling: SamplingOverrides = Field(
        SamplingOverrides(),
        description="Sampling of a `samples` rung (it always applies: it is what makes the rung).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Rung:
        if (self.route is None) == (self.samples is None):
            raise ValueError("a rung is either `route: NAME` or `samples: N` (exactly one)")
        if self.route is not None and self.sampling.fields():
            raise ValueError(
                "`sampling` belongs to `samples` rungs; a route rung uses the route's own sampling"
            )
        if (self.samples or 0) > 1 and self.sampling.temperature == 0:
            raise ValueError(
                "a rung of several samples cannot be greedy (temperature 0): they would all be "
                "the same, and vLLM refuses n > 1 without sampling"
            )
        return self

    @property
    def label(self) -> str:
        """``samples:4`` or the route's name (metrics labels, the ``deliberate`` object)."""
        return f"samples:{self.samples}" if self.samples is not None else str(self.route)


Ladder = Annotated[list[Rung], Field(min_length=1, max_length=MAX_RUNGS)]


def as_ladder(value: Any) -> Any:
    """The one-step form ``escalate_to: {route, verifier, threshold}`` is a one-rung ladder."""
    return [value] if isinstance(value, dict) else value


def ladder_label(rungs: list[Rung] | None) -> str | None:
    """``samples:4>samples:12`` for a ladder (None without one): the decision's ``escalate_to``."""
    return ">".join(r.label for r in rungs) if rungs else None
