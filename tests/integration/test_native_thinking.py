"""bounded-reasoning in `native` mode on a REAL vLLM that enforces `thinking_token_budget`.

Needs a second server started with a reasoning parser (it parses every reply, so it cannot
double as the ordinary backend); it runs only for this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway import localbackend as lb
from gateway.backends.generator import VLLMGenerator
from gateway.backends.pool import Pool, build_transport
from routing.config import BackendPool
from strategies.base import StrategyContext, StrategyRequest
from strategies.bounded_reasoning import BoundedReasoning, BoundedReasoningParams
from tests.integration.conftest import MODEL, local_server

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

QUESTION = StrategyRequest(messages=[{"role": "user", "content": "What is 12 + 7?"}])


@pytest.fixture(scope="module")
def thinking_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
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
    # vLLM forces the end marker after the budget; a 3-token marker adds up to 2 tokens.
    assert 0 < res.info["thinking_tokens"] <= budget + 2
    # Hidden = the thinking, plus any first-call output that was not a usable answer.
    assert res.usage.hidden >= res.info["thinking_tokens"]
    assert res.info["backend_calls"] == gen.calls


async def test_native_budget_zero_answers_directly(pool: Pool) -> None:
    strategy = BoundedReasoning(BoundedReasoningParams(mode="native", budget=0, max_tokens=24))
    gen = VLLMGenerator(pool, "native-0")
    res = await strategy.run(QUESTION, StrategyContext(gen))
    assert res.choices[0].text and res.usage.hidden == 0 and gen.calls == 1
