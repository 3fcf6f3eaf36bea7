"""bounded-reasoning in `native` mode on a REAL vLLM that enforces `thinking_token_budget`.

Needs a second server started with a reasoning parser (it parses every reply, so it cannot
double as the ordinary backend); it runs only for this module.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from gateway import localbackend as lb
from gateway.backends.generator import VLLMGenerator
from gateway.backends.pool import Pool, build_transport
from routing.config import BackendPool
from strategies.base import StrategyContext, StrategyRequest
from strategies.best_of_n import BestOfN, BestOfNParams, answers_of
from strategies.bounded_reasoning import BoundedReasoning, BoundedReasoningParams
from strategies.thinking import ThinkingParams
from tests.integration.conftest import MODEL, local_server, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

QUESTION = StrategyRequest(messages=[{"role": "user", "content": "What is 12 + 7?"}])
END_MARKER_TOKENS = 3  # SmolLM2 spells `</think>` in three tokens


@pytest.fixture(scope="module")
def thinking_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("DELIBERATE_TEST_THINKING_URL"):  # a developer's running one
        yield url.rstrip("/")
        return
    run_dir = tmp_path_factory.mktemp("vllm-thinking")
    with local_server(run_dir, "thinking backend", extra_args=lb.NATIVE_THINKING_ARGS) as url:
        yield url


@pytest.fixture
async def pool(thinking_url: str) -> AsyncIterator[Pool]:
    cfg = BackendPool(name="thinking", model=MODEL, replicas=[thinking_url])
    p = Pool(cfg, build_transport(cfg))
    yield p
    await p.client.aclose()


@pytest.mark.parametrize("budget", [16, 48])
async def test_native_budget_is_enforced_and_hidden(pool: Pool, budget: int) -> None:
    strategy = BoundedReasoning(BoundedReasoningParams(mode="native", budget=budget, max_tokens=32))
    gen = VLLMGenerator(pool, f"native-{budget}")
    res = await strategy.run(QUESTION, StrategyContext(gen))
    assert res.choices[0].text, "no answer"
    assert res.choices[0].reasoning
    # vLLM forces the end marker after the budget. Our count is of everything that is not the
    # answer: the thinking, the 3-token marker (vLLM's own count leaves it out) and up to two
    # tokens vLLM lets through while closing it.
    assert 0 < res.info["thinking_tokens"] <= budget + END_MARKER_TOKENS + 2
    # Hidden = the thinking, plus any first-call output that was not a usable answer.
    assert res.usage.hidden >= res.info["thinking_tokens"]
    assert res.info["backend_calls"] == gen.calls


async def test_native_budget_zero_answers_directly(pool: Pool) -> None:
    strategy = BoundedReasoning(BoundedReasoningParams(mode="native", budget=0, max_tokens=24))
    gen = VLLMGenerator(pool, "native-0")
    res = await strategy.run(QUESTION, StrategyContext(gen))
    assert res.choices[0].text and res.usage.hidden == 0 and gen.calls == 1


# -- best-of-n with thinking: every candidate thinks, the vote reads only the answers ----------

VOTE_QUESTION = StrategyRequest(
    messages=[{"role": "user", "content": "What is 12 + 7? End with 'Answer: <number>'."}]
)
THINK_BUDGET = 24


async def test_best_of_n_with_thinking_votes_on_answers_and_hides_thinking(pool: Pool) -> None:
    params = BestOfNParams(
        n=4,
        selector="majority",
        temperature=0.8,
        max_tokens=32,
        thinking=ThinkingParams(budget=THINK_BUDGET),
    )
    gen = VLLMGenerator(pool, "bon-thinking")
    res = await BestOfN(params).run(VOTE_QUESTION, StrategyContext(gen))
    cands = res.candidates
    assert len(cands) == 4 and gen.calls == 1  # one n=4 request
    assert all(c.reasoning for c in cands), "a candidate came back without thinking"
    for c in cands:
        # The engine closes the thinking after the budget; our count includes the marker.
        assert 0 < c.reasoning_tokens <= THINK_BUDGET + END_MARKER_TOKENS + 2, c
        assert c.answer_tokens + c.reasoning_tokens == c.tokens
    # The ballots are the answers' own numbers, never the thinking's.
    assert res.info["answers"] == list(answers_of(cands, params.answer))
    chosen = cands[res.info["chosen_index"]]
    assert res.choices[0].text == chosen.text and res.choices[0].reasoning == chosen.reasoning
    # Visible: the chosen answer; hidden: all thinking plus the other answers.
    assert res.usage.visible == chosen.answer_tokens
    assert res.usage.hidden == sum(c.tokens for c in cands) - chosen.answer_tokens
    assert res.usage.hidden >= sum(c.reasoning_tokens for c in cands)


async def test_effort_none_turns_thinking_off_for_every_candidate(pool: Pool) -> None:
    params = BestOfNParams(n=2, selector="majority", max_tokens=24, thinking=ThinkingParams())
    request = StrategyRequest(VOTE_QUESTION.messages, reasoning_effort="none")
    res = await BestOfN(params).run(request, StrategyContext(VLLMGenerator(pool, "bon-none")))
    # No prefill and no budget: the reasoning parser files the whole reply under `reasoning`
    # (it never saw an end marker), which is why routes on such a server set `thinking`.
    assert all(c.reasoning_tokens == c.tokens for c in res.candidates if c.reasoning)


# -- through the gateway: single-pass passthrough and a thinking vote route --------------------


@pytest.fixture(scope="module")
def thinking_gateway(thinking_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "backends": [{"name": "thinking", "model": MODEL, "replicas": [thinking_url]}],
        "routes": [
            {"name": "think-single", "strategy": "single-pass", "backend": "thinking"},
            {
                "name": "think-vote",
                "strategy": "self-consistency",
                "backend": "thinking",
                "params": {
                    "n": 3,
                    "max_tokens": 24,
                    "answer": {"format": "last_number"},
                    "thinking": {"budget": THINK_BUDGET},
                },
            },
        ],
        "default_route": "think-single",
        "policy": {"default_class": "any", "classes": {"any": {"routes": ["think-single"]}}},
    }
    root: Path = tmp_path_factory.mktemp("thinking-gateway")
    path = root / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_gateway(path, root) as url:
        yield url


def test_gateway_passes_thinking_through_and_counts_it_hidden(thinking_gateway: str) -> None:
    client = OpenAI(base_url=thinking_gateway + "/v1", api_key="unused")
    messages: list[Any] = [
        {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "<think>\n"},
    ]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    extra["thinking_token_budget"] = THINK_BUDGET
    r = client.chat.completions.create(
        model="think-single", messages=messages, max_tokens=48, extra_body=extra
    )
    msg = r.choices[0].message
    assert (msg.model_extra or {}).get("reasoning"), "the thinking was not passed through"
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    hidden = r.usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < hidden <= r.usage.completion_tokens


def test_gateway_vote_route_with_thinking(thinking_gateway: str) -> None:
    client = OpenAI(base_url=thinking_gateway + "/v1", api_key="unused")
    r = client.chat.completions.create(model="think-vote", messages=VOTE_QUESTION.messages)
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    hidden = r.usage.completion_tokens_details.reasoning_tokens or 0
    # Three candidates thought; at most one answer is visible.
    assert hidden >= 3 and r.usage.completion_tokens - hidden <= 24
    detail = (r.model_extra or {}).get("deliberate") or {}
    assert detail.get("route") == "think-vote"


def test_gateway_streams_thinking_then_the_answer(thinking_gateway: str) -> None:
    client = OpenAI(base_url=thinking_gateway + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="think-single",
        messages=[
            {"role": "user", "content": "What is 12 + 7?"},
            {"role": "assistant", "content": "<think>\n"},
        ],
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={
            "continue_final_message": True,
            "add_generation_prompt": False,
            "thinking_token_budget": THINK_BUDGET,
        },
    )
    thinking, usage = 0, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            thinking += bool((c.delta.model_extra or {}).get("reasoning"))
    assert thinking > 0, "no thinking delta reached the client"
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens_details.reasoning_tokens or 0) >= thinking
