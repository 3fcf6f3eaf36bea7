"""Verifiers with a known truth: a reference answer, a multiple-choice key, a JSON schema.

They serve evaluation and calibration (measure a route's accuracy) and routes whose requests
carry a reference. Scores are 0.0 or 1.0; none of them judges steps, so ``score_steps`` gives a
neutral 0.5 per step. They spend no backend tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]

from strategies.answers import (
    ExtractSpec,
    extract_answer,
    find_json_object,
    normalize_answer,
)
from strategies.ports import Candidate, Score

NEUTRAL = 0.5
MAX_PARSE_CHARS = 2000


def _neutral_steps(steps: Sequence[str]) -> list[Score]:
    return [Score(NEUTRAL, "no step signal") for _ in steps]


class ReferenceMatchVerifier:
    """1.0 when a candidate's answer equals ``reference``, else 0.0.

    The candidate's answer is ``candidate.answer``, else ``extract_answer(text, extract)`` when
    an ``extract`` spec is given, else the last 2000 characters of the text (math-verify finds
    the answer in them: ``\\boxed{}``, "final answer is", the last expression). Equal means equal
    ``normalize_answer`` keys, or mathematically equal by math-verify (``1/2`` = ``0.5`` =
    ``\\frac{1}{2}``, ``50%`` = ``0.5``). math-verify runs in a worker thread with its signal
    timeouts off (signals work only in the main thread); ``timeout_s`` bounds the wait and a
    candidate that times out scores 0.0.
    """

    name = "reference-match"

    def __init__(
        self, reference: str, *, extract: ExtractSpec | None = None, timeout_s: float = 5.0
    ) -> None:
        if not reference.strip():
            raise ValueError("reference must not be empty")
        self.reference = reference
        self._key = normalize_answer(reference)
        self._extract = extract
        self._timeout_s = timeout_s
        self._gold: list[Any] | None = None  # parsed lazily, in the worker thread

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        return list(await asyncio.gather(*(self._score_one(c) for c in candidates)))

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return _neutral_steps(steps)

    async def _score_one(self, candidate: Candidate) -> Score:
        answer = candidate.answer
        if answer is None and self._extract is not None:
            answer = extract_answer(candidate.text, self._extract)
            if answer is None:
                return Score(0.0, "no answer")
        if answer is not None and normalize_answer(answer) == self._key:
            return Score(1.0, "match (string)")
        prediction = answer if answer is not None else candidate.text[-MAX_PARSE_CHARS:]
        try:
            same = await asyncio.wait_for(
                asyncio.to_thread(self._math_equal, prediction), self._timeout_s
            )
        except TimeoutError:
            return Score(0.0, "math-verify timed out")
        return Score(1.0, "match (math)") if same else Score(0.0, "no match")

    def _math_equal(self, prediction: str) -> bool:
        # Imported here: math-verify pulls in sympy (~0.25 s), paid only by routes that use it.
        from math_verify import parse, verify  # type: ignore[import-untyped,unused-ignore]

        def parsed(text: str) -> list[Any]:
            result: list[Any] = parse(text, parsing_timeout=None)
            if not result and "$" not in text:
                result = parse(f"${text}$", parsing_timeout=None)
            return result

        if self._gold is None:
            self._gold = parsed(self.reference)
        target = parsed(prediction)
        if not self._gold or not target:
            return False
        return bool(verify(self._gold, target, timeout_seconds=None))


class MultipleChoiceVerifier:
    """1.0 when a candidate picks the ``correct`` letter, else 0.0 ("no answer" when it picks
    none). The pick is ``candidate.answer`` or the ``option_letter`` extraction over
    ``options``."""

    name = "multiple-choice"

    def __init__(self, correct: str, *, options: str = "ABCDE") -> None:
        self._spec = ExtractSpec(format="option_letter", options=options)
        self.correct = correct.strip().upper()
        if len(self.correct) != 1 or self.correct not in self._spec.options:
            raise ValueError(f"correct must be one of {self._spec.options!r}, got {correct!r}")

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        scores = []
        for candidate in candidates:
            pick = candidate.answer or extract_answer(candidate.text, self._spec)
            if pick is None:
                scores.append(Score(0.0, "no answer"))
                continue
            letter = normalize_answer(pick).upper()
            right = letter == self.correct
            scores.append(Score(float(right), f"picked {letter}, key {self.correct}"))
        return scores

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return _neutral_steps(steps)


class JsonSchemaVerifier:
    """1.0 when the candidate's first JSON object (``find_json_object``: a ```json fence first,
    else the first parseable ``{...}``) validates against ``schema``, else 0.0 with the reason.
    The schema itself is checked at construction (``ValueError`` when invalid); its ``$schema``
    picks the draft (latest by default)."""

    name = "json-schema"

    def __init__(self, schema: Mapping[str, Any]) -> None:
        validator_cls = jsonschema.validators.validator_for(schema)
        try:
            validator_cls.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            raise ValueError(f"invalid JSON schema: {exc.message}") from exc
        self._validator = validator_cls(schema)

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        return [self._score_one(candidate.text) for candidate in candidates]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return _neutral_steps(steps)

    def _score_one(self, text: str) -> Score:
        document = find_json_object(text)
        if document is None:
            return Score(0.0, "no JSON object")
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
        if error is None:
            return Score(1.0, "valid")
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return Score(0.0, f"invalid at {where}: {error.message}"[:300])
