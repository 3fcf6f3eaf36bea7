"""Limits for slow clients: a deadline on each request's headers and one on its body.

A client that trickles its headers or its body (slowloris) holds a connection, and with it a
slot of the server, for as long as it likes. Both deadlines answer 408 ``request_timeout``
(OpenAI-shaped), close the connection and count ``deliberate_client_timeouts_total{phase}``.

- Headers: the ASGI app only sees a request once its headers are complete, so this deadline
  lives in uvicorn's HTTP protocol (``HeaderDeadlineProtocol``): it runs from the connection's
  opening, or from the first byte of the next request on a kept-alive connection, until the
  headers are parsed. (uvicorn's own ``timeout_keep_alive`` only covers idle kept-alive
  connections, not a request in progress.)
- Body: ``BodyDeadline`` wraps ``receive``: the whole body must arrive within the deadline of
  the moment the app got the headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import RequestTimeout
from gateway.http.server import OpenAIErrorHttpProtocol
from gateway.services import Services


def timeout_response(message: str) -> bytes:
    """A complete raw HTTP/1.1 408 with an OpenAI-shaped body that closes the connection."""
    body = orjson.dumps(RequestTimeout(message).body())
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderDeadlineProtocol(OpenAIErrorHttpProtocol):
    """uvicorn's httptools protocol with a deadline on every request's headers (and, from
    ``OpenAIErrorHttpProtocol``, OpenAI-shaped answers to malformed HTTP).

    Subclass it with ``header_protocol`` (the deadline and the metric come from there).
    """

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def report_timeout(self) -> None:
        """Called once per connection cut off for slow headers."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._header_timer is None and (before is None or before.response_complete):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not before:
            self._disarm()  # its headers are complete: the app has the request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or self.transport.is_closing():
            return
        self.report_timeout()
        self.transport.write(
            timeout_response(
                f"the request headers did not arrive within {self.header_timeout_s:g} s"
            )
        )
        self.transport.close()


def header_protocol(timeout_s: float, on_timeout: Callable[[], None]) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with this deadline and callback."""

    class Configured(HeaderDeadlineProtocol):
        header_timeout_s = timeout_s

        def report_timeout(self) -> None:
            on_timeout()

    return Configured


class BodyDeadline:
    """ASGI middleware: the request body must arrive within ``timeout_s`` of the headers.

    Past it, the app's ``receive`` raises ``RequestTimeout`` (408, ``connection: close``),
    which the handler turns into the error response like any other; later calls see the
    client as gone (``http.disconnect``).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        state = {"reading": True, "timed_out": False}

        async def guarded() -> Message:
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if not state["reading"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                state["timed_out"] = True
                services: Services | None = getattr(scope["app"].state, "services", None)
                if services is not None:
                    services.metrics.client_timeouts.labels("body").inc()
                raise RequestTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    headers={"connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["reading"] = False
            return message

        await self.app(scope, guarded, send)
