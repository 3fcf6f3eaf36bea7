"""single-pass: one backend call. The gateway forwards it byte for byte at the HTTP edge;
this strategy form exists for cascades (``escalate_to``), whose first answer must be scored
before the client sees anything."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from strategies.base import Choice, StrategyContext, StrategyRequest, StrategyResult
from strategies.ports import GenRequest


class SinglePassParams(BaseModel):
    """single-pass takes no parameters yet; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SinglePass:
    params: SinglePassParams

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        s = request.sampling
        result = await ctx.generator.generate(
            GenRequest(
                messages=request.messages,
                max_tokens=ctx.budget.cap(request.max_tokens),
                temperature=s.get("temperature"),
                top_p=s.get("top_p"),
                stop=s.get("stop"),
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs,
                extra={k: v for k, v in s.items() if k not in ("temperature", "top_p", "stop")},
            )
        )
        ctx.budget.charge(result.usage)
        c = result.choices[0]
        return StrategyResult(
            choices=(Choice(c.text, c.finish_reason, c.reasoning, c.raw_logprobs),),
            usage=result.usage,
            stop_reason="completed",
            info={"backend_calls": 1},
            model=result.model,
        )
