"""DeepConf-style confidence: the maths, the alignment, the verifier, the vote, the parser."""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.backends.generator import parse_result
from strategies.confidence import (
    ConfidenceStats,
    as_json,
    confidence_stats,
    describe,
    signal_value,
    text_segments,
    token_probability,
    trim_prompt,
)
from strategies.ports import (
    BudgetExhausted,
    Candidate,
    GenRequest,
    GenResult,
    TokenLogprob,
    TopLogprob,
)
from strategies.usage import Usage
from strategies.verifiers.confidence import ConfidenceVerifier, needs_logprobs
from strategies.verifiers.judge import LogprobJudgeVerifier
from strategies.verifiers.registry import VerifierConfigError, VerifierContext, build_verifier
from strategies.voting import confidence_vote, weighted_leader_share
from tests.fakes import rendezvous

pytestmark = pytest.mark.anyio


def toks(*probs: float) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(f"t{i}", math.log(p)) for i, p in enumerate(probs))


def named(*pieces: str) -> list[TokenLogprob]:
    return [TokenLogprob(p, -0.1) for p in pieces]


# --- the maths ---------------------------------------------------------------------------

CONFUSED_MIDDLE = toks(*([0.9] * 8 + [0.1] * 4 + [0.9] * 8))


def test_window_minimum_picks_the_confused_stretch() -> None:
    stats = confidence_stats(CONFUSED_MIDDLE, window=4, tail=4)
    assert stats.tokens == 20
    # Geometric means: exp(mean logprob) = the product of the probabilities ** (1 / count).
    assert stats.mean == pytest.approx(0.9**0.8 * 0.1**0.2)  # (0.9^16 * 0.1^4) ** (1/20)
    assert stats.lowest_group == pytest.approx(0.1)
    assert stats.tail == pytest.approx(0.9)
    # A wider window dilutes the stretch: 4 confused + 4 confident tokens at best.
    wide = confidence_stats(CONFUSED_MIDDLE, window=8, tail=4)
    assert wide.lowest_group == pytest.approx(math.sqrt(0.9 * 0.1))  # 0.3


def test_tail_is_the_mean_of_the_last_tokens() -> None:
    stats = confidence_stats(toks(0.9, 0.9, 0.9, 0.2, 0.4), window=2, tail=2)
    assert stats.tail == pytest.approx(math.sqrt(0.2 * 0.4))
    # Windows: 0.9, 0.9, sqrt(0.9 * 0.2) ≈ 0.42, sqrt(0.2 * 0.4) ≈ 0.28: the last is lowest.
    assert stats.lowest_group == pytest.approx(math.sqrt(0.2 * 0.4))
    assert stats.mean == pytest.approx((0.9**3 * 0.2 * 0.4) ** (1 / 5))


def test_fewer_tokens_than_window_or_tail_is_one_window_of_all() -> None:
    stats = confidence_stats(toks(0.5, 1.0), window=16, tail=16)
    root = math.sqrt(0.5 * 1.0)
    assert (stats.mean, stats.lowest_group, stats.tail) == pytest.approx((root, root, root))


def test_empty_logprobs_give_zero_stats() -> None:
    assert confidence_stats(()) == ConfidenceStats(0.0, 0.0, 0.0, 0, None)


def test_sliding_window_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(50):
        probs = [rng.uniform(0.01, 1.0) for _ in range(rng.randint(1, 40))]
        window, tail = rng.randint(1, 12), rng.randint(1, 12)
        stats = confidence_stats(toks(*probs), window, tail)
        w = min(window, len(probs))
        brute = min(math.prod(probs[i : i + w]) ** (1 / w) for i in range(len(probs) - w + 1))
        assert stats.lowest_group == pytest.approx(brute)
        last = probs[-tail:]
        assert stats.tail == pytest.approx(math.prod(last) ** (1 / len(last)))
        assert stats.mean == pytest.approx(math.prod(probs) ** (1 / len(probs)))


def test_token_probability_is_bounded() -> None:
    assert token_probability(TokenLogprob("a", 1e-7)) == 1.0
    assert token_probability(TokenLogprob("a", float("nan"))) == 0.0
    assert token_probability(TokenLogprob("a", float("-inf"))) == 0.0
    assert token_probability(TokenLogprob("a", -9999.0)) == 0.0


def test_logprobs_are_clamped_to_the_floor_and_to_zero() -> None:
    broken = [TokenLogprob("a", float("nan")), TokenLogprob("b", 1e-7)]  # → -100 and 0
    assert confidence_stats(broken).mean == pytest.approx(math.exp(-50.0))
    for bad in (float("-inf"), -9999.0):
        stats = confidence_stats([TokenLogprob("a", bad), TokenLogprob("b", -0.1)])
        assert stats.mean == pytest.approx(math.exp((-100.0 - 0.1) / 2))
    assert confidence_stats([TokenLogprob("a", 0.3)]) == ConfidenceStats(1.0, 1.0, 1.0, 1)


def test_one_near_zero_token_drags_its_window_down() -> None:
    # Arithmetic: (15 * 0.9 + 1e-10) / 16 ≈ 0.84; geometric: 0.9^(15/16) * 1e-10^(1/16) ≈ 0.21.
    stats = confidence_stats(toks(*[0.9] * 15, 1e-10), window=16, tail=16)
    expected = 0.9 ** (15 / 16) * 1e-10 ** (1 / 16)
    assert stats.lowest_group == pytest.approx(expected) and expected < 0.22


def test_deepconf_measure_needs_top_alternatives() -> None:
    with_top = (
        TokenLogprob("a", -0.1, (TopLogprob("a", -0.1), TopLogprob("b", -2.3))),
        TokenLogprob("c", -0.5, (TopLogprob("c", -0.5), TopLogprob("d", -1.5))),
    )
    assert confidence_stats(with_top).deepconf_mean == pytest.approx((1.2 + 1.0) / 2)
    assert confidence_stats((*with_top, TokenLogprob("e", -0.2))).deepconf_mean is None
    assert confidence_stats(toks(0.5)).deepconf_mean is None


def test_bad_window_or_tail_is_rejected() -> None:
    with pytest.raises(ValueError, match="window"):
        confidence_stats(toks(0.5), window=0)
    with pytest.raises(ValueError, match="tail"):
        confidence_stats(toks(0.5), tail=0)


def test_signal_value_json_and_description() -> None:
    stats = ConfidenceStats(0.812345, 0.623456, 0.771111, 34, 1.234567)
    assert signal_value(stats, "mean") == 0.812345
    assert signal_value(stats, "lowest_group") == 0.623456
    assert signal_value(stats, "tail") == 0.771111
    assert as_json(stats) == {
        "mean": 0.8123,
        "lowest_group": 0.6235,
        "tail": 0.7711,
        "tokens": 34,
        "deepconf_mean": 1.2346,
    }
    assert as_json(ConfidenceStats(0, 0, 0, 0))["deepconf_mean"] is None
    assert describe(stats, "lowest_group") == "lowest_group=0.62 mean=0.81 tail=0.77 over 34 tokens"
    assert describe(stats, "tail").startswith("tail=0.77 mean=0.81 lowest_group=0.62")


# --- aligning texts with prompt logprobs ---------------------------------------------------

HEAD = ["<|im_start|>", "user", "\n", "Q", "<|im_end|>", "\n", "<|im_start|>", "ass", "istant"]


def test_trim_drops_the_first_none_and_trailing_whitespace_tokens() -> None:
    positions: list[TokenLogprob | None] = [None, *named("a", " b", "<|im_end|>", "\n", " ")]
    assert [t.token for t in trim_prompt(positions)] == ["a", " b", "<|im_end|>"]


def test_closed_turn_segment_runs_from_the_text_to_the_end_of_turn_marker() -> None:
    tokens = named(*HEAD, "\n ", " Caf", "é", "", " 😀", "  ", "<|im_end|>")
    (seg,) = text_segments(tokens, ["  Café 😀  "])
    assert seg.aligned
    assert [t.token for t in seg.tokens] == [" Caf", "é", "", " 😀", "  ", "<|im_end|>"]


def test_alignment_takes_the_last_occurrence() -> None:
    # The question repeats the answer; the answer's own tokens are the last occurrence.
    tokens = named("<|im_start|>", "user", "\n", "5", "<|im_end|>", "\n", "assistant", "\n")
    tokens += named("5", "<|im_end|>")
    (seg,) = text_segments(tokens, ["5"])
    assert seg.aligned and [t.token for t in seg.tokens] == ["5", "<|im_end|>"]


def test_unlocatable_text_falls_back_to_an_estimate() -> None:
    tokens = named(*HEAD, "\n", "abc", "def", "ghi", "<|im_end|>")
    (seg,) = text_segments(tokens, ["something else entirely"])  # 23 chars → 7 tokens
    assert not seg.aligned and len(seg.tokens) == 7
    (empty,) = text_segments(tokens, [""])
    assert not empty.aligned and [t.token for t in empty.tokens] == ["<|im_end|>"]
    # Found, but followed by more than the end-of-turn marker: not the text's own tokens.
    (mid,) = text_segments(tokens, ["abc"])
    assert not mid.aligned


def test_steps_are_split_in_order() -> None:
    tokens = named(*HEAD, "\n", "First", " step", ".", "\n\n", "Second", " one", ".")
    first, second = text_segments(tokens, ["First step.", "Second one."])
    assert first.aligned and second.aligned
    assert [t.token for t in first.tokens] == ["First", " step", ".", "\n\n"]
    assert [t.token for t in second.tokens] == ["Second", " one", "."]


# --- a scripted prompt-logprobs backend --------------------------------------------------

_PIECE = re.compile(r"<\|[a-z_]+\|>|\n|[^\S\n]*[^\s<]+|[^\S\n]+")
CONFUSED = {" zq", " ??", " blorp"}


def default_logprob(previous: str, token: str) -> float:
    """Confident prose, confused nonsense tokens, and an end of turn that is likely only after
    a sentence's end (so a cut-off answer gets a low end-of-turn probability)."""
    if token == "<|im_end|>":
        return -0.05 if previous.endswith(".") else -3.0
    return -4.0 if token in CONFUSED else -0.05


@dataclass
class PromptLogprobBackend:
    """A ``Generator`` answering with vLLM-shaped prompt logprobs, parsed by the real parser.

    It renders the chat as SmolLM2's template does (the turn closed by ``<|im_end|>\\n``
    unless ``continue_final_message``), splits it into word pieces, and scripts each piece's
    logprob with ``logprob(previous_piece, piece)``. ``rendezvous=k`` makes every call wait
    until k calls are in flight (a passing test proves they ran concurrently)."""

    logprob: Callable[[str, str], float] = default_logprob
    rendezvous: int = 0
    omit_prompt_logprobs: bool = False
    requests: list[GenRequest] = field(default_factory=list)
    _all_in: asyncio.Event = field(default_factory=asyncio.Event)

    async def generate(self, request: GenRequest) -> GenResult:
        self.requests.append(request)
        await rendezvous(self.rendezvous, len(self.requests), self._all_in)
        rendered = "".join(
            f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in request.messages
        )
        if request.continue_final_message:
            rendered = rendered.removesuffix("<|im_end|>\n")
        pieces = _PIECE.findall(rendered)
        assert "".join(pieces) == rendered
        positions: list[dict[str, Any] | None] = [None]
        for i, piece in enumerate(pieces[1:], start=1):
            lp = self.logprob(pieces[i - 1], piece)
            positions.append({str(i): {"logprob": lp, "rank": 1, "decoded_token": piece}})
        body: dict[str, Any] = {
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "stop",
                    "token_ids": [2],
                }
            ],
            "usage": {"prompt_tokens": len(pieces), "completion_tokens": 1},
        }
        if not self.omit_prompt_logprobs:
            body["prompt_logprobs"] = positions
        return parse_result(body)


class NoCalls:
    async def generate(self, request: GenRequest) -> GenResult:
        raise AssertionError("no backend call expected")


class Exhausted:
    async def generate(self, request: GenRequest) -> GenResult:
        raise BudgetExhausted("backend_calls")


# --- the verifier ------------------------------------------------------------------------


async def test_candidates_with_logprobs_are_scored_from_their_own_tokens() -> None:
    verifier = ConfidenceVerifier(NoCalls(), signal="lowest_group", window=4, tail=4)
    confident = Candidate(0, "x", logprobs=toks(*[0.9] * 20))
    confused = Candidate(1, "y", logprobs=CONFUSED_MIDDLE)
    a, b = await verifier.score("q", [confident, confused])
    assert a.value == pytest.approx(0.9) and b.value == pytest.approx(0.1)
    assert b.detail == "lowest_group=0.10 mean=0.58 tail=0.90 over 20 tokens"
    assert a.usage == Usage() and b.usage == Usage()
    # The default signal is the mean: (0.9^16 * 0.1^4) ** (1/20) ≈ 0.58.
    (mean,) = await ConfidenceVerifier(NoCalls(), window=4, tail=4).score("q", [confused])
    assert mean.value == pytest.approx(0.9**0.8 * 0.1**0.2)
    assert mean.detail == "mean=0.58 lowest_group=0.10 tail=0.90 over 20 tokens"
    (tail,) = await ConfidenceVerifier(signal="tail", tail=4).score("q", [confused])
    assert tail.value == pytest.approx(0.9)


async def test_a_cut_off_candidate_is_penalised() -> None:
    verifier = ConfidenceVerifier(window=4, length_penalty=0.25)
    logprobs = toks(*[0.8] * 10)
    done, cut = await verifier.score(
        "q",
        [
            Candidate(0, "x", logprobs=logprobs, finish_reason="stop"),
            Candidate(1, "x", logprobs=logprobs, finish_reason="length"),
        ],
    )
    assert done.value == pytest.approx(0.8)
    assert cut.value == pytest.approx(0.2) and "cut off (x0.25)" in cut.detail


async def test_text_without_logprobs_is_scored_by_prompt_logprobs() -> None:
    backend = PromptLogprobBackend()
    verifier = ConfidenceVerifier(backend, window=2, tail=2)
    clean = "The answer is 5."
    (score,) = await verifier.score("What is 2+3?", [Candidate(0, clean)])
    (request,) = backend.requests
    assert list(request.messages) == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": clean},
    ]
    assert (request.max_tokens, request.temperature, request.prompt_logprobs) == (1, 0.0, 0)
    assert request.extra == {"add_generation_prompt": False}
    assert not request.continue_final_message and request.n == 1
    # "The", " answer", " is", " 5.", "<|im_end|>": all at p = exp(-0.05).
    assert score.value == pytest.approx(math.exp(-0.05))
    assert score.detail.endswith("over 5 tokens (prompt logprobs)")
    rendered_pieces = request_pieces(request)
    assert score.usage == Usage(prompt=rendered_pieces, hidden=1)


def request_pieces(request: GenRequest) -> int:
    rendered = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in request.messages
    )
    return len(_PIECE.findall(rendered))


async def test_confused_and_cut_off_texts_score_lower_than_a_clean_one() -> None:
    backend = PromptLogprobBackend(rendezvous=3)
    verifier = ConfidenceVerifier(backend, window=2, tail=2)
    texts = [
        "So 2 plus 3 gives 5. The answer is 5.",
        "So 2 zq ?? 3 gives 5. The answer is 5.",
        "So 2 plus 3 gives 5. The answer is",
    ]
    clean, confused, cut = await verifier.score(
        "What is 2+3?", [Candidate(i, t) for i, t in enumerate(texts)]
    )
    assert len(backend.requests) == 3  # one call per candidate, all in flight together
    # The default signal, the mean. Clean: 11 tokens (10 pieces + <|im_end|>) at -0.05.
    # Confused: 12 tokens, " zq" and " ??" at -4.0. Cut: 10 tokens, <|im_end|> after " is"
    # at -3.0.
    assert clean.value == pytest.approx(math.exp(-0.05))
    assert confused.value == pytest.approx(math.exp((2 * -4.0 + 10 * -0.05) / 12))
    assert cut.value == pytest.approx(math.exp((-3.0 + 9 * -0.05) / 10))
    assert confused.value < clean.value and cut.value < clean.value
    # The lowest window of 2 singles out the confused pair and the cut-off end.
    lowest = ConfidenceVerifier(PromptLogprobBackend(), signal="lowest_group", window=2, tail=2)
    _, confused_low, cut_low = await lowest.score(
        "What is 2+3?", [Candidate(i, t) for i, t in enumerate(texts)]
    )
    assert confused_low.value == pytest.approx(math.exp(-4.0))
    assert cut_low.value == pytest.approx(math.exp((-0.05 - 3.0) / 2))
    (cut_tail,) = await ConfidenceVerifier(PromptLogprobBackend(), signal="tail").score(
        "q", [Candidate(0, texts[2])]
    )
    (clean_tail,) = await ConfidenceVerifier(PromptLogprobBackend(), signal="tail").score(
        "q", [Candidate(0, texts[0])]
    )
    assert cut_tail.value < clean_tail.value  # the end-of-turn marker is in the tail
    assert cut_tail.value == pytest.approx(math.exp((-3.0 + 9 * -0.05) / 10))  # tail 16 ⊇ all
    assert clean_tail.value == pytest.approx(math.exp(-0.05))


async def test_duplicate_texts_are_scored_once() -> None:
    backend = PromptLogprobBackend()
    verifier = ConfidenceVerifier(backend)
    a, b = await verifier.score("q", [Candidate(0, "Five."), Candidate(1, "Five.")])
    assert len(backend.requests) == 1
    assert a.value == b.value and a.usage.prompt > 0 and b.usage == Usage()
    assert b.detail.endswith("(duplicate)")


async def test_neutral_scores_without_logprobs() -> None:
    (none,) = await ConfidenceVerifier().score("q", [Candidate(0, "text")])
    assert (none.value, none.detail) == (0.5, "no logprobs")
    missing = PromptLogprobBackend(omit_prompt_logprobs=True)
    (omitted,) = await ConfidenceVerifier(missing).score("q", [Candidate(0, "text")])
    assert omitted.value == 0.5 and omitted.detail == "no prompt logprobs returned"
    assert omitted.usage.prompt > 0
    (spent,) = await ConfidenceVerifier(Exhausted()).score("q", [Candidate(0, "text")])
    assert spent.value == 0.5 and "backend_calls" in spent.detail


async def test_steps_are_scored_in_one_open_turn_call() -> None:
    backend = PromptLogprobBackend()
    verifier = ConfidenceVerifier(backend, window=2, tail=2)
    steps = ["First, 2 plus 3 is 5.", "Then zq blorp ?? 5.", "The answer is 5."]
    good, bad, last = await verifier.score_steps("What is 2+3?", steps)
    (request,) = backend.requests
    assert request.continue_final_message
    assert request.messages[-1] == {"role": "assistant", "content": "\n\n".join(steps)}
    assert bad.value < good.value and bad.value < last.value
    # Mean (the default). Step 1: 6 pieces + "\n", "\n", all at -0.05. Step 2: "Then", " zq",
    # " blorp", " ??", " 5.", "\n", "\n" with 3 at -4.0. Step 3: 4 pieces, no end-of-turn.
    assert good.value == pytest.approx(math.exp(-0.05))
    assert bad.value == pytest.approx(math.exp((3 * -4.0 + 4 * -0.05) / 7))
    assert last.value == pytest.approx(math.exp(-0.05))
    assert bad.detail == "mean=0.18 lowest_group=0.02 tail=0.95 over 7 tokens (prompt logprobs)"
    assert good.usage == Usage() and bad.usage == Usage() and last.usage.prompt > 0
    assert await verifier.score_steps("q", []) == []
    no_backend = await ConfidenceVerifier().score_steps("q", steps)
    assert [s.value for s in no_backend] == [0.5, 0.5, 0.5]


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="length_penalty"):
        ConfidenceVerifier(length_penalty=1.5)
    with pytest.raises(ValueError, match="signal"):
        ConfidenceVerifier(signal="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        ConfidenceVerifier(window=0)


def test_needs_logprobs() -> None:
    assert needs_logprobs(ConfidenceVerifier())
    assert not needs_logprobs(LogprobJudgeVerifier(NoCalls()))


# --- the confidence-weighted vote --------------------------------------------------------


def test_filtering_changes_the_winner_and_chosen_indexes_the_original_list() -> None:
    answers: Sequence[str | None] = ["A", "A", None, "A", "B", "A", "B", "A"]
    conf = [0.3, 0.3, 0.99, 0.3, 0.7, 0.3, 0.7, 0.3]
    everyone = confidence_vote(answers, conf)  # A: 6 x 0.3 = 1.8 beats B: 1.4
    assert everyone.winner == "A" and everyone.chosen == 0
    filtered = confidence_vote(answers, conf, keep_top=0.5)  # 4 of 7 kept: B, B, A, A
    assert filtered.winner == "B" and filtered.chosen == 4
    assert filtered.tally == pytest.approx({"B": 1.4, "A": 0.6})


def test_confidence_vote_keeps_at_least_one_and_breaks_ties_early() -> None:
    result = confidence_vote(["A", "B", "C"], [0.5, 0.9, 0.9], keep_top=0.01)
    assert result.winner == "B" and result.chosen == 1 and result.tally == {"B": 0.9}
    assert confidence_vote([None, None], [0.5, 0.5]).winner is None
    assert confidence_vote(["A"] * 10, [0.5] * 10, keep_top=0.3).tally == pytest.approx({"A": 1.5})


def test_confidence_vote_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="keep_top"):
        confidence_vote(["A"], [0.5], keep_top=0.0)
    with pytest.raises(ValueError, match="keep_top"):
        confidence_vote(["A"], [0.5], keep_top=1.5)
    with pytest.raises(ValueError, match="length"):
        confidence_vote(["A"], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        confidence_vote(["A"], [-0.5])


def test_weighted_leader_share() -> None:
    assert weighted_leader_share(["A", "B", "A", None], [0.5, 0.5, 1.0, 9.0]) == 0.75
    assert weighted_leader_share([None, None], [1.0, 1.0]) == 0.0
    assert weighted_leader_share([], []) == 0.0
    assert weighted_leader_share(["A", "B"], [0.0, 0.0]) == 0.0


# --- the registry ------------------------------------------------------------------------


def test_registry_builds_confidence_without_a_generator() -> None:
    verifier = build_verifier("confidence", VerifierContext())
    assert verifier.name == "confidence" and needs_logprobs(verifier)
    tuned = build_verifier(
        "confidence",
        VerifierContext(generator=PromptLogprobBackend()),
        {"signal": "tail", "window": 2, "tail": 1, "length_penalty": 0.0},
    )
    assert isinstance(tuned, ConfidenceVerifier)


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"window": 1}, "window"),
        ({"tail": 0}, "tail"),
        ({"length_penalty": 1.5}, "length_penalty"),
        ({"signal": "median"}, "signal"),
        ({"windows": 8}, "windows"),
    ],
)
def test_registry_rejects_bad_confidence_params(params: dict[str, Any], field_name: str) -> None:
    with pytest.raises(VerifierConfigError, match="'confidence': invalid params") as info:
        build_verifier("confidence", VerifierContext(), params)
    assert field_name in str(info.value)


# --- the vLLM parser ---------------------------------------------------------------------


def test_parse_result_reads_real_shaped_prompt_logprobs() -> None:
    body = {
        "model": "smollm2-135m-instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
                "token_ids": [2],
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
        "prompt_logprobs": [
            None,
            {
                "216": {"logprob": -0.0007, "rank": 1, "decoded_token": " "},
                "365": {"logprob": -8.6, "rank": 2, "decoded_token": " ("},
            },
            # The prompt's own token outside the top-1: listed first, then the top-1.
            {
                "34": {"logprob": -12.0, "rank": 988, "decoded_token": "2"},
                "19556": {"logprob": -0.5, "rank": 1, "decoded_token": "Hello"},
            },
            {"2": {"logprob": -0.35, "rank": 1, "decoded_token": "<|im_end|>"}},
        ],
    }
    result = parse_result(body)
    assert result.usage == Usage(prompt=4, visible=1)
    assert result.prompt_logprobs is not None
    first, space, two, end = result.prompt_logprobs
    assert first is None
    assert space == TokenLogprob(" ", -0.0007, (TopLogprob(" ", -0.0007), TopLogprob(" (", -8.6)))
    assert two == TokenLogprob("2", -12.0, (TopLogprob("Hello", -0.5),))
    assert end == TokenLogprob("<|im_end|>", -0.35, (TopLogprob("<|im_end|>", -0.35),))
    assert parse_result({"choices": []}).prompt_logprobs is None


def test_every_builtin_verifier_has_a_params_model() -> None:
    from strategies.verifiers.registry import VERIFIER_PARAMS, VERIFIERS

    assert set(VERIFIER_PARAMS) == set(VERIFIERS)
    assert VERIFIER_PARAMS["confidence"].model_validate({}).model_dump()["signal"] == "mean"
    assert VERIFIER_PARAMS["confidence"].model_validate({"signal": "tail"}).model_dump() == {
        "signal": "tail",
        "window": 16,
        "tail": 16,
        "length_penalty": 0.5,
    }
