"""The model's own confidence as a verifier: DeepConf-style scores from token logprobs.

Reference-free and task-agnostic. A candidate sampled with ``logprobs=true`` is scored from its
own tokens at no cost. Any other text is scored by ONE backend call that asks for the prompt
logprobs of the closed chat turn ``[user: question, assistant: text]`` (``max_tokens=1``,
``temperature=0``, ``prompt_logprobs=0``, ``add_generation_prompt=false``); the text's tokens
are found at the end of the prompt by ``strategies.confidence.text_segments``, and the
end-of-turn marker's probability counts with them (a cut-off answer makes it low). Candidates
sampled with logprobs do not have that marker, so the two paths differ slightly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from strategies.confidence import (
    DEFAULT_TAIL,
    DEFAULT_WINDOW,
    SIGNALS,
    ConfidenceStats,
    Segment,
    Signal,
    confidence_stats,
    describe,
    signal_value,
    text_segments,
    trim_prompt,
)
from strategies.ports import (
    BudgetExhausted,
    Candidate,
    Generator,
    GenRequest,
    GenResult,
    Message,
    Score,
    TokenLogprob,
)
from strategies.usage import Usage

NEUTRAL = 0.5
STEP_DELIMITER = "\n\n"


def needs_logprobs(verifier: object) -> bool:
    """Whether ``verifier`` wants candidates sampled with ``logprobs=true`` (it declares a
    ``wants_logprobs = True`` attribute; other verifiers lack it)."""
    return getattr(verifier, "wants_logprobs", False) is True


class ConfidenceVerifier:
    """Scores = the ``signal`` confidence (``mean``, ``lowest_group`` or ``tail``, see
    ``strategies.confidence``) of each candidate's tokens, in [0, 1].

    A candidate whose ``finish_reason`` is ``"length"`` (cut off) has its score multiplied by
    ``length_penalty``. Candidates without logprobs are scored through ``generator`` as the
    module docstring says, concurrently, each distinct text once: a duplicate's ``Score``
    carries zero usage, so summing usages counts each backend call once; a call's usage is its
    prompt tokens plus its generated token as hidden. Without a generator such a candidate
    scores a neutral 0.5 ("no logprobs"). A spent request budget (``BudgetExhausted``) gives
    0.5 too; other backend errors propagate.

    ``score_steps`` scores all steps in ONE call: the assistant message is the steps joined by
    ``step_delimiter``, left open (``continue_final_message``), so step i's tokens are judged
    given steps[:i] and no step is charged an end-of-turn marker. The last step's ``Score``
    carries the call's usage.
    """

    name = "confidence"
    wants_logprobs = True

    def __init__(
        self,
        generator: Generator | None = None,
        *,
        signal: Signal = "mean",
        window: int = DEFAULT_WINDOW,
        tail: int = DEFAULT_TAIL,
        length_penalty: float = 0.5,
        step_delimiter: str = STEP_DELIMITER,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
        if window < 1 or tail < 1:
            raise ValueError(f"window and tail must be >= 1, got window={window}, tail={tail}")
        if not 0.0 <= length_penalty <= 1.0:
            raise ValueError(f"length_penalty must be in [0, 1], got {length_penalty}")
        self._generator = generator
        self._signal: Signal = signal
        self._window = window
        self._tail = tail
        self._penalty = length_penalty
        self._delimiter = step_delimiter

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        pending = list(dict.fromkeys(c.text for c in candidates if not c.logprobs))
        scored: dict[str, Score] = {}
        generator = self._generator
        if generator is not None and pending:
            calls = (self._score_text(generator, question, t) for t in pending)
            results = await asyncio.gather(*calls)
            scored = dict(zip(pending, results, strict=True))
        charged: set[str] = set()
        out: list[Score] = []
        for c in candidates:
            if c.logprobs:
                score = self._score(self._stats(c.logprobs), "", Usage())
            elif c.text in scored:
                score = scored[c.text]
                if c.text in charged:
                    score = Score(score.value, score.detail + " (duplicate)", Usage())
                charged.add(c.text)
            else:
                score = Score(NEUTRAL, "no logprobs")
            if c.finish_reason == "length":
                score = Score(
                    score.value * self._penalty,
                    f"{score.detail}; cut off (x{self._penalty:g})",
                    score.usage,
                )
            out.append(score)
        return out

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        if not steps:
            return []
        if self._generator is None:
            return [Score(NEUTRAL, "no logprobs") for _ in steps]
        solution = self._delimiter.join(steps)
        result = await self._call(self._generator, question, solution, open_turn=True)
        if isinstance(result, Score):
            return [Score(result.value, result.detail) for _ in steps[:-1]] + [result]
        usage = _usage(result)
        if result.prompt_logprobs is None:
            return [Score(NEUTRAL, "no prompt logprobs returned") for _ in steps[:-1]] + [
                Score(NEUTRAL, "no prompt logprobs returned", usage)
            ]
        segments = text_segments(trim_prompt(result.prompt_logprobs), steps)
        scores = [self._from_segment(seg, Usage()) for seg in segments]
        scores[-1] = Score(scores[-1].value, scores[-1].detail, usage)
        return scores

    async def _score_text(self, generator: Generator, question: str, text: str) -> Score:
        result = await self._call(generator, question, text, open_turn=False)
        if isinstance(result, Score):
            return result
        usage = _usage(result)
        if result.prompt_logprobs is None:
            return Score(NEUTRAL, "no prompt logprobs returned", usage)
        (segment,) = text_segments(trim_prompt(result.prompt_logprobs), [text])
        return self._from_segment(segment, usage)

    @staticmethod
    async def _call(
        generator: Generator, question: str, text: str, *, open_turn: bool
    ) -> GenResult | Score:
        """The prompt-logprobs call, or a neutral ``Score`` when the budget is spent."""
        messages: tuple[Message, ...] = (
            {"role": "user", "content": question},
            {"role": "assistant", "content": text},
        )
        request = GenRequest(
            messages=messages,
            n=1,
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            continue_final_message=open_turn,
            extra={"add_generation_prompt": False},
        )
        try:
            return await generator.generate(request)
        except BudgetExhausted as e:
            return Score(NEUTRAL, f"not scored: the request's {e} budget is spent")

    def _stats(self, tokens: Sequence[TokenLogprob]) -> ConfidenceStats:
        return confidence_stats(tokens, self._window, self._tail)

    def _score(self, stats: ConfidenceStats, suffix: str, usage: Usage) -> Score:
        value = signal_value(stats, self._signal)
        return Score(value, describe(stats, self._signal) + suffix, usage)

    def _from_segment(self, segment: Segment, usage: Usage) -> Score:
        suffix = " (prompt logprobs)" if segment.aligned else " (prompt logprobs, approx. span)"
        return self._score(self._stats(segment.tokens), suffix, usage)


def _usage(result: GenResult) -> Usage:
    return Usage(prompt=result.usage.prompt, hidden=result.usage.completion)
