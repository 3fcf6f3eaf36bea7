"""A learned second-stage gate: P(this answer is right) from what is known after a rung.

The router's predictor sees only the prompt. Once the cheap rung has answered, more is known:
what the arithmetic checker makes of the answer, how confident the model was in its own tokens,
whether the answer was cut off. ``LearnedGateVerifier`` combines those signals with a logistic
model fitted by ``deliberate calibrate`` on measured outcomes (``routing.gate_fit``), so a
ladder rung gated by it climbs when the *calibrated* probability that the first answer is
right falls below the rung's threshold, instead of on one raw verifier score.

Features, each in [0, 1] (``GATE_FEATURES``; the model names the ones it uses):

- ``arithmetic``: the arithmetic checker's score (0.5 when it has no evidence);
- ``checkable``: 1 when the checker has evidence (the question is plain arithmetic, or the
  answer writes an equation), else 0; the model can learn to trust ``arithmetic`` only then;
- ``confidence``: the confidence verifier's ``mean`` signal (from the candidate's own logprobs,
  else one prompt-logprobs call);
- ``cut_off``: 1 when the answer stopped on its token limit;
- ``has_number``: 1 when the answer contains a digit;
- ``options``: 1 when the question lists at least two lettered options.

The model is a handful of numbers kept in the policy file as the rung's ``verifier_params``
(``{bias, weights: {feature: w}}``), readable and editable by hand. Scores are probabilities
in [0, 1]; a verifier's usage (the confidence call, if any) is carried on each score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from strategies.answers import lists_options
from strategies.ports import Candidate, Score, Verifier
from strategies.usage import Usage
from strategies.verifiers.arithmetic import is_checkable

GATE_FEATURES = ("arithmetic", "checkable", "confidence", "cut_off", "has_number", "options")


@dataclass(frozen=True)
class GateModel:
    """P(right) = sigmoid(bias + Σ weights[f] · feature f). Unknown feature names are refused
    (``ValueError``) so a typo in the policy file cannot silently zero a weight."""

    bias: float
    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.weights) - set(GATE_FEATURES)):
            known = ", ".join(GATE_FEATURES)
            raise ValueError(f"unknown gate feature(s) {unknown}; known: {known}")
        values = [self.bias, *self.weights.values()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("gate bias and weights must be finite numbers")

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.bias + sum(w * features.get(f, 0.0) for f, w in self.weights.items())
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


def question_features(question: str) -> dict[str, float]:
    """The features that depend on the question alone."""
    return {"options": float(lists_options(question))}


def answer_features(
    question: str, candidate: Candidate, arithmetic: float, confidence: float
) -> dict[str, float]:
    """Every gate feature of one candidate, given its two verifier scores."""
    return {
        **question_features(question),
        "arithmetic": arithmetic,
        "checkable": float(is_checkable(question, candidate.text)),
        "confidence": confidence,
        "cut_off": float(candidate.finish_reason == "length"),
        "has_number": float(any(ch.isdigit() for ch in candidate.text)),
    }


class LearnedGateVerifier:
    """Scores = ``model.probability`` of each candidate's features. ``arithmetic`` and
    ``confidence`` are the verifiers that give the two scored features (built by the registry;
    tests pass fakes). Wants logprobs, so a ladder samples its candidates with them and the
    confidence feature costs no extra call.

    ``score_steps`` has no per-step features to learn from: it returns the confidence
    verifier's step scores (the signal a search would use without the gate)."""

    name = "learned-gate"
    wants_logprobs = True

    def __init__(self, model: GateModel, arithmetic: Verifier, confidence: Verifier) -> None:
        self.model = model
        self._arithmetic = arithmetic
        self._confidence = confidence

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        checked = await self._arithmetic.score(question, candidates)
        confident = await self._confidence.score(question, candidates)
        out = []
        for c, a, k in zip(candidates, checked, confident, strict=True):
            p = self.model.probability(answer_features(question, c, a.value, k.value))
            usage: Usage = a.usage + k.usage
            out.append(Score(p, f"P(right)={p:.2f} [arithmetic {a.value:.2f}, {k.detail}]", usage))
        return out

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return await self._confidence.score_steps(question, steps)
