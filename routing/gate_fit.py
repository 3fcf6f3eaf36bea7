"""Fitting the learned second-stage gate (pure; scikit-learn).

Input: one row per measured first answer — its gate features
(``strategies.verifiers.gate.answer_features``) and whether the answer was right. Output: the
``{bias, weights}`` a ``learned-gate`` rung takes as ``verifier_params``, with the AUROC of the
gate and of each raw signal on the same rows, so a report can show whether the combination
ranks right answers above wrong ones better than either verifier alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from strategies.verifiers.gate import GATE_FEATURES, GateModel


@dataclass(frozen=True)
class GateRow:
    features: Mapping[str, float]
    correct: bool


@dataclass(frozen=True)
class GateFit:
    """The fitted model; ``auroc`` per signal (``gate``, ``arithmetic``, ``confidence``) on
    ``rows`` rows of which ``right`` were right; None where only one outcome was seen."""

    model: GateModel
    rows: int
    right: int
    auroc: Mapping[str, float | None]

    def params(self) -> dict[str, Any]:
        """The rung's ``verifier_params`` (rounded: the file stays readable)."""
        return {
            "bias": round(self.model.bias, 4),
            "weights": {f: round(w, 4) for f, w in self.model.weights.items()},
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.params(), "rows": self.rows, "right": self.right, "auroc": dict(self.auroc)}


def auroc(rows: Sequence[GateRow], score: Sequence[float]) -> float | None:
    """P(a right answer outscores a wrong one), ties half; None with one class only."""
    y = [r.correct for r in rows]
    if all(y) or not any(y):
        return None
    return float(roc_auc_score(y, score))


def evaluate(model: GateModel, rows: Sequence[GateRow]) -> dict[str, float | None]:
    """AUROC of the gate and of the two raw verifier signals on ``rows``."""
    return {
        "gate": auroc(rows, [model.probability(r.features) for r in rows]),
        "arithmetic": auroc(rows, [r.features.get("arithmetic", 0.5) for r in rows]),
        "confidence": auroc(rows, [r.features.get("confidence", 0.5) for r in rows]),
    }


def fit_gate(rows: Sequence[GateRow], *, c: float = 1.0, seed: int = 0) -> GateFit:
    """Logistic regression of ``correct`` on every gate feature (L2, strength ``1/c``: with a
    few dozen rows the weights stay moderate). With one outcome only, the model is a constant
    (Laplace-smoothed rate, no weights). ``ValueError`` on no rows or a feature outside
    ``GATE_FEATURES``."""
    if not rows:
        raise ValueError("need at least one measured answer to fit the gate")
    for r in rows:
        if unknown := set(r.features) - set(GATE_FEATURES):
            raise ValueError(f"unknown gate feature(s) {sorted(unknown)}")
    right = sum(r.correct for r in rows)
    if right in (0, len(rows)):
        rate = (right + 1.0) / (len(rows) + 2.0)
        model = GateModel(float(np.log(rate / (1.0 - rate))), {})
        return GateFit(model, len(rows), right, evaluate(model, rows))
    x = np.array([[r.features.get(f, 0.0) for f in GATE_FEATURES] for r in rows], dtype=float)
    y = np.array([r.correct for r in rows], dtype=bool)
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    lr.fit(x, y)
    weights = {f: float(w) for f, w in zip(GATE_FEATURES, lr.coef_[0], strict=True) if w != 0.0}
    model = GateModel(float(lr.intercept_[0]), weights)
    return GateFit(model, len(rows), right, evaluate(model, rows))
