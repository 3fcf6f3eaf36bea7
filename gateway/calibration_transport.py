"""An in-process httpx transport to an ASGI app that really streams.

``httpx.ASGITransport`` runs the app to completion and buffers the whole body before it
returns the response, so every chunk of a stream "arrives" at the end and TTFT equals
latency. Calibration measures TTFT, so its client uses this transport instead: the app runs
in a task and each body chunk reaches the client as soon as the app sends it. Closing the
response early tells the app the client disconnected (and cancels it if it keeps going).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
from starlette.types import ASGIApp

_END = object()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Send requests to ``app`` in process; response bodies stream chunk by chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        start: asyncio.Future[MutableMapping[str, Any]] = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue[object] = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not start.done():
                start.set_result(message)
            elif message["type"] == "http.response.body":
                if piece := message.get("body", b""):
                    chunks.put_nowait(bytes(piece))
                if not message.get("more_body", False):
                    chunks.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as e:  # the app's own error handlers answered already, if they could
                if not start.done():
                    start.set_exception(e)
                chunks.put_nowait(e)
            finally:
                chunks.put_nowait(_END)

        task = asyncio.create_task(run())
        waiters: set[asyncio.Future[Any]] = {start, task}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not start.done() or start.exception() is not None:
            await _stop(task, disconnected)
            cause = start.exception() if start.done() else None
            raise httpx.ReadError(f"the app sent no response: {cause!r}", request=request)
        message = start.result()
        stream = _Body(chunks, task, disconnected, request)
        return httpx.Response(message["status"], headers=message.get("headers", []), stream=stream)


async def _stop(task: asyncio.Task[None], disconnected: asyncio.Event) -> None:
    disconnected.set()
    if not task.done():
        await asyncio.sleep(0)  # let the app see the disconnect first
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        chunks: asyncio.Queue[object],
        task: asyncio.Task[None],
        disconnected: asyncio.Event,
        request: httpx.Request,
    ) -> None:
        self.chunks = chunks
        self.task = task
        self.disconnected = disconnected
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (item := await self.chunks.get()) is not _END:
            if isinstance(item, Exception):
                raise httpx.ReadError(
                    f"the app failed mid-response: {item!r}", request=self.request
                )
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        await _stop(self.task, self.disconnected)
