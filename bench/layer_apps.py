"""Stripped-down servers that rebuild the gateway's stack one layer at a time (benchmark only).

Served by uvicorn exactly like the gateway (uvloop + httptools, no access log), each answers
``POST /v1/chat/completions``; ``profile_gateway.py layers`` measures the CPU each one burns per
request, so the difference between two rows is what one layer costs:

- ``raw_const``: raw ASGI, fixed body: uvicorn's own floor (HTTP parsing, socket I/O, task);
- ``fastapi_const``: a FastAPI route returning a fixed ``Response``: + FastAPI/Starlette;
- ``raw_httpx``: raw ASGI forwarding the body upstream with the gateway's own pooled
  ``httpx.AsyncClient`` (``gateway.backends.pool.Pool.client``): + the upstream client;
- ``fastapi_httpx``: FastAPI + that client: the gateway without its own logic;
- ``raw_streams``: raw ASGI forwarding with a minimal keep-alive HTTP/1.1 client on asyncio
  streams (content-length bodies only): what the upstream hop costs without httpx.

The upstream is ``$LAYER_BACKEND_URL`` (the mock).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

BACKEND = os.environ.get("LAYER_BACKEND_URL", "http://127.0.0.1:9100")
PATH = "/v1/chat/completions"
FIXED = (
    b'{"id":"chatcmpl-x","object":"chat.completion","created":0,"model":"mock-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},'
    b'"logprobs":null,"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}'
)
_JSON = [(b"content-type", b"application/json")]


async def _body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _reply(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _JSON})
    await send({"type": "http.response.body", "body": body})


def _gateway_client() -> httpx.AsyncClient:
    """The same client the gateway builds for a pool (limits, timeouts, headers)."""
    from gateway.backends.pool import Pool, build_transport
    from routing.config import BackendPool

    config = BackendPool(name="mock", model="mock-model", replicas=[BACKEND])
    return Pool(config, build_transport(config)).client


_client: httpx.AsyncClient | None = None


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = _gateway_client()
    return _client


async def _httpx_forward(raw: bytes) -> bytes:
    """POST like ``open_upstream`` + ``read_json_body``: stream=True, then aread + aclose."""
    c = client()
    request = c.build_request(
        "POST", BACKEND + PATH, content=raw, headers={"content-type": "application/json"}
    )
    response = await c.send(request, stream=True)
    try:
        return await response.aread()
    finally:
        await response.aclose()


async def raw_const(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _body(receive)
        await _reply(send, FIXED)


async def raw_httpx(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _reply(send, await _httpx_forward(await _body(receive)))


fastapi_const = FastAPI()
fastapi_httpx = FastAPI()


@fastapi_const.post(PATH)
async def _fastapi_const(request: Request) -> Response:
    await request.body()
    return Response(FIXED, media_type="application/json")


@fastapi_httpx.post(PATH)
async def _fastapi_httpx(request: Request) -> Response:
    return Response(await _httpx_forward(await request.body()), media_type="application/json")


class MiniClient:
    """Keep-alive HTTP/1.1 POSTs over asyncio streams; a connection is reused when idle."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes) -> bytes:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        headers = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return data


_mini: MiniClient | None = None


async def raw_streams(scope: Scope, receive: Receive, send: Send) -> None:
    global _mini
    if scope["type"] != "http":
        return
    if _mini is None:
        _mini = MiniClient(BACKEND)
    await _reply(send, await _mini.post(PATH, await _body(receive)))


LAYERS = ("raw_const", "fastapi_const", "raw_streams", "raw_httpx", "fastapi_httpx")
