"""The Responses API as a dialect of chat completions.

A ``/v1/responses`` body is translated into the chat completion body it means, served by the
same pipeline as ``/v1/chat/completions`` (so every route, budget, metric and step-down applies
unchanged), and the chat answer is translated back: a JSON ``response`` object, or the typed
stream events (``response.created`` … ``response.output_text.delta`` … ``response.completed``).

Nothing is stored (``store: false``): each response's id is fresh and never looked up again.
Everything here is pure translation; ``gateway.http.api`` wires it to the pipeline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.errors import DeliberateError, InvalidRequest
from gateway.parsing import describe_validation_error, load_object
from gateway.responses_schema import UNSUPPORTED, InputMessage, ResponsesRequest
from gateway.sse import DONE, EventSplitter, event_data

# Chat field a pipeline error may name → the Responses field the client sent.
_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}


@dataclass
class Translation:
    """A Responses request as the chat body to serve, plus what the answer must echo."""

    chat: dict[str, Any]
    echo: dict[str, Any]
    message_params: list[str]
    """The Responses field each chat message came from (``instructions``, ``input[2]``)."""
    body: dict[str, Any] = field(default_factory=dict)
    """The client's body as sent (validated): what a forwarded single-pass sends on."""
    response_id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def shell(self, status: str) -> dict[str, Any]:
        """The ``response`` object without output or usage (stream lifecycle events)."""
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
            "store": False,
            "previous_response_id": None,
            "truncation": "disabled",
            **self.echo,
        }


def translate_request(raw: bytes) -> Translation:
    """The chat completion body a ``/v1/responses`` body means; 400 naming the field if the
    body is invalid or asks for something the gateway does not do."""
    body = load_object(raw)
    for name, why in UNSUPPORTED.items():
        if name in body and body[name] is not None:
            raise InvalidRequest(
                f"'{name}' is not supported: {why}", param=name, code="unsupported"
            )
    if body.get("store") is True:
        raise InvalidRequest(
            "store: true is not supported: the gateway keeps no responses; send store: false",
            param="store",
            code="unsupported",
        )
    if isinstance(tools := body.get("tools"), list) and tools:
        raise InvalidRequest(
            "tools are not supported through /v1/responses (no built-in or function tools)",
            param="tools",
            code="unsupported",
        )
    if isinstance(items := body.get("input"), list):
        for i, item in enumerate(items):
            _check_item(item, f"input[{i}]")
    try:
        req = ResponsesRequest.model_validate(body)
    except ValidationError as e:
        param, message = describe_validation_error(e)
        raise InvalidRequest(message, param=param) from e
    sources = ["instructions"] if req.instructions is not None else []
    if isinstance(req.input, str):
        sources.append("input")
    else:
        sources += [f"input[{i}]" for i in range(len(req.input))]
    return Translation(
        chat=_chat_body(req, body), echo=_echo(req), message_params=sources, body=body
    )


_TEXT_PARTS = ("input_text", "output_text")


def _check_item(item: Any, where: str) -> None:
    """400 naming the item or part the gateway cannot serve (the union of a string and a list
    of items would otherwise be reported against ``input`` as a whole)."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be a message object", param=where)
    kind = item.get("type")
    if kind not in (None, "message"):
        raise InvalidRequest(
            f"'{where}': input items of type {kind!r} are not supported (only messages; no "
            "tool calls or reasoning items)",
            param=where,
            code="unsupported",
        )
    if isinstance(parts := item.get("content"), list):
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") not in _TEXT_PARTS:
                param = f"{where}.content[{j}].type"
                raise InvalidRequest(
                    f"'{param}': only text content parts (input_text, output_text) are "
                    f"supported, not {part.get('type')!r}",
                    param=param,
                    code="unsupported",
                )
    try:
        InputMessage.model_validate(item)
    except ValidationError as e:
        inner, message = describe_validation_error(e)
        full = f"{where}.{inner}" if inner else where
        raise InvalidRequest(message.replace(f"'{inner}'", f"'{full}'"), param=full) from e


def _chat_body(req: ResponsesRequest, body: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for m in req.input:
            content = (
                m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            )
            messages.append({"role": m.role, "content": content})
    chat: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.max_output_tokens is not None:
        chat["max_completion_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "metadata", "user"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if req.reasoning is not None and req.reasoning.effort is not None:
        chat["reasoning_effort"] = req.reasoning.effort
    if req.text is not None and (fmt := req.text.format) is not None and fmt.type != "text":
        if fmt.type == "json_object":
            chat["response_format"] = {"type": "json_object"}
        else:
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # usage goes in response.completed
    return chat


def _echo(req: ResponsesRequest) -> dict[str, Any]:
    """Request fields a ``response`` object repeats."""
    fmt = req.text.format if req.text is not None else None
    return {
        "model": req.model,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "metadata": req.metadata or {},
        "user": req.user,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
    }


def rename_param(error: DeliberateError, translation: Translation | None) -> DeliberateError:
    """The same error naming the Responses field the client sent, not the chat field it was
    mapped to (``messages[2].content`` → ``input[1].content`` after ``instructions``)."""
    old = error.param
    if old is None:
        return error
    head, dot, rest = old.partition(".")
    base, _, index = head.partition("[")
    if base not in _PARAMS:
        return error
    new = _PARAMS[base]
    if base == "messages" and translation is not None and index.rstrip("]").isdigit():
        position = int(index.rstrip("]"))
        if position < len(translation.message_params):
            new = translation.message_params[position]
            new += dot + rest if new.startswith("input[") and rest else ""
    error.param = new
    error.message = error.message.replace(f"'{old}'", f"'{new}'")
    return error


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [_output_text(text)] if status != "in_progress" else []
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": []}
    if text is not None:
        item["content"] = [{"type": "reasoning_text", "text": text}]
    return item


def _usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    details = chat_usage.get("completion_tokens_details") or {}
    prompt_details = chat_usage.get("prompt_tokens_details") or {}
    input_tokens = int(chat_usage.get("prompt_tokens") or 0)
    output_tokens = int(chat_usage.get("completion_tokens") or 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": input_tokens + output_tokens,
    }


def _finished(response: dict[str, Any], finish_reason: Any) -> None:
    """Status and incomplete details from the chat ``finish_reason``."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())


def response_body(chat_body: bytes, translation: Translation) -> bytes:
    """A chat completion JSON answer as a ``response`` object."""
    chat = orjson.loads(chat_body)
    response = translation.shell("completed")
    response["model"] = chat.get("model", response["model"])
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if reasoning:
        response["output"].append(_reasoning_item(f"rs_{uuid.uuid4().hex}", reasoning))
    text = message.get("content") or ""
    response["output"].append(_message_item(f"msg_{uuid.uuid4().hex}", text, "completed"))
    response["usage"] = _usage(chat.get("usage"))
    _finished(response, choice.get("finish_reason"))
    if "deliberate" in chat:
        response["deliberate"] = chat["deliberate"]
    return orjson.dumps(response)


class ResponseEvents:
    """Chat completion chunks in, Responses stream events out (one translator per request).

    Thinking (``delta.reasoning``) becomes a ``reasoning`` output item with
    ``response.reasoning_text.delta`` events; the answer a ``message`` item with
    ``response.output_text.delta`` events. Items are opened when their first delta arrives
    and closed, in order, before the next one opens or the response ends.
    """

    def __init__(self, translation: Translation) -> None:
        self._t = translation
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._open: str | None = None  # "reasoning" | "message"
        self._text = ""
        self._item_id = ""
        self._finish: Any = None
        self._usage: Any = None
        self._extension: Any = None
        self._model = translation.echo["model"]

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str) -> dict[str, Any]:
        response = self._t.shell(status)
        response["model"] = self._model
        return response

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def _close_item(self) -> list[bytes]:
        if self._open is None:
            return []
        index = len(self._output)
        where = {"item_id": self._item_id, "output_index": index, "content_index": 0}
        if self._open == "reasoning":
            item = _reasoning_item(self._item_id, self._text)
            events = [self._event("response.reasoning_text.done", text=self._text, **where)]
        else:
            item = _message_item(self._item_id, self._text, "completed")
            part = _output_text(self._text)
            events = [
                self._event("response.output_text.done", text=self._text, logprobs=[], **where),
                self._event("response.content_part.done", part=part, **where),
            ]
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        self._output.append(item)
        self._open, self._text = None, ""
        return events

    def _open_item(self, kind: str) -> list[bytes]:
        events = self._close_item()
        self._open = kind
        index = len(self._output)
        if kind == "reasoning":
            self._item_id = f"rs_{uuid.uuid4().hex}"
            item = _reasoning_item(self._item_id, None)
            return [
                *events,
                self._event("response.output_item.added", output_index=index, item=item),
            ]
        self._item_id = f"msg_{uuid.uuid4().hex}"
        added = _message_item(self._item_id, "", "in_progress")
        where = {"item_id": self._item_id, "output_index": index, "content_index": 0}
        return [
            *events,
            self._event("response.output_item.added", output_index=index, item=added),
            self._event("response.content_part.added", part=_output_text(""), **where),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """One chat completion chunk (an ``error`` object ends the response as failed)."""
        if isinstance(error := chunk.get("error"), dict):
            return self.fail(error)
        self._model = chunk.get("model", self._model)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        if "deliberate" in chunk:
            self._extension = chunk["deliberate"]
        events: list[bytes] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning") or delta.get("reasoning_content")
            if thinking:
                if self._open != "reasoning":
                    events += self._open_item("reasoning")
                events += self._delta("response.reasoning_text.delta", thinking)
            if content := delta.get("content"):
                if self._open != "message":
                    events += self._open_item("message")
                events += self._delta("response.output_text.delta", content, logprobs=[])
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return events

    def _delta(self, kind: str, text: str, **extra: Any) -> list[bytes]:
        self._text += text
        index = len(self._output)
        where = {"item_id": self._item_id, "output_index": index, "content_index": 0}
        return [self._event(kind, delta=text, **where, **extra)]

    def finish(self) -> list[bytes]:
        """The stream ended well: close the items, then ``response.completed`` (or
        ``response.incomplete`` when the output-token cap cut the answer)."""
        events: list[bytes] = []
        has_message = any(item["type"] == "message" for item in self._output)
        if self._open != "message" and not has_message:
            events += self._open_item("message")  # an empty answer is still a message
        events += self._close_item()
        response = self._response("completed")
        response["output"] = self._output
        response["usage"] = _usage(self._usage)
        _finished(response, self._finish)
        if self._extension is not None:
            response["deliberate"] = self._extension
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=response)]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        """An ``error`` event, then ``response.failed`` carrying the same error."""
        code, message = error.get("code"), str(error.get("message") or "the response failed")
        response = self._response("failed")
        response["output"] = self._output
        # response.error.code is a closed set; the gateway's own code is in the error event.
        kind = "rate_limit_exceeded" if code and "rate_limit" in str(code) else "server_error"
        response["error"] = {"code": kind, "message": message}
        return [
            self._event("error", code=code, message=message, param=error.get("param")),
            self._event("response.failed", response=response),
        ]


async def response_stream(
    chat_stream: AsyncIterator[bytes], translation: Translation
) -> AsyncGenerator[bytes, None]:
    """Translate a chat completion SSE byte stream into Responses stream events."""
    events = ResponseEvents(translation)
    for out in events.start():
        yield out
    splitter = EventSplitter()
    ended = False
    async for raw in chat_stream:
        for event in splitter.feed(raw):
            data = event_data(event)
            if data is None or ended:
                continue
            if data == DONE:
                ended = True
                for out in events.finish():
                    yield out
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                chunk = {"error": {"code": "backend_stream_error", "message": "invalid event"}}
            failed = isinstance(chunk, dict) and isinstance(chunk.get("error"), dict)
            for out in events.feed(chunk) if isinstance(chunk, dict) else []:
                yield out
            ended = ended or failed
    if not ended:  # cut off without [DONE]: never end a stream as if it were complete
        for out in events.fail(
            {"code": "backend_stream_error", "message": "the answer stream ended early"}
        ):
            yield out
