"""Pure pieces: SSE framing, limits, usage accounting, error bodies, request ids."""

from __future__ import annotations

import pytest

from budgets.limits import check_context, check_shape, completion_cap, prompt_token_upper_bound
from gateway.context import RequestContext, request_id_from
from gateway.errors import BackendError, BackendUnavailable, InvalidRequest
from gateway.sse import EventSplitter, event_data, format_event
from strategies.usage import Usage


def test_splitter_reassembles_events_across_chunks() -> None:
    s = EventSplitter()
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    out: list[bytes] = []
    for i in range(0, len(stream), 5):
        out += s.feed(stream[i : i + 5])
    assert out == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]
    assert s.tail() == b""


def test_splitter_crlf_and_tail() -> None:
    s = EventSplitter()
    assert s.feed(b"data: x\r\n\r\ndata: y") == [b"data: x\r\n\r\n"]
    assert s.tail() == b"data: y"


def test_event_data() -> None:
    assert event_data(b"data: [DONE]\n\n") == b"[DONE]"
    assert event_data(b"event: ping\ndata:a\ndata: b\n\n") == b"a\nb"
    assert event_data(b": comment\n\n") is None
    assert format_event(b"{}") == b"data: {}\n\n"


def test_shape_limits() -> None:
    assert check_shape({"messages": [{}] * 3}, max_messages=3, max_n=2) is None
    v = check_shape({"messages": [{}] * 4}, max_messages=3, max_n=2)
    assert v is not None and v.param == "messages"
    v = check_shape({"n": 3}, max_messages=3, max_n=2)
    assert v is not None and v.param == "n"


def test_context_limits() -> None:
    assert completion_cap({"max_tokens": 5, "max_completion_tokens": 7}) == (
        "max_completion_tokens",
        7,
    )
    assert completion_cap({}) is None
    assert check_context(100, ("max_tokens", 100), 2048, "messages") is None
    v = check_context(2048, None, 2048, "messages")
    assert v is not None and v.param == "messages" and v.code == "context_length_exceeded"
    v = check_context(2000, ("max_tokens", 100), 2048, "messages")
    assert v is not None and v.param == "max_tokens" and "at most 48" in v.message
    assert prompt_token_upper_bound(100, 2) > 100


def test_usage_kinds() -> None:
    u = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 30,
            "completion_tokens_details": {"reasoning_tokens": 20},
        }
    )
    assert (u.prompt, u.visible, u.hidden, u.completion) == (10, 10, 20, 30)
    assert Usage.from_openai(None) == Usage()
    assert Usage.from_openai(
        {"prompt_tokens": 3, "completion_tokens": 2, "completion_tokens_details": None}
    ) == Usage(3, 2, 0)
    assert u + Usage(1, 1, 1) == Usage(11, 11, 21)


def test_error_bodies() -> None:
    e = InvalidRequest("bad", param="n", code="x")
    assert e.status == 400
    assert e.body() == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "x"}
    }
    assert BackendUnavailable("down").status == 503
    b = BackendError(422, "nope", error_type="BadRequestError")
    assert b.status == 422 and b.body()["error"]["type"] == "BadRequestError"


@pytest.mark.parametrize("header", ["abc-123", "req_1:2/3", "x" * 128])
def test_request_id_kept(header: str) -> None:
    assert request_id_from(header) == header


@pytest.mark.parametrize("header", [None, "", "has space", "x" * 129, "new\nline"])
def test_request_id_generated(header: str | None) -> None:
    rid = request_id_from(header)
    assert rid != header and len(rid) == 32


def test_context_records_once_with_headers() -> None:
    ctx = RequestContext("r1")
    assert ctx.headers() == {"x-request-id": "r1"}
    ctx.route, ctx.strategy, ctx.backend = "a", "single-pass", "p"
    assert ctx.headers()["x-deliberate-backend"] == "p"
    rec = ctx.finish()
    assert rec is not None and rec.route == "a" and rec.outcome == "ok"
    assert ctx.finish() is None
