"""Verifiers: arithmetic consistency, exact references, the logprob judge, the registry."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib.metadata import EntryPoint

import pytest

from strategies.ports import (
    Candidate,
    GenChoice,
    GenRequest,
    GenResult,
    Score,
    TokenLogprob,
    TopLogprob,
)
from strategies.usage import Usage
from strategies.verifiers.arithmetic import (
    ArithmeticConsistencyVerifier,
    find_equations,
    is_checkable,
    question_value,
    safe_eval,
)
from strategies.verifiers.exact import (
    JsonSchemaVerifier,
    MultipleChoiceVerifier,
    ReferenceMatchVerifier,
)
from strategies.verifiers.judge import LogprobJudgeVerifier, yes_probability
from strategies.verifiers.registry import (
    ENTRY_POINT_GROUP,
    VERIFIERS,
    VerifierConfigError,
    VerifierContext,
    build_verifier,
    is_verifier,
    load_plugin,
)
from tests.fakes import rendezvous

# --- a scripted judge backend ------------------------------------------------------------

YES_NO = (TopLogprob("Yes", -0.2), TopLogprob("No", -1.8))


@dataclass
class ScriptedJudge:
    """A ``Generator`` answering each judge call with the top logprobs ``script(prompt)`` gives.

    With ``rendezvous=k`` every call waits until k calls are in flight, so a test that passes
    proves the calls ran concurrently (sequential calls would time out)."""

    script: Callable[[str], tuple[TopLogprob, ...]] = lambda prompt: YES_NO
    rendezvous: int = 0
    requests: list[GenRequest] = field(default_factory=list)
    _all_in: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, request: GenRequest) -> GenResult:
        self.requests.append(request)
        await rendezvous(self.rendezvous, len(self.requests), self._all_in)
        top = self.script(str(request.messages[-1]["content"]))
        first = top[0] if top else TopLogprob("Maybe", -0.1)
        position = TokenLogprob(first.token, first.logprob, top)
        choice = GenChoice(0, first.token, 1, "length", logprobs=(position,))
        return GenResult((choice,), Usage(prompt=40, visible=1))


def _p(yes: float, no: float) -> float:
    return math.exp(yes) / (math.exp(yes) + math.exp(no))


# --- arithmetic ----------------------------------------------------------------------------


def test_equations_right_wrong_and_chains() -> None:
    text = "So, 23 + 48 = 71. Then 12 × 3 = 36, (5+3)*2 = 8*2 = 16 and 84 ÷ 4 = 20."
    found = [(e.left, e.right, e.holds) for e in find_equations(text)]
    assert found == [
        ("23 + 48", "71", True),
        ("12 * 3", "36", True),
        ("(5+3)*2", "8*2", True),
        ("8*2", "16", True),
        ("84 / 4", "20", False),
    ]


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        ("7 x 8 = 56", [True]),
        ("3 − 5 = −2", [True]),
        ("$1,200 - $300 = $900", [True]),
        ("2^3 = 8", [True]),
        (r"6 \times 7 = 42", [True]),
        ("Step 1. 2 + 3 = 5", [True]),
        ("(so 5 + 3 = 8)", [True]),
        ("10/3 = 3.33 and 2/3 = 0.66", [True, True]),  # rounded / truncated decimals
        ("1.5 + 1.5 = 3.01", [False]),  # exact decimal: no tolerance
        ("7 // 2 = 3, 7 % 2 = 1", [True, True]),
        ("x = 5, 5 = 5, 2x + 3 = 7", []),  # nothing checkable
    ],
)
def test_equation_forms(text: str, holds: list[bool]) -> None:
    assert [e.holds for e in find_equations(text)] == holds


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('echo hi')",
        "(1).__class__",
        "2**99999",
        "10**20 * 10**20",
        "2**0.5",
        "[1, 2]",
        "lambda: 1",
        "True + 1",
        "1 if 1 else 2",
        "a + 1",
        "1/0",
        "9" * 300,
        "(" * 150 + "1" + ")" * 150,
        "",
    ],
)
def test_safe_eval_rejects_without_raising(expr: str) -> None:
    assert safe_eval(expr) is None


def test_safe_eval_values() -> None:
    assert safe_eval("(5+3)*2") == 16
    assert safe_eval("0.1 + 0.2") == Fraction(3, 10)  # exact, not binary floats
    assert safe_eval("-2**2") == -4
    assert safe_eval("2**-2") == Fraction(1, 4)
    assert safe_eval("7 // 2") == 3


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("What is 37 + 45?", 82),
        ("Compute 6*7.", 42),
        ("What is 7 times 8? Answer with just the number.", 56),
        ("Calculate (5+3)*2", 16),
        ("what's 1,200 − 300?", 900),
        ("What is 3.5 + 1.5?", 5),
        ("John has 3 apples and buys 5 more. How many apples?", None),
        ("What is the capital of France?", None),
        ("What is 12?", None),  # no operator: nothing to compute
        # Any short lead phrase, not a list of known verbs
        ("Find the value of 55 + 76. Give the final answer as a number at the end.", 131),
        ("Question: 9 - 4", 5),
        ("Please tell me 3 * 4.", 12),
        ("Sam has 3 + 4 apples.", None),  # the expression does not end the sentence
        ("I have 12 pens and 7 - 2 cups.", None),
        ("So what do you think about 5 + 5 when you have eight words first?", None),
    ],
)
def test_question_value(question: str, value: int | None) -> None:
    assert question_value(question) == value


def test_is_checkable() -> None:
    assert is_checkable("What is 2+3?", "five")
    assert is_checkable("Tell me a story", "he had 2 + 2 = 4 coins")
    assert not is_checkable("Tell me a story", "once upon a time, 3 bears")


@pytest.mark.anyio
async def test_arithmetic_question_answer_dominates() -> None:
    verifier = ArithmeticConsistencyVerifier()
    candidates = [
        Candidate(0, "37 + 45 = 82. Answer: 82"),
        Candidate(1, "82"),
        Candidate(2, "37 + 45 = 82, so 83"),
        Candidate(3, "37 + 45 = 81, so 81"),
        Candidate(4, "I cannot say"),
        Candidate(5, "37 + 45 = 81 hmm, no: 82", answer="82"),
    ]
    scores = [s.value for s in await verifier.score("What is 37 + 45?", candidates)]
    assert scores == [1.0, 0.875, 0.25, 0.0, 0.125, 0.75]
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.anyio
async def test_arithmetic_without_question_uses_equation_fraction() -> None:
    verifier = ArithmeticConsistencyVerifier()
    candidates = [
        Candidate(0, "2 + 2 = 4 and 3 * 3 = 9"),
        Candidate(1, "2 + 2 = 4 and 3 * 3 = 10"),
        Candidate(2, "2 + 2 = 5"),
        Candidate(3, "a lovely poem"),
        Candidate(4, "__import__('os').system('true') = 0 and 2**99999 = 1"),
    ]
    scores = await verifier.score("Plan a trip", candidates)
    assert [s.value for s in scores] == [1.0, 0.5, 0.0, 0.5, 0.5]
    assert scores[3].detail == "unverifiable"
    assert scores[4].detail == "unverifiable"
    assert scores[0].usage == Usage()


@pytest.mark.anyio
async def test_arithmetic_steps() -> None:
    steps = ["2 + 2 = 4", "so 3 * 3 = 10", "therefore done", "1 + 1 = 2, 2 + 2 = 5"]
    scores = await ArithmeticConsistencyVerifier().score_steps("q", steps)
    assert [s.value for s in scores] == [1.0, 0.0, 0.5, 0.5]


# --- exact ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reference", "candidate", "value"),
    [
        ("0.5", Candidate(0, "...", answer="1/2"), 1.0),
        ("0.5", Candidate(0, "...", answer="\\frac{1}{2}"), 1.0),
        ("\\frac{1}{2}", Candidate(0, "...", answer="0.5"), 1.0),
        ("1000", Candidate(0, "...", answer="1,000"), 1.0),
        ("Paris", Candidate(0, "...", answer=" paris."), 1.0),
        ("0.5", Candidate(0, "so the final answer is $\\boxed{\\frac{1}{2}}$"), 1.0),
        ("0.5", Candidate(0, "...", answer="0.6"), 0.0),
        ("Paris", Candidate(0, "...", answer="Lyon"), 0.0),
    ],
)
async def test_reference_match(reference: str, candidate: Candidate, value: float) -> None:
    [score] = await ReferenceMatchVerifier(reference).score("q", [candidate])
    assert score.value == value


@pytest.mark.anyio
async def test_reference_match_with_extraction_and_steps() -> None:
    from strategies.answers import ExtractSpec

    verifier = ReferenceMatchVerifier("42", extract=ExtractSpec(format="answer_line"))
    scores = await verifier.score("q", [Candidate(0, "Answer: 42"), Candidate(1, "it is 42")])
    assert [(s.value, s.detail) for s in scores] == [(1.0, "match (string)"), (0.0, "no answer")]
    assert [s.value for s in await verifier.score_steps("q", ["a", "b"])] == [0.5, 0.5]
    with pytest.raises(ValueError, match="reference"):
        ReferenceMatchVerifier("  ")


@pytest.mark.anyio
async def test_multiple_choice() -> None:
    verifier = MultipleChoiceVerifier("c")
    candidates = [
        Candidate(0, "The answer is C"),
        Candidate(1, "(B)"),
        Candidate(2, "no idea"),
        Candidate(3, "...", answer="c"),  # a normalised voting key
    ]
    scores = await verifier.score("q", candidates)
    assert [s.value for s in scores] == [1.0, 0.0, 0.0, 1.0]
    assert scores[2].detail == "no answer"
    with pytest.raises(ValueError, match="correct must be one of"):
        MultipleChoiceVerifier("F")


@pytest.mark.anyio
async def test_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["city", "n"],
    }
    verifier = JsonSchemaVerifier(schema)
    candidates = [
        Candidate(0, 'Sure!\n```json\n{"city": "Oslo", "n": 3}\n```'),
        Candidate(1, '{"city": "Oslo", "n": "three"}'),
        Candidate(2, "no json here"),
    ]
    scores = await verifier.score("q", candidates)
    assert [s.value for s in scores] == [1.0, 0.0, 0.0]
    assert "n" in scores[1].detail and "integer" in scores[1].detail
    assert scores[2].detail == "no JSON object"
    with pytest.raises(ValueError, match="invalid JSON schema"):
        JsonSchemaVerifier({"type": "no-such-type"})


# --- logprob judge -------------------------------------------------------------------------


def test_yes_probability_math() -> None:
    position = TokenLogprob("Yes", -0.2, YES_NO)
    assert yes_probability(position) == pytest.approx(_p(-0.2, -1.8))
    variants = (
        TopLogprob("Yes", -1.0),
        TopLogprob(" yes", -2.0),
        TopLogprob("YES", -3.0),
        TopLogprob("No", -1.5),
        TopLogprob("Ġno", -2.5),
        TopLogprob("Maybe", -0.5),
    )
    p_yes = math.exp(-1.0) + math.exp(-2.0) + math.exp(-3.0)
    p_no = math.exp(-1.5) + math.exp(-2.5)
    result = yes_probability(TokenLogprob("Maybe", -0.5, variants))
    assert result == pytest.approx(p_yes / (p_yes + p_no))
    assert yes_probability(TokenLogprob("Nope", -0.1, (TopLogprob("Nope", -0.1),))) is None
    # the sampled token counts even when the top list is empty
    assert yes_probability(TokenLogprob("No", -0.3)) == 0.0


@pytest.mark.anyio
async def test_judge_scores_and_request_shape() -> None:
    backend = ScriptedJudge(script=lambda p: YES_NO if "82" in p else YES_NO[::-1])
    judge = LogprobJudgeVerifier(backend, top_logprobs=5)
    scores = await judge.score(
        "What is 37 + 45?", [Candidate(0, "It is 82."), Candidate(1, "It is 81.")]
    )
    assert scores[0].value == pytest.approx(_p(-0.2, -1.8))
    assert scores[1].value == pytest.approx(_p(-0.2, -1.8))  # same script, order swapped
    assert scores[0].detail.startswith("P(yes)=")
    assert all(s.usage == Usage(prompt=40, hidden=1) for s in scores)
    request = backend.requests[0]
    assert (request.max_tokens, request.temperature, request.n) == (1, 0.0, 1)
    assert request.logprobs and request.top_logprobs == 5
    assert "What is 37 + 45?" in request.messages[-1]["content"]


@pytest.mark.anyio
async def test_judge_neutral_when_no_yes_no_token() -> None:
    backend = ScriptedJudge(script=lambda p: (TopLogprob("The", -0.1), TopLogprob("I", -2.0)))
    [score] = await LogprobJudgeVerifier(backend).score("q", [Candidate(0, "a")])
    assert (score.value, score.detail) == (0.5, "no yes/no token in top-20")
    assert score.usage == Usage(prompt=40, hidden=1)


@pytest.mark.anyio
async def test_judge_calls_run_concurrently_and_duplicates_once() -> None:
    backend = ScriptedJudge(rendezvous=3)
    candidates = [Candidate(i, t) for i, t in enumerate(["a", "b", "c", "a"])]
    scores = await LogprobJudgeVerifier(backend).score("q", candidates)
    assert len(backend.requests) == 3  # "a" judged once
    assert scores[3].value == scores[0].value
    assert scores[3].usage == Usage() and scores[0].usage == Usage(prompt=40, hidden=1)


@pytest.mark.anyio
async def test_judge_steps_see_previous_steps() -> None:
    backend = ScriptedJudge(rendezvous=2)
    judge = LogprobJudgeVerifier(backend, step_template="{question}|{previous}|{step}")
    scores = await judge.score_steps("Q", ["s1", "s2"])
    assert len(scores) == 2
    assert sorted(str(r.messages[-1]["content"]) for r in backend.requests) == [
        "Q|(none)|s1",
        "Q|s1|s2",
    ]


def test_judge_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="top_logprobs"):
        LogprobJudgeVerifier(ScriptedJudge(), top_logprobs=21)
    with pytest.raises(ValueError, match="judge template"):
        LogprobJudgeVerifier(ScriptedJudge(), prompt_template="{question} {nope}")


# --- registry and plugins ------------------------------------------------------------------


class UpperCaseChecker:
    """A user checker: 1.0 for shouting."""

    name = "upper"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(float(c.text.isupper())) for c in candidates]

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        return [Score(0.5) for _ in steps]


READY_CHECKER = UpperCaseChecker()
NOT_A_VERIFIER = 42


def broken_factory() -> UpperCaseChecker:
    raise RuntimeError("boom")


def wrong_factory() -> object:
    return object()


def test_registry_builds_each_builtin() -> None:
    context = VerifierContext(generator=ScriptedJudge(), reference="B")
    params = {
        "json-schema": {"schema": {"type": "object"}},
        "learned-gate": {"bias": 0.0, "weights": {"arithmetic": 1.0}},
    }
    for name in VERIFIERS:
        verifier = build_verifier(name, context, params.get(name))
        assert is_verifier(verifier) and verifier.name == name


def test_registry_errors_name_the_verifier() -> None:
    with pytest.raises(VerifierConfigError, match="unknown verifier 'nope'; known: arithmetic"):
        build_verifier("nope", VerifierContext())
    with pytest.raises(VerifierConfigError, match="'logprob-judge' needs a generator"):
        build_verifier("logprob-judge", VerifierContext())
    with pytest.raises(VerifierConfigError, match="'logprob-judge': invalid params"):
        build_verifier("logprob-judge", VerifierContext(ScriptedJudge()), {"top_logprobs": 50})
    with pytest.raises(VerifierConfigError, match="'arithmetic': invalid params"):
        build_verifier("arithmetic", VerifierContext(), {"typo": 1})
    with pytest.raises(VerifierConfigError, match="'reference-match' needs a reference"):
        build_verifier("reference-match", VerifierContext())
    with pytest.raises(VerifierConfigError, match="'multiple-choice': correct must be"):
        build_verifier("multiple-choice", VerifierContext(reference="Z"))


def test_load_plugin_from_module_path() -> None:
    module = __name__
    assert load_plugin(f"{module}:READY_CHECKER") is READY_CHECKER
    built = load_plugin(f"{module}:UpperCaseChecker", {"threshold": 0.9})
    assert isinstance(built, UpperCaseChecker) and built.threshold == 0.9


def test_load_plugin_from_entry_point() -> None:
    point = EntryPoint("shout", f"{__name__}:UpperCaseChecker", ENTRY_POINT_GROUP)
    assert isinstance(load_plugin("shout", available=lambda: [point]), UpperCaseChecker)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:thing", "cannot load: ModuleNotFoundError"),
        (f"{__name__}:missing", "has no attribute 'missing'"),
        (f"{__name__}:NOT_A_VERIFIER", "is not a verifier"),
        (f"{__name__}:broken_factory", "factory failed: RuntimeError('boom')"),
        (f"{__name__}:wrong_factory", "built object, which lacks"),
        (":x", "expected 'package.module:callable'"),
        ("unknown-plugin", "no entry point of that name in group 'deliberate.verifiers'"),
    ],
)
def test_load_plugin_errors_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(VerifierConfigError) as info:
        load_plugin(spec, available=lambda: [])
    assert repr(spec) in str(info.value)
    assert message in str(info.value)
