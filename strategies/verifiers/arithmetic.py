"""A reference-free checker: re-compute the arithmetic a candidate writes down.

Equations are found in text such as ``23 + 48 = 71``, ``12 × 3 = 36``, ``(5+3)*2 = 8*2 = 16``,
``7 x 8 = 56``, ``84 ÷ 4 = 21``, ``2^3 = 8``, ``$1,200 - $300 = $900`` (chains give one equation
per ``=``). Each side is evaluated by ``safe_eval``: exact rational arithmetic over an ``ast``
whitelist (numbers, ``+ - * / // % **``, unary sign, parentheses) with bounded exponents and
magnitudes; nothing is ever ``eval``-ed. An equation counts only when both sides evaluate and at
least one side holds an operator (``x = 5`` or ``5 = 5`` check nothing).

An equation holds when both sides are equal, or when one side is a decimal literal with d ≥ 1
places, the other side's value has no exact d-place decimal, and they differ by at most 10^-d
(``10/3 = 3.33`` and ``2/3 = 0.66`` hold; ``1.5 + 1.5 = 3.01`` does not).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from strategies.answers import ExtractSpec, extract_answer, format_number, parse_number
from strategies.ports import Candidate, Score

MAX_EXPR_CHARS = 200
MAX_EXPONENT = 12
MAX_MAGNITUDE = 10**30
FINAL_ANSWER_WEIGHT = 0.75
NEUTRAL = 0.5


class _Rejected(Exception):
    """An expression outside the safe subset (or out of bounds)."""


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        raise _Rejected("exponent must be an integer of at most 12 in size")
    result: Fraction = base ** int(exponent)
    return result


_BINOPS: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
    ast.Pow: _power,
}


@dataclass(frozen=True, slots=True)
class _Side:
    value: Fraction
    has_operator: bool
    decimals: int | None  # places of a plain decimal literal, None for expressions


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = Fraction(node.value)
    elif isinstance(node, ast.Constant) and type(node.value) is float:
        # repr() keeps the decimal as written (0.1 → 1/10, not the nearest binary float)
        value = Fraction(repr(node.value))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand)
        value = -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        value = _BINOPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    else:
        raise _Rejected(type(node).__name__)
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise _Rejected("value out of bounds")
    return value


def _parse(expr: str) -> _Side | None:
    text = expr.strip()
    if not text or len(text) > MAX_EXPR_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree.body)
    except (_Rejected, SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    has_op = any(isinstance(node, ast.BinOp) for node in ast.walk(tree))
    body = tree.body.operand if isinstance(tree.body, ast.UnaryOp) else tree.body
    places = re.search(r"\.(\d+)", text)
    decimals = len(places.group(1)) if isinstance(body, ast.Constant) and places else None
    return _Side(value, has_op, decimals)


def safe_eval(expr: str) -> Fraction | None:
    """The exact value of an arithmetic expression, or ``None`` when it is not one: anything but
    numbers, ``+ - * / // % **`` (integer exponents up to 12), unary sign and parentheses is
    rejected, as are inputs over 200 characters and values beyond 10^30. Never raises."""
    side = _parse(expr)
    return None if side is None else side.value


def _same(a: _Side, b: _Side) -> bool:
    if a.value == b.value:
        return True
    for literal, other in ((a, b), (b, a)):
        d = literal.decimals
        if d and (other.value * 10**d).denominator != 1:
            return abs(literal.value - other.value) <= Fraction(1, 10**d)
    return False


# --- finding equations in text -----------------------------------------------------------

_SYMBOLS = str.maketrans({"×": "*", "·": "*", "⋅": "*", "∗": "*", "÷": "/", "−": "-", "–": "-"})
_REWRITES = (
    (re.compile(r"\\times|\\cdot"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\$(?=[\d.])"), ""),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # thousands separators
    (re.compile(r"(?<=[\d)])[ \t]*[xX][ \t]*(?=[\d(])"), " * "),  # 7 x 8, 3X(2+1)
    (re.compile(r"\^"), "**"),
)
_CHARS = r"[\d.+\-*/%() \t]"
_RUN = re.compile(rf"{_CHARS}+(?:={_CHARS}+)+")


def _prepare(text: str) -> str:
    text = text.translate(_SYMBOLS)
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    return text


def _strip_unbalanced(s: str) -> str:
    s = s.strip()
    while s.startswith("(") and s.count("(") > s.count(")"):
        s = s[1:].strip()
    while s.endswith(")") and s.count(")") > s.count("("):
        s = s[:-1].strip()
    return s


def _parse_segment(segment: str, trim: str) -> tuple[str, _Side] | None:
    """Parse one side; the first side of a run may start with stray words' digits ("Step 1. 2 +
    3"), the last may end with them ("= 5. 6 apples"): try dropping whitespace-separated pieces."""
    tokens = _strip_unbalanced(segment.rstrip(" \t.")).split()
    if trim == "left":
        pieces = [" ".join(tokens[k:]) for k in range(len(tokens))]
    elif trim == "right":
        pieces = [" ".join(tokens[:k]) for k in range(len(tokens), 0, -1)]
    else:
        pieces = [" ".join(tokens)]
    for piece in pieces:
        piece = _strip_unbalanced(piece)
        side = _parse(piece)
        if side is not None:
            return piece, side
    return None


@dataclass(frozen=True, slots=True)
class Equation:
    """One checkable ``left = right`` found in text."""

    left: str
    right: str
    holds: bool


def find_equations(text: str) -> list[Equation]:
    """Every checkable equation in ``text``, in order (see the module docstring)."""
    found: list[Equation] = []
    for run in _RUN.finditer(_prepare(text)):
        segments = run.group().split("=")
        last = len(segments) - 1
        parsed = [
            _parse_segment(seg, "left" if i == 0 else "right" if i == last else "none")
            for i, seg in enumerate(segments)
        ]
        for left, right in zip(parsed, parsed[1:], strict=False):
            if left is None or right is None:
                continue
            if left[1].has_operator or right[1].has_operator:
                found.append(Equation(left[0], right[0], _same(left[1], right[1])))
    return found


# --- the question --------------------------------------------------------------------------

_WORD_OPS = (
    (re.compile(r"\bmultiplied\s+by\b|\btimes\b", re.IGNORECASE), "*"),
    (re.compile(r"\bdivided\s+by\b", re.IGNORECASE), "/"),
    (re.compile(r"\bplus\b", re.IGNORECASE), "+"),
    (re.compile(r"\bminus\b", re.IGNORECASE), "-"),
)
# A sentence that is a short lead phrase of plain words (any wording: "What is", "Compute",
# "Find the value of", "Question:"; no digits, so a word problem's quantities never pass as
# one) and then nothing but an expression.
_PLAIN_QUESTION = re.compile(
    r"^\s*(?:[a-z][a-z'’]*\s*:?\s+){0,6}?:?\s*"
    rf"(?P<expr>{_CHARS}+?)\s*=?\s*$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[?!\n;]|\.(?!\d)")


def _question_side(question: str) -> _Side | None:
    text = _prepare(question)
    for pattern, symbol in _WORD_OPS:
        text = pattern.sub(f" {symbol} ", text)
    for sentence in _SENTENCE_END.split(text):
        match = _PLAIN_QUESTION.match(sentence)
        side = _parse(match.group("expr")) if match else None
        if side is not None and side.has_operator:
            return side
    return None


def question_value(question: str) -> Fraction | None:
    """The value of a plain-arithmetic question ("What is 37 + 45?", "Compute 6*7.", "What is 7
    times 8? Answer with a number."): the first sentence that is only a lead phrase and an
    expression with an operator. ``None`` for anything else (word problems included)."""
    side = _question_side(question)
    return None if side is None else side.value


def is_checkable(question: str, text: str) -> bool:
    """Whether ``ArithmeticConsistencyVerifier`` has evidence about ``text``: the question is plain
    arithmetic or the text writes at least one checkable equation. When false its score is a
    neutral 0.5 and a strategy should fall back to (weighted) voting."""
    return _question_side(question) is not None or bool(find_equations(text))


def _answer_side(answer: str | None) -> _Side | None:
    if answer is None:
        return None
    value = parse_number(answer)
    if value is None:
        last = extract_answer(answer, ExtractSpec())
        value = parse_number(last) if last is not None else None
        answer = last or ""
    if value is None:
        return None
    places = answer.strip().rstrip(".%").rsplit(".", 1)
    decimals = len(places[1]) if len(places) == 2 and "/" not in answer else None
    return _Side(value, False, decimals)


class ArithmeticConsistencyVerifier:
    """Scores candidates by the arithmetic they write; needs no reference answer.

    With E checkable equations of which h hold, c = h/E (c = 0.5 when E = 0), and q the value of
    a plain-arithmetic question (``question_value``):

    - q known:  score = 0.75 · [final answer == q] + 0.25 · c    (the final answer dominates:
      right with no equations → 0.875, wrong with all equations right → 0.25);
    - q unknown, E > 0:  score = c;
    - q unknown, E = 0:  score = 0.5, detail "unverifiable".

    The final answer is ``candidate.answer`` when given, else ``extract_answer(text, extract)``
    (default: last number); it compares with q by the equation rule. Step scores: each step by
    its own equations, h/E, or 0.5 when it writes none. All scores are in [0, 1]; no tokens.
    """

    name = "arithmetic"

    def __init__(self, extract: ExtractSpec | None = None) -> None:
        self._extract = extract or ExtractSpec()

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        target = _question_side(question)
        return [self._score_one(target, candidate) for candidate in candidates]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        scores = []
        for step in steps:
            equations = find_equations(step)
            if not equations:
                scores.append(Score(NEUTRAL, "no equations"))
                continue
            held = sum(eq.holds for eq in equations)
            scores.append(Score(held / len(equations), f"equations {held}/{len(equations)} hold"))
        return scores

    def _score_one(self, target: _Side | None, candidate: Candidate) -> Score:
        equations = find_equations(candidate.text)
        held = sum(eq.holds for eq in equations)
        consistency = held / len(equations) if equations else NEUTRAL
        eq_detail = f"equations {held}/{len(equations)} hold" if equations else "no equations"
        if target is None:
            if not equations:
                return Score(NEUTRAL, "unverifiable")
            return Score(consistency, eq_detail)
        answer = candidate.answer
        if answer is None:
            answer = extract_answer(candidate.text, self._extract)
        side = _answer_side(answer)
        right = side is not None and _same(side, target)
        verdict = "right" if right else "wrong" if side is not None else "missing"
        value = FINAL_ANSWER_WEIGHT * right + (1 - FINAL_ANSWER_WEIGHT) * consistency
        return Score(
            value, f"final answer {verdict} (question = {format_number(target.value)}); {eq_detail}"
        )
