"""Answer extraction and normalisation: turn a candidate's text into a voting key.

Contracts:

- ``extract_answer(text, spec)`` returns the raw final answer the text states in the route's
  format (stripped of surrounding whitespace), or ``None`` when the text states none. It never
  raises on any input text.
- ``normalize_answer(answer)`` maps equivalent spellings to one key: two answers vote together
  iff their normalised forms are equal. Numbers are compared as exact rationals: a number's key
  is its shortest decimal when the value has a terminating decimal expansion (``"1/2"`` →
  ``"0.5"``, ``"1,000.00"`` → ``"1000"``, ``"-0"`` → ``"0"``), else its reduced fraction
  (``"2/6"`` → ``"1/3"``). Anything else is casefolded with whitespace collapsed.

Decision on fractions: ``a/b`` written without spaces between two integers (and not part of a
longer ``a/b/c`` run such as a date) counts as ONE number in ``last_number``; so ``"... is 1/2"``
extracts ``"1/2"``, which normalises to ``"0.5"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

AnswerFormat = Literal["answer_line", "last_number", "boxed", "option_letter", "json_field"]


class ExtractSpec(BaseModel):
    """How a route's answers are written (lives in the route params YAML).

    ``json_field`` is a dotted path (``"result.value"``, list indices as digits) and is required
    exactly when ``format == "json_field"``. ``options`` are the letters ``option_letter``
    accepts (distinct ASCII letters, stored upper-case).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: AnswerFormat = "last_number"
    json_field: str | None = None
    options: str = "ABCDE"

    @field_validator("options")
    @classmethod
    def _letters(cls, value: str) -> str:
        upper = value.upper()
        if not upper or not upper.isascii() or not upper.isalpha() or len(set(upper)) != len(upper):
            raise ValueError("options must be distinct ASCII letters, e.g. 'ABCDE'")
        return upper

    @model_validator(mode="after")
    def _json_field_iff_json(self) -> ExtractSpec:
        if self.format == "json_field" and not self.json_field:
            raise ValueError("json_field is required when format is 'json_field'")
        if self.format != "json_field" and self.json_field is not None:
            raise ValueError("json_field applies only to format 'json_field'")
        return self


# --- numbers -------------------------------------------------------------------------------

_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})
_NUMBER = re.compile(
    r"""(?<![\w.)/])                                   # not glued to a word, number or ')'
        (?:-(?=[\d.]))?                                # sign only when it touches the digits
        (?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?![/\d]))?   # 1,234.5  12  3/4
        |(?<![\w.)/])-?\.\d+                           # .5
    """,
    re.VERBOSE,
)
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_LATEX_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}$")
_MAX_DIGITS = 60


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain number (``-3``, ``1,234``, ``3.50``, ``1/2``, ``\\frac{1}{2}``,
    ``50%`` → 50, ``$12`` → 12), or ``None`` when ``text`` is not one number."""
    s = text.strip().translate(_MINUS_SIGNS)
    s = s.removeprefix("$").removesuffix("%")
    if s.startswith("-$"):
        s = "-" + s[2:]
    latex = _LATEX_FRAC.match(s)
    if latex:
        sign, num, den = latex.groups()
        s = f"{sign}{num}/{den}".replace("--", "")
    if len(s) > _MAX_DIGITS or not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        value = Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return value


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: shortest decimal if it terminates, else ``p/q``."""
    if value == 0:
        return "0"
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    whole, frac = digits[: len(digits) - places], digits[len(digits) - places :].rstrip("0")
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


# --- normalisation -------------------------------------------------------------------------

_EDGE_JUNK = " \t\r\n.,;:!?\"'`*_$"
_WRAPPERS: tuple[tuple[str, str], ...] = (
    ("\\(", "\\)"),
    ("\\text{", "}"),
    ("\\mathrm{", "}"),
    ("\\textbf{", "}"),
    ("(", ")"),
    ("[", "]"),
    ("{", "}"),
)


def normalize_answer(answer: str) -> str:
    """The canonical voting key of an answer (see the module docstring); never raises."""
    s = _trim(answer)
    unwrapped = True
    while unwrapped and s:
        unwrapped = False
        for left, right in _WRAPPERS:
            inner = s[len(left) : -len(right)]
            if s.startswith(left) and s.endswith(right) and _balanced(inner):
                s, unwrapped = _trim(inner), True
                break
    number = parse_number(s)
    if number is not None:
        return format_number(number)
    return " ".join(s.casefold().split())


def _trim(text: str) -> str:
    """Strip junk from both ends, but keep the point of a leading decimal (".5")."""
    s = text.rstrip(_EDGE_JUNK).lstrip(_EDGE_JUNK.replace(".", ""))
    while s.startswith(".") and not s[1:2].isdigit():
        s = s[1:].lstrip(_EDGE_JUNK.replace(".", ""))
    return s


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char in "([{") - (char in ")]}")
        if depth < 0:
            return False
    return depth == 0


# --- extractors ----------------------------------------------------------------------------

_ANSWER_LINE = re.compile(
    r"^[\s>*#_-]*(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*)?[*_]*\s*[:：][*_]*[ \t]*(?P<v>.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def _answer_line(text: str, spec: ExtractSpec) -> str | None:
    lines = text.splitlines()
    for match in reversed(list(_ANSWER_LINE.finditer(text))):
        value = match.group("v").strip().strip("*_").strip()
        if not value:  # "Answer:" alone on its line: the answer is on the next non-empty line
            line_no = text.count("\n", 0, match.start("v"))
            value = next((ln.strip() for ln in lines[line_no + 1 :] if ln.strip()), "")
        value = value.rstrip(".").strip()
        if value:
            return value
    return None


def _last_number(text: str, spec: ExtractSpec) -> str | None:
    matches = _NUMBER.findall(text.translate(_MINUS_SIGNS))
    return matches[-1] if matches else None


def _boxed(text: str, spec: ExtractSpec) -> str | None:
    start = text.rfind("\\boxed")
    while start != -1:
        content = _balanced_braces(text, start + len("\\boxed"))
        if content is not None and content.strip():
            return content.strip()
        start = text.rfind("\\boxed", 0, start)  # truncated or empty box: try the one before
    return None


def _balanced_braces(text: str, pos: int) -> str | None:
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        return None
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i]
    return None


def _option_letter(text: str, spec: ExtractSpec) -> str | None:
    letters = re.escape(spec.options)
    stated = re.compile(
        rf"answer\s*(?:is|:)?[\s:*]*(?:option\s*)?(?P<open>\()?(?P<l>[{letters}])\)?(?![\w'])",
        re.IGNORECASE,
    )
    # Explicit statements win over bare letters: "(C) fails, so the answer is B". A lower-case
    # letter counts only in parentheses: "the answer is a bit..." names no option.
    for match in reversed(list(stated.finditer(text))):
        if match.group("l").isupper() or match.group("open"):
            return match.group("l").upper()
    lone = re.compile(rf"^[\s*]*\(?(?P<l>[{letters}])[).:]?[\s*]*$", re.MULTILINE)
    found = lone.findall(text)
    if found:
        return str(found[-1]).upper()
    # "(b)" is unambiguous in any case; a bare "b)" is too often a list marker.
    marked = re.compile(rf"\((?P<p>[{letters}])\)|(?<![\w(])(?P<b>[{letters}])\)", re.IGNORECASE)
    hits = [
        m.group("p") or m.group("b")
        for m in marked.finditer(text)
        if not m.group("b") or m.group("b").isupper()
    ]
    return hits[-1].upper() if hits else None


_OPTION_LINE = re.compile(r"^\s*\(?[A-H][).:]\s", re.MULTILINE)


def lists_options(question: str) -> bool:
    """Whether ``question`` lists at least two lettered options (``A) ...`` lines)."""
    return len(_OPTION_LINE.findall(question)) >= 2


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_MAX_JSON_STARTS = 200


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: inside a ```json fence if there is one, else the first
    ``{`` from which a complete object parses. ``None`` when there is none."""
    for fence in _FENCE.finditer(text):
        found = _first_object(fence.group(1))
        if found is not None:
            return found
    return _first_object(text)


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    pos = text.find("{")
    for _ in range(_MAX_JSON_STARTS):
        if pos == -1:
            return None
        try:
            value, _end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            return value
        pos = text.find("{", pos + 1)
    return None


def _json_field(text: str, spec: ExtractSpec) -> str | None:
    node: Any = find_json_object(text)
    for part in (spec.json_field or "").split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    if node is None:
        return None
    if isinstance(node, str):
        return node.strip() or None
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


_EXTRACTORS: dict[AnswerFormat, Callable[[str, ExtractSpec], str | None]] = {
    "answer_line": _answer_line,
    "last_number": _last_number,
    "boxed": _boxed,
    "option_letter": _option_letter,
    "json_field": _json_field,
}


def extract_answer(text: str, spec: ExtractSpec) -> str | None:
    """The final answer ``text`` states in ``spec.format``, or ``None`` (no extractable answer).

    - ``answer_line``: the last line ``Answer: ...`` / ``Final answer: ...`` (any case, markdown
      emphasis allowed); when the line holds only the label, the next non-empty line.
    - ``last_number``: the last number (``-3``, ``1,234``, ``3.50``, ``.5``, ``1/2``), as written.
    - ``boxed``: the content of the last complete ``\\boxed{...}`` (nested braces kept).
    - ``option_letter``: the last "answer is B" / "Answer: (B)"; else the last line holding only
      a letter; else the last "(B)" or "B)". Only ``spec.options``, returned upper-case; a
      lower-case letter counts only in parentheses ("the answer is a bit..." names no option).
    - ``json_field``: field ``spec.json_field`` of the first JSON object (see
      ``find_json_object``); strings as-is, other values as compact sorted JSON, null → None.
    """
    return _EXTRACTORS[spec.format](text, spec)
