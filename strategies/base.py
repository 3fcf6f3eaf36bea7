"""What every strategy takes and returns, and the budget it must respect.

A strategy is ``async run(request, ctx) -> StrategyResult``. It reaches backends only
through ``ctx.generator`` (and verifiers built on it), charges every call to ``ctx.budget``,
and stops — returning its best candidate so far with a ``stop_reason`` — when the token
budget or the deadline runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from strategies.ports import Generator, GenRequest, GenResult, Message
from strategies.usage import Usage

StopReason = Literal["completed", "converged", "budget", "deadline", "max_steps", "no_answer"]


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


@dataclass
class TokenBudget:
    """Tokens a request may still generate (visible + hidden); None = unlimited.

    ``charge`` is called with every backend call's usage; strategies ask ``allows`` before
    spending and size their calls with ``cap``.
    """

    limit: int | None = None
    spent: Usage = Usage()

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.spent.completion)

    def charge(self, usage: Usage) -> None:
        self.spent = self.spent + usage

    def cap(self, wanted: int | None) -> int | None:
        """``wanted`` tokens clipped to what is left (None = no limit from either side)."""
        rem = self.remaining
        if rem is None:
            return wanted
        return rem if wanted is None else min(wanted, rem)

    def allows(self, tokens: int) -> bool:
        rem = self.remaining
        return rem is None or rem >= tokens


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
