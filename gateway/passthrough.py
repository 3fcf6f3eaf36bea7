"""single-pass at the HTTP edge: forward the client's JSON to one replica and its answer back.

Nothing is re-encoded on the way back. Non-streaming bodies go out as received; streams go
out event by event as they arrive. The gateway only peeks: at ``usage`` for accounting and at
the first visible token for TTFT. For accounting it always asks the backend for stream
usage, and drops that final usage event when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import httpx
import orjson

from gateway.backends.tokenize import count_tokens
from gateway.backends.upstream import Upstream, read_json
from gateway.context import RequestContext
from gateway.errors import DeliberateError
from gateway.sse import DONE, DONE_EVENT, EventSplitter, event_data, format_event
from gateway.tracing import note_usage
from strategies.base import Deadline
from strategies.usage import Usage


async def read_json_body(upstream: Upstream, ctx: RequestContext) -> bytes:
    """Read a whole non-streaming answer, account for its usage, close the upstream.

    A body that breaks off or is not JSON is a 502 (``read_json``), never relayed."""
    body, data = await read_json(upstream)
    ctx.mark_first_token()
    ctx.usage = Usage.from_openai(data.get("usage") if isinstance(data, dict) else None)
    if ctx.usage.hidden == 0 and (answers := thinking_answers(data)) is not None:
        # Thinking the backend did not count: whatever is not the answers was thinking.
        try:
            counts = await count_tokens(
                upstream.pool,
                answers,
                ctx.request_id,
                upstream.replica,
                headers=upstream.pool.hint_headers(ctx.scheduling),
            )
        except DeliberateError:
            pass  # the answer is here; only the split of its usage is unknown
        else:
            ctx.usage = with_thinking(ctx.usage, sum(counts))
    return with_admission_info(body, ctx)


def thinking_answers(data: Any) -> list[str] | None:
    """Each choice's answer text when some choice carries thinking (``reasoning`` or
    ``reasoning_content``), else None."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return None
    messages: list[dict[str, Any]] = [
        m for c in choices if isinstance(c, dict) and isinstance(m := c.get("message"), dict)
    ]
    if not any(m.get("reasoning") or m.get("reasoning_content") for m in messages):
        return None
    return [c if isinstance(c := m.get("content"), str) else "" for m in messages]


def with_thinking(usage: Usage, answer_tokens: int) -> Usage:
    """``usage`` with every generated token beyond ``answer_tokens`` counted as hidden."""
    visible = min(answer_tokens, usage.completion)
    return Usage(prompt=usage.prompt, visible=visible, hidden=usage.completion - visible)


def with_admission_info(body: bytes, ctx: RequestContext) -> bytes:
    """A downgraded request's JSON answer with the ``deliberate`` object saying so."""
    info = ctx.admission_info()
    if not info:
        return body
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(obj, dict) or "error" in obj:
        return body
    obj["deliberate"] = {"route": ctx.route, "strategy": ctx.strategy, **info}
    return orjson.dumps(obj)


def force_stream_usage(payload: dict[str, Any]) -> bool:
    """Ask the backend for usage in streams; True when the client asked for it itself."""
    opts = payload.get("stream_options")
    client_wants = isinstance(opts, dict) and bool(opts.get("include_usage"))
    if not client_wants:
        payload["stream_options"] = {
            **(opts if isinstance(opts, dict) else {}),
            "include_usage": True,
        }
    return client_wants


class StreamDialect(Protocol):
    """What the relay needs to know about one kind of stream (chat SSE, Responses events)."""

    def inspect(self, event: bytes, ctx: RequestContext, client_wants_usage: bool) -> bool:
        """Update ``ctx`` from one event (TTFT, usage, a backend error); whether to forward it.
        Raises ``StreamBroken`` for an event the relay cannot make sense of."""
        ...

    def ends(self, event: bytes) -> bool:
        """Whether ``event`` is the last of a whole stream."""
        ...

    def failure(self, message: str, etype: str, code: str) -> bytes:
        """The events that end a broken stream for the client."""
        ...


class ChatDialect:
    """Chat / legacy completions streams: chunks, then ``data: [DONE]``."""

    def inspect(self, event: bytes, ctx: RequestContext, client_wants_usage: bool) -> bool:
        return _inspect(event, ctx, client_wants_usage)

    def ends(self, event: bytes) -> bool:
        return event_data(event) == DONE

    def failure(self, message: str, etype: str, code: str) -> bytes:
        return _error_event(message, etype, code) + DONE_EVENT


async def relay_stream(
    upstream: Upstream,
    ctx: RequestContext,
    *,
    client_wants_usage: bool,
    deadline: Deadline | None = None,
    dialect: StreamDialect | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield the backend's SSE events as they arrive, noting TTFT and usage on the way.

    The client already has a 200, so whatever goes wrong ends the stream with the dialect's
    failure events (chat: one OpenAI-shaped ``error`` event and then ``data: [DONE]``): the
    route's deadline passing, the backend breaking off, an event that is not JSON (checked
    until the first token; the hot path after it only looks for usage), or the stream ending
    without its last event (truncated; a partial last event is dropped, not relayed). A
    client disconnect closes the upstream, which makes vLLM abort.
    """
    d: StreamDialect = dialect or ChatDialect()
    splitter = EventSplitter()
    last = b""
    try:
        async for chunk in _until(upstream.response.aiter_raw(), deadline):
            events = splitter.feed(chunk)
            if not events:
                continue
            last = events[-1]
            out = [
                _annotate(e, ctx, client_wants_usage)
                for e in events
                if d.inspect(e, ctx, client_wants_usage)
            ]
            if out:
                yield b"".join(out) if len(out) > 1 else out[0]
        tail = splitter.tail()
        if tail.strip() and d.ends(tail):  # a last event without its blank line
            last = tail.rstrip(b"\r\n") + b"\n\n"
            d.inspect(last, ctx, client_wants_usage)
            yield last
        if not d.ends(last):
            raise StreamBroken("the backend's stream ended before its last event")
        if ctx.outcome == "backend_error":  # the backend's own error event, relayed
            upstream.failed("the backend's stream carried an error event")
        else:
            upstream.succeeded()
            if upstream.pool.tracer.enabled:
                note_usage(upstream.span, ctx.usage)
        ctx.stream_done = True
    except TimeoutError:
        upstream.failed("no whole stream before the route's deadline")
        ctx.outcome = "timeout"
        ctx.stream_done = True
        yield d.failure(
            "the route's deadline passed mid-stream; the answer is incomplete",
            "timeout",
            "deadline_exceeded",
        )
    except (httpx.HTTPError, StreamBroken) as e:
        why = (
            str(e)
            if isinstance(e, StreamBroken)
            else f"the backend stopped mid-stream ({type(e).__name__})"
        )
        upstream.failed(why)
        ctx.outcome = "backend_error"
        ctx.stream_done = True  # ended, with the error reported to the client
        yield d.failure(f"{why}; the answer is incomplete", "backend_error", "backend_stream_error")
    finally:
        await upstream.aclose()


class StreamBroken(Exception):
    """The backend's stream is unusable: not SSE-framed JSON, or cut short."""


def _error_event(message: str, etype: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return format_event(orjson.dumps(body))


async def _until(
    chunks: AsyncIterator[bytes], deadline: Deadline | None
) -> AsyncGenerator[bytes, None]:
    """``chunks``, raising ``TimeoutError`` when the next one would come after ``deadline``."""
    if deadline is None or deadline.at is None:
        async for chunk in chunks:
            yield chunk
        return
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), deadline.remaining_s)
        except StopAsyncIteration:
            return
        yield chunk


def _annotate(event: bytes, ctx: RequestContext, client_wants_usage: bool) -> bytes:
    """The final usage event of a downgraded request carries the ``deliberate`` object (and
    the usage only if the client asked for it)."""
    if b'"usage"' not in event or not ctx.admission_info():
        return event
    data = event_data(event)
    try:
        obj = orjson.loads(data) if data is not None and data != DONE else None
    except orjson.JSONDecodeError:
        return event
    if not isinstance(obj, dict) or obj.get("choices"):
        return event
    if not client_wants_usage:
        obj.pop("usage", None)
    obj["deliberate"] = {"route": ctx.route, "strategy": ctx.strategy, **ctx.admission_info()}
    return format_event(orjson.dumps(obj))


def event_object(data: bytes) -> dict[str, Any] | None:
    """An event's JSON object (None for other JSON); ``StreamBroken`` if it is not JSON."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise StreamBroken("the backend sent an event that is not JSON") from e
    return obj if isinstance(obj, dict) else None


def _inspect(event: bytes, ctx: RequestContext, client_wants_usage: bool) -> bool:
    """Update ``ctx`` from one event; return whether to forward it."""
    if ctx.ttft_s is not None and b'"usage"' not in event and b'"error"' not in event:
        ctx.mark_token()  # hot path: only the pacing is left to learn from a content chunk
        return True
    data = event_data(event)
    if data is None or data == DONE:
        return True
    obj = event_object(data)
    if obj is None:
        return True
    if "error" in obj:
        ctx.outcome = "backend_error"
        return True
    choices = obj.get("choices")
    if ctx.ttft_s is None and choices:
        if _has_visible_output(choices):
            ctx.mark_first_token()
        elif _has_thinking(choices):
            ctx.thinking_events += 1
    usage = obj.get("usage")
    if usage:
        ctx.usage = Usage.from_openai(usage)
        if ctx.thinking_events > ctx.usage.hidden:
            # Thinking the backend did not count: vLLM streams one token per delta.
            ctx.usage = with_thinking(ctx.usage, ctx.usage.completion - ctx.thinking_events)
        if not choices and not client_wants_usage and not ctx.admission_info():
            return False
    return True


def _has_thinking(choices: list[Any]) -> bool:
    for c in choices:
        delta = c.get("delta") if isinstance(c, dict) else None
        if isinstance(delta, dict) and (delta.get("reasoning") or delta.get("reasoning_content")):
            return True
    return False


def _has_visible_output(choices: list[Any]) -> bool:
    for c in choices:
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
        if c.get("text"):  # legacy completions
            return True
    return False
