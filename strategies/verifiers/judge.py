"""The chat backend as a verifier: ask "is this correct?" and read P(Yes) off one token's logprobs.

One judge call is a chat request with ``max_tokens=1, temperature=0, logprobs=True,
top_logprobs=N``; the score is P(yes) = p_yes / (p_yes + p_no), where p_yes sums exp(logprob)
over every top-N entry that reads "yes" once case, spaces and tokenizer word markers are removed
(``Yes``, `` yes``, ``YES``, ``Ġyes``), and likewise p_no. When no such token is in the top N
the score is a neutral 0.5 with detail "no yes/no token in top-N".
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from strategies.ports import (
    BudgetExhausted,
    Candidate,
    Generator,
    GenRequest,
    GenResult,
    Score,
    TokenLogprob,
)
from strategies.usage import Usage

NEUTRAL = 0.5
MAX_TOP_LOGPROBS = 20  # vLLM's cap (21 → HTTP 400)

ANSWER_TEMPLATE = (
    "Here is a question and a proposed answer.\n\n"
    "Question: {question}\n\n"
    "Proposed answer: {response}\n\n"
    "Is the proposed answer correct? Reply with only Yes or No."
)
STEP_TEMPLATE = (
    "Here is a question and a partial solution.\n\n"
    "Question: {question}\n\n"
    "Solution so far:\n{previous}\n\n"
    "Next step: {step}\n\n"
    "Is the next step correct? Reply with only Yes or No."
)
_WORD_MARKERS = " \t\r\n.,!:;\"'*Ġ▁"  # Ġ / ▁: byte-level BPE and sentencepiece word starts


def _word(token: str) -> str:
    return token.strip(_WORD_MARKERS).casefold()


def yes_probability(position: TokenLogprob) -> float | None:
    """P(yes) = p_yes / (p_yes + p_no) at one generated position, or ``None`` when neither a yes
    nor a no token is among its top logprobs (the sampled token counts when ``top`` lacks it)."""
    entries = [(t.token, t.logprob) for t in position.top]
    if (position.token, position.logprob) not in entries:
        entries.append((position.token, position.logprob))
    p_yes = sum(math.exp(lp) for token, lp in entries if _word(token) == "yes")
    p_no = sum(math.exp(lp) for token, lp in entries if _word(token) == "no")
    if p_yes + p_no <= 0.0:
        return None
    return p_yes / (p_yes + p_no)


def _check_template(template: str, **fields: str) -> str:
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + name + "}" for name in fields)
        raise ValueError(f"judge template may use only {allowed}; got error {exc!r}") from exc
    return template


class LogprobJudgeVerifier:
    """A yes/no logprob judge through the ``Generator`` port (see the module docstring).

    ``prompt_template`` may use ``{question}``, ``{response}`` (the candidate's full text) and
    ``{answer}`` (its extracted answer, or the text when none); ``step_template`` may use
    ``{question}``, ``{previous}`` (steps before, blank-line separated, or "(none)") and
    ``{step}``. Candidates of one ``score`` call are judged concurrently, and identical prompts
    (duplicate candidates, common in self-consistency) only once: such a duplicate's ``Score``
    carries zero usage so that summing usages counts each backend call once. A ``Score``'s usage
    is its call's prompt tokens plus its generated token as hidden. Scores are in [0, 1].
    Backend errors (``Generator`` raising) propagate.
    """

    name = "logprob-judge"

    def __init__(
        self,
        generator: Generator,
        *,
        prompt_template: str | None = None,
        step_template: str | None = None,
        top_logprobs: int = MAX_TOP_LOGPROBS,
    ) -> None:
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in 1..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        self._generator = generator
        self._template = _check_template(
            prompt_template or ANSWER_TEMPLATE, question="", response="", answer=""
        )
        self._step_template = _check_template(
            step_template or STEP_TEMPLATE, question="", previous="", step=""
        )
        self._top = top_logprobs

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        prompts = [
            self._template.format(
                question=question,
                response=c.text,
                answer=c.answer if c.answer is not None else c.text,
            )
            for c in candidates
        ]
        return await self._judge_all(prompts)

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        prompts = [
            self._step_template.format(
                question=question, previous="\n\n".join(steps[:i]) or "(none)", step=step
            )
            for i, step in enumerate(steps)
        ]
        return await self._judge_all(prompts)

    async def _judge_all(self, prompts: list[str]) -> list[Score]:
        unique = list(dict.fromkeys(prompts))
        judged = dict(zip(unique, await asyncio.gather(*map(self._judge, unique)), strict=True))
        scores: list[Score] = []
        charged: set[str] = set()
        for prompt in prompts:
            score = judged[prompt]
            if prompt in charged:
                score = Score(score.value, score.detail + " (duplicate)", Usage())
            charged.add(prompt)
            scores.append(score)
        return scores

    async def _judge(self, prompt: str) -> Score:
        try:
            result = await self._judge_call(prompt)
        except BudgetExhausted as e:
            return Score(NEUTRAL, f"not judged: the request's {e} budget is spent")
        return self._read(result)

    async def _judge_call(self, prompt: str) -> GenResult:
        return await self._generator.generate(
            GenRequest(
                messages=({"role": "user", "content": prompt},),
                n=1,
                max_tokens=1,
                temperature=0.0,
                logprobs=True,
                top_logprobs=self._top,
            )
        )

    def _read(self, result: GenResult) -> Score:
        usage = Usage(prompt=result.usage.prompt, hidden=result.usage.completion)
        positions = result.choices[0].logprobs if result.choices else None
        if not positions:
            return Score(NEUTRAL, "no logprobs returned", usage)
        p_yes = yes_probability(positions[0])
        if p_yes is None:
            return Score(NEUTRAL, f"no yes/no token in top-{self._top}", usage)
        return Score(p_yes, f"P(yes)={p_yes:.3f}", usage)
