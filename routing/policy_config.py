"""Policy-file sections for routing: request classes and the signals that define them, the
per-class policy (candidate routes, quality floor, latency SLO, cost weights), measured
quality tables written by calibration, escalation, and the learned predictor. Pure data."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class PredictorRef(_Strict):
    """The learned per-route success predictor written by calibration."""

    path: str = Field(min_length=1, description="Artefact path, relative to the policy file.")
    weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the prediction in predicted quality (rest: measured table).",
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


class Measured(_Strict):
    """What calibration measured for one route on one class (editable by hand)."""

    quality: float = Field(ge=0, le=1, description="Share of items answered correctly.")
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    tokens: float = Field(ge=0, description="Mean tokens per request (prompt + visible + hidden).")
    items: int = Field(0, ge=0, description="Items measured.")
    budget: int | None = Field(None, description="The budget (max_tokens) it was measured at.")


class Escalation(_Strict):
    """Answer on this route first; run ``route`` only when ``verifier`` scores the answer
    below ``threshold`` (the first answer is kept as one of the new candidates)."""

    route: Name
    verifier: Literal["arithmetic", "logprob-judge"] = "arithmetic"
    threshold: float = Field(0.5, ge=0, le=1)
