"""Verifier names → factories, and user checkers loaded as plugins.

``build_verifier(name, context, params)`` builds a built-in verifier from the route's params
(validated by a pydantic model per verifier; unknown keys are rejected). ``load_plugin(spec)``
loads a user checker from ``"package.module:callable"`` or from an entry point named ``spec`` in
the group ``deliberate.verifiers``. Nothing is loaded at import.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from strategies.answers import ExtractSpec
from strategies.confidence import DEFAULT_TAIL, DEFAULT_WINDOW, Signal
from strategies.ports import Generator, Verifier
from strategies.verifiers.arithmetic import ArithmeticConsistencyVerifier
from strategies.verifiers.confidence import ConfidenceVerifier
from strategies.verifiers.exact import (
    JsonSchemaVerifier,
    MultipleChoiceVerifier,
    ReferenceMatchVerifier,
)
from strategies.verifiers.gate import GATE_FEATURES, GateModel, LearnedGateVerifier
from strategies.verifiers.judge import MAX_TOP_LOGPROBS, LogprobJudgeVerifier

ENTRY_POINT_GROUP = "deliberate.verifiers"


class VerifierConfigError(ValueError):
    """A verifier cannot be built: unknown name, bad params, missing collaborator, bad plugin.
    The message names the verifier (or plugin spec) and what is wrong."""


@dataclass(frozen=True, slots=True)
class VerifierContext:
    """Collaborators a factory may need: the route's chat ``generator`` (judges; the
    confidence verifier's prompt-logprob scoring) and the
    request's known ``reference`` answer (evaluation, calibration)."""

    generator: Generator | None = None
    reference: str | None = None


VerifierFactory = Callable[[VerifierContext, Mapping[str, Any]], Verifier]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArithmeticParams(_Params):
    extract: ExtractSpec | None = None


class JudgeParams(_Params):
    prompt_template: str | None = None
    step_template: str | None = None
    top_logprobs: int = Field(default=MAX_TOP_LOGPROBS, ge=1, le=MAX_TOP_LOGPROBS)


class ConfidenceParams(_Params):
    signal: Signal = "mean"
    window: int = Field(default=DEFAULT_WINDOW, ge=2)
    tail: int = Field(default=DEFAULT_TAIL, ge=1)
    length_penalty: float = Field(default=0.5, ge=0.0, le=1.0)


class ReferenceParams(_Params):
    reference: str | None = None  # else the context's reference
    extract: ExtractSpec | None = None


class ChoiceParams(_Params):
    correct: str | None = None  # else the context's reference
    options: str = "ABCDE"


class SchemaParams(_Params):
    json_schema: dict[str, Any] = Field(alias="schema")


class GateParams(_Params):
    """A fitted gate (``deliberate calibrate`` writes it); see ``strategies.verifiers.gate``."""

    bias: float = Field(allow_inf_nan=False)
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False)]]

    @field_validator("weights")
    @classmethod
    def _known_features(cls, weights: dict[str, float]) -> dict[str, float]:
        if unknown := sorted(set(weights) - set(GATE_FEATURES)):
            raise ValueError(f"unknown feature(s) {unknown}; known: {', '.join(GATE_FEATURES)}")
        return weights


def _arithmetic(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    return ArithmeticConsistencyVerifier(ArithmeticParams(**params).extract)


def _judge(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    p = JudgeParams(**params)
    if context.generator is None:
        raise VerifierConfigError("verifier 'logprob-judge' needs a generator (the chat backend)")
    return LogprobJudgeVerifier(
        context.generator,
        prompt_template=p.prompt_template,
        step_template=p.step_template,
        top_logprobs=p.top_logprobs,
    )


def _confidence(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    # No generator needed: candidates sampled with logprobs are scored from their own tokens.
    p = ConfidenceParams(**params)
    return ConfidenceVerifier(
        context.generator,
        signal=p.signal,
        window=p.window,
        tail=p.tail,
        length_penalty=p.length_penalty,
    )


def _reference(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    p = ReferenceParams(**params)
    reference = p.reference or context.reference
    if not reference:
        raise VerifierConfigError("verifier 'reference-match' needs a reference answer")
    return ReferenceMatchVerifier(reference, extract=p.extract)


def _choice(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    p = ChoiceParams(**params)
    correct = p.correct or context.reference
    if not correct:
        raise VerifierConfigError("verifier 'multiple-choice' needs the correct letter")
    return MultipleChoiceVerifier(correct, options=p.options)


def _schema(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    return JsonSchemaVerifier(SchemaParams(**params).json_schema)


def _gate(context: VerifierContext, params: Mapping[str, Any]) -> Verifier:
    p = GateParams(**params)
    return LearnedGateVerifier(
        GateModel(p.bias, p.weights),
        ArithmeticConsistencyVerifier(),
        ConfidenceVerifier(context.generator),
    )


VERIFIERS: Mapping[str, VerifierFactory] = {
    "arithmetic": _arithmetic,
    "logprob-judge": _judge,
    "confidence": _confidence,
    "reference-match": _reference,
    "multiple-choice": _choice,
    "json-schema": _schema,
    "learned-gate": _gate,
}


VERIFIER_PARAMS: Mapping[str, type[BaseModel]] = {
    "arithmetic": ArithmeticParams,
    "logprob-judge": JudgeParams,
    "confidence": ConfidenceParams,
    "reference-match": ReferenceParams,
    "multiple-choice": ChoiceParams,
    "json-schema": SchemaParams,
    "learned-gate": GateParams,
}
"""Each built-in verifier's params model, for config-time validation (``model_validate``
raises pydantic's ``ValidationError`` with the failing field's location); no collaborators
are needed."""


def build_verifier(
    name: str, context: VerifierContext, params: Mapping[str, Any] | None = None
) -> Verifier:
    """The built-in verifier ``name`` built from ``params``; ``VerifierConfigError`` naming the
    verifier when the name is unknown, a param is invalid or a collaborator is missing."""
    factory = VERIFIERS.get(name)
    if factory is None:
        known = ", ".join(sorted(VERIFIERS))
        raise VerifierConfigError(f"unknown verifier {name!r}; known: {known}")
    try:
        return factory(context, params or {})
    except ValidationError as exc:
        raise VerifierConfigError(f"verifier {name!r}: invalid params: {exc}") from exc
    except VerifierConfigError:
        raise
    except ValueError as exc:
        raise VerifierConfigError(f"verifier {name!r}: {exc}") from exc


def is_verifier(obj: object) -> bool:
    """Structural check for the ``Verifier`` port: a ``name`` string and async ``score`` and
    ``score_steps`` methods (the port is not runtime-checkable, and it checks less)."""
    return (
        not inspect.isclass(obj)
        and isinstance(getattr(obj, "name", None), str)
        and inspect.iscoroutinefunction(getattr(obj, "score", None))
        and inspect.iscoroutinefunction(getattr(obj, "score_steps", None))
    )


def load_plugin(
    spec: str,
    params: Mapping[str, Any] | None = None,
    *,
    available: Callable[[], Iterable[EntryPoint]] | None = None,
) -> Verifier:
    """Load a user checker: ``"package.module:attr"`` (``attr`` may be dotted) or the name of an
    entry point in group ``deliberate.verifiers``. The target is either a verifier object, or a
    class / factory called with ``**params`` that returns one. ``available`` lists the entry
    points to search (default: the installed ones). Raises ``VerifierConfigError`` naming
    ``spec`` when the target cannot be found, imported, called, or is not a ``Verifier``."""
    try:
        target = _resolve(spec, available or _installed)
    except VerifierConfigError:
        raise
    except Exception as exc:  # an import runs arbitrary user code: report any failure
        raise VerifierConfigError(f"verifier plugin {spec!r}: cannot load: {exc!r}") from exc
    if is_verifier(target):
        return cast(Verifier, target)
    if not callable(target):
        raise VerifierConfigError(f"verifier plugin {spec!r}: {target!r} is not a verifier")
    try:
        built = target(**(params or {}))
    except Exception as exc:
        raise VerifierConfigError(f"verifier plugin {spec!r}: factory failed: {exc!r}") from exc
    if not is_verifier(built):
        raise VerifierConfigError(
            f"verifier plugin {spec!r}: built {type(built).__name__}, which lacks a str `name` "
            "and async `score` / `score_steps`"
        )
    return cast(Verifier, built)


def _installed() -> Iterable[EntryPoint]:
    return entry_points(group=ENTRY_POINT_GROUP)


def _resolve(spec: str, available: Callable[[], Iterable[EntryPoint]]) -> object:
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
        if not module_name or not attr_path:
            raise VerifierConfigError(
                f"verifier plugin {spec!r}: expected 'package.module:callable'"
            )
        target: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            if not hasattr(target, attr):
                raise VerifierConfigError(
                    f"verifier plugin {spec!r}: {module_name!r} has no attribute {attr_path!r}"
                )
            target = getattr(target, attr)
        return target
    matches = [ep for ep in available() if ep.name == spec and ep.group == ENTRY_POINT_GROUP]
    if not matches:
        raise VerifierConfigError(
            f"verifier plugin {spec!r}: not 'package.module:callable' and no entry point of "
            f"that name in group {ENTRY_POINT_GROUP!r}"
        )
    return matches[0].load()


def params_problems(name: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why ``params`` do not suit verifier ``name``: (dotted field path, message) pairs."""
    model = VERIFIER_PARAMS.get(name)
    if model is None:
        return [("", f"unknown verifier {name!r}; built-in: {sorted(VERIFIER_PARAMS)}")]
    try:
        model.model_validate(params)
    except ValidationError as e:
        return [
            (".".join(str(p) for p in err["loc"]), str(err["msg"]).removeprefix("Value error, "))
            for err in e.errors(include_url=False)
        ]
    return []
