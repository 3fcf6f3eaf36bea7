"""Wire format of bench/mock_openai.py, the instant backend the overhead benchmark measures against.

The gateway must accept the mock as a vLLM replica, so these tests pin what the gateway reads:
``/health`` status, ``max_model_len`` in ``/v1/models``, the completion and its ``usage``, and
the SSE framing of streams (with and without ``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

MOCK_PATH = Path(__file__).resolve().parents[2] / "bench" / "mock_openai.py"


def _load_mock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mock_openai", MOCK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mock = _load_mock()


def _client(model: str = "mock-model", delay_s: float = 0.0) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mock.make_app(model, delay_s=delay_s))
    return httpx.AsyncClient(transport=transport, base_url="http://mock")


def _events(body: bytes) -> list[bytes]:
    """The ``data`` payloads of an SSE body, checking every event is one ``data:`` line."""
    assert body.endswith(b"\n\n")
    events = body[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event
    return [e[len(b"data: ") :] for e in events]


def _chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.anyio
async def test_health_is_200() -> None:
    async with _client() as client:
        r = await client.get("/health")
    assert r.status_code == 200


@pytest.mark.anyio
async def test_models_card_has_max_model_len() -> None:
    async with _client("served-name") as client:
        r = await client.get("/v1/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    [card] = data["data"]
    assert card["id"] == "served-name"
    assert card["object"] == "model"
    assert card["max_model_len"] == 2048


@pytest.mark.anyio
async def test_non_streaming_completion_with_usage() -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat_body(max_tokens=1))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-model"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] >= 1


@pytest.mark.anyio
async def test_answer_echoes_the_requested_model() -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat_body(model="other"))
    assert r.json()["model"] == "other"


@pytest.mark.anyio
async def test_streaming_chunks_then_done_without_usage() -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat_body(stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = _events(r.content)
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) >= 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.anyio
async def test_streaming_usage_chunk_when_asked() -> None:
    body = _chat_body(stream=True, stream_options={"include_usage": True})
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=body)
    payloads = _events(r.content)
    assert payloads[-1] == b"[DONE]"
    last = json.loads(payloads[-2])
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] >= 1
    # Only the usage chunk carries usage, and it comes after every content chunk.
    assert all("usage" not in json.loads(p) for p in payloads[:-2])


@pytest.mark.anyio
async def test_bad_json_is_400_and_unknown_path_404() -> None:
    async with _client() as client:
        bad = await client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        missing = await client.get("/v1/nothing")
        wrong_method = await client.get("/v1/chat/completions")
    assert bad.status_code == 400
    assert "error" in bad.json()
    assert missing.status_code == 404
    assert wrong_method.status_code == 405


@pytest.mark.anyio
async def test_delay_postpones_the_answer() -> None:
    async with _client(delay_s=0.05) as client:
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=_chat_body())
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200
    assert elapsed >= 0.05


def test_lifespan_startup_and_shutdown_complete() -> None:
    async def run() -> list[str]:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return inbox.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await mock.make_app()({"type": "lifespan"}, receive, send)
        return sent

    assert asyncio.run(run()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.anyio
async def test_n_choices_vote_three_to_one_and_usage_counts_every_choice() -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat_body(n=8))
    body = r.json()
    assert [c["index"] for c in body["choices"]] == list(range(8))
    texts = [c["message"]["content"] for c in body["choices"]]
    assert texts.count("1 + 1 = 2") == 6
    assert texts.count("1 + 1 = 3") == 2
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


@pytest.mark.anyio
@pytest.mark.parametrize("n", [0, -1, 10**9, "2", True, 1.5])
async def test_bad_n_is_400(n: object) -> None:
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=_chat_body(n=n))
    assert r.status_code == 400
    assert "n must be" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_stream_sends_one_content_chunk_per_max_token() -> None:
    body = _chat_body(stream=True, max_tokens=1000, stream_options={"include_usage": True})
    async with _client() as client:
        r = await client.post("/v1/chat/completions", json=body)
    payloads = _events(r.content)
    # role, 1000 content chunks, finish, usage, [DONE]
    assert len(payloads) == 1004
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:1001]]
    assert contents == ["Hi"] * 1000
    assert chunks[1001]["choices"][0]["finish_reason"] == "length"
    assert chunks[1002]["usage"]["completion_tokens"] == 1000


@pytest.mark.anyio
async def test_chunk_interval_paces_the_stream() -> None:
    transport = httpx.ASGITransport(app=mock.make_app(chunk_interval_s=0.01))
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=_chat_body(stream=True, max_tokens=5))
        elapsed = time.perf_counter() - t0
    assert len(_events(r.content)) == 8  # role, 5 content, finish, [DONE]
    assert elapsed >= 0.05


@pytest.mark.anyio
async def test_token_ids_only_when_asked() -> None:
    async with _client() as client:
        plain = await client.post("/v1/chat/completions", json=_chat_body(n=2))
        ids = await client.post("/v1/chat/completions", json=_chat_body(n=2, return_token_ids=True))
    assert all("token_ids" not in c for c in plain.json()["choices"])
    assert [c["token_ids"] for c in ids.json()["choices"]] == [[1], [1]]
