"""Request bodies: JSON parsing and pydantic validation with OpenAI-shaped 400s naming the field."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidRequest
from gateway.schemas import INT_FIELDS
from routing.loader import format_loc


def load_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object that can be forwarded; 400 ``invalid_json`` otherwise."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    check_writable(payload)
    return payload


def parse_payload(raw: bytes, schema: type[BaseModel]) -> dict[str, Any]:
    """The body as a dict, validated against ``schema``; 400 naming the field otherwise."""
    payload = load_object(raw)
    try:
        validated = schema.model_validate(payload)
    except ValidationError as e:
        param, message = describe_validation_error(e)
        raise InvalidRequest(message, param=param) from e
    # An int field takes 3.0; every limit below compares ints, so the checked value (not the
    # client's spelling) is what travels on.
    for key in INT_FIELDS:
        value = payload.get(key)
        if isinstance(value, float):
            payload[key] = getattr(validated, key)
    if isinstance(payload.get("prompt"), list):  # token ids as ints too (3.0 → 3)
        payload["prompt"] = getattr(validated, "prompt", payload["prompt"])
    return payload


# orjson reads 1,024 levels of nesting but writes only 254, and every backend body is written
# by it: a value must leave room for the few levels a strategy wraps around the client's.
_WRITE_MARGIN = 8


def _writable(value: Any) -> bool:
    wrapped = value
    for _ in range(_WRITE_MARGIN):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return False
    return True


def check_writable(payload: dict[str, Any]) -> None:
    """400 naming the field nested too deeply to be forwarded (one write when none is)."""
    if _writable(payload):
        return
    param = next((k for k, v in payload.items() if not _writable(v)), None)
    where = f"'{param}'" if param else "the request body"
    raise InvalidRequest(
        f"Invalid value for {where}: nested too deeply (at most {254 - _WRITE_MARGIN} levels)",
        param=param,
        code="nested_too_deeply",
    )


# pydantic names the member of a union that failed ("str", "list[str]", "ChatMessage"...) in
# the error location; clients need the field, so the location is cut before such a tag.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Z]\w*)$")


_KEY = "[key]"  # pydantic's marker after a map key that failed (not its value)
_MAX_SEGMENT = 64  # map keys are the client's: a param stays short whatever they are


def _segment(part: int | str) -> int | str:
    if isinstance(part, str) and len(part) > _MAX_SEGMENT:
        return part[: _MAX_SEGMENT - 3] + "..."
    return part


def describe_validation_error(error: ValidationError) -> tuple[str | None, str]:
    """The OpenAI ``param`` (e.g. ``messages[0].role``) and a message for the first problem."""
    located: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        loc, msg = list(err["loc"]), str(err["msg"])
        if loc and loc[-1] == _KEY:
            loc, msg = loc[:-1], f"{msg} (the key, not its value)"
        cut = next(
            (i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_TAG.match(p)), None
        )
        located.append((format_loc([_segment(p) for p in loc[:cut]]), msg))
    param = located[0][0]
    reasons = list(dict.fromkeys(msg for p, msg in located if p == param))
    where = f"'{param}'" if param else "the request body"
    return (param or None), f"Invalid value for {where}: {'; or '.join(reasons)}"
