"""The calibration eval set: labelled chat items (``EvalItem``) built from the task families of
``routing.tasks``, mixing easy and hard families, as JSONL; and ``check_answer``, which judges
a model's reply exactly (number or option letter)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from routing.phrasing import Split, rephrase, template_for
from routing.tasks import (
    DIFFICULTY,
    EASY_FAMILIES,
    HARD_FAMILIES,
    OPTIONS,
    REQUEST_CLASS,
    Checker,
    Difficulty,
    Task,
    make_suite,
)
from strategies.answers import ExtractSpec, extract_answer, normalize_answer


class EvalSetError(ValueError):
    """An eval-set item or file is invalid; the message names the line and the field."""


_KEYS = ("id", "messages", "reference", "checker", "family", "difficulty", "class", "tags")


@dataclass(frozen=True)
class EvalItem:
    """One labelled request: the chat ``messages`` and how to judge a reply."""

    id: str
    messages: list[dict[str, Any]]
    reference: str
    checker: Checker
    family: str
    difficulty: Difficulty
    request_class: str | None = None
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSONL line's object (keys in ``_KEYS`` order)."""
        values = (self.id, self.messages, self.reference, self.checker, self.family)
        rest = (self.difficulty, self.request_class, list(self.tags))
        return dict(zip(_KEYS, (*values, *rest), strict=True))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalItem:
        """Validate one line's object; ``EvalSetError`` names the offending field."""
        if not isinstance(data, Mapping):
            raise EvalSetError(f"expected a JSON object, got {type(data).__name__}")
        for key in data:
            if key not in _KEYS:
                raise EvalSetError(f"field '{key}': unknown field")
        for key in ("id", "reference", "family"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise EvalSetError(f"field '{key}': must be a non-empty string")
        _check_messages(data.get("messages"))
        checker, difficulty = data.get("checker"), data.get("difficulty")
        if checker not in ("number", "option"):
            raise EvalSetError(f"field 'checker': must be 'number' or 'option', got {checker!r}")
        if difficulty not in ("easy", "hard"):
            raise EvalSetError(f"field 'difficulty': must be 'easy' or 'hard', got {difficulty!r}")
        if checker == "option" and not re.fullmatch(r"[A-Z]", data["reference"]):
            raise EvalSetError("field 'reference': an option reference is one letter A-Z")
        request_class = data.get("class")
        if request_class is not None and (not isinstance(request_class, str) or not request_class):
            raise EvalSetError("field 'class': must be a non-empty string or null")
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise EvalSetError("field 'tags': must be a list of strings")
        return cls(
            data["id"],
            list(data["messages"]),
            data["reference"],
            cast(Checker, checker),
            data["family"],
            cast(Difficulty, difficulty),
            request_class,
            tuple(tags),
        )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise EvalSetError("field 'messages': must be a non-empty list")
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise EvalSetError(f"field 'messages[{n}]': must be an object with a string 'role'")
        if not isinstance(m.get("content"), str | list):
            raise EvalSetError(f"field 'messages[{n}].content': must be a string or a list")


def _item(task: Task, split: Split, index: int) -> EvalItem:
    template = template_for(split, index)
    prompt = rephrase(task.family, task.prompt, template)
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    checker: Checker = "option" if task.answer_format == "option_letter" else "number"
    family = task.family
    return EvalItem(
        task.id,
        messages,
        task.reference,
        checker,
        family,
        DIFFICULTY[family],
        REQUEST_CLASS[family],
        (task.kind, f"template:{template}", split),
    )


HELDOUT_SEED_OFFSET = 10_000


def make_eval_set(
    n_items: int, seed: int = 0, hard_share: float = 0.3, split: Split = "fit"
) -> list[EvalItem]:
    """``n_items`` items, ``round(n_items * hard_share)`` of them from the hard families, spread
    evenly through the list; within each difficulty the families are interleaved round-robin.

    ``split`` picks the phrasing templates (``routing.phrasing``: "fit" for calibration,
    "heldout" for wording calibration never saw) and the tasks: a held-out set draws its
    questions from ``seed + HELDOUT_SEED_OFFSET``, so it shares no item with the fit set of any
    small seed. Deterministic in its arguments; ids are unique (held-out ids end in ``-h``)."""
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError("hard_share must be in [0, 1]")
    if n_items < 0:
        raise ValueError("n_items must be >= 0")
    n_hard = int(n_items * hard_share + 0.5)
    stream = seed + HELDOUT_SEED_OFFSET if split == "heldout" else seed
    easy = iter(make_suite(n_items - n_hard, stream, EASY_FAMILIES))
    hard = iter(make_suite(n_hard, stream, HARD_FAMILIES))
    tasks = [
        next(hard) if (k + 1) * n_hard // n_items > k * n_hard // n_items else next(easy)
        for k in range(n_items)
    ]
    items = [_item(t, split, int(t.id.rsplit("-", 1)[1])) for t in tasks]
    if split == "heldout":
        items = [dataclasses.replace(i, id=f"{i.id}-h") for i in items]
    return items


def write_eval_set(items: Iterable[EvalItem], path: str | Path) -> None:
    """Write ``items`` as JSONL (one ``to_json`` object per line)."""
    lines = [json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in items]
    Path(path).write_text("".join(lines), encoding="utf-8")


def load_eval_set(path: str | Path) -> list[EvalItem]:
    """Read a JSONL eval set (blank lines skipped). ``EvalSetError`` as ``path:line: problem``
    for bad JSON, an invalid field or a duplicate id; ``OSError`` when unreadable."""
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = EvalItem.from_json(json.loads(line))
        except json.JSONDecodeError as e:
            raise EvalSetError(f"{path}:{lineno}: not valid JSON: {e.msg}") from e
        except EvalSetError as e:
            raise EvalSetError(f"{path}:{lineno}: {e}") from e
        if item.id in seen:
            raise EvalSetError(f"{path}:{lineno}: field 'id': duplicate of line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    return items


# A reply that ends on a bare option letter ("... so B.") states no answer the shared extractor
# recognises; accept it here, but only as the reply's very last token.
_TRAILING_LETTER = re.compile(r"(?<![\w'])\(?(?P<l>[A-Z])\)?[.!]?[\s*]*$")


def check_answer(item: EvalItem, text: str) -> bool:
    """Whether ``text`` states ``item``'s reference answer (exact after normalisation)."""
    if item.checker == "number":
        answer = extract_answer(text, ExtractSpec(format="last_number"))
    else:
        letters = OPTIONS if item.reference in OPTIONS else OPTIONS + item.reference
        answer = extract_answer(text, ExtractSpec(format="option_letter", options=letters))
        trailing = _TRAILING_LETTER.search(text) if answer is None else None
        if trailing and trailing["l"] in letters:
            answer = trailing["l"]
    return answer is not None and normalize_answer(answer) == normalize_answer(item.reference)
