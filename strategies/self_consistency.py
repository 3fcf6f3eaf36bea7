"""self-consistency: N sampled candidates in one backend request, majority vote over their
normalised final answers (best-of-n with the ``majority`` selector)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from strategies.base import StrategyContext, StrategyRequest, StrategyResult
from strategies.best_of_n import BestOfN, BestOfNParams, SamplingParams


class SelfConsistencyParams(SamplingParams):
    n: int = Field(8, ge=1, le=64, description="Samples per request (one backend call).")


@dataclass(frozen=True)
class SelfConsistency:
    params: SelfConsistencyParams

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        inner = BestOfN(BestOfNParams(**self.params.model_dump(), selector="majority"))
        return await inner.run(request, ctx)
