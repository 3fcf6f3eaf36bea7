"""A hand-made corpus of hostile requests for ``test_fuzz_corpus.py``: each has an id, the bytes
to send and what the client must see (status, and the field the error must name).

``param`` is the exact OpenAI ``param`` the error must carry; ``param_prefix`` a prefix of it
(for map keys); neither: a structural error (``code`` says which) with ``param`` null.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EXPLAIN = "/v1/route/explain"
USER = {"role": "user", "content": "Say hi."}
_DROP = object()
MB = 1024 * 1024


def chat(**fields: Any) -> bytes:
    """A valid chat body (model ``single-pass``) with ``fields`` set (``_DROP`` removes one)."""
    body: dict[str, Any] = {"model": "single-pass", "messages": [USER], "max_tokens": 4}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})


def with_message(**fields: Any) -> bytes:
    """A chat body whose one message has ``fields`` set."""
    message = {k: v for k, v in {**USER, **fields}.items() if v is not _DROP}
    return chat(messages=[message])


def completion(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "single-pass", "prompt": "Say hi.", "max_tokens": 4}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not _DROP})


def chat_literal(name: str, json_text: bytes) -> bytes:
    """A chat body with field ``name`` spelt as ``json_text`` (what orjson will not write)."""
    return chat(**{name: "@@"}).replace(b'"@@"', json_text)


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@dataclass(frozen=True)
class Hostile:
    id: str
    body: bytes = b""
    status: int = 400
    param: str | None = None
    param_prefix: str | None = None
    code: str | None = None
    path: str = CHAT
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    raw_headers: bytes | None = None
    """Extra header lines sent verbatim over a raw socket (what httpx refuses to send)."""
    big: tuple[int, bool] | None = None
    """A body of this many bytes streamed over a raw socket, chunked (True) or with a length."""


def _bad(id: str, body: bytes, param: str, status: int = 400, **kw: Any) -> Hostile:
    return Hostile(id, body, status, param=param, **kw)


CORPUS: list[Hostile] = [
    # --- wrong types, field by field --------------------------------------------------------
    _bad("model-int", chat(model=5), "model"),
    _bad("model-empty", chat(model=""), "model"),
    _bad("model-null", chat(model=None), "model"),
    _bad("model-missing", chat(model=_DROP), "model"),
    _bad("model-unknown", chat(model="no-such-model"), "model", 404, code="model_not_found"),
    _bad("model-1mb", chat(model="m" * MB), "model", 404, code="model_not_found"),
    _bad("model-null-byte", chat(model="single-pass\u0000"), "model", 404),
    _bad("temperature-string", chat(temperature="0.5"), "temperature"),
    _bad("temperature-negative", chat(temperature=-1), "temperature"),
    _bad("top-p-zero", chat(top_p=0), "top_p"),
    _bad("top-p-two", chat(top_p=2), "top_p"),
    _bad("presence-penalty-five", chat(presence_penalty=5), "presence_penalty"),
    _bad("stop-int", chat(stop=5), "stop"),
    _bad("stop-list-of-int", chat(stop=[1, 2]), "stop"),
    _bad("seed-string", chat(seed="7"), "seed"),
    _bad("seed-2e64", chat_literal("seed", b"18446744073709551616"), "seed"),
    _bad("stream-string-false", chat(stream="false"), "stream"),
    _bad("stream-int", chat(stream=1), "stream"),
    _bad("stream-options-string", chat(stream_options="usage"), "stream_options"),
    _bad(
        "stream-options-usage-string",
        chat(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
    ),
    _bad("user-int", chat(user=5), "user"),
    _bad("metadata-nested", chat(metadata={"task": {"a": 1}}), "metadata.task"),
    _bad("response-format-string", chat(response_format="json"), "response_format"),
    _bad("reasoning-effort-bogus", chat(reasoning_effort="maximal"), "reasoning_effort"),
    _bad("logprobs-int", chat(logprobs=1), "logprobs"),
    _bad("top-logprobs-99", chat(logprobs=True, top_logprobs=99), "top_logprobs"),
    # --- n ----------------------------------------------------------------------------------
    _bad("n-zero", chat(n=0), "n"),
    _bad("n-negative", chat(n=-1), "n"),
    _bad("n-1e9", chat(n=10**9), "n", code="n_too_large"),
    _bad("n-1e20", chat_literal("n", b"100000000000000000000"), "n"),
    _bad("n-string", chat(n="2"), "n"),
    _bad("n-float", chat(n=2.5), "n"),
    _bad("n-bool", chat(n=True), "n"),
    # --- max_tokens -------------------------------------------------------------------------
    _bad("max-tokens-negative", chat(max_tokens=-5), "max_tokens"),
    _bad("max-tokens-zero", chat(max_tokens=0), "max_tokens"),
    _bad("max-tokens-huge", chat(max_tokens=10**9), "max_tokens", code="context_length_exceeded"),
    _bad("max-tokens-1e300", chat(max_tokens=1e300), "max_tokens"),
    _bad("max-tokens-float", chat(max_tokens=1.5), "max_tokens"),
    _bad("max-tokens-string", chat(max_tokens="16"), "max_tokens"),
    _bad("max-completion-tokens-negative", chat(max_completion_tokens=-1), "max_completion_tokens"),
    Hostile("max-tokens-integral-float", chat(max_tokens=4.0), 200),
    # --- messages ---------------------------------------------------------------------------
    _bad("messages-empty", chat(messages=[]), "messages"),
    _bad("messages-string", chat(messages="hi"), "messages"),
    _bad("messages-object", chat(messages=USER), "messages"),
    _bad("messages-null", chat(messages=None), "messages"),
    _bad("messages-missing", chat(messages=_DROP), "messages"),
    _bad("message-not-object", chat(messages=["hi"]), "messages[0]"),
    _bad("message-too-many", chat(messages=[USER] * 600), "messages", code="too_many_messages"),
    _bad("role-unknown", with_message(role="wizard"), "messages[0].role"),
    _bad("role-missing", with_message(role=_DROP), "messages[0].role"),
    _bad("role-int", with_message(role=1), "messages[0].role"),
    _bad("role-null-byte", with_message(role="user\u0000"), "messages[0].role"),
    _bad("content-int", with_message(content=5), "messages[0].content"),
    _bad("content-object", with_message(content={"text": "hi"}), "messages[0].content"),
    _bad("content-part-no-type", with_message(content=[{"text": "hi"}]), "messages[0].content"),
    _bad(
        "content-part-text-int",
        with_message(content=[{"type": "text", "text": 5}]),
        "messages[0].content",
    ),
    _bad("name-int", with_message(name=5), "messages[0].name"),
    Hostile(
        "content-image-part",  # the gateway passes it on; the backend decides (the mock: 200)
        with_message(
            content=[
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]
        ),
        200,
    ),
    Hostile("content-null-byte", with_message(content="a\u0000b"), 200),
    Hostile("stream-valid", chat(stream=True, stream_options={"include_usage": True}), 200),
    # --- tools and logit_bias ---------------------------------------------------------------
    _bad("tools-object", chat(tools={"type": "function"}), "tools"),
    _bad("tools-no-function", chat(tools=[{"type": "function"}]), "tools[0].function"),
    _bad(
        "tools-wrong-type",
        chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]),
        "tools[0].type",
    ),
    _bad(
        "tools-no-name",
        chat(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
    ),
    _bad(
        "tools-parameters-string",
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
    ),
    _bad("tool-choice-bogus", chat(tool_choice="sometimes"), "tool_choice"),
    _bad("logit-bias-list", chat(logit_bias=[1, 2]), "logit_bias"),
    _bad("logit-bias-word-key", chat(logit_bias={"hello": 1}), "logit_bias.hello"),
    Hostile("logit-bias-1mb-key", chat(logit_bias={"k" * MB: 1}), param_prefix="logit_bias.kkk"),
    Hostile("metadata-1mb-key", chat(metadata={"k" * MB: 1}), param_prefix="metadata.kkk"),
    _bad("logit-bias-value-string", chat(logit_bias={"50256": "x"}), "logit_bias.50256"),
    _bad("logit-bias-out-of-range", chat(logit_bias={"1": 1000}), "logit_bias.1"),
    # --- not JSON, or not an object -----------------------------------------------------------
    Hostile("body-empty", b"", code="invalid_json"),
    Hostile("body-truncated", chat()[:-3], code="invalid_json"),
    Hostile("body-trailing-garbage", chat() + b"}{", code="invalid_json"),
    Hostile("body-array", b"[]", code="invalid_json"),
    Hostile("body-string", b'"hello"', code="invalid_json"),
    Hostile("body-null", b"null", code="invalid_json"),
    Hostile("nan", chat().replace(b'"max_tokens":4', b'"temperature":NaN'), code="invalid_json"),
    Hostile(
        "infinity", chat().replace(b'"max_tokens":4', b'"top_p":Infinity'), code="invalid_json"
    ),
    Hostile("minus-infinity", chat().replace(b"4", b"-Infinity"), code="invalid_json"),
    Hostile(
        "number-1e400", chat().replace(b'"max_tokens":4', b'"seed":1e400'), code="invalid_json"
    ),
    Hostile("invalid-utf8", chat().replace(b"Say hi.", b"Say \xff\xfe hi."), code="invalid_json"),
    Hostile("lone-surrogate", chat().replace(b"Say hi.", b"\\ud800"), code="invalid_json"),
    Hostile("raw-null-byte", chat().replace(b",", b",\x00", 1), code="invalid_json"),
    Hostile("nested-100k-array", nested(100_000).encode(), code="invalid_json"),
    Hostile(
        "nested-100k-in-field",
        chat().replace(b'"max_tokens":4', b'"metadata":' + nested(100_000).encode()),
        code="invalid_json",
    ),
    # JSON the gateway parses but could not write out again (orjson writes 254 levels at most).
    Hostile(
        "nested-500-in-extra-field",
        chat().replace(b'"max_tokens":4', b'"vendor_extra":' + nested(500).encode()),
        param="vendor_extra",
    ),
    # Duplicate keys: the last one wins, as in every JSON parser the gateway forwards to.
    Hostile("duplicate-keys-last-valid", b'{"model": 5, ' + chat()[1:], 200),
    _bad("duplicate-keys-last-invalid", chat()[:-1] + b', "model": 5}', "model"),
    # --- size limits (limits.max_body_bytes is 4 MiB) -----------------------------------------
    Hostile("body-5mb-length", status=413, code="request_too_large", big=(5 * MB, False)),
    Hostile("body-50mb-length", status=413, code="request_too_large", big=(50 * MB, False)),
    Hostile(
        "body-50mb-expect-continue",
        status=413,
        code="request_too_large",
        raw_headers=b"expect: 100-continue\r\n",
        big=(50 * MB, False),
    ),
    Hostile("body-5mb-chunked", status=413, code="request_too_large", big=(5 * MB, True)),
    Hostile("body-50mb-chunked", status=413, code="request_too_large", big=(50 * MB, True)),
    # --- headers on the wire ------------------------------------------------------------------
    # x-request-id comes back only when it is a sane token; a header the parser cannot read
    # is refused before the app (uvicorn's httptools parser, with our OpenAI-shaped 400).
    Hostile("request-id-crlf", chat(), 200, raw_headers=b"x-request-id: abc\r\nx-injected: 1\r\n"),
    Hostile(
        "request-id-bare-lf",
        chat(),
        code="invalid_http_request",
        raw_headers=b"x-request-id: abc\nx-injected: 1\r\n",
    ),
    Hostile(
        "request-id-bare-cr",
        chat(),
        code="invalid_http_request",
        raw_headers=b"x-request-id: abc\rx-injected: 1\r\n",
    ),
    Hostile(
        "request-id-null-byte",
        chat(),
        code="invalid_http_request",
        raw_headers=b"x-request-id: a\x00b\r\n",
    ),
    Hostile("request-id-too-long", chat(), 200, headers={"x-request-id": "r" * 10_000}),
    Hostile("request-id-spaces", chat(), 200, headers={"x-request-id": "a b <script>"}),
    Hostile(
        "content-length-invalid",
        chat(),
        code="invalid_http_request",
        raw_headers=b"content-length: abc\r\n",
    ),
    # --- the other endpoints ------------------------------------------------------------------
    _bad("completions-prompt-object", completion(prompt={"a": 1}), "prompt", path=COMPLETIONS),
    _bad("completions-prompt-missing", completion(prompt=_DROP), "prompt", path=COMPLETIONS),
    _bad("completions-prompt-mixed", completion(prompt=[1, "a"]), "prompt", path=COMPLETIONS),
    _bad("completions-logprobs-99", completion(logprobs=99), "logprobs", path=COMPLETIONS),
    _bad("completions-best-of-zero", completion(best_of=0), "best_of", path=COMPLETIONS),
    _bad("completions-n-string", completion(n="2"), "n", path=COMPLETIONS),
    _bad("explain-n-zero", chat(n=0), "n", path=EXPLAIN),
    _bad("explain-role-unknown", with_message(role="wizard"), "messages[0].role", path=EXPLAIN),
    Hostile("explain-invalid-json", b"{", code="invalid_json", path=EXPLAIN),
    Hostile(
        "explain-body-5mb", status=413, code="request_too_large", path=EXPLAIN, big=(5 * MB, False)
    ),
    Hostile("chat-get", status=405, code="method_not_allowed", method="GET"),
    Hostile("unknown-path", chat(), 404, code="not_found", path="/v1/chat/completion"),
]
