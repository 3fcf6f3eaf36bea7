"""``POST /v1/responses`` request bodies: the subset of the Responses API the gateway serves.

Validation only, like ``gateway.schemas``. Unlike chat completions, unknown fields are refused
rather than passed on: the Responses API has many stateful and tool-running features the
gateway does not implement (``previous_response_id``, built-in tools, background runs), and a
client that relies on one must hear so, not get an answer that silently ignored it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.schemas import Int, ReasoningEffort, exact_int

UNSUPPORTED = {
    "previous_response_id": "the gateway keeps no responses (store: false); send the whole "
    "conversation as input",
    "conversation": "the gateway keeps no conversations; send the whole conversation as input",
    "background": "background responses need server-side state, which the gateway does not keep",
    "prompt": "stored prompt templates are not supported",
    "include": "extra output includes are not supported",
    "top_logprobs": "logprobs are not returned through /v1/responses; use chat completions",
    "max_tool_calls": "built-in and function tools are not supported",
    "service_tier": "service tiers are not supported",
    "prompt_cache_key": "prompt caching is automatic (vLLM prefix caching); drop the key",
    "prompt_cache_retention": "prompt caching is automatic (vLLM prefix caching)",
    "safety_identifier": "not supported; use user",
    "stream_options": "stream options are not supported; usage is always in response.completed",
    "context_management": "context management needs server-side state",
}
"""Fields of the Responses API that are refused with a 400 naming them, and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # echoed back in assistant history items


class InputMessage(_Strict):
    """One message of ``input``: the easy form (no ``type``) or a ``message`` item."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None  # set on items copied from an earlier response's output
    status: str | None = None


class Reasoning(_Strict):
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needed(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or self.name is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Strict):
    """``POST /v1/responses`` (``store: false`` semantics: nothing is kept)."""

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_output_tokens" in data:
            return {**data, "max_output_tokens": exact_int(data["max_output_tokens"])}
        return data

    model: str = Field(min_length=1)
    input: str | list[InputMessage] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning: Reasoning | None = None
    stream: bool | None = None
    store: Literal[False] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    text: TextConfig | None = None
    tools: list[Any] | None = Field(None, max_length=0)
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled"] | None = None
