"""Native thinking on sampling routes: every candidate thinks first, within a budget the
backend enforces.

With a vLLM reasoning parser, ``thinking_token_budget`` makes the engine close the thinking
after B tokens; the reply's ``reasoning`` is the thinking and ``content`` the answer. A route
with ``thinking`` set asks each candidate (best-of-n, self-consistency, ladder waves) to think
that way. Votes, verifiers and answer extraction read ``content`` only: the thinking is hidden
work, never a ballot.

``prefill`` opens the thinking in the assistant message for models whose chat template does
not (SmolLM2 here); leave it empty for a model that starts thinking on its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]

DEFAULT_EFFORT_BUDGETS: dict[Effort, int] = {
    "none": 0,
    "minimal": 32,
    "low": 64,
    "medium": 128,
    "high": 256,
    "xhigh": 512,
}


class ThinkingParams(BaseModel):
    """A route's native thinking: the budget per candidate and how ``reasoning_effort`` maps
    to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int = Field(128, ge=0, description="thinking_token_budget per candidate (B).")
    effort_budgets: dict[Effort, int] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS),
        description="reasoning_effort → B on this route.",
    )
    prefill: str = Field(
        "<think>\n",
        description="Assistant text that opens the thinking ('' when the chat template does).",
    )


def thinking_budget(params: ThinkingParams, effort: str | None) -> int:
    """B for a request: the effort's budget when the route maps that effort, else the route's."""
    if effort is not None and effort in params.effort_budgets:
        return params.effort_budgets[effort]
    return params.budget
