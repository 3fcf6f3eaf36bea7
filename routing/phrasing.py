"""Phrasing templates for the eval set, split into the ones calibration fits on and held-out ones.

A task family's makers (``routing.tasks``) write each question one canonical way. A router
fitted on one phrasing may only have learned that phrasing, so the eval set words every
question with one of four templates per family: template 0 is the canonical text, 1 is a
second fit-time phrasing, and 2 and 3 are never shown to calibration (``HELDOUT``). Each
template is a rewrite of the canonical question's opening (a regex substitution applied once);
the numbers, words and answer-format suffix are kept, so the reference answer is unchanged.
"""

from __future__ import annotations

import re
from typing import Literal

Split = Literal["fit", "heldout"]
TEMPLATES: dict[Split, tuple[int, ...]] = {"fit": (0, 1), "heldout": (2, 3)}

_WHAT_IS = r"^What is (.+?)\? "
_EXPR = (r"Compute \1. ", r"Work out \1. ", r"Find the value of \1. ")
# family: (pattern, replacement of template 1, 2, 3)
_REWRITES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "arithmetic": (_WHAT_IS, _EXPR),
    "two_step_arithmetic": (_WHAT_IS, _EXPR),
    "long_arithmetic": (_WHAT_IS, _EXPR),
    "letter_count": (
        r"^How many times does the letter '(\w)' appear in '(\w+)'\? ",
        (
            r"Count the letter '\1' in the word '\2'. ",
            r"In the word '\2', how often does '\1' occur? ",
            r"Number of '\1' characters in '\2'? ",
        ),
    ),
    "sequence": (
        r"^What is the next number in the sequence (.+?)\? ",
        (
            r"Continue the sequence \1 with one more number. ",
            r"Which number comes after \1? ",
            r"Give the term that follows \1. ",
        ),
    ),
    "comparison": (
        r"^Which is (larger|smaller), (\d+) or (\d+)\? ",
        (
            r"Of \2 and \3, which one is \1? ",
            r"Pick the \1 number: \2 or \3. ",
            r"Between \2 and \3, name the \1 one. ",
        ),
    ),
    "unit_conversion": (
        r"^How many (\w+) (?:are in|are) (\d+) (\w+)\? ",
        (r"Convert \2 \3 to \1. ", r"Express \2 \3 in \1. ", r"\2 \3 is how many \1? "),
    ),
    "multiple_choice": (
        r"^(.+?)\n",
        (r"Question: \1\n", r"Choose one. \1\n", r"\1 Pick from the options below.\n"),
    ),
    "word_problem": (r"^", ("Word problem: ", "Read carefully. ", "Solve: ")),
    "json_extraction": (
        r'^What is the value of ("[\w.]+") in this JSON object\?',
        (
            r"Read the field \1 from this JSON.",
            r"From the JSON below, report \1.",
            r"Extract \1 from the following JSON.",
        ),
    ),
}


def families() -> tuple[str, ...]:
    """The families with templates (every family of ``routing.tasks``)."""
    return tuple(_REWRITES)


def template_for(split: Split, index: int) -> int:
    """The template of the ``index``-th item of a family in ``split`` (they alternate)."""
    choices = TEMPLATES[split]
    return choices[index % len(choices)]


def rephrase(family: str, prompt: str, template: int) -> str:
    """``prompt`` (a canonical question of ``family``) worded with ``template`` (0-3).
    ``ValueError`` for an unknown family or template, or a prompt the template cannot reword
    (not canonical for the family)."""
    if family not in _REWRITES:
        raise ValueError(f"no phrasing templates for family {family!r}")
    if not 0 <= template <= 3:
        raise ValueError(f"template must be 0-3, got {template}")
    if template == 0:
        return prompt
    pattern, replacements = _REWRITES[family]
    text, count = re.subn(pattern, replacements[template - 1], prompt, count=1)
    if count != 1:
        raise ValueError(f"{family} template {template} does not fit prompt {prompt[:60]!r}")
    return text
