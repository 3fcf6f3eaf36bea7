"""single-pass ``/v1/responses`` forwarded to the backend's own Responses endpoint.

vLLM serves ``/v1/responses`` itself. For a single-pass route the gateway sends it the
client's body (model, ``store: false``, and the sampling and output cap the route decided,
which vLLM's Responses request accepts field for field) and relays the answer untouched, as
``passthrough`` does for chat: the JSON object as received, the typed events as they arrive.
The gateway only peeks — at ``usage`` (``input_tokens``, ``output_tokens``, reasoning tokens)
for accounting and at the first ``response.output_text.delta`` for TTFT.

Every other route (and a pool set to ``responses_api: translate``, or one whose backend
answers 404 here) is served through the chat translation in ``gateway.responses``.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.passthrough import event_object
from gateway.responses import Translation
from gateway.sse import event_data, format_event
from strategies.sampling import SAMPLING_FIELDS
from strategies.usage import Usage

RESPONSES_PATH = "/v1/responses"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


def forward_body(translation: Translation, chat: dict[str, Any], model: str) -> bytes:
    """The Responses body for the backend: the client's, with the pool's model, nothing
    stored, and the sampling and output cap of the patched chat body ``chat`` (the route's
    decisions, applied to the chat translation)."""
    body = dict(translation.body)
    body.update(model=model, store=False)
    if isinstance(body.get("input"), list):
        # Each message as plain role + text (vLLM validates content parts strictly: an
        # assistant turn's ``output_text`` parts need ids there), as the chat translation has.
        body["input"] = [
            {"type": "message", "role": m["role"], "content": m["content"]}
            for m, source in zip(
                translation.chat["messages"], translation.message_params, strict=True
            )
            if source != "instructions"
        ]
    for key in SAMPLING_FIELDS:
        if chat.get(key) is not None:
            body[key] = chat[key]
        else:
            body.pop(key, None)
    cap = chat.get("max_completion_tokens")
    if cap is None:
        cap = chat.get("max_tokens")
    if cap is not None:
        body["max_output_tokens"] = cap
    return orjson.dumps(body)


class ResponsesDialect:
    """Responses stream events for ``passthrough.relay_stream`` (one per stream: it numbers
    the events it adds after the backend's)."""

    def __init__(self) -> None:
        self._seq = 0
        self._response: dict[str, Any] = {}

    def inspect(self, event: bytes, ctx: RequestContext, client_wants_usage: bool) -> bool:
        data = event_data(event)
        if data is None:
            return True
        if ctx.ttft_s is not None and b'"usage"' not in data and b'"error"' not in data:
            if b'"response.output_text.delta"' in data:
                ctx.mark_token()  # hot path: only the pacing is left to learn
            return True
        obj = event_object(data)
        if obj is None:
            return True
        if isinstance(seq := obj.get("sequence_number"), int):
            self._seq = seq + 1
        kind = obj.get("type")
        if kind == "response.output_text.delta" and obj.get("delta"):
            if ctx.ttft_s is None:
                ctx.mark_first_token()
            else:
                ctx.mark_token()
        if kind in ("error", "response.failed"):
            ctx.outcome = "backend_error"
        if isinstance(response := obj.get("response"), dict):
            self._response = response
            if isinstance(usage := response.get("usage"), dict):
                ctx.usage = Usage.from_openai(usage)
        return True

    def ends(self, event: bytes) -> bool:
        data = event_data(event)
        if data is None:
            return False
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        return isinstance(obj, dict) and obj.get("type") in TERMINAL

    def failure(self, message: str, etype: str, code: str) -> bytes:
        error = {"type": "error", "code": code, "message": message, "param": None}
        response = {
            **self._response,
            "status": "failed",
            "error": {"code": "server_error", "message": message},
        }
        return self._typed(error) + self._typed({"type": "response.failed", "response": response})

    def _typed(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self._seq
        self._seq += 1
        return b"event: " + str(obj["type"]).encode() + b"\n" + format_event(orjson.dumps(obj))
