"""The PRM verifier over vLLM's pooling API: wire format with httpx.MockTransport, batching,
conventions, errors, and prm-search driven by it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.backends.pool import Pool
from gateway.backends.prm import PRESETS, PrmConventions, PrmVerifier
from gateway.errors import BackendError, BackendUnavailable
from routing.config import BackendPool
from strategies.base import StrategyContext, StrategyRequest
from strategies.ports import Candidate
from strategies.prm_search import PrmSearch, PrmSearchParams, StepBatchScorer
from strategies.usage import Usage
from tests.unit.test_prm_search import EOS, StepScript

pytestmark = pytest.mark.anyio

Handler = Callable[[dict[str, Any]], httpx.Response]


class FakePrm:
    """A pooling server: one row per step tag, scores from ``rows`` or 0.1, 0.2, ... per tag."""

    def __init__(self, answer: Handler | None = None, tag: str = "<file_sep>") -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.answer = answer
        self.tag = tag

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(request)
        self.bodies.append(body)
        if self.answer is not None:
            return self.answer(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {
                "index": i,
                "object": "pooling",
                "data": [[round(0.1 * (k + 1), 2)] for k in range(text.count(self.tag))],
            }
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(t.split()) for t in inputs)
        return httpx.Response(
            200, json={"data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )


def make_verifier(
    fake: FakePrm, conventions: PrmConventions | None = None
) -> tuple[PrmVerifier, Pool]:
    cfg = BackendPool(name="prm", model="prm-model", replicas=["http://prm:8021"])
    pool = Pool(cfg, httpx.MockTransport(fake.handle))
    return PrmVerifier(pool, "req-1", conventions), pool


async def test_score_steps_wire_format() -> None:
    fake = FakePrm()
    prm, pool = make_verifier(fake)
    scores = await prm.score_steps("What is 2+3?", ["2 + 3 = 5", "Answer: 5"])
    assert [s.value for s in scores] == [0.1, 0.2]
    (request,) = fake.requests
    assert request.url == "http://prm:8021/pooling"
    assert request.headers["x-request-id"] == "req-1-prm-0"
    assert fake.bodies == [
        {
            "model": "prm-model",
            "task": "token_classify",
            "input": "What is 2+3?\n2 + 3 = 5<file_sep>\nAnswer: 5<file_sep>",
        }
    ]
    # the PRM's input tokens are prompt tokens, counted once (on the first score)
    assert scores[0].usage == Usage(prompt=10) and scores[1].usage == Usage()
    assert pool.replicas[0].in_flight == 0 and prm.calls == 1
    assert await prm.score_steps("q", []) == []


async def test_last_steps_of_many_solutions_in_one_call() -> None:
    def answer(body: dict[str, Any]) -> httpx.Response:
        # items deliberately out of order: the index decides
        return httpx.Response(
            200,
            json={
                "data": [
                    {"index": 1, "data": [[0.9]]},
                    {"index": 0, "data": [[0.3], [0.6]]},
                ],
                "usage": {"prompt_tokens": 30},
            },
        )

    fake = FakePrm(answer)
    prm, _ = make_verifier(fake)
    assert isinstance(prm, StepBatchScorer)
    scores = await prm.score_last_steps("Q", [["a", "b"], ["c"]])
    assert [s.value for s in scores] == [0.6, 0.9]
    assert fake.bodies[0]["input"] == ["Q\na<file_sep>\nb<file_sep>", "Q\nc<file_sep>"]
    assert sum((s.usage for s in scores), Usage()) == Usage(prompt=30)
    with pytest.raises(ValueError, match="at least one step"):
        await prm.score_last_steps("Q", [["a"], []])


async def test_score_splits_candidates_into_steps_and_batches() -> None:
    fake = FakePrm()
    prm, _ = make_verifier(fake)
    candidates = [
        Candidate(0, "2 + 3 = 5\n\nAnswer: 5"),
        Candidate(1, "   "),
        Candidate(2, "Answer: 6"),
    ]
    scores = await prm.score("What is 2+3?", candidates)
    assert [s.value for s in scores] == [0.2, 0.0, 0.1]  # last step of each; empty → 0
    assert len(fake.bodies) == 1 and len(fake.bodies[0]["input"]) == 2


async def test_step_tag_inside_text_is_removed() -> None:
    fake = FakePrm()
    prm, _ = make_verifier(fake)
    scores = await prm.score_steps("Q <file_sep>", ["a<file_sep>b"])
    assert len(scores) == 1
    assert fake.bodies[0]["input"] == "Q\nab<file_sep>"


async def test_qwen_conventions_two_classes() -> None:
    def answer(body: dict[str, Any]) -> httpx.Response:
        rows = [[0.2, 0.8], [0.7, 0.3]]
        return httpx.Response(
            200, json={"data": [{"index": 0, "data": rows}], "usage": {"prompt_tokens": 40}}
        )

    fake = FakePrm(answer)
    prm, _ = make_verifier(fake, PRESETS["qwen2.5-math-prm"])
    scores = await prm.score_steps("What is 2+3?", ["s1", "s2"])
    assert [s.value for s in scores] == [0.8, 0.3]
    text = fake.bodies[0]["input"]
    assert "<|im_start|>user\nWhat is 2+3?<|im_end|>" in text
    assert "\\boxed{}" in text
    assert text.endswith("<|im_start|>assistant\ns1<extra_0>s2<extra_0><|im_end|><|endoftext|>")


async def test_math_shepherd_conventions() -> None:
    def answer(body: dict[str, Any]) -> httpx.Response:
        rows = [[0.9, 0.1], [0.4, 0.6]]  # ["+", "-"]: good is class 0
        return httpx.Response(200, json={"data": [{"index": 0, "data": rows}], "usage": {}})

    fake = FakePrm(answer)
    prm, _ = make_verifier(fake, PRESETS["math-shepherd"])
    scores = await prm.score_steps("Q", ["s1", "s2"])
    assert [s.value for s in scores] == [0.9, 0.4]
    assert fake.bodies[0]["input"] == "Q s1 ки\ns2 ки"
    assert scores[0].usage == Usage()  # no usage reported, none invented


def test_conventions_are_validated() -> None:
    with pytest.raises(ValidationError, match="exactly once"):
        PrmConventions(input_template="{question}")
    with pytest.raises(ValidationError, match="only"):
        PrmConventions(input_template="{question}{steps}{other}")
    with pytest.raises(ValidationError):
        PrmConventions(score_format="logits")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"data": [{"index": 0, "data": [[0.5]]}]}, "1 step scores for 2 steps"),
        ({"data": [{"index": 0, "data": [[0.5, 0.5], [0.1, 0.9]]}]}, "use score_format"),
        ({"data": [{"index": 0, "data": [[1.7], [0.1]]}]}, "not a probability"),
        ({"data": []}, "expected 1 data items"),
        ({"oops": True}, "expected 1 data items"),
    ],
)
async def test_malformed_answers_are_backend_errors(payload: dict[str, Any], match: str) -> None:
    prm, _ = make_verifier(FakePrm(lambda body: httpx.Response(200, json=payload)))
    with pytest.raises(BackendError, match=match) as err:
        await prm.score_steps("Q", ["a", "b"])
    assert err.value.status == 502


async def test_prm_refusals_and_outages_are_gateway_errors() -> None:
    def refuse(body: dict[str, Any]) -> httpx.Response:
        error = {"message": "This model's maximum context length is 2048 tokens", "code": 400}
        return httpx.Response(400, json={"error": {**error, "type": "BadRequestError"}})

    prm, pool = make_verifier(FakePrm(refuse))
    with pytest.raises(BackendError, match="refused the scoring request.*2048") as err:
        await prm.score_steps("Q", ["a"])
    assert err.value.status == 502  # the client did not write the PRM's input
    assert pool.replicas[0].in_flight == 0

    prm, _ = make_verifier(FakePrm(lambda body: httpx.Response(500, text="engine died")))
    with pytest.raises(BackendError, match="engine died") as err:
        await prm.score_steps("Q", ["a"])
    assert err.value.status == 502

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cfg = BackendPool(name="prm", model="m", replicas=["http://prm:8021"])
    pool = Pool(cfg, httpx.MockTransport(down))
    with pytest.raises(BackendUnavailable):
        await PrmVerifier(pool, "r").score_steps("Q", ["a"])


async def test_prm_search_with_the_prm_client() -> None:
    fake = FakePrm()
    prm, _ = make_verifier(fake)
    gen = StepScript(
        {
            "": ["First add.", "First guess."],
            "First add.\n\n": [EOS + "Answer: 5"],
            "First guess.\n\n": [EOS + "Answer: 6"],
        }
    )
    p = PrmSearchParams(
        scorer="prm", prm_backend="prm", beam_width=2, branch_factor=2, step_prompt=""
    )
    res = await PrmSearch(p, step_verifier=prm).run(
        StrategyRequest(messages=[{"role": "user", "content": "What is 2+3?"}]),
        StrategyContext(gen),
    )
    # one /pooling call per iteration, every new step of it batched
    assert [len(b["input"]) for b in fake.bodies] == [2, 2]
    assert res.info["scorer"] == "prm" and res.info["verifier_calls"] == 2
    assert res.info["prm_seconds"] >= 0
    prm_tokens = sum(len(t.split()) for b in fake.bodies for t in b["input"])
    assert res.usage.prompt == 20 * len(gen.requests) + prm_tokens
    assert res.usage.completion == sum(10 * r.n for r in gen.requests)
