"""The seeded task suite of the test-time-scaling benchmark: a re-export of
``routing.evalset`` (where the families live, shared with the calibration eval set)."""

from __future__ import annotations

from routing.tasks import (
    CATEGORIES,
    FAMILIES,
    LETTER_SUFFIX,
    NUMBER_SUFFIX,
    OPTIONS,
    WORDS,
    AnswerFormat,
    Maker,
    Task,
    family_counts,
    family_tasks,
    make_suite,
)

__all__ = [
    "CATEGORIES",
    "FAMILIES",
    "LETTER_SUFFIX",
    "NUMBER_SUFFIX",
    "OPTIONS",
    "WORDS",
    "AnswerFormat",
    "Maker",
    "Task",
    "family_counts",
    "family_tasks",
    "make_suite",
]
