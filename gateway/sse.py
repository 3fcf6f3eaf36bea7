"""Server-sent events: split a byte stream into whole events without re-encoding them.

The gateway forwards each event exactly as the backend wrote it; it only needs to know
where events end (to forward whole ones) and, for a few of them, what their ``data`` is.
"""

from __future__ import annotations

import re

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventSplitter:
    """Feed raw bytes as they arrive; get back the complete events (terminator included)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        for m in _BOUNDARY.finditer(buf):
            events.append(buf[start : m.end()])
            start = m.end()
        self._buf = buf[start:]
        return events

    def tail(self) -> bytes:
        """Bytes left after the stream ended (an unterminated last event), then reset."""
        rest, self._buf = self._buf, b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The event's ``data`` (multi-line data joined by newlines), or None if it has none."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def format_event(data: bytes) -> bytes:
    """One ``data:`` event (``data`` must not contain a newline; JSON from orjson never does)."""
    return b"data: " + data + b"\n\n"
