"""single-pass /v1/responses forwarded to the engine: the body sent, the stream dialect, and
the fall-back to the chat translation when the engine has no /v1/responses."""

from __future__ import annotations

import orjson
import pytest

from gateway.context import RequestContext
from gateway.responses import translate_request
from gateway.responses_forward import ResponsesDialect, forward_body
from gateway.sse import event_data
from strategies.usage import Usage
from tests.fakes import FakeVLLM
from tests.unit.conftest import Factory

pytestmark = pytest.mark.anyio


def test_body_keeps_the_clients_request_with_the_routes_decisions() -> None:
    client = {
        "model": "auto",
        "instructions": "Be terse.",
        "input": [
            {"role": "user", "content": "2 + 3?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "5"}]},
        ],
        "max_output_tokens": 500,
        "temperature": 0.9,
        "reasoning": {"effort": "low"},
        "store": False,
    }
    t = translate_request(orjson.dumps(client))
    patched = {**t.chat, "max_completion_tokens": 64, "temperature": 0.0, "seed": 7}
    body = orjson.loads(forward_body(t, patched, "engine-model"))
    assert body["model"] == "engine-model" and body["store"] is False
    assert body["max_output_tokens"] == 64  # the route's cap, not the client's 500
    assert body["temperature"] == 0.0 and body["seed"] == 7
    assert body["instructions"] == "Be terse." and body["reasoning"] == {"effort": "low"}
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "2 + 3?"},
        {"type": "message", "role": "assistant", "content": "5"},
    ]


def test_a_sampling_field_the_route_unset_is_not_sent() -> None:
    t = translate_request(orjson.dumps({"model": "m", "input": "hi", "top_p": 0.5}))
    chat = {k: v for k, v in t.chat.items() if k != "top_p"}
    assert "top_p" not in orjson.loads(forward_body(t, chat, "m"))


def _typed(obj: dict[str, object]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def test_dialect_notes_ttft_usage_and_the_last_event() -> None:
    d, ctx = ResponsesDialect(), RequestContext("rid")
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}}
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Red"}
    usage = {
        "input_tokens": 9,
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    done = {"type": "response.completed", "sequence_number": 2, "response": {"usage": usage}}
    assert d.inspect(_typed(created), ctx, True) and ctx.ttft_s is None
    assert d.inspect(_typed(delta), ctx, True) and ctx.ttft_s is not None
    assert not d.ends(_typed(delta))
    assert d.inspect(_typed(done), ctx, True) and d.ends(_typed(done))
    assert ctx.usage == Usage(prompt=9, visible=2)


def test_dialect_failure_continues_the_numbering_and_fails_the_response() -> None:
    d, ctx = ResponsesDialect(), RequestContext("rid")
    d.inspect(
        _typed({"type": "response.created", "sequence_number": 4, "response": {"id": "r"}}),
        ctx,
        True,
    )
    events = [
        e for e in d.failure("cut off", "backend_error", "backend_stream_error").split(b"\n\n") if e
    ]
    objs = [orjson.loads(event_data(e + b"\n\n") or b"{}") for e in events]
    assert [o["type"] for o in objs] == ["error", "response.failed"]
    assert [o["sequence_number"] for o in objs] == [5, 6]
    assert objs[0]["code"] == "backend_stream_error"
    assert objs[1]["response"]["id"] == "r" and objs[1]["response"]["status"] == "failed"


async def test_an_engine_without_responses_is_served_by_translation(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, _ = await gateway()
    body = {"model": "single-pass", "input": "hi", "max_output_tokens": 8}
    for _ in range(2):
        r = await client.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "response" and r.json()["output"]
    # The first request learned the 404; the second went straight to chat.
    assert [path for path, _, _ in fake.received] == [
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ]
