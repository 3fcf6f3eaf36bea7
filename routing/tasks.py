"""Seeded, exactly-checkable task families: the benchmark's suite and the eval set's source.

Every task has one right answer a program can check: a number (compared after
``strategies.answers.normalize_answer``) or an option letter A-D. Each family has its own
random stream (``random.Random(f"{seed}:{family}")``), so the same seed always gives the same
tasks and a larger count extends a smaller one's per-family lists.

The benchmark's six families (``FAMILIES``; ``bench/tasks.py`` re-exports this module, and its
published numbers depend on these exact outputs): ``arithmetic`` (one-digit +, one-digit *,
two-digit +), ``letter_count``, ``sequence`` (arithmetic or doubling progression),
``comparison``, ``unit_conversion``, ``multiple_choice`` (category member or one-digit sum).
Harder multi-step families (``EXTRA_FAMILIES``): ``two_step_arithmetic`` ("23 + 48 - 17"),
``long_arithmetic`` (three-digit + and -) and ``word_problem`` (prices, totals, change); and
one more easy, non-arithmetic family for the eval set, ``json_extraction`` (read a numeric
field, flat or nested one level, from a small JSON object).

``make_suite`` gives benchmark ``Task``s; ``make_eval_set`` gives ``EvalItem``s (chat messages,
a checker, a difficulty and a request-class suggestion) mixing easy and hard families;
``check_answer`` judges a model's reply. Pure standard library apart from the answer extractor.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

AnswerFormat = Literal["last_number", "option_letter"]
Difficulty = Literal["easy", "hard"]
Checker = Literal["number", "option"]

NUMBER_SUFFIX = "Give the final answer as a number at the end."
LETTER_SUFFIX = "Answer with the letter of the correct option at the end."
OPTIONS = "ABCD"


@dataclass(frozen=True, slots=True)
class Task:
    """One benchmark item. ``reference`` is the exact answer (digits, or one option letter)."""

    id: str
    family: str
    kind: str
    prompt: str
    reference: str
    answer_format: AnswerFormat

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- families: each maker gets its own Random and the item's index within the family -------


def _arithmetic(rng: random.Random, i: int) -> tuple[str, str, str]:
    kind = ("add1", "mul1", "add2")[i % 3]
    if kind == "add1":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        expr, value = f"{a} + {b}", a + b
    elif kind == "mul1":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        expr, value = f"{a} * {b}", a * b
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, value = f"{a} + {b}", a + b
    return kind, f"What is {expr}? {NUMBER_SUFFIX}", str(value)


WORDS = tuple(
    "strawberry banana mississippi committee bookkeeper balloon pepper coffee letter assessment"
    " butterfly raspberry engineering parallel tomorrow successful occurrence programming"
    " cinnamon referee".split()
)


def _letter_count(rng: random.Random, i: int) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    prompt = f"How many times does the letter '{letter}' appear in '{word}'? {NUMBER_SUFFIX}"
    return "count", prompt, str(word.count(letter))


def _sequence(rng: random.Random, i: int) -> tuple[str, str, str]:
    if i % 3 == 2:
        start = rng.randint(1, 6)
        terms = [start * 2**k for k in range(4)]
        kind, nxt = "double", start * 2**4
    else:
        start, step = rng.randint(1, 20), rng.randint(2, 9)
        terms = [start + step * k for k in range(4)]
        kind, nxt = "arithmetic", start + step * 4
    shown = ", ".join(str(t) for t in terms)
    return kind, f"What is the next number in the sequence {shown}? {NUMBER_SUFFIX}", str(nxt)


def _comparison(rng: random.Random, i: int) -> tuple[str, str, str]:
    a, b = rng.sample(range(10, 100), 2)
    if i % 2 == 0:
        return "larger", f"Which is larger, {a} or {b}? {NUMBER_SUFFIX}", str(max(a, b))
    return "smaller", f"Which is smaller, {a} or {b}? {NUMBER_SUFFIX}", str(min(a, b))


_UNITS: dict[str, tuple[str, int, int]] = {  # kind: (question with {x}, x factor, answer factor)
    "h_to_min": ("How many minutes are in {x} hours?", 1, 60),
    "min_to_h": ("How many hours are {x} minutes?", 60, 1),
    "m_to_cm": ("How many centimeters are in {x} meters?", 1, 100),
    "cm_to_m": ("How many meters are {x} centimeters?", 100, 1),
    "kg_to_g": ("How many grams are in {x} kilograms?", 1, 1000),
    "day_to_h": ("How many hours are in {x} days?", 1, 24),
}


def _unit_conversion(rng: random.Random, i: int) -> tuple[str, str, str]:
    kind = list(_UNITS)[i % 6]
    x = rng.randint(2, 9)
    question, shown, answer = _UNITS[kind]
    return kind, f"{question.format(x=x * shown)} {NUMBER_SUFFIX}", str(x * answer)


CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "orange", "grape", "pear", "mango", "cherry", "peach"),
    "animal": ("dog", "cat", "horse", "lion", "rabbit", "elephant", "tiger", "sheep"),
    "color": ("red", "blue", "green", "yellow", "purple", "white", "black", "pink"),
    "vehicle": ("car", "bus", "bicycle", "train", "truck", "boat", "airplane", "scooter"),
    "piece of furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "stool", "bench"),
}


def _options(correct: str, wrong: Sequence[str], rng: random.Random) -> tuple[str, str]:
    """Shuffle ``correct`` among ``wrong``; returns (option lines, correct letter)."""
    opts = [correct, *wrong]
    rng.shuffle(opts)
    lines = "\n".join(f"{letter}) {o}" for letter, o in zip(OPTIONS, opts, strict=True))
    return lines, OPTIONS[opts.index(correct)]


def _multiple_choice(rng: random.Random, i: int) -> tuple[str, str, str]:
    if i % 2 == 0:
        category = rng.choice(sorted(CATEGORIES))
        correct = rng.choice(CATEGORIES[category])
        others = [w for c, ws in sorted(CATEGORIES.items()) if c != category for w in ws]
        lines, letter = _options(correct, rng.sample(others, 3), rng)
        article = "an" if category[0] in "aeiou" else "a"
        question, kind = f"Which of these is {article} {category}?", "category"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = rng.sample([v for v in range(a + b - 4, a + b + 5) if v != a + b and v >= 0], 3)
        lines, letter = _options(str(a + b), [str(w) for w in wrong], rng)
        question, kind = f"What is {a} + {b}?", "sum"
    return kind, f"{question}\n{lines}\n{LETTER_SUFFIX}", letter


def _two_step_arithmetic(rng: random.Random, i: int) -> tuple[str, str, str]:
    kind = ("add_sub", "sub_add", "mul_add")[i % 3]
    if kind == "add_sub":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        c = rng.randint(10, min(99, a + b - 1))
        expr, value = f"{a} + {b} - {c}", a + b - c
    elif kind == "sub_add":
        a = rng.randint(20, 99)
        b, c = rng.randint(10, a - 1), rng.randint(10, 99)
        expr, value = f"{a} - {b} + {c}", a - b + c
    else:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(10, 99)
        expr, value = f"{a} * {b} + {c}", a * b + c
    return kind, f"What is {expr}? {NUMBER_SUFFIX}", str(value)


def _long_arithmetic(rng: random.Random, i: int) -> tuple[str, str, str]:
    if i % 2 == 0:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return "add3", f"What is {a} + {b}? {NUMBER_SUFFIX}", str(a + b)
    a = rng.randint(200, 999)
    b = rng.randint(100, a - 1)
    return "sub3", f"What is {a} - {b}? {NUMBER_SUFFIX}", str(a - b)


GOODS = ("apples", "pears", "oranges", "pencils", "notebooks", "eggs", "stickers", "cookies")


def _word_problem(rng: random.Random, i: int) -> tuple[str, str, str]:
    kind = ("unit_price", "two_items", "change")[i % 3]
    if kind == "unit_price":
        item, x, price = rng.choice(GOODS), rng.randint(2, 6), rng.randint(2, 9)
        z = rng.choice([n for n in range(2, 13) if n != x])
        q = f"A shop sells {x} {item} for {x * price} dollars. How much do {z} {item} cost?"
        value = z * price
    elif kind == "two_items":
        a, b = rng.sample(GOODS, 2)
        pa, pb = rng.sample(range(2, 10), 2)
        qa, qb = rng.randint(2, 9), rng.randint(2, 9)
        q = (
            f"A shop sells {a} at {pa} dollars each and {b} at {pb} dollars each. "
            f"How much do {qa} {a} and {qb} {b} cost together?"
        )
        value = qa * pa + qb * pb
    else:
        item, n, price = rng.choice(GOODS), rng.randint(2, 6), rng.randint(2, 9)
        note = next(v for v in (20, 50, 100) if v > n * price)
        q = (
            f"Sam buys {n} {item} at {price} dollars each and pays with a {note} dollar note. "
            "How much change does Sam get?"
        )
        value = note - n * price
    return kind, f"{q} Answer in dollars. {NUMBER_SUFFIX}", str(value)


_JSON_FIELDS = ("age", "price", "count", "year", "score", "stock", "floor", "rank")
_JSON_NAMES = ("Ann", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana")


def _json_extraction(rng: random.Random, i: int) -> tuple[str, str, str]:
    """A small JSON object and one numeric field to read; odd items nest it one level."""
    keys = rng.sample(_JSON_FIELDS, 3)
    values = [rng.randint(2, 999) for _ in keys]
    record: dict[str, object] = {
        "name": rng.choice(_JSON_NAMES),
        **dict(zip(keys, values, strict=True)),
    }
    target = rng.randrange(3)
    path = keys[target]
    if i % 2:
        record = {"id": rng.randint(100, 999), "item": record}
        kind, path = "nested", f"item.{path}"
    else:
        kind = "flat"
    text = json.dumps(record)
    prompt = f'What is the value of "{path}" in this JSON object?\n{text}\n{NUMBER_SUFFIX}'
    return kind, prompt, str(values[target])


Maker = Callable[[random.Random, int], tuple[str, str, str]]
FamilyInfo = tuple[str, Maker, AnswerFormat, Difficulty, str]  # prefix, maker, format, ..., class
_ALL: dict[str, FamilyInfo] = {
    "arithmetic": ("arith", _arithmetic, "last_number", "easy", "arithmetic"),
    "letter_count": ("letters", _letter_count, "last_number", "hard", "lookup"),
    "sequence": ("seq", _sequence, "last_number", "hard", "multi-step"),
    "comparison": ("cmp", _comparison, "last_number", "easy", "lookup"),
    "unit_conversion": ("units", _unit_conversion, "last_number", "easy", "arithmetic"),
    "multiple_choice": ("mc", _multiple_choice, "option_letter", "easy", "lookup"),
    "two_step_arithmetic": ("arith2", _two_step_arithmetic, "last_number", "hard", "multi-step"),
    "long_arithmetic": ("long", _long_arithmetic, "last_number", "hard", "arithmetic"),
    "word_problem": ("word", _word_problem, "last_number", "hard", "multi-step"),
    "json_extraction": ("json", _json_extraction, "last_number", "easy", "lookup"),
}
FAMILIES: dict[str, tuple[str, Maker, AnswerFormat]] = {
    f: info[:3] for f, info in list(_ALL.items())[:6]
}  # the benchmark's families, in its order
EXTRA_FAMILIES = tuple(f for f in list(_ALL)[6:] if _ALL[f][3] == "hard")
DIFFICULTY: dict[str, Difficulty] = {f: info[3] for f, info in _ALL.items()}
REQUEST_CLASS: dict[str, str] = {f: info[4] for f, info in _ALL.items()}
EASY_FAMILIES = tuple(f for f, d in DIFFICULTY.items() if d == "easy")
HARD_FAMILIES = tuple(f for f, d in DIFFICULTY.items() if d == "hard")


def family_tasks(family: str, count: int, seed: int) -> list[Task]:
    """The first ``count`` tasks of one family for ``seed`` (a stream of its own)."""
    prefix, maker, fmt = _ALL[family][:3]
    rng = random.Random(f"{seed}:{family}")
    out = []
    for i in range(count):
        kind, prompt, reference = maker(rng, i)
        out.append(Task(f"{prefix}-{i:03d}", family, kind, prompt, reference, fmt))
    return out


def make_suite(n_items: int, seed: int = 0, families: Sequence[str] | None = None) -> list[Task]:
    """``n_items`` tasks of ``families`` (default: the benchmark's six), interleaved round-robin
    so any prefix is balanced (family counts differ by at most one)."""
    if n_items < 0:
        raise ValueError("n_items must be >= 0")
    names = list(families or FAMILIES)
    unknown = [f for f in names if f not in _ALL]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(_ALL)}")
    per_family = -(-n_items // len(names))
    pools = {f: family_tasks(f, per_family, seed) for f in names}
    return [pools[names[k % len(names)]][k // len(names)] for k in range(n_items)]


def family_counts(tasks: Sequence[Task]) -> dict[str, int]:
    """Items per family, in family order."""
    counts = Counter(t.family for t in tasks)
    return {f: counts[f] for f in _ALL if counts[f]}
