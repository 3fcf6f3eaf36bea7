"""Answer extraction (every format, incl. "no answer") and normalisation to voting keys."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from strategies.answers import (
    ExtractSpec,
    extract_answer,
    find_json_object,
    format_number,
    normalize_answer,
    parse_number,
)

LINE = ExtractSpec(format="answer_line")
NUMBER = ExtractSpec()
BOXED = ExtractSpec(format="boxed")
LETTER = ExtractSpec(format="option_letter")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("23 + 48 = 71.\nAnswer: 71", "71"),
        ("Answer: 3\nthinking again...\nFinal answer: 4.", "4"),
        ("**Final Answer:** $1,234", "$1,234"),
        ("answer: Paris", "Paris"),
        ("Answer:\n\n  42\n", "42"),
        ("The answer is: 12", "12"),
        ("no label here, just 5", None),
        ("Answer:", None),
    ],
)
def test_answer_line(text: str, expected: str | None) -> None:
    assert extract_answer(text, LINE) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 37 + 45 = 82", "82"),
        ("The result is -3.", "-3"),
        ("x=-3", "-3"),
        ("10-3 leaves 7", "7"),
        ("5-3", "3"),  # a minus between numbers is an operator, not a sign
        ("It costs $1,234.50.", "1,234.50"),
        ("half: 1/2", "1/2"),
        ("3.50 dollars", "3.50"),
        ("try .5", ".5"),
        ("12 − 20 = −8", "-8"),
        ("list 1,2,3", "3"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, NUMBER) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{x^{2}+1}}", r"\sqrt{x^{2}+1}"),
        (r"\boxed{7} and a truncated \boxed{x^{2}", "7"),
        (r"\boxed {5}", "5"),
        (r"\boxed{}", None),
        ("no box", None),
    ],
)
def test_boxed(text: str, expected: str | None) -> None:
    assert extract_answer(text, BOXED) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(C) fails, so the answer is B because it fits", "B"),
        ("Answer: (E).", "E"),
        ("The correct answer is option D", "D"),
        ("The answer is A because it is first", "A"),
        ("the answer is (a)", "A"),
        ("I pick (b)", "B"),
        ("Let me think.\nC\n", "C"),
        ("Let me think.\nA.\n", "A"),
        ("Both A) and B) look fine", "B"),
        ("The answer is a bit tricky. I pick (d)", "D"),  # "a" is an article here
        ("a) apples b) pears", None),  # bare lower-case markers are list items
        ("The answer is F", None),  # not an allowed option
        ("no idea", None),
    ],
)
def test_option_letter(text: str, expected: str | None) -> None:
    assert extract_answer(text, LETTER) == expected


def test_option_letter_uses_spec_options() -> None:
    assert (
        extract_answer("The answer is F", ExtractSpec(format="option_letter", options="ef")) == "F"
    )


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ('```json\n{"a": {"b": [1, 2.5]}}\n```', "a.b.1", "2.5"),
        ('noise {bad} {"a": {"b": "yes"}} trailing', "a.b", "yes"),
        ('{"ok": true}', "ok", "true"),
        ('{"r": {"y": 2, "x": 1}}', "r", '{"x":1,"y":2}'),
        ('{"a": null}', "a", None),
        ('{"a": 1}', "b", None),
        ('{"a": [1]}', "a.5", None),
        ("no json", "a", None),
    ],
)
def test_json_field(text: str, field: str, expected: str | None) -> None:
    assert extract_answer(text, ExtractSpec(format="json_field", json_field=field)) == expected


def test_find_json_object_prefers_fence() -> None:
    text = 'first {"a": 1}\n```json\n{"a": 2}\n```'
    assert find_json_object(text) == {"a": 2}
    assert find_json_object("[1, 2] then {") is None


def test_extract_spec_validation() -> None:
    with pytest.raises(ValidationError, match="json_field is required"):
        ExtractSpec(format="json_field")
    with pytest.raises(ValidationError, match="applies only"):
        ExtractSpec(format="boxed", json_field="x")
    with pytest.raises(ValidationError, match="distinct ASCII letters"):
        ExtractSpec(options="AAB")
    with pytest.raises(ValidationError):
        ExtractSpec.model_validate({"format": "roman"})
    with pytest.raises(ValidationError):
        ExtractSpec.model_validate({"unknown": 1})
    assert ExtractSpec(options="abc").options == "ABC"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("1,000", "1000"),
        ("3.50", "3.5"),
        ("-0", "0"),
        ("4.0", "4"),
        ("$12.", "12"),
        ("-$3", "-3"),
        ("−3", "-3"),
        ("1/2", "0.5"),
        ("2/6", "1/3"),
        (r"\frac{3}{4}", "0.75"),
        (r"\(42\)", "42"),
        ("(7)", "7"),
        ("50%", "50"),
        (" Paris. ", "paris"),
        (r"\text{Blue  Whale}", "blue whale"),
        ("**B**", "b"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, key: str) -> None:
    assert normalize_answer(raw) == key
    assert normalize_answer(key) == key  # idempotent: keys are stable under re-normalisation


def test_equal_values_vote_together() -> None:
    assert len({normalize_answer(a) for a in ["0.5", "1/2", ".50", r"\frac{1}{2}"]}) == 1


def test_numbers() -> None:
    assert parse_number("1,234.5") == Fraction(2469, 2)
    assert parse_number("1 2") is None
    assert parse_number("1/0") is None
    assert parse_number("12 apples") is None
    assert parse_number("9" * 100) is None
    assert format_number(Fraction(-1, 8)) == "-0.125"
    assert format_number(Fraction(2, 3)) == "2/3"
    assert format_number(Fraction(1200)) == "1200"
