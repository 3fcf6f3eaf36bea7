"""bench/tasks.py: the seeded task suite of the test-time-scaling benchmark.

The references are re-derived here from the prompt text alone (independently of the
generator's own arithmetic), and the gateway's answer extraction must read a correct reply
as the reference.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from strategies.answers import ExtractSpec, extract_answer, normalize_answer

TASKS_PATH = Path(__file__).resolve().parents[2] / "bench" / "tasks.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tasks", TASKS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tasks = _load()
BIG = tasks.make_suite(600, seed=7)


def test_same_seed_same_suite() -> None:
    assert tasks.make_suite(60, seed=3) == tasks.make_suite(60, seed=3)


def test_other_seed_other_suite() -> None:
    a = [t.prompt for t in tasks.make_suite(60, seed=3)]
    b = [t.prompt for t in tasks.make_suite(60, seed=4)]
    assert a != b


def test_larger_suite_extends_each_family() -> None:
    small = tasks.make_suite(12, seed=1)
    large = tasks.make_suite(60, seed=1)
    for family in tasks.FAMILIES:
        s = [t for t in small if t.family == family]
        assert s == [t for t in large if t.family == family][: len(s)]


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 13, 96])
def test_families_interleaved_and_balanced(n: int) -> None:
    suite = tasks.make_suite(n, seed=0)
    assert len(suite) == n
    counts = tasks.family_counts(suite)
    assert sum(counts.values()) == n
    if n:
        assert max(counts.values()) - min(counts.values()) <= 1
    assert [t.family for t in suite[:6]] == list(tasks.FAMILIES)[: min(n, 6)]


def test_ids_unique_and_every_family_and_kind_present() -> None:
    assert len({t.id for t in BIG}) == len(BIG)
    assert set(tasks.family_counts(BIG)) == set(tasks.FAMILIES)
    kinds = {(t.family, t.kind) for t in BIG}
    for kind in ("add1", "mul1", "add2"):
        assert ("arithmetic", kind) in kinds
    assert {k for f, k in kinds if f == "unit_conversion"} == {
        "h_to_min",
        "min_to_h",
        "m_to_cm",
        "cm_to_m",
        "kg_to_g",
        "day_to_h",
    }
    assert {k for f, k in kinds if f == "multiple_choice"} == {"category", "sum"}


def test_unknown_family_and_negative_size_rejected() -> None:
    with pytest.raises(ValueError, match="unknown families"):
        tasks.make_suite(3, families=["poetry"])
    with pytest.raises(ValueError):
        tasks.make_suite(-1)


def test_only_selected_families() -> None:
    suite = tasks.make_suite(10, seed=2, families=["arithmetic", "comparison"])
    assert {t.family for t in suite} == {"arithmetic", "comparison"}


# --- references, re-derived from the prompts --------------------------------------------------


def _expected(task: Any) -> str:
    """The right answer computed from the prompt text only."""
    prompt: str = task.prompt
    family: str = task.family
    if family == "arithmetic":
        m = re.match(r"What is (\d+) ([+*]) (\d+)\?", prompt)
        assert m, prompt
        a, op, b = int(m[1]), m[2], int(m[3])
        return str(a + b if op == "+" else a * b)
    if family == "letter_count":
        m = re.match(r"How many times does the letter '(\w)' appear in '(\w+)'\?", prompt)
        assert m, prompt
        return str(sum(ch == m[1] for ch in m[2]))
    if family == "sequence":
        m = re.search(r"sequence ([\d, ]+)\?", prompt)
        assert m, prompt
        terms = [int(x) for x in m[1].split(", ")]
        steps = {b - a for a, b in zip(terms, terms[1:], strict=False)}
        ratios = {b / a for a, b in zip(terms, terms[1:], strict=False)}
        if len(steps) == 1:
            return str(terms[-1] + steps.pop())
        assert len(ratios) == 1, prompt
        return str(int(terms[-1] * ratios.pop()))
    if family == "comparison":
        m = re.match(r"Which is (larger|smaller), (\d+) or (\d+)\?", prompt)
        assert m, prompt
        pick = max if m[1] == "larger" else min
        return str(pick(int(m[2]), int(m[3])))
    if family == "unit_conversion":
        factors = {
            ("minutes", "hours"): 60,
            ("hours", "minutes"): 1 / 60,
            ("centimeters", "meters"): 100,
            ("meters", "centimeters"): 1 / 100,
            ("grams", "kilograms"): 1000,
            ("hours", "days"): 24,
        }
        m = re.match(r"How many (\w+) (?:are in|are) (\d+) (\w+)\?", prompt)
        assert m, prompt
        value = int(m[2]) * factors[(m[1], m[3])]
        assert value == int(value), prompt
        return str(int(value))
    assert family == "multiple_choice"
    options = dict(re.findall(r"^([A-D])\) (.+)$", prompt, re.MULTILINE))
    assert sorted(options) == ["A", "B", "C", "D"], prompt
    m = re.match(r"What is (\d+) \+ (\d+)\?", prompt)
    if m:
        right = [k for k, v in options.items() if v == str(int(m[1]) + int(m[2]))]
    else:
        category = re.match(r"Which of these is an? (.+)\?", prompt)
        assert category, prompt
        members = tasks.CATEGORIES[category[1]]
        right = [k for k, v in options.items() if v in members]
    assert len(right) == 1, prompt  # exactly one option is correct
    return right[0]


def test_reference_is_correct() -> None:
    wrong = [
        (t.id, t.prompt, t.reference, _expected(t)) for t in BIG if t.reference != _expected(t)
    ]
    assert wrong == []


def test_letter_always_occurs_and_options_distinct() -> None:
    for t in BIG:
        if t.family == "letter_count":
            assert int(t.reference) >= 1
        if t.family == "multiple_choice":
            values = re.findall(r"^[A-D]\) (.+)$", t.prompt, re.MULTILINE)
            assert len(set(values)) == 4, t.prompt
        if t.family == "comparison":
            a, b = re.findall(r"\d+", t.prompt)[:2]
            assert a != b


def test_prompts_ask_for_the_answer_in_the_checked_format() -> None:
    for t in BIG:
        if t.answer_format == "option_letter":
            assert t.prompt.endswith(tasks.LETTER_SUFFIX)
            assert re.fullmatch(r"[A-D]", t.reference)
        else:
            assert t.answer_format == "last_number"
            assert t.prompt.endswith(tasks.NUMBER_SUFFIX)
            assert re.fullmatch(r"\d+", t.reference)


@pytest.mark.parametrize("task", tasks.make_suite(12, seed=0), ids=lambda t: t.id)
def test_a_correct_reply_extracts_to_the_reference(task: Any) -> None:
    """The benchmark's judging path (the gateway's extraction and normalisation)."""
    fmt = task.answer_format
    ref = task.reference
    spec = ExtractSpec(format=fmt, options="ABCD") if fmt == "option_letter" else ExtractSpec()
    reply = f"Let me think: 12 and 3 are not it. The answer is {ref}."
    if fmt == "option_letter":
        reply = f"Option A is wrong.\nThe answer is {ref}."
    answer = extract_answer(reply, spec)
    assert answer is not None
    assert normalize_answer(answer) == normalize_answer(ref)


def test_to_json_round_trip() -> None:
    t = BIG[0]
    assert tasks.Task(**t.to_json()) == t
