"""The Responses dialect: request translation, error renaming, JSON and stream answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from gateway.errors import InvalidRequest
from gateway.responses import (
    ResponseEvents,
    Translation,
    rename_param,
    response_body,
    response_stream,
    translate_request,
)
from gateway.sse import event_data


def translate(**body: Any) -> Translation:
    return translate_request(orjson.dumps({"model": "auto", "input": "Hi", **body}))


def test_string_input_and_instructions_become_messages() -> None:
    t = translate(instructions="Be brief.", max_output_tokens=32, temperature=0.2)
    assert t.chat == {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_completion_tokens": 32,
        "temperature": 0.2,
    }
    assert t.message_params == ["instructions", "input"]


def test_message_items_keep_roles_and_join_text_parts() -> None:
    t = translate(
        input=[
            {"type": "message", "role": "developer", "content": "Rules."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "c", "annotations": []}],
            },
        ]
    )
    assert t.chat["messages"] == [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
    ]
    assert t.message_params == ["input[0]", "input[1]", "input[2]"]


def test_effort_stream_and_formats_map_to_chat_fields() -> None:
    t = translate(
        reasoning={"effort": "high", "summary": "auto"},
        stream=True,
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    assert t.chat["reasoning_effort"] == "high"
    assert t.chat["stream"] is True and t.chat["stream_options"] == {"include_usage": True}
    assert t.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    assert translate(text={"format": {"type": "json_object"}}).chat["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in translate(text={"format": {"type": "text"}}).chat


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"input": []}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input[0]"),
        ({"max_output_tokens": "16"}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"truncation": "auto"}, "truncation"),
        ({"n": 2}, "n"),
    ],
)
def test_bad_or_unsupported_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate(**body)
    assert caught.value.param is not None and caught.value.param.startswith(param), (
        caught.value.param
    )


def test_not_json_and_not_an_object() -> None:
    for raw in (b"{", b"[1]"):
        with pytest.raises(InvalidRequest) as caught:
            translate_request(raw)
        assert caught.value.code == "invalid_json"


def test_store_false_and_integral_floats_are_accepted() -> None:
    t = translate(store=False, max_output_tokens=16.0)
    assert t.chat["max_completion_tokens"] == 16


def test_pipeline_errors_name_the_responses_field() -> None:
    t = translate(instructions="Be brief.", input=[{"role": "user", "content": "x"}])
    cases = {
        "messages[1].content": "input[0].content",
        "messages[0]": "instructions",
        "messages": "input",
        "max_tokens": "max_output_tokens",
        "reasoning_effort": "reasoning.effort",
        "temperature": "temperature",
    }
    for chat_param, expected in cases.items():
        e = rename_param(
            InvalidRequest(f"Invalid value for '{chat_param}': no", param=chat_param), t
        )
        assert e.param == expected
        if chat_param != expected:
            assert chat_param not in e.message and expected in e.message


def chat_answer(**message: Any) -> bytes:
    return orjson.dumps(
        {
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 12,
                "total_tokens": 19,
                "completion_tokens_details": {"reasoning_tokens": 9},
            },
            "deliberate": {"route": "bounded-reasoning"},
        }
    )


def test_json_answer_is_a_valid_response_object() -> None:
    t = translate(reasoning={"effort": "low"})
    body = orjson.loads(response_body(chat_answer(content="Blue.", reasoning="hmm"), t))
    r = Response.model_validate(body)
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output_text == "Blue."
    assert r.status == "completed" and r.model == "m"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 9
    assert r.usage.input_tokens == 7 and r.usage.output_tokens == 12
    assert r.reasoning is not None and r.reasoning.effort == "low"
    assert body["deliberate"] == {"route": "bounded-reasoning"}
    assert body["store"] is False


def test_cut_answer_is_incomplete() -> None:
    raw = orjson.loads(chat_answer(content="Bl"))
    raw["choices"][0]["finish_reason"] = "length"
    r = Response.model_validate(orjson.loads(response_body(orjson.dumps(raw), translate())))
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"


def sse(*chunks: dict[str, Any] | bytes) -> list[bytes]:
    out = []
    for c in chunks:
        out.append(b"data: " + (c if isinstance(c, bytes) else orjson.dumps(c)) + b"\n\n")
    return out


def delta(finish: str | None = None, **d: Any) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def run_stream(raw: list[bytes]) -> list[dict[str, Any]]:
    async def source() -> AsyncGenerator[bytes, None]:
        for piece in raw:
            for i in range(0, len(piece), 7):  # events split across reads
                yield piece[i : i + 7]

    async def collect() -> list[bytes]:
        return [e async for e in response_stream(source(), translate(stream=True))]

    events = []
    for e in asyncio.run(collect()):
        assert e.startswith(b"event: ") and e.endswith(b"\n\n")
        data = event_data(e)
        assert data is not None
        events.append(orjson.loads(data))
    return events


def test_stream_events_in_order_with_reasoning_then_text() -> None:
    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    events = run_stream(
        sse(
            delta(role="assistant"),
            delta(reasoning="think", reasoning_content="think"),
            delta(content="He"),
            delta(content="llo"),
            delta("stop"),
            {"model": "m", "choices": [], "usage": usage},
            b"[DONE]",
        )
    )
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[3]["delta"] == "think"  # reasoning and reasoning_content are one text
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 2
    assert events[8]["output_index"] == events[9]["output_index"] == 1
    assert events[8]["item_id"] == final.output[1].id


def test_stream_error_event_fails_the_response() -> None:
    err = {
        "error": {
            "message": "deadline",
            "type": "server_error",
            "param": None,
            "code": "backend_timeout",
        }
    }
    events = run_stream(sse(delta(content="Hi"), err, b"[DONE]"))
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "backend_timeout"
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None
    assert "response.completed" not in kinds


def test_stream_cut_without_done_is_not_completed() -> None:
    kinds = [e["type"] for e in run_stream(sse(delta(content="Hi")))]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds


def test_empty_answer_still_has_a_message_item() -> None:
    events = ResponseEvents(translate(stream=True))
    out = [*events.start(), *events.feed(delta("length")), *events.finish()]
    last = orjson.loads(event_data(out[-1]) or b"")
    assert last["type"] == "response.incomplete"
    assert Response.model_validate(last["response"]).output_text == ""
