"""Request features the classifier and the policy read: cheap, pure, whole-conversation.

Everything here runs on the request path (budget: well under a millisecond), so it is plain
string scanning with precompiled patterns; no tokenizer, no model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_DIGIT = re.compile(r"\d")
_OPERATOR = re.compile(r"\d\s*(?:[-+*/×x÷^%]|\*\*)\s*(?=\(?\d)")
_CODE = re.compile(r"```|^(?: {4}|\t)\S", re.MULTILINE)
_CONSTRAINT = re.compile(
    r"\b(?:must|exactly|at (?:least|most)|no more than|only|without|do not|don't|never|"
    r"always|should)\b|^\s*(?:[-*•]|\d+[.)])\s+\S",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Features:
    """What the router knows about a request before any backend call."""

    text: str
    """The whole conversation, ``role: content`` lines."""
    chars: int
    digits: int
    operators: int
    has_code: bool
    constraints: int
    tags: frozenset[str]


def message_text(content: Any) -> str:
    """The text of a message's content (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def conversation_text(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', '')}: {message_text(m.get('content'))}" for m in messages)


def request_tags(metadata: Any) -> frozenset[str]:
    """Task tags from OpenAI ``metadata``: ``task`` and comma-separated ``tags``."""
    if not isinstance(metadata, Mapping):
        return frozenset()
    tags = {str(metadata["task"]).strip().lower()} if metadata.get("task") else set()
    raw = metadata.get("tags")
    if isinstance(raw, str):
        tags |= {t.strip().lower() for t in raw.split(",") if t.strip()}
    return frozenset(tags)


SCAN_CHARS = 65_536
"""Longest text scanned: the head and tail of a longer conversation (a 4 MiB body would
otherwise stall the event loop for most of a second)."""


def extract(messages: Sequence[Mapping[str, Any]], metadata: Any = None) -> Features:
    full = conversation_text(messages)
    half = SCAN_CHARS // 2
    text = full if len(full) <= SCAN_CHARS else full[:half] + "\n" + full[-half:]
    return Features(
        text=text,
        chars=len(full),
        digits=len(_DIGIT.findall(text)),
        operators=len(_OPERATOR.findall(text)),
        has_code=bool(_CODE.search(text)),
        constraints=len(_CONSTRAINT.findall(text)),
        tags=request_tags(metadata),
    )
