"""A seeded generator of small, exactly-checkable tasks for the test-time-scaling benchmark.

Every task has one right answer that a program can check: a number (compared after
``strategies.answers.normalize_answer``) or an option letter. Families:

- ``arithmetic``: one-digit addition, one-digit multiplication, two-digit addition
  ("What is 7 + 8?"), kinds cycling in that order;
- ``letter_count``: "How many times does the letter 'r' appear in 'strawberry'?" (the letter
  always occurs at least once);
- ``sequence``: the next term of an arithmetic progression (4 terms shown) or of a doubling
  sequence;
- ``comparison``: which of two different two-digit numbers is larger (or smaller);
- ``unit_conversion``: hours↔minutes, metres↔centimetres, kilograms→grams, days→hours,
  with whole-number results;
- ``multiple_choice``: four options A-D; either "which of these is a <category>" (one member
  of the category among three from other categories) or a one-digit sum with three wrong sums.

``make_suite(n_items, seed)`` returns ``n_items`` tasks, families interleaved round-robin so
any prefix is balanced (family counts differ by at most one). The same ``(n_items, seed)``
always gives the same tasks, and a larger ``n_items`` extends a smaller suite's per-family
lists (each family has its own random stream). Numeric prompts end by asking for "the final
answer as a number at the end" (extract with ``last_number``); multiple-choice prompts ask for
"the letter of the correct option at the end" (extract with ``option_letter``).

Pure standard library; no I/O.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

AnswerFormat = Literal["last_number", "option_letter"]

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


# --------------------------------------------------------------------------------------------
# Families. Each maker gets its own ``random.Random`` and the item's index within the family.


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


WORDS = (
    "strawberry",
    "banana",
    "mississippi",
    "committee",
    "bookkeeper",
    "balloon",
    "pepper",
    "coffee",
    "letter",
    "assessment",
    "butterfly",
    "raspberry",
    "engineering",
    "parallel",
    "tomorrow",
    "successful",
    "occurrence",
    "programming",
    "cinnamon",
    "referee",
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


def _unit_conversion(rng: random.Random, i: int) -> tuple[str, str, str]:
    kind = ("h_to_min", "min_to_h", "m_to_cm", "cm_to_m", "kg_to_g", "day_to_h")[i % 6]
    x = rng.randint(2, 9)
    if kind == "h_to_min":
        q, ans = f"How many minutes are in {x} hours?", x * 60
    elif kind == "min_to_h":
        q, ans = f"How many hours are {x * 60} minutes?", x
    elif kind == "m_to_cm":
        q, ans = f"How many centimeters are in {x} meters?", x * 100
    elif kind == "cm_to_m":
        q, ans = f"How many meters are {x * 100} centimeters?", x
    elif kind == "kg_to_g":
        q, ans = f"How many grams are in {x} kilograms?", x * 1000
    else:
        q, ans = f"How many hours are in {x} days?", x * 24
    return kind, f"{q} {NUMBER_SUFFIX}", str(ans)


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
        question = f"Which of these is {article} {category}?"
        kind = "category"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = rng.sample([v for v in range(a + b - 4, a + b + 5) if v != a + b and v >= 0], 3)
        lines, letter = _options(str(a + b), [str(w) for w in wrong], rng)
        question = f"What is {a} + {b}?"
        kind = "sum"
    return kind, f"{question}\n{lines}\n{LETTER_SUFFIX}", letter


Maker = Callable[[random.Random, int], tuple[str, str, str]]
FAMILIES: dict[str, tuple[str, Maker, AnswerFormat]] = {
    "arithmetic": ("arith", _arithmetic, "last_number"),
    "letter_count": ("letters", _letter_count, "last_number"),
    "sequence": ("seq", _sequence, "last_number"),
    "comparison": ("cmp", _comparison, "last_number"),
    "unit_conversion": ("units", _unit_conversion, "last_number"),
    "multiple_choice": ("mc", _multiple_choice, "option_letter"),
}


def family_tasks(family: str, count: int, seed: int) -> list[Task]:
    """The first ``count`` tasks of one family for ``seed`` (a stream of its own)."""
    prefix, maker, fmt = FAMILIES[family]
    rng = random.Random(f"{seed}:{family}")
    out = []
    for i in range(count):
        kind, prompt, reference = maker(rng, i)
        out.append(Task(f"{prefix}-{i:03d}", family, kind, prompt, reference, fmt))
    return out


def make_suite(n_items: int, seed: int = 0, families: Sequence[str] | None = None) -> list[Task]:
    """``n_items`` tasks, families interleaved round-robin (see the module docstring)."""
    if n_items < 0:
        raise ValueError("n_items must be >= 0")
    names = list(families or FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")
    if not names:
        raise ValueError("no families")
    per_family = -(-n_items // len(names))
    pools = {f: family_tasks(f, per_family, seed) for f in names}
    return [pools[names[k % len(names)]][k // len(names)] for k in range(n_items)]


def family_counts(tasks: Sequence[Task]) -> dict[str, int]:
    """Items per family, in ``FAMILIES`` order."""
    counts = Counter(t.family for t in tasks)
    return {f: counts[f] for f in FAMILIES if counts[f]}
