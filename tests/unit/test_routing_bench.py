"""Pure helpers of bench/routing_bench.py: the in-memory config patch, the paired bootstrap,
the per-model summary, the route mix and ladder outcomes, the target checks and the decision
timer (no backend, no app)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from routing.config import DeliberateConfig

ROOT = Path(__file__).resolve().parents[2]
BENCH_PATH = ROOT / "bench" / "routing_bench.py"


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_routing_bench", BENCH_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rb = _load_bench()


def _raw() -> dict[str, Any]:
    return {
        "version": 1,
        "default_route": "single-pass",
        "limits": {"max_n": 8},
        "backends": [
            {"name": "default", "model": "m", "replicas": ["http://127.0.0.1:8000"]},
        ],
        "routes": [
            {"name": "single-pass", "strategy": "single-pass", "backend": "default"},
            {
                "name": "best-of-n",
                "strategy": "best-of-n",
                "backend": "default",
                "params": {"n": 8, "selector": "auto", "max_tokens": 256},
                "budget": {"max_total_tokens": 2048, "max_candidates": 8, "deadline_s": 120},
            },
            {
                "name": "adaptive-consistency",
                "strategy": "adaptive-consistency",
                "backend": "default",
                "params": {"waves": [2, 2, 4, 8, 8]},
                "budget": {"deadline_s": 900},
            },
        ],
    }


# --------------------------------------------------------------------------------------------
# bench_config


def test_bench_config_adds_the_checked_best_of_16_route() -> None:
    patched = rb.bench_config(_raw())
    route = next(r for r in patched["routes"] if r["name"] == "best-of-16-checked")
    assert route["strategy"] == "best-of-n"
    assert route["params"] == {"n": 16, "selector": "weighted", "max_tokens": 256, "verifier": "arithmetic"}  # fmt: skip
    assert route["budget"]["max_candidates"] >= 16
    assert route["budget"]["max_total_tokens"] >= 16 * 256
    names = [r["name"] for r in patched["routes"]]
    assert names.index("best-of-16-checked") == names.index("best-of-n") + 1
    DeliberateConfig.model_validate(patched)  # still a valid policy file


def test_bench_config_budget_fits_a_larger_client_cap() -> None:
    patched = rb.bench_config(_raw(), client_max_tokens=512)
    route = next(r for r in patched["routes"] if r["name"] == "best-of-16-checked")
    assert route["budget"]["max_total_tokens"] == 16 * 512


def test_bench_config_raises_every_deadline_and_never_lowers_one() -> None:
    patched = rb.bench_config(_raw())
    deadlines = {r["name"]: r["budget"]["deadline_s"] for r in patched["routes"]}
    assert deadlines == {
        "single-pass": 600.0,
        "best-of-n": 600.0,
        "best-of-16-checked": 600.0,
        "adaptive-consistency": 900.0,
    }


def test_bench_config_raises_max_n_to_the_largest_route_n() -> None:
    assert rb.bench_config(_raw())["limits"]["max_n"] == 24  # waves 2+2+4+8+8
    raw = _raw()
    raw["routes"].pop()  # without the adaptive route: n=16 of the bench route
    assert rb.bench_config(raw)["limits"]["max_n"] == 16


def test_bench_config_counts_ladder_samples_for_max_n() -> None:
    raw = _raw()
    raw["routes"].append(
        {
            "name": "ladder",
            "strategy": "single-pass",
            "backend": "default",
            "escalate_to": [{"samples": 32, "verifier": "arithmetic"}],
        }
    )
    assert rb.bench_config(raw)["limits"]["max_n"] == 32


def test_bench_config_leaves_its_input_and_the_policy_alone() -> None:
    raw = _raw()
    raw["policy"] = {"default_class": "x", "classes": {"x": {"routes": ["single-pass"]}}}
    before = copy.deepcopy(raw)
    patched = rb.bench_config(raw)
    assert raw == before
    assert patched["policy"] == raw["policy"]


def test_bench_config_needs_best_of_n_and_a_free_name() -> None:
    raw = _raw()
    raw["routes"] = [r for r in raw["routes"] if r["name"] != "best-of-n"]
    with pytest.raises(ValueError, match="best-of-n"):
        rb.bench_config(raw)
    raw = _raw()
    raw["routes"].append({**raw["routes"][0], "name": "best-of-16-checked"})
    with pytest.raises(ValueError, match="already"):
        rb.bench_config(raw)


def test_bench_config_patches_the_shipped_policy_file() -> None:
    """Read at test time (the file may change): the patch must keep it valid."""
    raw = yaml.safe_load((ROOT / "configs" / "routes.yaml").read_text(encoding="utf-8"))
    config = DeliberateConfig.model_validate(rb.bench_config(raw, client_max_tokens=128))
    route = config.route("best-of-16-checked")
    assert route.params.n == 16  # type: ignore[union-attr]
    assert all(
        r.budget.deadline_s is not None and r.budget.deadline_s >= 600 for r in config.routes
    )
    for name in rb.FIXED:
        config.route(name)


# --------------------------------------------------------------------------------------------
# paired_bootstrap


def test_bootstrap_of_identical_outcomes_is_zero() -> None:
    a = [True, False, True, True]
    assert rb.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


def test_bootstrap_of_a_constant_difference_is_that_difference() -> None:
    assert rb.paired_bootstrap([True] * 5, [False] * 5) == (1.0, 1.0, 1.0)


def test_bootstrap_of_no_items_is_zero() -> None:
    assert rb.paired_bootstrap([], []) == (0.0, 0.0, 0.0)


def test_bootstrap_needs_paired_lists() -> None:
    with pytest.raises(ValueError):
        rb.paired_bootstrap([True, False], [True])


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20
    mean, lo, hi = rb.paired_bootstrap(a, b, reps=2000, seed=3)
    assert mean == pytest.approx(0.25)
    assert lo <= mean <= hi
    assert 0 < lo < hi < 0.5  # ten discordant pairs, all for a
    assert rb.paired_bootstrap(a, b, reps=2000, seed=3) == (mean, lo, hi)


def test_bootstrap_interval_includes_zero_for_a_balanced_difference() -> None:
    a = [True, False] * 10
    b = [False, True] * 10
    mean, lo, hi = rb.paired_bootstrap(a, b, reps=2000)
    assert mean == 0.0
    assert lo < 0 < hi


# --------------------------------------------------------------------------------------------
# summarise, route_mix, ladder_outcomes


def _row(correct: bool, **extra: Any) -> dict[str, Any]:
    base = {
        "correct": correct,
        "latency_ms": 100.0,
        "generated": 10,
        "hidden": 0,
        "status": 200,
        "difficulty": "easy",
        "requested_route": None,
        "route": "single-pass",
        "class": "lookup",
        "ladder": None,
    }
    return {**base, **extra}


def test_summarise_counts_accuracy_tokens_latency_and_errors() -> None:
    rows = [
        _row(True, generated=10, latency_ms=100.0),
        _row(False, generated=30, hidden=20, latency_ms=300.0, difficulty="hard"),
        _row(False, status=599, generated=0, latency_ms=200.0, requested_route="best-of-n"),
        _row(True, generated=40, latency_ms=400.0),
    ]
    s = rb.summarise("single-pass", rows)
    assert s["label"] == "greedy single-pass"
    assert s["accuracy"] == 0.5
    assert s["ci"][0] < 0.5 < s["ci"][1]
    assert s["by_difficulty"] == {"easy": pytest.approx(2 / 3), "hard": 0.0}
    assert s["generated_per_item"] == 20.0
    assert s["hidden_per_item"] == 5.0
    assert s["p50_ms"] == 250.0
    assert s["errors"] == 1
    assert s["downgraded"] == 1


def test_route_mix_groups_served_routes_by_class() -> None:
    rows = [
        _row(True, **{"class": "arithmetic", "route": "greedy-ladder"}),
        _row(True, **{"class": "arithmetic", "route": "greedy-ladder"}),
        _row(True, **{"class": "arithmetic", "route": "single-pass"}),
        _row(True),
    ]
    assert rb.route_mix(rows) == {
        "arithmetic": {"greedy-ladder": 2, "single-pass": 1},
        "lookup": {"single-pass": 1},
    }


def test_ladder_outcomes_count_stops_starts_and_verified() -> None:
    def ladder(stopped: int, start: int = 0, verified: bool = True) -> dict[str, Any]:
        rungs = ["samples:4", "samples:12"]
        return {"rungs": rungs, "stopped_at": stopped, "start_rung": start, "verified": verified}

    rows = [
        _row(True, route="greedy-ladder", ladder=ladder(0)),
        _row(True, route="greedy-ladder", ladder=ladder(1, 1)),
        _row(False, route="greedy-ladder", ladder=ladder(2, verified=False)),
        _row(True),  # no ladder: not counted
    ]
    assert rb.ladder_outcomes(rows) == {
        "greedy-ladder": {
            "requests": 3,
            "rungs": ["samples:4", "samples:12"],
            "stopped_at": {0: 1, 1: 1, 2: 1},
            "start_rung": {0: 2, 1: 1},
            "verified": 2,
        }
    }


# --------------------------------------------------------------------------------------------
# best_fixed and check_targets


def _t(model: str, acc: float, tokens: float, diff: float = 0.0, ci: Sequence[float] = (0, 0)) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {
        "model": model,
        "label": rb.label(model),
        "accuracy": acc,
        "generated_per_item": tokens,
    }
    if model != "auto":
        row["auto_minus"] = {"diff": diff, "ci": list(ci)}
    return row


DECISION = {"decisions": 2000, "p50_us": 60.0, "p99_us": 150.0}


def _table(
    greedy: tuple[float, Sequence[float]] = (0.15, (0.05, 0.25)),
    best: tuple[float, Sequence[float]] = (-0.05, (-0.15, 0.05)),
    auto_tokens: float = 100.0,
) -> list[dict[str, Any]]:
    return [
        _t("auto", 0.75, auto_tokens),
        _t("single-pass", 0.60, 50.0, greedy[0], greedy[1]),
        _t("best-of-16-checked", 0.80, 1000.0, best[0], best[1]),
        _t("best-of-n", 0.70, 500.0, 0.05, (-0.05, 0.15)),
    ]


def _met(targets: Sequence[Mapping[str, Any]]) -> list[bool]:
    return [bool(t["met"]) for t in targets]


def test_best_fixed_is_the_most_accurate_then_the_cheapest() -> None:
    table = _table()
    assert rb.best_fixed(table)["model"] == "best-of-16-checked"
    table.append(_t("self-consistency", 0.80, 400.0))
    assert rb.best_fixed(table)["model"] == "self-consistency"


def test_all_targets_met() -> None:
    targets = rb.check_targets(_table(), DECISION)
    assert _met(targets) == [True, True, True, True]
    assert "best fixed = best-of-16-checked" in targets[1]["detail"]
    assert "10.0%" in targets[2]["detail"]


def test_target_1_needs_ten_points_and_a_positive_lower_bound() -> None:
    assert _met(rb.check_targets(_table(greedy=(0.08, (0.02, 0.15))), DECISION))[0] is False
    assert _met(rb.check_targets(_table(greedy=(0.15, (0.0, 0.3))), DECISION))[0] is False
    assert _met(rb.check_targets(_table(greedy=(0.10, (0.01, 0.2))), DECISION))[0] is True


def test_target_2_fails_only_when_the_interval_is_wholly_below_zero() -> None:
    assert _met(rb.check_targets(_table(best=(-0.1, (-0.2, 0.0))), DECISION))[1] is True
    assert _met(rb.check_targets(_table(best=(-0.1, (-0.2, -0.01))), DECISION))[1] is False


def test_target_3_compares_tokens_with_best_of_16_checked() -> None:
    assert _met(rb.check_targets(_table(auto_tokens=350.0), DECISION))[2] is True
    assert _met(rb.check_targets(_table(auto_tokens=351.0), DECISION))[2] is False


def test_target_4_is_the_decision_p99() -> None:
    slow = {**DECISION, "p99_us": 1000.1}
    assert _met(rb.check_targets(_table(), slow))[3] is False
    assert _met(rb.check_targets(_table(), {**DECISION, "p99_us": 1000.0}))[3] is True


# --------------------------------------------------------------------------------------------
# decision_latency


class _Router:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def decide(self, model: str, messages: Sequence[Mapping[str, Any]], *, live: Any = None) -> None:  # fmt: skip
        assert live is not None and live(None).up
        self.calls.append((model, len(messages)))


def _clock() -> Iterator[int]:
    t = 0
    while True:
        yield t
        t += 2_000  # every reading 2 µs after the last: each decision takes 2 µs


def test_decision_latency_times_whole_passes_after_a_warm_up() -> None:
    router = _Router()
    prompts = [[{"role": "user", "content": "q"}]] * 7
    ticks = _clock()
    result = rb.decision_latency(router, prompts, min_decisions=20, clock=lambda: next(ticks))
    assert result["decisions"] == 21  # three whole passes of 7
    assert len(router.calls) == 28  # plus the untimed warm-up pass
    assert all(model == "auto" for model, _ in router.calls)
    assert result["p50_us"] == result["p99_us"] == 2.0


# --------------------------------------------------------------------------------------------
# place_labels (the frontier plot's label layout)


def test_place_labels_moves_a_label_off_an_earlier_one() -> None:
    placed = rb.place_labels([(100.0, 100.0), (101.0, 100.0)], [40.0, 40.0])
    assert placed[0] == (6.0, 4.0)
    assert placed[1] != placed[0]


def test_place_labels_keeps_the_first_choice_when_there_is_room() -> None:
    assert rb.place_labels([(0.0, 0.0), (500.0, 500.0)], [40.0, 40.0]) == [(6.0, 4.0)] * 2


def test_place_labels_avoids_other_markers() -> None:
    # the second anchor sits where the first label's default box would be
    placed = rb.place_labels([(0.0, 0.0), (20.0, 8.0)], [40.0, 10.0])
    assert placed[0] != (6.0, 4.0)
