"""Bodies the gateway would read one way and vLLM another are refused (fuzzing found them).

The client's JSON is forwarded as it came, so a lax type (``"n": "3"``, which the limits do
not see as an int but vLLM coerces to 3) would let a request past ``max_n`` and the budget.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fakes import FakeVLLM
from tests.unit.conftest import Factory
from tests.unit.test_app import CHAT, assert_openai_error

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": "3"}, "n"),
        ({"n": True}, "n"),
        ({"n": 2.5}, "n"),
        ({"n": 1e20}, "n"),  # JSON parsers read a big integer as a float
        ({"seed": 2.0**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),  # read as the float -2**63, which would fit
        ({"n": 2.0**53 + 2}, "n"),  # an integral float past 2**53 may be a rounded one
        ({"max_tokens": "16"}, "max_tokens"),
        ({"max_tokens": 1e300}, "max_tokens"),
        ({"temperature": "0.5"}, "temperature"),
        ({"stream": "false"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"logprobs": 1}, "logprobs"),
        ({"logit_bias": {"50256": "1"}}, "logit_bias.50256"),
        ({"logit_bias": {"1": 1000}}, "logit_bias.1"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content"),
    ],
)
async def test_lax_values_are_refused(
    gateway: Factory, fake: FakeVLLM, fields: dict[str, Any], param: str
) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert_openai_error(r, 400, param)
    assert not fake.completions_received()


async def test_a_bad_map_key_is_named_briefly(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, "logit_bias": {"hello": 1}})
    err = assert_openai_error(r, 400, "logit_bias.hello")
    assert "(the key, not its value)" in err["message"]
    r = await client.post("/v1/chat/completions", json={**CHAT, "metadata": {"k" * 10_000: 1}})
    err = assert_openai_error(r, 400)
    assert err["param"] == "metadata." + "k" * 61 + "..." and len(err["message"]) < 300


async def test_an_unknown_model_is_quoted_briefly(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "m" * 100_000})
    err = assert_openai_error(r, 404, "model")
    assert "m" * 97 + "..." in err["message"] and len(err["message"]) < 1000


@pytest.mark.parametrize(
    ("prompt", "sent"),
    [([1, 2.0], [1, 2]), ([[1.0], [2]], [[1], [2]]), ("3.0", "3.0")],
)
async def test_token_ids_may_be_integral_floats(
    gateway: Factory, fake: FakeVLLM, prompt: Any, sent: Any
) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/completions", json={"model": "auto", "prompt": prompt})
    assert r.status_code == 200, r.text
    assert fake.completions_received()[0]["prompt"] == sent
    assert all(isinstance(t, int) for t in str_or_flat(fake.completions_received()[0]["prompt"]))


def str_or_flat(prompt: Any) -> list[Any]:
    if isinstance(prompt, str):
        return []
    return [t for p in prompt for t in (p if isinstance(p, list) else [p])]


@pytest.mark.parametrize("prompt", [[-1], [True], [[3.5]], [1, "a"]])
async def test_bad_token_ids_are_refused(gateway: Factory, fake: FakeVLLM, prompt: Any) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/completions", json={"model": "auto", "prompt": prompt})
    assert_openai_error(r, 400, "prompt")
    assert not fake.completions_received()


async def test_integral_floats_travel_as_ints(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 2.0, "max_tokens": 8.0})
    assert r.status_code == 200, r.text
    sent = fake.completions_received()[0]
    assert sent["n"] == 2 and isinstance(sent["n"], int)
    assert sent["max_tokens"] == 8 and isinstance(sent["max_tokens"], int)


async def test_image_parts_and_tools_pass_to_the_backend(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway()
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {**CHAT, "messages": [{"role": "user", "content": parts}], "tools": tools}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert fake.completions_received()[0]["messages"][0]["content"] == parts


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_json_too_deep_to_forward_is_400_naming_the_field(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, _ = await gateway()
    # orjson reads up to 1,024 levels but writes only 254: this once was a 500.
    body = json.dumps({**CHAT, "vendor_extra": nested(300)}).encode()  # orjson cannot
    r = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert assert_openai_error(r, 400, "vendor_extra")["code"] == "nested_too_deeply"
    r = await client.post("/v1/chat/completions", json={**CHAT, "vendor_extra": nested(100)})
    assert r.status_code == 200, r.text
    assert not any(isinstance(b.get("vendor_extra"), int) for b in fake.completions_received())


class NoTokenizer(FakeVLLM):
    """A backend without ``/tokenize`` (not vLLM: a mock, another OpenAI server)."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            self.received.append(("/tokenize", request, {}))
            return httpx.Response(404, json={"error": {"message": "no route /tokenize"}})
        return await super().handle(request)


@pytest.fixture
def fake() -> FakeVLLM:
    return NoTokenizer()


async def test_max_tokens_past_the_context_is_400_without_counting(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, _ = await gateway()  # the fake's context: 2,048 tokens
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**9})
    err = assert_openai_error(r, 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    assert not fake.received, "no /tokenize call, no completion"


async def test_a_backend_without_tokenize_stays_the_judge(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway()
    body = {**CHAT, "messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 1000}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text  # was the backend's 404 for /tokenize, relayed
    assert [p for p, _, _ in fake.received] == ["/tokenize", "/v1/chat/completions"]
