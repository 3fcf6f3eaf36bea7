"""Scripted fakes for unit tests: a vLLM-shaped backend behind ``httpx.MockTransport``.

The fake speaks the real wire format (JSON bodies, SSE streams, vLLM's error shape) so the
gateway's HTTP code is exercised for real; only the model is scripted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class FakeReplica:
    """Behaviour of one replica URL."""

    down: bool = False  # refuse connections
    status: int = 200  # non-200 → answer with a vLLM-style error
    error_message: str = "scripted backend error"
    max_model_len: int = 2048
    tokens_per_prompt: int | None = None  # what /tokenize answers (None: bytes // 4)
    words: tuple[str, ...] = ("Hello", " there", "!")
    word_scripts: list[tuple[str, ...]] = field(default_factory=list)
    """Per-call words: each completion call takes the next script in order (every choice of
    that call answers it); once they are used up, calls answer ``words``."""
    reasoning_tokens: int = 0
    break_stream_after: int | None = None  # raise mid-stream after this many content chunks
    chunk_delay_s: float = 0.0  # pause before each streamed content chunk
    kv_usage: float = 0.0  # what /metrics reports (vllm:kv_cache_usage_perc)
    waiting: int = 0
    running: int = 0
    kv_capacity_tokens: int = 10_000
    gate: asyncio.Event | None = None  # completions wait until it is set (to overlap requests)

    def next_words(self) -> tuple[str, ...]:
        """The words of the next completion call (see ``word_scripts``)."""
        return self.word_scripts.pop(0) if self.word_scripts else self.words


@dataclass
class FakeVLLM:
    """A scripted vLLM server for any number of replica base URLs."""

    model: str = "fake-model"
    replicas: dict[str, FakeReplica] = field(default_factory=dict)
    received: list[tuple[str, httpx.Request, dict[str, Any]]] = field(default_factory=list)

    def replica(self, base_url: str) -> FakeReplica:
        return self.replicas.setdefault(base_url.rstrip("/"), FakeReplica())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def completions_received(self) -> list[dict[str, Any]]:
        return [body for path, _, body in self.received if path.endswith("completions")]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        rep = self.replica(base)
        if rep.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/metrics":
            return httpx.Response(200, text=self._metrics(rep))
        if path == "/v1/models":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {"id": self.model, "object": "model", "max_model_len": rep.max_model_len}
                    ],
                },
            )
        body = json.loads(request.content) if request.content else {}
        self.received.append((path, request, body))
        if rep.status != 200:
            return httpx.Response(
                rep.status,
                json={
                    "error": {
                        "message": rep.error_message,
                        "type": "BadRequestError",
                        "param": None,
                        "code": rep.status,
                    }
                },
            )
        if path == "/tokenize":
            count = rep.tokens_per_prompt
            if count is None:
                count = len(json.dumps(body.get("messages", body.get("prompt")))) // 4
            return httpx.Response(
                200, json={"count": count, "max_model_len": rep.max_model_len, "tokens": []}
            )
        if path in ("/v1/chat/completions", "/v1/completions"):
            if rep.gate is not None:
                await rep.gate.wait()
            chat = path.endswith("chat/completions")
            words = rep.next_words()
            if body.get("stream"):
                return httpx.Response(
                    200,
                    headers={"content-type": "text/event-stream"},
                    content=self._stream(rep, body, chat, words),
                )
            return httpx.Response(200, json=self._completion(rep, body, chat, words))
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def _metrics(self, rep: FakeReplica) -> str:
        labels = f'engine="0",model_name="{self.model}"'
        return (
            f"vllm:kv_cache_usage_perc{{{labels}}} {rep.kv_usage}\n"
            f"vllm:num_requests_running{{{labels}}} {rep.running}\n"
            f"vllm:num_requests_waiting{{{labels}}} {rep.waiting}\n"
            f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{rep.kv_capacity_tokens // 16}"}} 1.0\n'
        )

    def _usage(
        self, rep: FakeReplica, body: dict[str, Any], words: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        generated = n * len(rep.words if words is None else words)
        usage: dict[str, Any] = {
            "prompt_tokens": 7,
            "completion_tokens": generated + rep.reasoning_tokens,
            "total_tokens": 7 + generated + rep.reasoning_tokens,
        }
        if rep.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": rep.reasoning_tokens}
        return usage

    def _completion(
        self,
        rep: FakeReplica,
        body: dict[str, Any],
        chat: bool,
        words: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        words = rep.words if words is None else words
        text = "".join(words)
        n = int(body.get("n") or 1)
        if chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ]
        else:
            choices = [{"index": i, "text": text, "finish_reason": "stop"} for i in range(n)]
        return {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1,
            "model": body.get("model"),
            "choices": choices,
            "usage": self._usage(rep, body, words),
        }

    async def _stream(
        self,
        rep: FakeReplica,
        body: dict[str, Any],
        chat: bool,
        words: tuple[str, ...] | None = None,
    ) -> AsyncIterator[bytes]:
        words = rep.words if words is None else words

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": body.get("model"),
        }
        if chat:
            yield event(
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            )
        for i, word in enumerate(words):
            if rep.chunk_delay_s:
                await asyncio.sleep(rep.chunk_delay_s)
            if rep.break_stream_after is not None and i >= rep.break_stream_after:
                raise httpx.ReadError("connection reset by peer")
            choice = (
                {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            )
            ev = event({**base, "choices": [choice]})
            # Split one event across two network chunks to exercise re-assembly.
            yield ev[:10]
            yield ev[10:]
        yield event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield event({**base, "choices": [], "usage": self._usage(rep, body, words)})
        yield b"data: [DONE]\n\n"


@dataclass
class ScriptedGenerator:
    """A ``Generator`` that answers from a script of candidate texts.

    Each call takes the next ``n`` texts from ``texts`` (cycling). ``finish`` gives a
    finish_reason per call (default "stop"). ``delay_s`` makes calls slow, and ``cancelled``
    counts calls that were cancelled while waiting (cancellation reaching the backend).
    Every candidate costs ``tokens_per_text`` tokens; every call's prompt ``prompt_tokens``.
    """

    texts: list[str]
    tokens_per_text: int = 10
    prompt_tokens: int = 20
    finish: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[Any] = field(default_factory=list)
    cancelled: int = 0
    _pos: int = 0

    async def generate(self, request: Any) -> Any:
        from strategies.ports import GenChoice, GenResult
        from strategies.usage import Usage

        self.requests.append(request)
        call = len(self.requests) - 1
        if self.delay_s:
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        choices = []
        for i in range(request.n):
            text = self.texts[self._pos % len(self.texts)]
            self._pos += 1
            tokens = self.tokens_per_text
            if request.max_tokens is not None:
                tokens = min(tokens, request.max_tokens)
            finish = self.finish[call] if call < len(self.finish) else "stop"
            choices.append(GenChoice(index=i, text=text, tokens=tokens, finish_reason=finish))
        generated = sum(c.tokens for c in choices)
        return GenResult(
            tuple(choices), Usage(prompt=self.prompt_tokens, visible=generated), "fake-model"
        )


async def rendezvous(expected: int, arrived: int, all_in: asyncio.Event) -> None:
    """Make a fake's call wait until ``expected`` calls are in flight (0: no waiting);
    ``arrived`` counts the calls so far, this one included. A test that passes proves its calls
    ran concurrently: sequential ones time out after 2 s."""
    if not expected:
        return
    if arrived >= expected:
        all_in.set()
    await asyncio.wait_for(all_in.wait(), timeout=2)
