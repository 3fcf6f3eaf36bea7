"""Native thinking on sampling routes: the request each candidate gets, what the vote reads,
and how thinking is counted (pure, with scripted fakes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.backends.generator import has_thinking, split_thinking
from gateway.context import RequestContext
from gateway.passthrough import _inspect, thinking_answers, with_thinking
from gateway.sse import format_event
from strategies.base import StrategyContext, StrategyRequest, TokenBudget
from strategies.best_of_n import BestOfN, BestOfNParams, gen_request
from strategies.ports import GenChoice, GenRequest, GenResult
from strategies.self_consistency import SelfConsistency, SelfConsistencyParams
from strategies.thinking import ThinkingParams, thinking_budget
from strategies.usage import Usage

pytestmark = pytest.mark.anyio

Q = StrategyRequest(messages=[{"role": "user", "content": "Which is bigger, 41 or 42?"}])
THINK = ThinkingParams(budget=48)


@dataclass
class ThinkingGenerator:
    """Each sample thinks ``thinking`` (``think_tokens`` tokens, marker included) and answers
    the next of ``answers`` (``answer_tokens`` tokens), as a reasoning-parser backend replies
    once the gateway has split the counts."""

    answers: list[str]
    thinking: str = "The bigger one is 41. Answer: 41"
    think_tokens: int = 30
    answer_tokens: int = 5
    requests: list[GenRequest] = field(default_factory=list)

    async def generate(self, request: GenRequest) -> GenResult:
        self.requests.append(request)
        choices = tuple(
            GenChoice(
                index=i,
                text=self.answers[i % len(self.answers)],
                tokens=self.think_tokens + self.answer_tokens,
                finish_reason="stop",
                reasoning=self.thinking,
                reasoning_tokens=self.think_tokens,
            )
            for i in range(request.n)
        )
        n = request.n
        usage = Usage(prompt=20, visible=n * self.answer_tokens, hidden=n * self.think_tokens)
        return GenResult(choices, usage, "fake-model")


def test_effort_picks_the_budget_and_none_turns_thinking_off() -> None:
    assert thinking_budget(THINK, None) == 48
    assert thinking_budget(THINK, "low") == 64
    assert thinking_budget(THINK, "none") == 0
    assert thinking_budget(ThinkingParams(budget=7, effort_budgets={}), "high") == 7


def test_candidates_think_within_the_budget_then_answer() -> None:
    params = BestOfNParams(n=4, thinking=THINK)
    req = gen_request(Q, params, 4, 32, think=48)
    assert req.extra["thinking_token_budget"] == 48
    assert req.max_tokens == 32 + 48  # the answer keeps its own cap after the thinking
    assert req.continue_final_message
    assert req.messages[-1] == {"role": "assistant", "content": "<think>\n"}
    assert list(req.messages[:-1]) == list(Q.messages)


def test_no_prefill_for_a_model_that_opens_its_own_thinking() -> None:
    params = BestOfNParams(n=2, thinking=ThinkingParams(budget=16, prefill=""))
    req = gen_request(Q, params, 2, 32, think=16)
    assert not req.continue_final_message and list(req.messages) == list(Q.messages)
    assert req.extra["thinking_token_budget"] == 16


def test_without_thinking_nothing_changes() -> None:
    req = gen_request(Q, BestOfNParams(n=2), 2, 32, think=48)  # the route has no thinking
    assert "thinking_token_budget" not in req.extra and req.max_tokens == 32


async def test_the_vote_reads_answers_never_the_thinking() -> None:
    # Every sample's thinking says 41; the answers say 42 three times out of four.
    gen = ThinkingGenerator(["Answer: 42", "Answer: 42", "Answer: 7", "Answer: 42"])
    params = SelfConsistencyParams(n=4, thinking=THINK)
    res = await SelfConsistency(params).run(Q, StrategyContext(gen))
    assert res.info["votes"] == {"42": 3.0, "7": 1.0}
    assert res.choices[0].text == "Answer: 42"
    assert res.choices[0].reasoning == gen.thinking  # passed through, not voted on


async def test_the_chosen_samples_thinking_is_hidden() -> None:
    gen = ThinkingGenerator(["Answer: 42"], think_tokens=30, answer_tokens=5)
    res = await BestOfN(BestOfNParams(n=4, selector="majority", thinking=THINK)).run(
        Q, StrategyContext(gen)
    )
    # Visible: the chosen answer only; hidden: all four thinkings and three other answers.
    assert res.usage == Usage(prompt=20, visible=5, hidden=4 * 30 + 3 * 5)


async def test_effort_reaches_the_backend_and_none_skips_thinking() -> None:
    gen = ThinkingGenerator(["Answer: 42"])
    params = BestOfNParams(n=2, selector="majority", thinking=THINK)
    await BestOfN(params).run(
        StrategyRequest(Q.messages, reasoning_effort="high"), StrategyContext(gen)
    )
    await BestOfN(params).run(
        StrategyRequest(Q.messages, reasoning_effort="none"), StrategyContext(gen)
    )
    assert gen.requests[0].extra["thinking_token_budget"] == 256
    assert "thinking_token_budget" not in gen.requests[1].extra
    assert not gen.requests[1].continue_final_message


async def test_budget_holds_thinking_and_answers_of_every_candidate() -> None:
    gen = ThinkingGenerator(["Answer: 42"])
    ctx = StrategyContext(gen, TokenBudget(limit=200))
    params = BestOfNParams(n=8, max_tokens=20, selector="majority", thinking=THINK)
    res = await BestOfN(params).run(Q, ctx)
    req = gen.requests[0]
    assert req.extra["thinking_token_budget"] == 48 and req.max_tokens == 68
    assert req.n == 200 // 68 and res.info["samples"] == req.n


async def test_hidden_cap_clips_the_thinking_budget() -> None:
    gen = ThinkingGenerator(["Answer: 42"])
    ctx = StrategyContext(gen, TokenBudget(limit=1000, hidden_limit=10))
    await BestOfN(BestOfNParams(n=2, selector="majority", thinking=THINK)).run(Q, ctx)
    assert gen.requests[0].extra["thinking_token_budget"] == 10


def _choice(i: int, text: str, tokens: int, reasoning: str | None) -> GenChoice:
    return GenChoice(index=i, text=text, tokens=tokens, finish_reason="stop", reasoning=reasoning)


def test_split_counts_thinking_from_the_answer_whatever_usage_says() -> None:
    # vLLM's usage: one reasoning total for both samples, without the end markers.
    raw = GenResult(
        (_choice(0, "Answer: 42", 40, "some thinking"), _choice(1, "42", 25, "more")),
        Usage(prompt=12, visible=9, hidden=56),
    )
    assert has_thinking(raw)
    out = split_thinking(raw, [4, 1])
    assert [c.reasoning_tokens for c in out.choices] == [36, 24]
    assert [c.answer_tokens for c in out.choices] == [4, 1]
    assert out.usage == Usage(prompt=12, visible=5, hidden=60)


def test_split_a_sample_with_no_answer_is_all_thinking_and_plain_samples_untouched() -> None:
    raw = GenResult(
        (_choice(0, "", 30, "ran out while thinking"), _choice(1, "plain", 6, None)),
        Usage(prompt=5, visible=36),
    )
    out = split_thinking(raw, [0, 6])
    assert [c.reasoning_tokens for c in out.choices] == [30, 0]
    assert out.usage == Usage(prompt=5, visible=6, hidden=30)
    assert not has_thinking(GenResult((_choice(0, "x", 1, None),), Usage()))


# -- single-pass relay: thinking the backend's usage leaves out --------------------------------


def test_json_reply_answers_are_found_only_when_something_thought() -> None:
    thought = {"choices": [{"message": {"content": "19", "reasoning": "12 + 7"}}]}
    legacy = {"choices": [{"message": {"content": None, "reasoning_content": "hmm"}}]}
    plain = {"choices": [{"message": {"content": "19"}}]}
    assert thinking_answers(thought) == ["19"]
    assert thinking_answers(legacy) == [""]
    assert thinking_answers(plain) is None and thinking_answers([1]) is None


def test_with_thinking_keeps_the_total() -> None:
    assert with_thinking(Usage(prompt=9, visible=30), 4) == Usage(prompt=9, visible=4, hidden=26)
    assert with_thinking(Usage(visible=3), 10) == Usage(visible=3)


def _event(obj: dict[str, Any]) -> bytes:
    return format_event(orjson.dumps(obj))


def test_stream_counts_thinking_deltas_the_usage_missed() -> None:
    ctx = RequestContext("rid")
    think = {"choices": [{"index": 0, "delta": {"reasoning": "12 + 7"}}]}
    answer = {"choices": [{"index": 0, "delta": {"content": "19"}}]}
    for e in (think, think, think, answer, answer):
        assert _inspect(_event(e), ctx, client_wants_usage=False)
    assert ctx.thinking_events == 3 and ctx.ttft_s is not None
    usage = {"prompt_tokens": 5, "completion_tokens": 5}  # no reasoning_tokens at all
    assert not _inspect(_event({"choices": [], "usage": usage}), ctx, client_wants_usage=False)
    assert ctx.usage == Usage(prompt=5, visible=2, hidden=3)


def test_stream_keeps_the_backends_own_reasoning_count() -> None:
    ctx = RequestContext("rid")
    _inspect(_event({"choices": [{"delta": {"reasoning": "x"}}]}), ctx, client_wants_usage=True)
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "completion_tokens_details": {"reasoning_tokens": 6},
    }
    _inspect(_event({"choices": [], "usage": usage}), ctx, client_wants_usage=True)
    assert ctx.usage == Usage(prompt=5, visible=3, hidden=6)
