"""The learned second-stage gate: model, features, verifier, fit, and its calibration wiring."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import calibrate_gate as gates
from gateway.calibrate import GATE_FILE, run_calibration
from routing.config import DeliberateConfig
from routing.gain import verifiable
from routing.gate_fit import GateRow, fit_gate
from routing.loader import load_config
from routing.policy_config import GainRule
from strategies.ports import Candidate, Score, TokenLogprob
from strategies.usage import Usage
from strategies.verifiers.gate import GateModel, LearnedGateVerifier, answer_features
from strategies.verifiers.registry import build_verifier, params_problems
from tests.fakes import FakeVLLM
from tests.unit.test_calibration import RAW, fake_factory, items

pytestmark = pytest.mark.anyio


def test_model_is_a_logistic_of_the_named_features() -> None:
    model = GateModel(-1.0, {"arithmetic": 4.0})
    assert model.probability({"arithmetic": 0.25}) == pytest.approx(0.5)
    assert model.probability({}) == pytest.approx(1 / (1 + math.e))
    assert GateModel(-800.0, {}).probability({}) == 0.0  # no overflow at extreme logits
    assert GateModel(800.0, {}).probability({}) == 1.0


@pytest.mark.parametrize(
    ("bias", "weights", "match"),
    [(0.0, {"colour": 1.0}, "unknown gate feature"), (math.nan, {}, "finite")],
)
def test_model_refuses_unknown_features_and_non_numbers(
    bias: float, weights: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        GateModel(bias, weights)


def test_answer_features() -> None:
    question = "What is 17 + 25?"
    f = answer_features(question, Candidate(0, "42", finish_reason="length"), 0.875, 0.7)
    assert f == {
        "arithmetic": 0.875,
        "checkable": 1.0,
        "confidence": 0.7,
        "cut_off": 1.0,
        "has_number": 1.0,
        "options": 0.0,
    }
    open_q = answer_features("Which?\nA) red\nB) blue", Candidate(0, "B"), 0.5, 0.4)
    assert open_q["checkable"] == 0.0 and open_q["options"] == 1.0
    assert open_q["has_number"] == 0.0 and open_q["cut_off"] == 0.0


class Fixed:
    """A scripted verifier: one score per candidate, in order, each with ``usage``."""

    def __init__(self, name: str, values: Sequence[float], usage: Usage | None = None) -> None:
        self.name, self.values, self.usage = name, values, usage or Usage()
        self.seen: list[list[str]] = []

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        self.seen.append([c.text for c in candidates])
        return [Score(v, self.name, self.usage) for v in self.values[: len(candidates)]]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return [Score(0.3, "step") for _ in steps]


async def test_verifier_combines_both_scores_and_carries_their_usage() -> None:
    model = GateModel(-2.0, {"arithmetic": 2.0, "confidence": 2.0})
    arithmetic = Fixed("arithmetic", [1.0, 0.0])
    confidence = Fixed("confidence", [1.0, 0.5], Usage(prompt=7, hidden=1))
    gate = LearnedGateVerifier(model, arithmetic, confidence)
    scores = await gate.score("What is 2 + 2?", [Candidate(0, "4"), Candidate(1, "5")])
    assert [s.value for s in scores] == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.e)])
    assert all(s.usage == Usage(prompt=7, hidden=1) for s in scores)
    assert scores[0].detail.startswith("P(right)=0.88")
    assert arithmetic.seen == confidence.seen == [["4", "5"]]
    assert [s.value for s in await gate.score_steps("q", ["a", "b"])] == [0.3, 0.3]
    assert gate.wants_logprobs is True


async def test_registry_builds_the_gate_and_names_bad_params() -> None:
    gate = build_verifier(
        "learned-gate", gates_context(), {"bias": -1, "weights": {"arithmetic": 4}}
    )
    right, wrong = await gate.score("What is 2 + 3?", [Candidate(0, "5"), Candidate(1, "6")])
    assert right.value > 0.9 > 0.4 > wrong.value
    assert params_problems("learned-gate", {"bias": 0, "weights": {"colour": 1}})[0][0] == "weights"
    assert params_problems("learned-gate", {"weights": {}}) == [("bias", "Field required")]


def gates_context() -> Any:
    from strategies.verifiers.registry import VerifierContext

    return VerifierContext()


def logprobs(value: float) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob("x", math.log(value)) for _ in range(4))


async def test_features_come_from_the_answers_own_logprobs() -> None:
    sure = await gates.features("What is 2 + 3?", "5", "stop", logprobs(0.9))
    unsure = await gates.features("What is 2 + 3?", "5", "stop", logprobs(0.3))
    assert sure["confidence"] > unsure["confidence"] and sure["arithmetic"] == 0.875
    assert (await gates.features("What is 2 + 3?", "5", "stop", ()))["confidence"] == 0.5


def test_fit_learns_which_signal_separates_right_from_wrong() -> None:
    def row(arith: float, conf: float, ok: bool) -> GateRow:
        return GateRow({"arithmetic": arith, "checkable": 1.0, "confidence": conf}, ok)

    rows = [row(0.875, 0.4, True)] * 10 + [row(0.125, 0.4, False)] * 10
    rows += [row(0.875, 0.9, True), row(0.125, 0.9, False)]
    fit = fit_gate(rows)
    assert fit.model.weights["arithmetic"] > 0 and fit.auroc["gate"] == 1.0
    assert fit.auroc["confidence"] == pytest.approx(0.5) and fit.rows == 22 and fit.right == 11
    params = fit.params()
    assert set(params) == {"bias", "weights"} and json.dumps(fit.to_json())
    assert params_problems("learned-gate", params) == []


def test_fit_with_one_outcome_is_a_smoothed_constant() -> None:
    fit = fit_gate([GateRow({"arithmetic": 0.9}, True)] * 3)
    assert fit.model.weights == {} and fit.model.probability({}) == pytest.approx(0.8)
    assert fit.auroc["gate"] is None
    with pytest.raises(ValueError, match="at least one"):
        fit_gate([])
    with pytest.raises(ValueError, match="unknown gate feature"):
        fit_gate([GateRow({"colour": 1.0}, True)])


GATED_RUNG = {
    "samples": 2,
    "verifier": "learned-gate",
    "verifier_params": {"bias": 0.0, "weights": {}},
    "sampling": {"temperature": 0.8},
}


def gated_raw(rungs: Any = None) -> dict[str, Any]:
    raw = json.loads(json.dumps(RAW))
    raw["routes"].append(
        {
            "name": "gated-ladder",
            "strategy": "single-pass",
            "backend": "default",
            "sampling": {"temperature": 0},
            "escalate_to": [GATED_RUNG] if rungs is None else rungs,
        }
    )
    return raw


def test_source_route_and_with_gate() -> None:
    raw = gated_raw()
    cfg = DeliberateConfig.model_validate(raw)
    assert gates.gated_routes(cfg) == ["gated-ladder"]
    assert gates.source_route(cfg) == "single-pass"  # no gain rule names it: the default
    raw["policy"]["classes"]["arithmetic"]["routes"] = ["best-of-n", "gated-ladder"]
    raw["policy"]["classes"]["arithmetic"]["gain"] = {
        "cheap": "best-of-n",
        "ladder": "gated-ladder",
    }
    assert gates.source_route(DeliberateConfig.model_validate(raw)) == "best-of-n"
    assert gates.source_route(DeliberateConfig.model_validate(RAW)) is None
    fit = fit_gate([GateRow({"arithmetic": 0.9}, True), GateRow({"arithmetic": 0.1}, False)])
    for form in (gated_raw(), gated_raw(GATED_RUNG)):  # a list of rungs, or the one-rung form
        written = gates.with_gate(form, fit)
        rungs = written["routes"][-1]["escalate_to"]
        rung = rungs[0] if isinstance(rungs, list) else rungs
        assert rung["verifier_params"] == fit.params()
        assert form["routes"][-1]["escalate_to"] != rungs  # the input is not changed


def test_a_gated_ladder_escalates_only_questions_whose_answers_compare() -> None:
    cfg = DeliberateConfig.model_validate(gated_raw())
    rule = GainRule(cheap="single-pass", ladder="gated-ladder")
    ladder = cfg.route("gated-ladder")
    assert verifiable(rule, ladder, "What is 12 * 7?")
    assert verifiable(rule, ladder, "Pick one.\nA) red\nB) blue")
    assert not verifiable(rule, ladder, "Name three colours.")


async def test_calibration_fits_the_gate_first_then_measures_the_gated_route(
    tmp_path: Path,
) -> None:
    fake = FakeVLLM()
    fake.replica("http://replica-a:8000").words = ("The answer", " is", " 4.")
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(gated_raw(), sort_keys=False))
    out = tmp_path / "cal"
    kw: dict[str, Any] = {"progress": False, "transport_factory": fake_factory(fake)}
    routes = ["single-pass", "gated-ladder"]
    report = await run_calibration(config, items(), routes, [16], out, 2, **kw)

    source = [o for o in report.outcomes if o.route == "single-pass"]
    assert all(o.gate_features is not None for o in source)
    assert all(o.gate_features is None for o in report.outcomes if o.route == "gated-ladder")
    # the single-pass requests asked for logprobs (the gate's confidence feature)
    sent = [b for b in fake.completions_received() if b.get("stream")]
    assert any(b.get("logprobs") is True for b in sent)
    assert report.gate is not None and report.gate["fit"]["rows"] == 3
    fitted = {k: report.gate["fit"][k] for k in ("bias", "weights")}
    rung = load_config(report.config_path).route("gated-ladder").escalate_to
    assert rung is not None and rung[0].verifier_params == fitted
    assert json.loads((out / GATE_FILE).read_text())["params"] == fitted
    assert "## Learned gate (fitted on single-pass's answers)" in (out / "eval.md").read_text()

    # Same cached answers, same fit: nothing is measured again.
    again = await run_calibration(config, items(), routes, [16], out, 2, **kw)
    assert again.sent == 0
    # A different fit (the cached gate no longer matches) re-measures the gated route only.
    (out / GATE_FILE).write_text(json.dumps({"params": {"bias": 9.0, "weights": {}}}))
    third = await run_calibration(config, items(), routes, [16], out, 2, **kw)
    assert third.sent == 3


async def test_calibration_needs_the_gate_source_route(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(gated_raw(), sort_keys=False))
    with pytest.raises(ValueError, match="include it in routes"):
        await run_calibration(config, items(), ["gated-ladder"], [16], tmp_path / "o", 1)
