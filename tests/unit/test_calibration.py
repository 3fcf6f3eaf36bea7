"""Calibration: the pure summaries, budget choice and policy-file update (routing/calibration.py),
and the runner (gateway/calibrate.py) against the scripted vLLM."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gateway.calibrate import CACHE_FILE, run_calibration
from gateway.cli import app
from routing import calibration as cal
from routing.config import BackendPool
from routing.evalset import EvalItem, load_eval_set
from routing.loader import load_config, parse_config
from tests.fakes import FakeVLLM

RAW: dict[str, Any] = {
    "version": 1,
    "default_route": "single-pass",
    "backends": [
        {
            "name": "default",
            "model": "fake-model",
            "replicas": ["http://replica-a:8000"],
            "health_interval_s": 3600,
        }
    ],
    "routes": [
        {"name": "single-pass", "strategy": "single-pass", "backend": "default"},
        {
            "name": "bounded-reasoning",
            "strategy": "bounded-reasoning",
            "backend": "default",
            "params": {"budget": 256, "max_tokens": 256},
            "budget": {"deadline_s": 30},
            "downgrade_to": "single-pass",
        },
        {
            "name": "best-of-n",
            "strategy": "best-of-n",
            "backend": "default",
            "params": {"n": 4, "max_tokens": 256},
            "downgrade_to": "bounded-reasoning",
        },
    ],
    "tenants": [{"name": "t", "key_env": "CALIBRATION_TEST_KEY"}],
    "classes": [{"name": "arithmetic", "match": {"min_operators": 1}}],
    "policy": {
        "default_class": "lookup",
        "classes": {
            "arithmetic": {"routes": ["single-pass", "best-of-n"], "latency_slo_ms": 2000},
            "lookup": {"routes": ["single-pass", "bounded-reasoning"]},
        },
    },
}


def outcome(
    route: str = "best-of-n",
    budget: int | None = 64,
    correct: bool = True,
    cls: str = "arithmetic",
    latency: float = 100.0,
    item: str = "i0",
    error: str | None = None,
    tokens: tuple[int, int, int] = (10, 20, 30),
) -> cal.Outcome:
    p, v, h = tokens
    return cal.Outcome(
        item, cls, "fam", "easy", route, budget, correct, p, v, h, 5.0, latency, error
    )


def cells_for(route: str, budget: int, accuracy: float, p95: float, tokens: float) -> cal.Cell:
    return cal.Cell("all", route, budget, 10, int(accuracy * 10), 0, accuracy, 0, 1, tokens,
                    tokens, 0, p95 / 2, p95, None)  # fmt: skip


# --- outcomes and summaries -------------------------------------------------------------------


@pytest.mark.parametrize("error", [None, "HTTP 500: boom"])
def test_outcome_json_round_trip(error: str | None) -> None:
    o = outcome(error=error)
    assert cal.Outcome.from_json(json.loads(json.dumps(o.to_json()))) == o
    assert (o.key, o.generated, o.tokens) == (("i0", "best-of-n", 64), 50, 60)


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [(0, 0, 0.0, 1.0), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (0, 10, 0.0, 0.2775),
     (1, 1, 0.2065, 1.0)],
)  # fmt: skip
def test_wilson_interval(correct: int, n: int, low: float, high: float) -> None:
    lo, hi = cal.wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([7.0], 95, 7.0), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4, 5], 95, 4.8)],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert cal.percentile(values, q) == pytest.approx(expected)


def test_summarize_cells_per_class_route_budget_plus_all() -> None:
    outs = [
        outcome(correct=True, cls="arithmetic", latency=100, item="a"),
        outcome(correct=False, cls="arithmetic", latency=300, item="b"),
        outcome(correct=True, cls="lookup", latency=200, item="c", tokens=(10, 0, 0)),
        outcome(correct=False, cls="lookup", latency=900, item="d", error="HTTP 503"),
        outcome(route="single-pass", budget=32, cls="lookup", item="c"),
    ]
    cells = {(c.request_class, c.route, c.budget): c for c in cal.summarize(outs)}
    assert set(cells) == {
        ("all", "best-of-n", 64),
        ("all", "single-pass", 32),
        ("arithmetic", "best-of-n", 64),
        ("lookup", "best-of-n", 64),
        ("lookup", "single-pass", 32),
    }
    a = cells[("arithmetic", "best-of-n", 64)]
    assert (a.items, a.correct, a.accuracy, a.errors) == (2, 1, 0.5, 0)
    assert (a.mean_tokens, a.mean_generated, a.mean_hidden) == (60, 50, 30)
    assert (a.p50_ms, a.p95_ms, a.p50_ttft_ms) == (200, 290, 5.0)
    every = cells[("all", "best-of-n", 64)]
    assert (every.items, every.correct, every.errors) == (4, 2, 1)
    assert every.mean_tokens == pytest.approx((60 * 3 + 10) / 4)
    assert (every.ci_low, every.ci_high) == cal.wilson_interval(2, 4)
    assert cal.summarize(outs)[0].request_class == "all"  # "all" rows first


# --- budget choice ----------------------------------------------------------------------------

INVERTED_U = [
    cells_for("best-of-n", 32, 0.4, 500, 100),
    cells_for("best-of-n", 64, 0.7, 900, 200),
    cells_for("best-of-n", 128, 0.5, 1800, 400),
    cells_for("best-of-n", 256, 0.45, 3500, 800),
]


@pytest.mark.parametrize(
    ("cells", "slo", "expected"),
    [
        (INVERTED_U, None, 64),  # the peak, not the largest budget
        (INVERTED_U, 5000, 64),
        (INVERTED_U, 800, 32),  # the peak breaks the SLO: best of what meets it
        (INVERTED_U, 100, None),  # nothing meets it
        (  # equal accuracy: the cheaper in tokens wins
            [cells_for("best-of-n", 64, 0.6, 10, 300), cells_for("best-of-n", 128, 0.6, 10, 250)],
            None,
            128,
        ),
        (
            [cells_for("best-of-n", 64, 0.6, 10, 300), cells_for("best-of-n", 32, 0.6, 10, 300)],
            None,
            32,
        ),
    ],
)
def test_choose_budgets(cells: list[cal.Cell], slo: float | None, expected: int | None) -> None:
    per_class = [*cells, cells_for("best-of-n", 512, 1.0, 1, 1)]
    per_class[-1] = cal.Cell(**{**per_class[-1].to_json(), "request_class": "lookup"})
    assert cal.choose_budgets(per_class, {"best-of-n": slo}) == {"best-of-n": expected}


def test_choose_budgets_per_route_and_missing_slo_means_none() -> None:
    cells = [*INVERTED_U, cells_for("single-pass", 16, 0.3, 50, 40)]
    assert cal.choose_budgets(cells, {"best-of-n": 1000}) == {"best-of-n": 64, "single-pass": 16}


def test_route_slos_tightest_class_slo_else_deadline() -> None:
    cfg = parse_config(yaml.safe_dump(RAW))
    assert cal.route_slos(cfg) == {
        "single-pass": 2000,
        "best-of-n": 2000,
        "bounded-reasoning": 30_000,
    }


# --- budgets applied, variants, the calibrated policy file ----------------------------------


@pytest.mark.parametrize(
    ("strategy", "params", "expected"),
    [
        ("single-pass", None, None),
        ("bounded-reasoning", {"budget": 256, "mode": "scratchpad"},
         {"budget": 48, "max_tokens": 48, "mode": "scratchpad"}),
        ("best-of-n", {"n": 8, "max_tokens": 256}, {"n": 8, "max_tokens": 48}),
        ("prm-search", {}, {"max_tokens": 48}),
    ],
)  # fmt: skip
def test_apply_budget(
    strategy: str, params: dict[str, Any] | None, expected: dict[str, Any] | None
) -> None:
    route: dict[str, Any] = {"name": "r", "strategy": strategy, "backend": "default"}
    if params is not None:
        route["params"] = params
    before = copy.deepcopy(route)
    assert cal.apply_budget(route, 48).get("params") == expected
    assert route == before  # a copy


def test_variant_config_validates_with_one_variant_per_route_and_budget() -> None:
    raw = cal.variant_config(RAW, ["single-pass", "best-of-n"], [32, 64])
    cfg = parse_config(yaml.safe_dump(raw))
    names = [r.name for r in cfg.routes]
    assert names[3:] == ["single-pass:32", "single-pass:64", "best-of-n:32", "best-of-n:64"]
    v = cfg.route("best-of-n:64")
    assert v.params.max_tokens == 64 and v.downgrade_to is None  # type: ignore[union-attr]
    assert not cfg.admission.enabled and cfg.tenants == [] and cfg.policy is None
    assert RAW["routes"][2]["params"]["max_tokens"] == 256  # the input is untouched


def test_updated_config_applies_budget_fills_measured_and_validates() -> None:
    outs = [
        outcome("best-of-n", 64, True, "arithmetic", item="a"),
        outcome("best-of-n", 64, False, "lookup", item="b"),
        outcome("best-of-n", 128, False, "arithmetic", item="a"),
        outcome("single-pass", 32, True, "lookup", item="b"),
    ]
    cells = cal.summarize(outs)
    chosen = {"best-of-n": 64, "single-pass": 32, "bounded-reasoning": None}
    raw = cal.updated_config(RAW, cells, chosen, "predictor.json")
    cfg = parse_config(yaml.safe_dump(raw))
    bon = cfg.route("best-of-n")
    assert bon.params.max_tokens == 64  # type: ignore[union-attr]
    assert set(bon.measured) == {"all", "arithmetic", "lookup"}
    assert bon.measured["arithmetic"].quality == 1.0
    assert bon.measured["lookup"].quality == 0.0
    assert bon.measured["all"].items == 2 and bon.measured["all"].budget == 64
    assert bon.measured["all"].tokens == 60 and bon.measured["all"].p95_ms == 100
    sp = cfg.route("single-pass")
    assert sp.measured["lookup"].budget == 32 and sp.measured["lookup"].quality == 1.0
    assert sp.budget.max_visible_tokens is None  # measured at 32, but clients are not capped
    br = cfg.route("bounded-reasoning")  # no chosen budget: as it was
    assert br.params.budget == 256 and br.measured == {}  # type: ignore[union-attr]
    assert cfg.policy is not None and cfg.policy.predictor is not None
    assert cfg.policy.predictor.path == "predictor.json"
    assert RAW["routes"][2]["params"]["max_tokens"] == 256 and "predictor" not in RAW["policy"]


def test_updated_config_without_policy_adds_no_predictor() -> None:
    raw = {k: v for k, v in RAW.items() if k != "policy"}
    out = cal.updated_config(raw, [], {}, "predictor.json")
    assert "policy" not in out
    parse_config(yaml.safe_dump(out))


def test_training_data_common_items_at_chosen_budgets() -> None:
    outs = [
        outcome("best-of-n", 64, True, item="a"),
        outcome("best-of-n", 64, False, item="b"),
        outcome("best-of-n", 32, True, item="c"),  # not the chosen budget
        outcome("single-pass", 16, False, item="a"),
        outcome("single-pass", 16, True, item="b"),
        outcome("single-pass", 16, True, item="c", error="HTTP 500"),
    ]
    ids, labels = cal.training_data(outs, {"best-of-n": 64, "single-pass": 16, "x": None})
    assert ids == ["a", "b"]
    assert labels == {"best-of-n": [True, False], "single-pass": [False, True]}
    assert cal.training_data(outs, {"best-of-n": None}) == ([], {})


def _ladder_cells() -> list[cal.Cell]:
    outs = []
    for k, item in enumerate("abcd"):  # arithmetic: greedy 1/4, ladder-a 3/4, ladder-b 2/4
        outs.append(outcome("single-pass", 32, k == 0, "arithmetic", item=item))
        outs.append(outcome("ladder-a", 32, k < 3, "arithmetic", item=item))
        outs.append(outcome("ladder-b", 32, k < 2, "arithmetic", item=item))
        outs.append(outcome("ladder-a", 64, True, "arithmetic", item=item))  # not chosen
    for k, item in enumerate("ef"):  # lookup: no ladder pays (1/2 each)
        outs.append(outcome("single-pass", 32, k == 0, "lookup", item=item))
        outs.append(outcome("ladder-a", 32, k == 0, "lookup", item=item))
    return cal.summarize(outs)


def test_choose_escalations_takes_the_largest_measured_gain_per_class() -> None:
    cells = _ladder_cells()
    chosen = {"single-pass": 32, "ladder-a": 32, "ladder-b": 32}
    ladders = ["ladder-a", "ladder-b"]
    got = cal.choose_escalations(RAW, cells, chosen, ladders)
    assert got == {"arithmetic": cal.Escalation("ladder-a", True, 0.75, 0.5)}
    # a class's own min_gain is the bar (+0.5 measured here)
    raw = copy.deepcopy(RAW)
    raw["policy"]["classes"]["arithmetic"]["gain"] = {"cheap": "single-pass", "min_gain": 0.6}
    assert cal.choose_escalations(raw, cells, chosen, ladders) == {}
    # the ladder's chosen budget is the one compared: at 64 ladder-a would be 4/4
    got = cal.choose_escalations(RAW, cells, {**chosen, "ladder-a": None}, ladders)
    assert got == {"arithmetic": cal.Escalation("ladder-b", True, 0.5, 0.25)}
    assert cal.choose_escalations({"routes": []}, cells, chosen, ladders) == {}


def test_choose_escalations_weighs_multi_sample_routes_when_given() -> None:
    cells = _ladder_cells()
    chosen = {"single-pass": 32, "ladder-a": 32, "ladder-b": 32}
    assert cal.choose_escalations(RAW, cells, chosen, ["ladder-b"]) == {
        "arithmetic": cal.Escalation("ladder-b", True, 0.5, 0.25)
    }
    got = cal.choose_escalations(RAW, cells, chosen, ["ladder-b"], ["ladder-a"])
    assert got == {"arithmetic": cal.Escalation("ladder-a", False, 0.75, 0.5)}


def test_choose_escalations_with_outcomes_keeps_only_gains_never_measured_worse() -> None:
    outs = []
    for k, item in enumerate("abcdefgh"):  # greedy right on a-d
        outs.append(outcome("single-pass", 32, k < 4, "arithmetic", item=item))
        # a vote: fixes e-h and breaks a, b (+2/8, but worse on two items)
        outs.append(outcome("vote", 32, k >= 2, "arithmetic", item=item))
        # two ladders that only replace what greedy got wrong: +1/8 each
        outs.append(outcome("confident", 32, k < 4 or k == 4, "arithmetic", item=item))
        outs.append(outcome("checked", 32, k < 4 or k == 7, "arithmetic", item=item,
                            tokens=(10, 40, 40)))  # fmt: skip
    cells = cal.summarize(outs)
    chosen = {"single-pass": 32, "vote": 32, "confident": 32, "checked": 32}
    ladders, votes = ["confident", "checked"], ["vote"]
    # point estimates alone: the vote's +0.25 beats the ladders' +0.125
    assert cal.choose_escalations(RAW, cells, chosen, ladders, votes)["arithmetic"].route == (
        "vote"
    )
    # with the items: the vote's paired CI reaches below 0, so it is out; the ladders tie at
    # a lower bound of 0 and the exact check wins over fewer tokens
    got = cal.choose_escalations(RAW, cells, chosen, ["confident"], votes, outs)
    assert got == {"arithmetic": cal.Escalation("confident", True, 0.625, 0.125, 0.0)}
    got = cal.choose_escalations(RAW, cells, chosen, ladders, votes, outs, exact=["checked"])
    assert got["arithmetic"].route == "checked" and got["arithmetic"].gain_low == 0.0
    assert cal.choose_escalations(RAW, cells, chosen, [], votes, outs) == {}


def test_apply_escalations_sets_the_gain_rule_and_the_class_routes() -> None:
    raw = copy.deepcopy(RAW)
    raw["routes"].append(
        {"name": "ladder-a", "strategy": "single-pass", "backend": "default",
         "escalate_to": [{"samples": 2, "verifier": "arithmetic"}]}
    )  # fmt: skip
    raw["policy"]["classes"]["lookup"]["gain"] = {"cheap": "single-pass", "min_gain": 0.1}
    out = cal.apply_escalations(
        raw,
        {
            "arithmetic": cal.Escalation("ladder-a", True, 0.8, 0.3),
            "lookup": cal.Escalation("best-of-n", False, 0.8, 0.3),
        },
    )
    arith = out["policy"]["classes"]["arithmetic"]
    assert arith["routes"] == ["single-pass", "best-of-n", "ladder-a"]
    assert arith["gain"] == {"cheap": "single-pass", "min_gain": 0.05, "ladder": "ladder-a"}
    lookup = out["policy"]["classes"]["lookup"]  # a multi-sample route, its own knobs kept
    assert lookup["routes"] == ["single-pass", "bounded-reasoning", "best-of-n"]
    assert lookup["gain"] == {"cheap": "single-pass", "min_gain": 0.1, "ladder": "best-of-n"}
    assert "gain" not in raw["policy"]["classes"]["arithmetic"]  # a copy
    parse_config(yaml.safe_dump(out))


def test_paired_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    a = [True, True, False, True, False, True, True, False]
    b = [False, True, False, False, False, True, False, False]
    d, lo, hi = cal.paired_bootstrap(a, b, reps=2000, seed=3)
    assert d == pytest.approx(3 / 8) and lo <= d <= hi and lo >= -1 and hi <= 1
    assert cal.paired_bootstrap(a, b, reps=2000, seed=3) == (d, lo, hi)
    assert cal.paired_bootstrap([], []) == (0.0, 0.0, 0.0)


def test_tables() -> None:
    cells = cal.summarize([outcome(item="a"), outcome(item="b", correct=False)])
    rows = cal.csv_rows(cells)
    assert rows[0] == cal.CSV_HEADER and len(rows) == 1 + len(cells)
    assert rows[1][:4] == ["all", "best-of-n", "64", "2"]
    md = cal.markdown_table(cells, {"best-of-n": 64}).splitlines()
    assert len(md) == 2 + len(cells) and md[2].startswith("| all | best-of-n | 64 | 2 | 0.500")
    assert md[2].rstrip().endswith("| ✓ |")


# --- the runner, against the scripted vLLM --------------------------------------------------


def items() -> list[EvalItem]:
    def item(i: int, ref: str, cls: str | None) -> EvalItem:
        msgs = [{"role": "user", "content": f"What is 2 + {i}? Give the answer."}]
        return EvalItem(f"q{i}", msgs, ref, "number", "arithmetic", "easy", cls)

    return [item(1, "4", "arithmetic"), item(2, "4", "lookup"), item(3, "5", None)]


def fake_factory(fake: FakeVLLM) -> Any:
    transport = fake.transport()

    def factory(pool: BackendPool) -> httpx.AsyncBaseTransport:
        return transport

    return factory


@pytest.mark.anyio
async def test_runner_writes_artefacts_and_resumes_from_cache(tmp_path: Path) -> None:
    fake = FakeVLLM()
    fake.replica("http://replica-a:8000").words = ("The answer", " is", " 4.")
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "cal"
    routes, budgets = ["single-pass", "bounded-reasoning"], [16, 48]
    kw: dict[str, Any] = {"progress": False, "transport_factory": fake_factory(fake)}
    report = await run_calibration(config, items(), routes, budgets, out, 2, **kw)

    assert report.sent == 12 and len(report.outcomes) == 12
    assert all(o.error is None and o.latency_ms > 0 and o.tokens > 0 for o in report.outcomes)
    assert [o.correct for o in report.outcomes if o.route == "single-pass" and o.budget == 16] == [
        True,
        True,
        False,
    ]
    sent = fake.completions_received()
    assert {b.get("max_tokens") for b in sent if "stream" in b} == {16, 48}  # single-pass
    assert any(b.get("max_tokens") == 48 and not b.get("stream") for b in sent)  # bounded
    by_class = {o.item_id: o.request_class for o in report.outcomes}
    assert by_class == {"q1": "arithmetic", "q2": "lookup", "q3": "arithmetic"}  # q3 classified
    # All budgets score the same here: ties go to the cheaper budget.
    assert report.chosen == {"bounded-reasoning": 16, "single-pass": 16}
    for name in ("eval.md", "eval.csv", "eval.json", "predictor.json", CACHE_FILE):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in report.plots) == [
        "accuracy-all.png",
        "accuracy-arithmetic.png",
        "accuracy-lookup.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in report.plots)
    with (out / "eval.csv").open() as f:
        assert len(list(csv.reader(f))) == 1 + len(report.cells)
    assert json.loads((out / "eval.json").read_text())["chosen"] == report.chosen
    cfg = load_config(report.config_path)
    assert cfg.route("bounded-reasoning").params.budget == 16  # type: ignore[union-attr]
    assert cfg.route("single-pass").measured["all"].quality == pytest.approx(2 / 3, abs=1e-4)
    assert cfg.policy is not None and cfg.policy.predictor is not None
    assert (report.config_path.parent / cfg.policy.predictor.path).exists()

    # Resume: everything is cached, nothing is sent, the same results come back.
    before = len(fake.completions_received())
    again = await run_calibration(config, items(), routes, budgets, out, 2, **kw)
    assert again.sent == 0 and len(fake.completions_received()) == before
    assert again.outcomes == report.outcomes and again.chosen == report.chosen

    # A new budget measures only what is missing; errored outcomes are retried.
    lines = (out / CACHE_FILE).read_text().splitlines()
    first = next(o for o in report.outcomes if o.route == "single-pass" and o.budget == 16)
    broken = {**first.to_json(), "error": "HTTP 503: overloaded", "correct": False}
    (out / CACHE_FILE).write_text("\n".join([*lines, json.dumps(broken), "{torn"]) + "\n")
    third = await run_calibration(config, items(), ["single-pass"], [16, 32], out, 2, **kw)
    assert third.sent == 3 + 1


@pytest.mark.anyio
async def test_runner_checks_auto_on_heldout_items_and_calibrates_in_place(
    tmp_path: Path,
) -> None:
    fake = FakeVLLM()
    fake.replica("http://replica-a:8000").words = ("The answer", " is", " 4.")
    config = tmp_path / "routes.yaml"
    config.write_text("# knob comment kept\n" + yaml.safe_dump(RAW, sort_keys=False))
    held = [dataclasses.replace(i, id=f"{i.id}-h") for i in items()]
    kw: dict[str, Any] = {"progress": False, "transport_factory": fake_factory(fake)}
    report = await run_calibration(
        config, items(), None, [16], tmp_path / "o", 2, heldout=held, write_config=config, **kw
    )
    assert {o.route for o in report.outcomes} == {"single-pass", "bounded-reasoning", "best-of-n"}
    assert report.config_path == config
    text = config.read_text()
    assert text.startswith("# Calibrated by `deliberate calibrate` from routes.yaml (3 items")
    assert "# knob comment kept" in text
    cfg = load_config(config)
    assert cfg.route("single-pass").measured["all"].items == 3
    assert cfg.policy is not None and cfg.policy.predictor is not None
    assert (config.parent / cfg.policy.predictor.path).exists()
    check = report.heldout
    assert check is not None and check.cheap == "single-pass"
    assert [(o.item_id, o.route) for o in check.outcomes[:2]] == [
        ("q1-h", "auto"),
        ("q1-h", "single-pass"),
    ]
    assert all(o.error is None and o.budget is None for o in check.outcomes)
    assert check.diff == (0.0, 0.0, 0.0)  # the fake answers every model alike
    assert len((tmp_path / "o" / "heldout.jsonl").read_text().splitlines()) == 6
    assert "Held-out check" in (tmp_path / "o" / "eval.md").read_text()
    doc = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert doc["heldout"]["cheap"] == "single-pass" and "escalations" in doc
    # held-out items are never cached (they are not fitted on) and a rerun does not stack headers
    again = await run_calibration(
        config, items(), None, [16], tmp_path / "o", 2, heldout=held, write_config=config, **kw
    )
    assert again.sent == 0 and again.heldout is not None and len(again.heldout.outcomes) == 6
    assert config.read_text().count("# Calibrated by") == 1


@pytest.mark.anyio
async def test_runner_rejects_unknown_route_and_bad_budget(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(RAW))
    with pytest.raises(ValueError, match="unknown route"):
        await run_calibration(config, items(), ["nope"], [16], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="budgets"):
        await run_calibration(config, items(), ["single-pass"], [0], tmp_path / "o", progress=False)


@pytest.mark.anyio
async def test_runner_measures_ttft_on_a_real_stream_and_records_errors(tmp_path: Path) -> None:
    fake = FakeVLLM()
    rep = fake.replica("http://replica-a:8000")
    rep.words, rep.chunk_delay_s = ("4", " is", " it", "."), 0.05
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(RAW))
    kw: dict[str, Any] = {"progress": False, "transport_factory": fake_factory(fake)}
    report = await run_calibration(config, items()[:1], ["single-pass"], [8], tmp_path / "o", **kw)
    (o,) = report.outcomes
    assert o.error is None and o.correct and o.ttft_ms is not None
    # the first chunk came before the rest: three more 50 ms delays followed it (sleeps are
    # minimums, so this holds however loaded the machine is)
    assert o.latency_ms - o.ttft_ms >= 140

    rep.chunk_delay_s, rep.break_stream_after = 0.0, 1  # the backend dies mid-stream
    report = await run_calibration(config, items()[:1], ["single-pass"], [9], tmp_path / "o", **kw)
    (o,) = report.outcomes
    assert o.error is not None and not o.correct
    rep.break_stream_after, rep.status = None, 500  # a backend error before anything streamed
    report = await run_calibration(config, items()[:1], ["single-pass"], [9], tmp_path / "o", **kw)
    (o,) = report.outcomes
    assert report.sent == 1 and o.error is not None and o.error.startswith("HTTP 5")
    assert report.cells[0].errors == 1 and report.chosen == {"single-pass": 9}
    load_config(report.config_path)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_eval_set_and_calibrate_argument_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    eval_path = tmp_path / "eval.jsonl"
    r = runner.invoke(app, ["eval-set", "--items", "10", "--hard-share", "0.3", "--out", str(eval_path)])  # fmt: skip
    assert r.exit_code == 0, r.output
    written = load_eval_set(eval_path)
    assert len(written) == 10 and sum(i.difficulty == "hard" for i in written) == 3
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(RAW))
    base = ["calibrate", "--config", str(config), "--out", str(tmp_path / "o")]
    for args, message in [
        (["--eval-set", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["--eval-set", str(eval_path), "--routes", "single-pass,nope"], "unknown route"),
        (["--eval-set", str(eval_path), "--budgets", "32,x"], "integers expected"),
        (["--eval-set", str(eval_path), "--budgets", "0"], ">= 1"),
        (["--eval-set", str(config)], "eval set"),
    ]:
        r = runner.invoke(app, [*base, *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output, (args, r.output)
    assert not (tmp_path / "o").exists()
