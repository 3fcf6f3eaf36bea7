"""adaptive self-consistency: sample in waves, stop as soon as the vote is decided.

Stopping rule (``voting.leader_confidence``): after each wave, the posterior probability that
the leading answer beats the runner-up, with a uniform prior on the leader's share among the
two, must reach ``confidence``. Unanimous waves of 2+2 stop at 4 samples (0.969 ≥ 0.95); a
split vote keeps sampling up to the sum of ``waves``. Each wave is one backend request with
``n = wave``; later waves reuse the cached prompt prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from strategies.base import Choice, StopReason, StrategyContext, StrategyRequest, StrategyResult
from strategies.best_of_n import DeadlineExceeded, SamplingParams, answers_of, sample, split_usage
from strategies.ports import GenChoice
from strategies.usage import Usage
from strategies.voting import leader_confidence, majority_vote


class AdaptiveConsistencyParams(SamplingParams):
    waves: list[int] = Field([2, 2, 4, 8], min_length=1, description="Samples per wave.")
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Stop when the leader is this sure."
    )

    @field_validator("waves")
    @classmethod
    def _positive(cls, waves: list[int]) -> list[int]:
        if any(w < 1 for w in waves):
            raise ValueError("every wave needs at least 1 sample")
        if sum(waves) > 64:
            raise ValueError("at most 64 samples in all")
        return waves


@dataclass(frozen=True)
class AdaptiveConsistency:
    params: AdaptiveConsistencyParams

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        choices: list[GenChoice] = []
        answers: list[str | None] = []
        usage = Usage()
        confidences: list[float] = []
        reason: StopReason = "max_steps"
        model = ""
        for wave in self.params.waves:
            if ctx.budget.remaining == 0:
                reason = "budget"
                break
            try:
                result, used = await sample(request, ctx, self.params, wave)
            except DeadlineExceeded:
                if not choices:
                    raise
                reason = "deadline"
                break
            model = result.model
            choices.extend(result.choices)
            answers.extend(answers_of(result.choices, self.params.answer))
            usage = usage + result.usage
            confidences.append(round(leader_confidence(answers), 4))
            ctx.note(f"{len(choices)} samples, leader confidence {confidences[-1]:.2f}\n")
            if confidences[-1] >= self.params.confidence:
                reason = "converged"
                break
            if used < wave:
                reason = "budget"
                break
        vote = majority_vote(answers)
        chosen = vote.chosen if vote.chosen is not None else 0
        pick = choices[chosen]
        info: dict[str, Any] = {
            "selector": "majority",
            "samples": len(choices),
            "max_samples": sum(self.params.waves),
            "backend_calls": len(confidences),
            "confidence": confidences,
            "answers": answers,
            "votes": vote.tally,
            "vote_margin": vote.margin,
            "tie": vote.tie,
            "no_answer": vote.winner is None,
            "chosen_index": chosen,
        }
        return StrategyResult(
            choices=(Choice(pick.text, pick.finish_reason, pick.reasoning, pick.raw_logprobs),),
            usage=split_usage(usage, choices, chosen),
            stop_reason=reason,
            info=info,
            model=model,
        )
