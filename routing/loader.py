"""Read ``routes.yaml`` into a ``DeliberateConfig``, with errors as ``file:path: message`` lines."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from routing.config import STRATEGY_NAMES, DeliberateConfig


class ConfigError(Exception):
    """The policy file is invalid. ``lines`` holds one ``file:path: message`` line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ConfigUnreadable(ConfigError):
    """The file could not be read or is not YAML at all (exit code 2 in the CLI)."""


def anchored(raw: Mapping[str, Any], config_dir: str | Path) -> dict[str, Any]:
    """A copy of a policy file's mapping whose relative file references
    (``policy.predictor.path``) point at the same files from anywhere: made absolute against
    ``config_dir``, the directory of the file ``raw`` was read from. For tools and tests that
    write a modified copy of a policy file somewhere else."""
    out = copy.deepcopy(dict(raw))
    policy = out.get("policy")
    predictor = policy.get("predictor") if isinstance(policy, dict) else None
    if isinstance(predictor, dict) and isinstance(predictor.get("path"), str):
        path = Path(predictor["path"])
        if not path.is_absolute():
            predictor["path"] = str((Path(config_dir) / path).resolve())
    return out


def load_config(path: str | Path) -> DeliberateConfig:
    """Read, parse and validate ``path``. Raises ``ConfigUnreadable`` or ``ConfigError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigUnreadable([f"{p}: cannot read: {e.strerror or e}"]) from e
    return parse_config(text, str(p))


def parse_config(text: str, source: str = "<string>") -> DeliberateConfig:
    """Parse YAML ``text`` (named ``source`` in messages) into a validated config."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigUnreadable([f"{source}{where}: not valid YAML: {e}"]) from e
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: expected a mapping at the top level, got {type(data).__name__}"]
        )
    try:
        return DeliberateConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from e


def format_errors(error: ValidationError, source: str) -> list[str]:
    """One ``source:path: message`` line per pydantic error."""
    lines: list[str] = []
    for err in error.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = _without_tags(err["loc"])
        if err["type"] == "union_tag_invalid":
            loc = (*loc, "strategy")
            msg = f"unknown strategy {err['ctx']['tag']!r}; allowed: {', '.join(STRATEGY_NAMES)}"
        path = format_loc(loc)
        if path:
            lines.append(f"{source}:{path}: {_with_allowed(msg, err)}")
        else:
            # Cross-reference errors carry their own paths, one per line.
            lines.extend(f"{source}:{part}" for part in msg.splitlines())
    return lines


def _without_tags(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """Drop the strategy name pydantic inserts after ``routes[i]`` (the union's tag)."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        tagged = i >= 2 and loc[i - 2] == "routes" and isinstance(loc[i - 1], int)
        if not (tagged and part in STRATEGY_NAMES):
            out.append(part)
    return tuple(out)


def format_loc(loc: Sequence[int | str]) -> str:
    """``("routes", 2, "params", "n")`` → ``routes[2].params.n``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _with_allowed(msg: str, err: ErrorDetails) -> str:
    if err["type"] != "extra_forbidden":
        return msg
    allowed = _allowed_keys(DeliberateConfig, _without_tags(err["loc"])[:-1])
    return (
        f"unknown key; allowed: {', '.join(allowed)}"
        if allowed
        else "unknown key; this section takes no keys"
    )


def _unwrap(tp: object) -> object:
    """``Annotated[X, ...]`` and ``X | None`` (repeatedly) to ``X``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        members = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) in (Union, UnionType) and len(members) == 1:
            tp = members[0]
            continue
        return tp


def _model_with(tp: object, name: str) -> type[BaseModel] | None:
    """The model ``tp`` names (itself, or the first member of a union, possibly
    ``Annotated``) that has a field ``name``."""
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    members = get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)
    for m in members:
        if isinstance(m, type) and issubclass(m, BaseModel) and name in m.model_fields:
            return m
    return None


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names of the model found by walking ``loc`` from ``model`` (empty if lost)."""
    current: object = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif (model_with := _model_with(current, part)) is not None:
            current = model_with.model_fields[part].annotation
        else:
            return []
        # Unwrap Optional[X] / X | None to X.
        members = [a for a in get_args(current) if a is not type(None)]
        if get_origin(current) in (Union, UnionType) and len(members) == 1:
            current = members[0]
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []
