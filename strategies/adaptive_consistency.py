"""adaptive self-consistency: sample in waves, stop as soon as the vote is decided.

The waves run on the same machinery as escalation ladders (``strategies.waves``): one
``n = wave`` request each, later waves reusing the cached prompt prefix, every sample kept
in one pool. Two stopping rules:

- ``stop: posterior`` (``voting.leader_confidence``): after each wave, the posterior
  probability that the leading answer beats the runner-up, with a uniform prior on the
  leader's share among the two, must reach ``confidence``. Unanimous waves of 2+2 stop at 4
  samples (0.969 ≥ 0.95); a split vote keeps sampling up to the sum of ``waves``.
- ``stop: confidence`` (DeepConf's online early stop): the samples are drawn with token
  logprobs, each weighted by its confidence (``signal``), and sampling stops once the
  confidence-weighted leader holds ``share`` of the weight (after ``min_samples``).

``vote: confidence`` weights the final vote by the same confidences and keeps only the most
confident ``keep_top`` share of samples (DeepConf's filtering); ``majority`` counts each once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from strategies.base import Choice, StopReason, StrategyContext, StrategyRequest, StrategyResult
from strategies.best_of_n import DeadlineExceeded, SamplingParams
from strategies.confidence import Signal, signal_value
from strategies.voting import (
    confidence_vote,
    leader_confidence,
    majority_vote,
    weighted_leader_share,
)
from strategies.waves import CandidatePool, candidate_detail, draw, relabel


class AdaptiveConsistencyParams(SamplingParams):
    waves: list[int] = Field([2, 2, 4, 8], min_length=1, description="Samples per wave.")
    stop: Literal["posterior", "confidence"] = Field(
        "posterior", description="Stopping rule after each wave (see the module docstring)."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="stop=posterior: stop when the leader is this sure."
    )
    share: float = Field(
        0.8,
        gt=0.5,
        le=1.0,
        description="stop=confidence: stop when the confidence-weighted leader holds this share.",
    )
    min_samples: int = Field(4, ge=1, description="stop=confidence: never stop before this.")
    vote: Literal["majority", "confidence"] = Field(
        "majority", description="Final vote: one per sample, or weighted by confidence."
    )
    keep_top: float = Field(
        1.0, gt=0, le=1, description="vote=confidence: keep only this most confident share."
    )
    signal: Signal = Field("mean", description="Which confidence weights a sample.")

    @field_validator("waves")
    @classmethod
    def _positive(cls, waves: list[int]) -> list[int]:
        if any(w < 1 for w in waves):
            raise ValueError("every wave needs at least 1 sample")
        if sum(waves) > 64:
            raise ValueError("at most 64 samples in all")
        return waves

    @property
    def wants_logprobs(self) -> bool:
        return self.stop == "confidence" or self.vote == "confidence"


@dataclass(frozen=True)
class AdaptiveConsistency:
    params: AdaptiveConsistencyParams

    def _weights(self, pool: CandidatePool) -> list[float]:
        out = []
        for i in range(len(pool)):
            stats = pool.confidence(i)
            out.append(signal_value(stats, self.params.signal) if stats is not None else 0.0)
        return out

    async def run(self, request: StrategyRequest, ctx: StrategyContext) -> StrategyResult:
        p = self.params
        pool = CandidatePool(p.answer)
        pool.seed(request.seeds[: max(0, sum(p.waves) - 1)])
        progress: list[float] = []
        reason: StopReason = "max_steps"
        for k, wave in enumerate(p.waves):
            if ctx.budget.remaining == 0:
                reason = "budget"
                break
            try:
                choices, usage, model, used = await draw(
                    request, ctx, p, wave, logprobs=p.wants_logprobs
                )
            except DeadlineExceeded:
                if not len(pool):
                    raise
                reason = "deadline"
                break
            pool.model = pool.model or model
            pool.add(choices, k, usage)
            if p.stop == "posterior":
                progress.append(round(leader_confidence(pool.answers), 4))
                done = progress[-1] >= p.confidence
            else:
                progress.append(round(weighted_leader_share(pool.answers, self._weights(pool)), 4))
                done = len(pool) >= p.min_samples and progress[-1] >= p.share
            what = "confidence" if p.stop == "posterior" else "weighted share"
            ctx.note(f"{len(pool)} samples, leader {what} {progress[-1]:.2f}\n")
            if done:
                reason = "converged"
                break
            if used < wave:
                reason = "budget"
                break
        if p.vote == "confidence":
            vote = confidence_vote(pool.answers, self._weights(pool), p.keep_top)
        else:
            vote = majority_vote(pool.answers)
        chosen = vote.chosen if vote.chosen is not None else 0
        pick = pool.choices[chosen]
        info: dict[str, Any] = {
            "selector": "confidence" if p.vote == "confidence" else "majority",
            "stop": p.stop,
            "samples": len(pool),
            "max_samples": sum(p.waves),
            "backend_calls": len(progress),
            "confidence" if p.stop == "posterior" else "leader_share": progress,
            "answers": list(pool.answers),
            "votes": vote.tally,
            "vote_margin": vote.margin,
            "tie": vote.tie,
            "no_answer": vote.winner is None,
            "chosen_index": chosen,
        }
        info["candidates"] = candidate_detail(pool, None, chosen)
        logprobs = pick.raw_logprobs if request.logprobs else None
        return StrategyResult(
            choices=(Choice(pick.text, pick.finish_reason, pick.reasoning, logprobs),),
            usage=relabel(pool, chosen),
            stop_reason=reason,
            info=info,
            model=pool.model,
            candidates=tuple(pool.choices),
        )
