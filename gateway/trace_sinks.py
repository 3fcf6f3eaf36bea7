"""Where trace records go: a size-rotated local JSONL file, or a Redis stream.

A sink takes a batch of encoded lines (each one JSON object ending in ``\\n``) and raises
``SinkError`` when it could not store them; the exporter counts that and drops the batch.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

FILE_MODE = 0o600
"""Trace files hold prompts: readable by the gateway's user only."""


class SinkError(Exception):
    """The sink could not store a batch."""


class TraceSink(Protocol):
    name: str

    async def write(self, lines: Sequence[bytes]) -> None: ...

    async def aclose(self) -> None: ...


class RotatingJsonl:
    """Appends whole lines to ``path``; before a line would take the file past ``max_bytes``
    it is renamed ``path.1`` (``path.1`` to ``path.2``... up to ``path.{backups}``, the oldest
    is dropped) and a new file is started. A line longer than ``max_bytes`` gets a file of
    its own.

    Each line is one ``write`` on an ``O_APPEND`` descriptor, so a reader never sees half a
    line from a live writer; a line cut by a crash is closed with ``\\n`` on reopen, so the
    next record starts on a line of its own. One writer per file: replicas sharing records
    use the Redis sink (or a file each).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        if max_bytes < 1 or backups < 1:
            raise ValueError("max_bytes and backups must be at least 1")
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._fd: int | None = None
        self._lock = threading.RLock()  # close() may run on another thread mid-write

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            size = os.fstat(fd).st_size
            if size:
                with self.path.open("rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        _write_all(fd, b"\n")
            self._fd = fd
        return self._fd

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` (blocking: call it from a thread)."""
        with self._lock:
            for line in lines:
                fd = self._open()
                size = os.fstat(fd).st_size
                if size and size + len(line) > self.max_bytes:
                    self._rotate()
                    fd = self._open()
                _write_all(fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FileSink:
    """``RotatingJsonl`` off the event loop (writes run in a worker thread)."""

    name = "file"

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.file = RotatingJsonl(path, max_bytes, backups)

    async def write(self, lines: Sequence[bytes]) -> None:
        try:
            await asyncio.to_thread(self.file.write_lines, lines)
        except OSError as e:
            self.file.close()  # reopened (and re-checked) on the next batch
            raise SinkError(f"{self.file.path}: {e}") from e

    async def aclose(self) -> None:
        await asyncio.to_thread(self.file.close)


class RedisStreamSink:
    """``XADD stream MAXLEN ~ maxlen * record <line>`` per record, one pipeline per batch:
    every replica adds to the same stream, which Redis trims to about ``maxlen`` entries."""

    name = "redis"

    def __init__(self, client: aioredis.Redis, stream: str, maxlen: int) -> None:
        self.client, self.stream, self.maxlen = client, stream, maxlen

    @classmethod
    def from_url(cls, url: str, stream: str, maxlen: int) -> RedisStreamSink:
        # Fail fast like the budget store; the export is best effort, never retried.
        client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return cls(client, stream, maxlen)

    async def write(self, lines: Sequence[bytes]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for line in lines:
                    pipe.xadd(
                        self.stream,
                        {"record": line.rstrip(b"\n")},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise SinkError(f"redis stream {self.stream!r}: {e}") from e

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass  # closing a client whose server is gone
