"""The hostile corpus (``tests/integration/hostile.py``) against a real gateway process.

The gateway runs as ``deliberate serve`` does (uvicorn, real sockets) on the shipped policy,
in front of the instant mock backend (``bench/mock_openai.py``, its own process), so what is
tested on the wire is real: raw header bytes, 50 MB uploads, chunked bodies. For every case:
no status >= 500, every error OpenAI-shaped and naming the field, no stack trace in the
body, and at most one log line of at most 1 KiB in the gateway's output.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from routing.loader import anchored
from tests.integration.conftest import SHIPPED_CONFIG, free_port, gateway_process, http_process
from tests.integration.hostile import CORPUS, Hostile

MOCK = Path(__file__).resolve().parents[2] / "bench" / "mock_openai.py"
MAX_LOG_LINE = 1024
MAX_ERROR_BODY = 8 * 1024
CHUNK = 64 * 1024
BODY_LIMIT = 4 * 1024 * 1024  # limits.max_body_bytes of the shipped policy


@dataclass
class Gateway:
    url: str
    port: int
    log: Path

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> bytes:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read()


@contextlib.contextmanager
def mock_backend(model: str, log_dir: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, str(MOCK), "--port", str(port), "--model", model]
    with http_process(argv, port, log_dir / "mock.log") as url:
        yield url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The shipped policy (4 MiB body limit, 512 messages, n <= 16) on the mock backend;
    the gateway logs at info, so every request's access line is in its output."""
    tmp = tmp_path_factory.mktemp("fuzz-corpus")
    config = anchored(yaml.safe_load(SHIPPED_CONFIG.read_text()), SHIPPED_CONFIG.parent)
    (pool,) = config["backends"]
    with mock_backend(pool["model"], tmp) as backend:
        pool["replicas"] = [backend]
        path = tmp / "routes.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {"DELIBERATE_LOG_LEVEL": "info", "DELIBERATE_RELOAD_INTERVAL_S": "0"}
        with gateway_process(path, tmp, env) as (url, _proc):
            port = int(url.rsplit(":", 1)[1])
            yield Gateway(url, port, tmp / f"gateway-{port}.log")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes written before the reply came


def read_reply(sock: socket.socket) -> bytes:
    """Everything the gateway sent until it closed. It closes an upload it refused with our
    unread bytes still in its buffer, so the close can come as a reset after the answer."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(CHUNK):
            data += chunk
    return data


def parse_reply(data: bytes, sent: int) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return Reply(int(status_line.split()[1]), headers, body, sent)


def readable(sock: socket.socket, timeout_s: float) -> bool:
    return bool(select.select([sock], [], [], timeout_s)[0])


def send_raw(gw: Gateway, case: Hostile) -> Reply:
    """One request over a raw socket (``Connection: close``).

    A big body is streamed frame by frame, the way a client that reads while it sends
    does: it waits for an answer once the headers are out (a declared length) and once the
    limit is passed (chunked), and goes on sending only if none comes. So ``sent`` shows how
    much of the body the gateway wanted before it answered.
    """
    size, chunked = case.big or (len(case.body), False)
    head = f"{case.method} {case.path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
    head += "content-type: application/json\r\n"
    extra = case.raw_headers or b""
    if b"content-length" not in extra.lower():
        head += "transfer-encoding: chunked\r\n" if chunked else f"content-length: {size}\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(head.encode() + extra + b"\r\n")
        if case.big is None:
            sock.sendall(case.body)
            return parse_reply(read_reply(sock), len(case.body))
        sent = 0
        answered = not chunked and readable(sock, 2.0)
        piece = b" " * CHUNK  # whitespace: valid JSON padding, were it ever read to the end
        while not answered and sent < size:
            frame = piece[: min(CHUNK, size - sent)]
            sock.sendall(f"{len(frame):x}\r\n".encode() + frame + b"\r\n" if chunked else frame)
            sent += len(frame)
            answered = readable(sock, 5.0 if sent > BODY_LIMIT else 0)
        if not answered and chunked:
            sock.sendall(b"0\r\n\r\n")
        return parse_reply(read_reply(sock), sent)


def send(gw: Gateway, case: Hostile) -> Reply:
    if case.raw_headers is not None or case.big is not None:
        return send_raw(gw, case)
    headers = {"content-type": "application/json", **case.headers}
    r = httpx.request(
        case.method, gw.url + case.path, content=case.body, headers=headers, timeout=30
    )
    return Reply(r.status_code, dict(r.headers), r.content, len(case.body))


def assert_error_shape(reply: Reply, case: Hostile) -> dict[str, Any]:
    assert reply.headers.get("content-type", "").startswith("application/json"), reply
    error = orjson.loads(reply.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if case.param is not None:
        assert error["param"] == case.param, error
        assert case.param in error["message"] or error["param"] == "model", error
    if case.param_prefix is not None:
        assert str(error["param"]).startswith(case.param_prefix), error
    if case.code is not None:
        assert error["code"] == case.code, error
    return dict(error)


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 60
    assert len({c.id for c in CORPUS}) == len(CORPUS), "case ids must be unique"


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_request(gateway: Gateway, case: Hostile) -> None:
    before = gateway.log_size()
    reply = send(gateway, case)

    assert reply.status == case.status, (reply.status, reply.body[:500])
    assert b"Traceback" not in reply.body and b'File "' not in reply.body
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        assert reply.body.endswith(b"data: [DONE]\n\n"), reply.body[-300:]
    if reply.status >= 400:
        assert_error_shape(reply, case)
        assert len(reply.body) <= MAX_ERROR_BODY, "an error echoed the client's input"
    if case.big is not None:
        chunked = case.big[1]
        # A declared length is refused from the header; a chunked body once past the limit.
        assert reply.sent <= (BODY_LIMIT + 2 * CHUNK if chunked else 0), reply.sent
    request_id = reply.headers.get("x-request-id")
    if request_id is not None:
        assert request_id.isascii() and " " not in request_id and len(request_id) <= 128
    assert "x-injected" not in reply.headers

    time.sleep(0.05)  # the server's own warnings (bad HTTP) are written as it answers
    logged = gateway.log_since(before)
    lines = logged.splitlines()
    assert len(lines) <= 1, logged[:3000]
    assert all(len(line) <= MAX_LOG_LINE for line in lines), logged[:3000]
    assert b"Traceback" not in logged


def test_the_gateway_still_serves_after_the_corpus(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
    r = httpx.post(gateway.url + "/v1/chat/completions", content=CORPUS[0].body, timeout=10)
    assert r.status_code == 400  # the first case again: same answer
    ok = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "single-pass", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"], ok.text
