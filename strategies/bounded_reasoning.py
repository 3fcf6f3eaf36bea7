"""bounded-reasoning: think first, within a hidden-token budget B, then answer.

Two modes:
- ``native``: the backend enforces the budget (vLLM ``thinking_token_budget`` with a reasoning
  parser); the reply's ``reasoning`` is hidden, ``content`` is the answer. If the model stopped
  before writing any answer, the answer is produced by continuing the message (phase 2 below).
- ``scratchpad`` (budget forcing, for models without native thinking such as SmolLM2): a
  prompt asks for thinking between the markers and the assistant message is pre-filled with
  the start marker. Phase 1 generates up to B tokens, stopping at the end marker. Phase 2
  closes the thinking if the budget ran out and continues the SAME assistant message for the
  answer (``continue_final_message``), so the whole prefix is reused from the prefix cache.

Thinking tokens are hidden; the answer's tokens are visible. The reasoning text is returned
as ``message.reasoning`` when ``expose_reasoning`` is on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from strategies.base import (
    Choice,
    StrategyContext,
    StrategyRequest,
    StrategyResult,
    with_instruction,
)
from strategies.best_of_n import DeadlineExceeded
from strategies.ports import GenRequest, GenResult, Message
from strategies.thinking import DEFAULT_EFFORT_BUDGETS, Effort
from strategies.usage import Usage

SCRATCHPAD_PROMPT = (
    "Before answering, think step by step inside {start} ... {end}. "
    "Check your work there. After {end}, write only the final answer."
)


class BoundedReasoningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int = Field(256, ge=0, description="Hidden (thinking) tokens B.")
    effort_budgets: dict[Effort, int] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS),
        description="reasoning_effort → B on this route.",
    )
    mode: Literal["scratchpad", "native"] = "scratchpad"
    think_start: str = Field("<think>", min_length=1)
    think_end: str = Field("</think>", min_length=1)
    scratchpad_prompt: str = SCRATCHPAD_PROMPT
    expose_reasoning: bool = Field(True, description="Return the thinking as message.reasoning.")
    max_tokens: int = Field(256, ge=1, description="Answer cap when the client sets none.")
    temperature: float | None = Field(None, ge=0, description="Default when the client sets none.")


@dataclass(frozen=True)
class BoundedReasoning:
    params: BoundedReasoningParams

    def thinking_budget(self, effort: str | None) -> int:
        if effort is not None and effort in self.params.effort_budgets:
            return self.params.effort_budgets[effort]
        return self.params.budget

    def _messages(self, request: StrategyRequest, prefill: str) -> list[Message]:
        p = self.params
        instruction = ""
        if p.mode == "scratchpad":
            instruction = p.scratchpad_prompt.format(start=p.think_start, end=p.think_end)
        msgs = with_instruction(request.messages, instruction)
        msgs.append({"role": "assistant", "content": prefill})
        return msgs

    def _call(
        self,
        request: StrategyRequest,
        messages: list[Message],
        max_tokens: int | None,
        stop: list[str] | None,
        extra: dict[str, Any],
    ) -> GenRequest:
        sampling = dict(request.sampling)
        temperature = sampling.pop("temperature", self.params.temperature)
        top_p = sampling.pop("top_p", None)
        client_stop = sampling.pop("stop", None)
        if stop is None and client_stop is not None:
            stop = [client_stop] if isinstance(client_stop, str) else list(client_stop)
        return GenRequest(
            messages=messages,
            n=1,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            continue_final_message=True,
            extra={**sampling, **extra},
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
        )

    async def _generate(self, ctx: StrategyContext, req: GenRequest) -> GenResult:
        try:
            async with asyncio.timeout(ctx.deadline.remaining_s):
                result = await ctx.generator.generate(req)
        except TimeoutError as e:
            raise DeadlineExceeded from e
        ctx.budget.charge(result.usage)
        return result

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        p = self.params
        budget = self.thinking_budget(request.reasoning_effort)
        think_cap = ctx.budget.cap_hidden(budget)
        start = p.think_start + "\n"
        thinking, forced, think_usage, calls = "", False, Usage(), 0
        think_tokens = 0  # tokens of the thinking itself (vLLM's count in native mode)
        if think_cap > 0:
            extra = {"thinking_token_budget": think_cap} if p.mode == "native" else {}
            stop = None if p.mode == "native" else [p.think_end]
            cap = (
                (think_cap + (request.max_tokens or p.max_tokens))
                if p.mode == "native"
                else think_cap
            )
            first = await self._generate(
                ctx, self._call(request, self._messages(request, start), cap, stop, extra)
            )
            calls += 1
            think_usage = first.usage
            think_tokens = first.usage.hidden if p.mode == "native" else first.usage.completion
            c = first.choices[0]
            if p.mode == "native":
                thinking = (c.reasoning or "").strip()
                if c.text.strip():
                    # The backend answered in the same call; its usage already splits
                    # reasoning (hidden) from content (visible).
                    return self._result(
                        c.text.strip(),
                        c.finish_reason,
                        thinking,
                        budget,
                        False,
                        first.usage,
                        calls,
                        first.model,
                        c.raw_logprobs,
                        think_tokens,
                    )
            else:
                thinking = c.text.strip()
            forced = c.finish_reason == "length"
        prefill = f"{start}{thinking}\n{p.think_end}\n" if thinking else f"{start}{p.think_end}\n"
        answer_cap = ctx.budget.cap(request.max_tokens or p.max_tokens)
        if answer_cap == 0:
            return self._result(
                "",
                "length",
                thinking,
                budget,
                forced,
                _hidden(think_usage),
                calls,
                "",
                None,
                think_tokens,
                reason="budget",
            )
        second = await self._generate(
            ctx, self._call(request, self._messages(request, prefill), answer_cap, None, {})
        )
        calls += 1
        c = second.choices[0]
        usage = _hidden(think_usage) + Usage(prompt=second.usage.prompt, visible=c.tokens)
        # A reasoning parser sees only the continuation, which has no end marker, so it files
        # the whole answer under `reasoning`: in phase 2 that text IS the answer.
        answer = c.text.strip() or (c.reasoning or "").strip()
        return self._result(
            answer,
            c.finish_reason,
            thinking,
            budget,
            forced,
            usage,
            calls,
            second.model,
            c.raw_logprobs,
            think_tokens,
        )

    def _result(
        self,
        text: str,
        finish: str | None,
        thinking: str,
        budget: int,
        forced: bool,
        usage: Usage,
        calls: int,
        model: str,
        logprobs: Any,
        thinking_tokens: int,
        reason: str = "completed",
    ) -> StrategyResult:
        info = {
            "thinking_budget": budget,
            "thinking_tokens": thinking_tokens,
            "forced_close": forced,
            "mode": self.params.mode,
            "backend_calls": calls,
        }
        return StrategyResult(
            choices=(
                Choice(text, finish, thinking if self.params.expose_reasoning else None, logprobs),
            ),
            usage=usage,
            stop_reason=reason,  # type: ignore[arg-type]
            info=info,
            model=model,
        )


def _hidden(u: Usage) -> Usage:
    """Everything a thinking call generated is hidden."""
    return Usage(prompt=u.prompt, hidden=u.visible + u.hidden)
