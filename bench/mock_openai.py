"""A minimal OpenAI-shaped backend that answers instantly, to isolate the gateway's own cost.

It is a raw ASGI app (no framework, no validation beyond "is this JSON?") so that what it costs
is as close to nothing as a Python HTTP server gets. It speaks just enough of vLLM's surface for
the gateway to treat it as a replica:

- ``GET /health`` → 200 with an empty body (like vLLM);
- ``GET /v1/models`` → one model card with ``max_model_len`` (the gateway reads it at start-up);
- ``POST /v1/chat/completions`` → a fixed one-token completion with ``usage``; with
  ``"stream": true`` a few SSE ``data:`` chunks (role, content, finish) then ``data: [DONE]``,
  plus a usage-only chunk before ``[DONE]`` when ``stream_options.include_usage`` is true.
  ``n`` > 1 gives ``n`` choices (``CANDIDATE_TEXTS`` in turn, so a vote has something to
  count and the arithmetic checker something to check); ``usage`` counts every choice, and
  ``"return_token_ids": true`` adds each choice's ``token_ids`` (as vLLM does).

A stream sends one one-token content chunk per ``max_tokens`` (one when it is absent; at
most ``MAX_STREAM_TOKENS``), so ``max_tokens: 1000`` is a 1,000-chunk stream for the soak
bench (``bench/soak.py``); ``--chunk-interval-ms`` paces the chunks like a decoder.

Run it with ``python bench/mock_openai.py --port 9100`` (uvicorn, httptools, uvloop if present).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODEL = "mock-model"
MAX_MODEL_LEN = 2048
COMPLETION_TEXT = "Hi"
"""The whole answer: one "token", so the mock's work matches a `max_tokens=1` request."""
PROMPT_TOKENS = 8
COMPLETION_TOKENS = 1
CANDIDATE_TEXTS = ("1 + 1 = 2", "1 + 1 = 2", "1 + 1 = 2", "1 + 1 = 3")
"""Choice ``i`` of an ``n`` > 1 answer says ``CANDIDATE_TEXTS[i % 4]``: a 3:1 vote for 2."""
MAX_N = 128
MAX_STREAM_TOKENS = 100_000

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ids = itertools.count(1)


try:
    import orjson

    _dumps: Callable[[Any], bytes] = orjson.dumps
    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - the gateway's venv always has orjson

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


def _usage(completion_tokens: int = COMPLETION_TOKENS) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def choice_text(index: int, n: int) -> str:
    """What choice ``index`` of an ``n``-choice answer says."""
    return COMPLETION_TEXT if n == 1 else CANDIDATE_TEXTS[index % len(CANDIDATE_TEXTS)]


def models_body(model: str, max_model_len: int = MAX_MODEL_LEN) -> bytes:
    """The ``GET /v1/models`` answer: one card, shaped like vLLM's (``max_model_len`` included)."""
    card = {
        "id": model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "deliberate-bench",
        "root": model,
        "max_model_len": max_model_len,
    }
    return _dumps({"object": "list", "data": [card]})


def completion_body(model: str, n: int = 1, token_ids: bool = False) -> bytes:
    """A non-streaming ``chat.completion`` with ``n`` choices and ``usage``; ``token_ids``
    adds each choice's generated token ids."""
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": choice_text(i, n)},
            "logprobs": None,
            "finish_reason": "length",
        }
        for i in range(n)
    ]
    if token_ids:
        for choice in choices:
            choice["token_ids"] = list(range(1, COMPLETION_TOKENS + 1))
    return _dumps(
        {
            "id": f"chatcmpl-mock-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": _usage(n * COMPLETION_TOKENS),
        }
    )


def stream_events(model: str, include_usage: bool, content_chunks: int = 1) -> list[bytes]:
    """The SSE events of a streamed answer, each a complete ``data: ...\\n\\n`` event.

    Role chunk (empty content), ``content_chunks`` content chunks (one token each), a finish
    chunk, an optional usage-only chunk (``choices: []``, as OpenAI and vLLM send it), then
    ``data: [DONE]``.
    """
    base = {
        "id": f"chatcmpl-mock-{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + _dumps({**base, "choices": [choice]}) + b"\n\n"

    content = event({"content": COMPLETION_TEXT}, None)  # the same bytes every time
    events = [event({"role": "assistant", "content": ""}, None)]
    events += [content] * content_chunks
    events.append(event({}, "length"))
    if include_usage:
        usage = {**base, "choices": [], "usage": _usage(content_chunks * COMPLETION_TOKENS)}
        events.append(b"data: " + _dumps(usage) + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str, code: int) -> bytes:
    return _dumps({"error": {"message": message, "type": "BadRequestError", "code": code}})


def requested_n(payload: dict[str, Any]) -> int | None:
    """The payload's ``n`` (1 when absent), or None when it is not an int in 1..``MAX_N``."""
    n = payload.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        return None
    return n


def stream_tokens(payload: dict[str, Any]) -> int:
    """Content chunks of a streamed answer: ``max_tokens`` (an int in 1..``MAX_STREAM_TOKENS``),
    else 1."""
    m = payload.get("max_tokens")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_STREAM_TOKENS:
        return 1
    return m


async def _chat(
    receive: Receive, send: Send, default_model: str, delay_s: float, interval_s: float
) -> None:
    try:
        payload = _loads(await _read_body(receive))
    except ValueError:
        await _respond(send, 400, _error("body is not JSON", 400))
        return
    if not isinstance(payload, dict):
        await _respond(send, 400, _error("body must be a JSON object", 400))
        return
    n = requested_n(payload)
    if n is None:
        await _respond(send, 400, _error(f"n must be an integer in 1..{MAX_N}", 400))
        return
    model = str(payload.get("model") or default_model)
    if delay_s > 0:
        await asyncio.sleep(delay_s)  # a backend that takes its time (first token)
    if not payload.get("stream"):
        ids = payload.get("return_token_ids") is True
        await _respond(send, 200, completion_body(model, n, ids))
        return
    opts = payload.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    tokens = stream_tokens(payload)
    for i, event in enumerate(stream_events(model, include_usage, tokens)):
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if interval_s > 0 and 1 <= i <= tokens:  # pace the tokens, like a decoder
            await asyncio.sleep(interval_s)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def make_app(
    model: str = DEFAULT_MODEL,
    max_model_len: int = MAX_MODEL_LEN,
    delay_s: float = 0.0,
    chunk_interval_s: float = 0.0,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app serving ``model`` (the name in ``/v1/models``; answers echo the request's).

    ``delay_s`` > 0 makes every completion wait that long before answering (default: none).
    ``chunk_interval_s`` > 0 pauses that long after each content chunk of a stream (default:
    back to back). Streams are single-choice whatever ``n`` says.
    """
    models = models_body(model, max_model_len)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/v1/chat/completions" and method == "POST":
            await _chat(receive, send, model, delay_s, chunk_interval_s)
        elif path == "/health" and method == "GET":
            await _respond(send, 200, b"", [])
        elif path == "/v1/models" and method == "GET":
            await _respond(send, 200, models)
        elif path in ("/v1/chat/completions", "/health", "/v1/models"):
            await _respond(send, 405, _error(f"method {method} not allowed", 405))
        else:
            await _respond(send, 404, _error(f"no route {path}", 404))

    return app


app = make_app()
"""The default app (`uvicorn bench.mock_openai:app` works too)."""


def main(argv: list[str] | None = None) -> None:
    """Serve the mock with uvicorn (fastest available loop and HTTP parser, no access log)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Model id in /v1/models.")
    parser.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="Wait before each completion (default 0)."
    )
    parser.add_argument(
        "--chunk-interval-ms",
        type=float,
        default=0.0,
        help="Pause after each content chunk of a stream (default 0: back to back).",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(
            args.model, args.max_model_len, args.delay_ms / 1000.0, args.chunk_interval_ms / 1000
        ),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="auto",
        http="auto",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
