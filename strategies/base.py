"""What every strategy takes and returns, and the budget it must respect.

A strategy is ``async run(request, ctx) -> StrategyResult``. It reaches backends only
through ``ctx.generator`` (and verifiers built on it), charges every call to ``ctx.budget``,
and stops — returning its best candidate so far with a ``stop_reason`` — when the token
budget or the deadline runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from strategies.ports import BudgetExhausted as BudgetExhausted
from strategies.ports import GenChoice, Generator, GenRequest, GenResult, Message
from strategies.tracing import NO_TRACING, Tracer
from strategies.usage import Usage

StopReason = Literal[
    "completed", "converged", "verified", "budget", "deadline", "max_steps", "no_answer"
]


@dataclass(frozen=True, slots=True)
class StrategyRequest:
    """The client's request as a strategy sees it.

    ``max_tokens`` bounds each candidate's visible length; ``sampling`` holds the other
    OpenAI/vLLM fields to apply to every backend call (temperature, top_p, seed, stop,
    response_format...), passed through verbatim.
    """

    messages: Sequence[Message]
    max_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    seeds: tuple[GenChoice, ...] = ()
    """Answers already generated for this request (an escalated cascade's first answer):
    voting strategies count them as candidates and sample that many fewer."""


@dataclass
class TokenBudget:
    """What a request may still spend; every limit None = unlimited.

    ``limit`` caps generated tokens (visible + hidden), ``hidden_limit`` the hidden tokens a
    strategy plans (a thinking budget), ``max_calls`` the backend generation calls and
    ``max_candidates`` the sampled sequences (sum of ``n``). ``charge`` is called with every
    call's usage; strategies ask ``allows``/``remaining`` before spending and size their calls
    with ``cap``. Out of calls or candidates, ``remaining`` is 0, so every strategy's "budget
    spent" path stops it with its best answer so far.
    """

    limit: int | None = None
    spent: Usage = Usage()
    total_limit: int | None = None
    """Prompt + generated tokens of all calls (a tenant's reservation); a call's prompt is
    only known after it, so the last call may pass it by its prompt."""
    hidden_limit: int | None = None
    max_calls: int | None = None
    max_candidates: int | None = None
    calls: int = 0
    candidates: int = 0

    @property
    def exhausted_by(self) -> str | None:
        """Which cap is used up: ``backend_calls``, ``candidates``, ``tokens`` (or None)."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            return "backend_calls"
        if self.max_candidates is not None and self.candidates >= self.max_candidates:
            return "candidates"
        if self.remaining == 0:
            return "tokens"
        return None

    @property
    def remaining(self) -> int | None:
        """Tokens that may still be generated (0 when out of calls or candidates)."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            return 0
        if self.max_candidates is not None and self.candidates >= self.max_candidates:
            return 0
        left = [
            x
            for x in (
                None if self.limit is None else self.limit - self.spent.completion,
                None
                if self.total_limit is None
                else self.total_limit - self.spent.prompt - self.spent.completion,
            )
            if x is not None
        ]
        return max(0, min(left)) if left else None

    @property
    def calls_left(self) -> int | None:
        return None if self.max_calls is None else max(0, self.max_calls - self.calls)

    @property
    def candidates_left(self) -> int | None:
        if self.max_candidates is None:
            return None
        return max(0, self.max_candidates - self.candidates)

    def charge(self, usage: Usage) -> None:
        self.spent = self.spent + usage

    def cap(self, wanted: int | None) -> int | None:
        """``wanted`` tokens clipped to what is left (None = no limit from either side)."""
        rem = self.remaining
        if rem is None:
            return wanted
        return rem if wanted is None else min(wanted, rem)

    def cap_hidden(self, wanted: int) -> int:
        """A hidden-token plan (thinking budget) clipped to the hidden cap and what is left."""
        if self.hidden_limit is not None:
            wanted = min(wanted, self.hidden_limit)
        capped = self.cap(wanted)
        return wanted if capped is None else capped

    def allows(self, tokens: int) -> bool:
        rem = self.remaining
        return rem is None or rem >= tokens


@dataclass
class BudgetGuard:
    """A ``Generator`` that enforces a budget's call and candidate caps on every call.

    Strategies stop on their own when ``remaining`` reaches 0; this is the hard backstop:
    ``n`` is clipped to the candidates left, ``max_tokens`` to the tokens left, and a call
    with nothing left raises ``BudgetExhausted`` instead of reaching the backend.
    """

    inner: Generator
    budget: TokenBudget

    async def generate(self, request: GenRequest) -> GenResult:
        b = self.budget
        if b.exhausted_by in ("backend_calls", "candidates"):
            raise BudgetExhausted(b.exhausted_by)
        n = request.n
        if (left := b.candidates_left) is not None:
            n = min(n, left)
        max_tokens = b.cap(request.max_tokens)
        if max_tokens == 0:
            raise BudgetExhausted("tokens")
        b.calls += 1
        b.candidates += n
        if n != request.n or max_tokens != request.max_tokens:
            request = replace(request, n=n, max_tokens=max_tokens)
        return await self.inner.generate(request)


@dataclass
class Deadline:
    """A monotonic point in time; ``remaining_s`` is None when there is none."""

    at: float | None = None
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(None if seconds is None else clock() + seconds, clock)

    @property
    def remaining_s(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        rem = self.remaining_s
        return rem is not None and rem <= 0


@dataclass
class StrategyContext:
    """Collaborators and limits of one run."""

    generator: Generator
    budget: TokenBudget = field(default_factory=TokenBudget)
    deadline: Deadline = field(default_factory=Deadline)
    note: Callable[[str], None] = field(default=lambda _: None)
    """Short progress notes ("sampled 8 candidates"), streamed to clients that opted in."""
    tracer: Tracer = NO_TRACING
    """Spans for ladder rungs and verifier calls (``strategies.tracing``)."""


@dataclass(frozen=True, slots=True)
class Choice:
    """An answer returned to the client."""

    text: str
    finish_reason: str | None = "stop"
    reasoning: str | None = None
    logprobs: Any = None


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """What a strategy produced. ``usage`` has every token of the request by kind;
    ``info`` is the ``deliberate`` extension object (samples, votes, scores...)."""

    choices: tuple[Choice, ...]
    usage: Usage
    stop_reason: StopReason
    info: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    candidates: tuple[GenChoice, ...] = ()
    """Every candidate the strategy chose among (seeds first), for ladders that keep them in
    their pool; empty when the strategy produced one answer only."""


class Strategy(Protocol):
    """A test-time-compute strategy built from a route's params."""

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult: ...


@dataclass
class CountingGenerator:
    """A ``Generator`` that counts the backend calls made through it (strategy and judges)."""

    inner: Generator
    calls: int = 0

    async def generate(self, request: GenRequest) -> GenResult:
        self.calls += 1
        return await self.inner.generate(request)


def with_instruction(messages: Sequence[Message], instruction: str) -> list[Message]:
    """A copy of ``messages`` with ``instruction`` appended to the system prompt (or added
    as one), so the client's own system prompt still applies."""
    msgs = [dict(m) for m in messages]
    if not instruction:
        return msgs
    if msgs and msgs[0].get("role") == "system" and isinstance(msgs[0].get("content"), str):
        msgs[0]["content"] = f"{msgs[0]['content']}\n\n{instruction}"
    else:
        msgs.insert(0, {"role": "system", "content": instruction})
    return msgs
