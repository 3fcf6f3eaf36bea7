"""Distillation trace records, pure: is a result exportable, redaction, and the record itself.

A record is one JSON object (one JSONL line) per exported request::

    {"schema": "deliberate.trace/1", "id", "ts", "tenant", "route", "served_route",
     "requested_route", "strategy", "class", "messages": [{"role", "content"}],
     "answer": {"text", "answer", "reasoning", "finish_reason"},
     "verifier": {"name", "score", "min_score"},
     "candidates": [{"index", "wave", "text", "answer", "score", "confidence", "tokens",
                     "finish_reason", "chosen"}],
     "ladder": {"path", "stopped_at", "verified"} | null, "stop_reason",
     "tokens": {"prompt", "visible", "hidden"}, "redactions"}

Every text in it (messages, answer, reasoning, candidate texts) has been through the
``Redactor``; ``redactions`` counts the replacements. Keys a strategy does not produce are
null (``wave`` outside ladders, ``score`` for a candidate the verifier never scored).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from routing.features import message_text
from routing.trace_config import Redaction
from strategies.base import StrategyResult

SCHEMA = "deliberate.trace/1"


@dataclass(frozen=True, slots=True)
class Verification:
    """The verifier that scored the chosen answer, and its score (in [0, 1])."""

    verifier: str
    score: float


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def verification_of(info: Mapping[str, Any]) -> Verification | None:
    """How a verifier judged the chosen answer, from a strategy's ``deliberate`` info; None
    when no verifier scored it (voting, single-pass, bounded reasoning).

    A ladder counts only when its answer passed its rung's check (``ladder.verified``); then
    the score is the chosen candidate's (the last step's ``best_score``). best-of-n and refine
    give per-candidate ``scores`` and the chosen index; prm-search the chosen beam's score.
    """
    ladder = info.get("ladder")
    verifier = info.get("verifier") or info.get("scorer")
    if not isinstance(verifier, str) or not verifier:
        return None
    if isinstance(ladder, Mapping):
        path = ladder.get("path") or [{}]
        score = _num(path[-1].get("best_score"))
        if not ladder.get("verified") or score is None:
            return None
        return Verification(verifier, score)
    chosen = info.get("chosen")
    if isinstance(chosen, Mapping):  # prm-search
        score = _num(chosen.get("score"))
        return None if score is None else Verification(verifier, score)
    scores = info.get("scores")
    index = info.get("chosen_index", info.get("chosen_version"))
    if isinstance(scores, list) and isinstance(index, int) and 0 <= index < len(scores):
        score = _num(scores[index])
        return None if score is None else Verification(verifier, score)
    return None


@dataclass(frozen=True)
class Redactor:
    """Compiled redaction rules, applied in order; ``__call__`` returns the redacted text
    and how many replacements were made."""

    rules: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def of(cls, rules: Sequence[Redaction]) -> Redactor:
        # a replacement is literal text: backslashes (group references) are not expanded
        return cls(
            tuple((re.compile(r.pattern), r.replacement.replace("\\", "\\\\")) for r in rules)
        )

    def __call__(self, text: str) -> tuple[str, int]:
        total = 0
        for pattern, replacement in self.rules:
            text, n = pattern.subn(replacement, text)
            total += n
        return text, total


@dataclass(frozen=True)
class TraceInput:
    """What the pipeline knows of one finished request, captured off the response path."""

    request_id: str
    ts: float
    """Seconds since the epoch, when the answer was ready."""
    tenant: str
    route: str
    """The route that ran (whose ``trace_export`` applied)."""
    served_route: str
    """The route whose answer was returned (a ladder's route rung may differ)."""
    strategy: str
    request_class: str | None
    messages: Sequence[Any]
    result: StrategyResult
    verification: Verification
    min_score: float
    requested_route: str | None = None
    candidate_detail: Sequence[Mapping[str, Any]] | None = None
    """The strategy's per-candidate detail before a route's ``candidate_detail`` trimmed it."""


class _Counter:
    """Redacts and counts the replacements of one record."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor, self.count = redactor, 0

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        out, n = self.redactor(text)
        self.count += n
        return out


def _messages(messages: Sequence[Any], redact: _Counter) -> list[dict[str, Any]]:
    """Role and text of each message (text parts joined; images and files left out)."""
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        text = content if isinstance(content, str) else message_text(content)
        out.append({"role": str(m.get("role", "user")), "content": redact(text)})
    return out


def _list(info: Mapping[str, Any], key: str) -> list[Any]:
    value = info.get(key)
    return value if isinstance(value, list) else []


def _candidates(inp: TraceInput, redact: _Counter, texts: bool) -> list[dict[str, Any]]:
    info, result = inp.result.info, inp.result
    detail = inp.candidate_detail
    if detail is None and isinstance(info.get("candidates"), list):
        detail = info["candidates"]
    answers, scores, weights = (_list(info, k) for k in ("answers", "scores", "confidence"))
    chosen = info.get("chosen_index", info.get("chosen_version"))
    n = max(len(result.candidates), len(detail or ()), len(answers), len(scores))
    out = []
    for i in range(n):
        d: Mapping[str, Any] = detail[i] if detail is not None and i < len(detail) else {}
        gen = result.candidates[i] if i < len(result.candidates) else None
        item: dict[str, Any] = {
            "index": i,
            "wave": d.get("wave"),
            "answer": d.get("answer", answers[i] if i < len(answers) else None),
            "score": d.get("score", scores[i] if i < len(scores) else None),
            "confidence": d.get("confidence", weights[i] if i < len(weights) else None),
            "tokens": d.get("tokens", gen.tokens if gen is not None else None),
            "finish_reason": d.get("finish_reason", gen.finish_reason if gen else None),
            "chosen": d.get("chosen", i == chosen),
        }
        if texts:
            item["text"] = redact(gen.text) if gen is not None else None
        out.append(item)
    return out


def build_record(inp: TraceInput, redactor: Redactor, candidate_texts: bool) -> dict[str, Any]:
    """The JSON-ready record of ``inp`` (see the module docstring), every text redacted."""
    redact = _Counter(redactor)
    result, info = inp.result, inp.result.info
    pick = result.choices[0]
    answer = info.get("answer")
    if answer is None:
        index = info.get("chosen_index")
        answers = info.get("answers")
        if isinstance(index, int) and isinstance(answers, list) and 0 <= index < len(answers):
            answer = answers[index]
    ladder = info.get("ladder")
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "id": inp.request_id,
        "ts": datetime.fromtimestamp(inp.ts, UTC).isoformat(timespec="milliseconds"),
        "tenant": inp.tenant,
        "route": inp.route,
        "served_route": inp.served_route,
        "requested_route": inp.requested_route,
        "strategy": inp.strategy,
        "class": inp.request_class,
        "messages": _messages(inp.messages, redact),
        "answer": {
            "text": redact(pick.text),
            "answer": redact(answer) if isinstance(answer, str) else None,
            "reasoning": redact(pick.reasoning),
            "finish_reason": pick.finish_reason,
        },
        "verifier": {
            "name": inp.verification.verifier,
            "score": inp.verification.score,
            "min_score": inp.min_score,
        },
        "candidates": _candidates(inp, redact, candidate_texts),
        "ladder": None
        if not isinstance(ladder, Mapping)
        else {k: ladder.get(k) for k in ("path", "stopped_at", "verified", "start_rung")},
        "stop_reason": result.stop_reason,
        "tokens": {
            "prompt": result.usage.prompt,
            "visible": result.usage.visible,
            "hidden": result.usage.hidden,
        },
    }
    record["redactions"] = redact.count
    return record


def encode(record: Mapping[str, Any]) -> bytes:
    """One JSONL line: compact JSON (no raw newline can occur inside it) and ``\\n``."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
