"""A minimal OpenAI-shaped backend that answers instantly, to isolate the gateway's own cost.

It is a raw ASGI app (no framework, no validation beyond "is this JSON?") so that what it costs
is as close to nothing as a Python HTTP server gets. It speaks just enough of vLLM's surface for
the gateway to treat it as a replica:

- ``GET /health`` → 200 with an empty body (like vLLM);
- ``GET /v1/models`` → one model card with ``max_model_len`` (the gateway reads it at start-up);
- ``POST /v1/chat/completions`` → a fixed one-token completion with ``usage``; with
  ``"stream": true`` a few SSE ``data:`` chunks (role, content, finish) then ``data: [DONE]``,
  plus a usage-only chunk before ``[DONE]`` when ``stream_options.include_usage`` is true.

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


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


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


def completion_body(model: str) -> bytes:
    """A non-streaming ``chat.completion`` with one choice and ``usage``."""
    return _dumps(
        {
            "id": f"chatcmpl-mock-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": COMPLETION_TEXT},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": _usage(),
        }
    )


def stream_events(model: str, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer, each a complete ``data: ...\\n\\n`` event.

    Role chunk (empty content), one content chunk, a finish chunk, an optional usage-only chunk
    (``choices: []``, as OpenAI and vLLM send it), then ``data: [DONE]``.
    """
    base = {
        "id": f"chatcmpl-mock-{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    deltas: list[tuple[dict[str, str], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": COMPLETION_TEXT}, None),
        ({}, "length"),
    ]
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]}
        for d, f in deltas
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage()})
    return [b"data: " + _dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


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


async def _chat(receive: Receive, send: Send, default_model: str, delay_s: float) -> None:
    try:
        payload = _loads(await _read_body(receive))
    except ValueError:
        await _respond(send, 400, _error("body is not JSON", 400))
        return
    if not isinstance(payload, dict):
        await _respond(send, 400, _error("body must be a JSON object", 400))
        return
    model = str(payload.get("model") or default_model)
    if delay_s > 0:
        await asyncio.sleep(delay_s)  # a backend that takes its time (first token)
    if not payload.get("stream"):
        await _respond(send, 200, completion_body(model))
        return
    opts = payload.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    for event in stream_events(model, include_usage):
        await send({"type": "http.response.body", "body": event, "more_body": True})
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
    model: str = DEFAULT_MODEL, max_model_len: int = MAX_MODEL_LEN, delay_s: float = 0.0
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app serving ``model`` (the name in ``/v1/models``; answers echo the request's).

    ``delay_s`` > 0 makes every completion wait that long before answering (default: none).
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
            await _chat(receive, send, model, delay_s)
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
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.model, args.max_model_len, args.delay_ms / 1000.0),
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
