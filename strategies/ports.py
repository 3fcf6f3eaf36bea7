"""The ports strategies use to reach backends: ``Generator`` and ``Verifier``.

Strategies never see HTTP. The gateway provides a vLLM-backed ``Generator``
(``gateway/backends/generator.py``); tests provide scripted fakes (``tests/fakes.py``).
One calling convention: every port method is async.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from strategies.usage import Usage

Message = dict[str, Any]


class BudgetExhausted(Exception):
    """Raised by a budget-guarded ``Generator`` when the request has no backend calls or
    candidates left; the argument names the cap (``backend_calls``, ``candidates``, ``tokens``)."""


@dataclass(frozen=True, slots=True)
class GenRequest:
    """One backend generation call (chat completions).

    ``n`` samples share the prompt's KV blocks in ONE backend request. With
    ``continue_final_message`` the last message must be a partial assistant message, which the
    backend continues (``add_generation_prompt`` is then false). ``extra`` carries any other
    OpenAI/vLLM field verbatim (``response_format``, ``seed``, ``thinking_token_budget``...).
    """

    messages: Sequence[Message]
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    continue_final_message: bool = False
    prompt_logprobs: int | None = None
    """Ask for the logprob of every prompt token (vLLM's ``prompt_logprobs``): how a verifier
    scores a given text without generating it."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its logprob and the top alternatives at that position."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class GenChoice:
    """One sample. ``tokens`` is its exact generated-token count (from vLLM's token ids), of
    which ``reasoning_tokens`` were thinking (``reasoning``, end marker included): hidden work
    even when this sample is the answer."""

    index: int
    text: str
    tokens: int
    finish_reason: str | None
    stop_reason: str | int | None = None
    reasoning: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    raw_logprobs: Any = None  # the backend's logprobs object, to hand back to the client as-is
    reasoning_tokens: int = 0

    @property
    def answer_tokens(self) -> int:
        """The tokens of the answer itself (``text``): what the client sees of this sample."""
        return max(0, self.tokens - self.reasoning_tokens)


@dataclass(frozen=True, slots=True)
class GenResult:
    """The answer to one ``GenRequest``. ``usage.prompt`` counts the prompt once (it was sent
    once); ``usage.visible`` holds every generated answer token — the strategy decides which
    of them the client sees and re-labels the rest as hidden — and ``usage.hidden`` the
    samples' thinking (``GenChoice.reasoning_tokens``), hidden whichever sample is chosen."""

    choices: tuple[GenChoice, ...]
    usage: Usage
    model: str = ""
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """Per prompt token (the first has none), when the request asked for them."""


class Generator(Protocol):
    """A chat backend. Its errors (unreachable, timeout, refusal) propagate unchanged."""

    async def generate(self, request: GenRequest) -> GenResult: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A complete answer to score: the full text and its extracted final answer (if any)."""

    index: int
    text: str
    answer: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    """The generated tokens' logprobs, when the candidate was sampled with them."""
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Score:
    """A verifier's judgement of one candidate. ``value`` is in [0, 1] (1 = surely right);
    ``usage`` counts any backend tokens the verifier spent (all hidden)."""

    value: float
    detail: str = ""
    usage: Usage = Usage()


class Verifier(Protocol):
    """Scores whole candidates (ORM) or the steps of one partial solution (PRM)."""

    name: str

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        """One ``Score`` per candidate, in order."""
        ...

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        """One ``Score`` per step (step i judged given steps[:i]), in order."""
        ...
