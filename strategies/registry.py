"""Strategy names → (params model, factory). The one place a name becomes a strategy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyParams
from strategies.base import Strategy
from strategies.best_of_n import BestOfN, BestOfNParams
from strategies.bounded_reasoning import BoundedReasoning, BoundedReasoningParams
from strategies.prm_search import PrmSearch, PrmSearchParams
from strategies.refine import Refine, RefineParams
from strategies.self_consistency import SelfConsistency, SelfConsistencyParams
from strategies.single_pass import SinglePass, SinglePassParams


@dataclass(frozen=True)
class StrategySpec:
    params: type[BaseModel]
    build: Callable[[Any], Strategy]
    votes: bool  # combines several candidates (tools cannot be voted on)


# single-pass is served as a byte-level pass-through at the HTTP edge; its strategy form here
# runs only as the first step of a cascade (a route with escalate_to).
STRATEGIES: dict[str, StrategySpec] = {
    "single-pass": StrategySpec(SinglePassParams, SinglePass, votes=False),
    "bounded-reasoning": StrategySpec(BoundedReasoningParams, BoundedReasoning, votes=False),
    "best-of-n": StrategySpec(BestOfNParams, BestOfN, votes=True),
    "self-consistency": StrategySpec(SelfConsistencyParams, SelfConsistency, votes=True),
    "adaptive-consistency": StrategySpec(
        AdaptiveConsistencyParams, AdaptiveConsistency, votes=True
    ),
    # Both choose among candidates, and tool calls cannot be critiqued or continued stepwise.
    "refine": StrategySpec(RefineParams, Refine, votes=True),
    "prm-search": StrategySpec(PrmSearchParams, PrmSearch, votes=True),
}
