"""``deliberate traces stats``: a summary of trace files per request class, pure.

Reads JSONL trace records (``gateway.trace_record``) and counts, per class: records, the
share whose answer reached its ``min_score``, candidates and the share of them that did
(the positive samples a distillation set gets), and tokens by kind. A line that is not a
trace record (not JSON, not an object, a cut line left by a crash) is skipped and reported,
never fatal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

NO_CLASS = "(none)"


@dataclass
class ClassStats:
    records: int = 0
    verified: int = 0
    candidates: int = 0
    verified_candidates: int = 0
    prompt: int = 0
    visible: int = 0
    hidden: int = 0

    def add(self, other: ClassStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Summary:
    classes: dict[str, ClassStats] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bad_lines: int = 0
    first_bad: str | None = None
    """``file:line: why`` of the first skipped line."""

    @property
    def total(self) -> ClassStats:
        out = ClassStats()
        for s in self.classes.values():
            out.add(s)
        return out


def rotated_files(path: Path) -> list[Path]:
    """``path``'s rotated siblings (``path.1``, ``path.2``...), oldest first."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    found = [
        (int(m.group(1)), p)
        for p in path.parent.glob(path.name + ".*")
        if (m := pattern.fullmatch(p.name)) and p.is_file()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dict(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def record_stats(record: dict[str, Any]) -> tuple[str, ClassStats] | str:
    """The class and counts of one record, or why it is not a trace record."""
    if not isinstance(record.get("messages"), list) or not isinstance(record.get("answer"), dict):
        return "not a trace record (no messages or answer)"
    klass = record.get("class")
    verifier = _dict(record, "verifier")
    score, floor = _score(verifier.get("score")), _score(verifier.get("min_score"))
    passed = score is not None and score >= (floor if floor is not None else 0.0)
    value = record.get("candidates")
    cands: list[Any] = value if isinstance(value, list) else []
    good = 0
    for c in cands:
        s = _score(c.get("score")) if isinstance(c, dict) else None
        good += s is not None and floor is not None and s >= floor
    tokens = _dict(record, "tokens")
    stats = ClassStats(
        records=1,
        verified=int(passed),
        candidates=len(cands),
        verified_candidates=good,
        prompt=_int(tokens.get("prompt")),
        visible=_int(tokens.get("visible")),
        hidden=_int(tokens.get("hidden")),
    )
    return (klass if isinstance(klass, str) and klass else NO_CLASS), stats


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield n, line


def summarise(paths: Iterable[Path]) -> Summary:
    """Counts over every record of ``paths`` (files that exist and are readable: the
    caller checks that, and ``OSError`` from a file that vanished propagates)."""
    summary = Summary()
    for path in paths:
        summary.files.append(path)
        for n, line in _lines(path):
            why: str
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                why = "not JSON"
            else:
                got = record_stats(record) if isinstance(record, dict) else "not a JSON object"
                if not isinstance(got, str):
                    klass, stats = got
                    summary.classes.setdefault(klass, ClassStats()).add(stats)
                    continue
                why = got
            summary.bad_lines += 1
            if summary.first_bad is None:
                summary.first_bad = f"{path}:{n}: {why}"
    return summary
