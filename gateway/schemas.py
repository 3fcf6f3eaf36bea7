"""OpenAI request bodies as pydantic models: validation only.

The gateway forwards the client's own JSON (with ``model`` rewritten), so these models exist
to reject bad input with a 400 that names the field — not to re-serialise. Unknown top-level
fields are allowed and passed through: they are vLLM's extra sampling parameters
(``top_k``, ``min_tokens``, ``ignore_eos``, ``continue_final_message``...).

Types are strict: the client's JSON travels on as it came, so a value the gateway would read
one way (``"n": "3"`` is not an int to the limits) and vLLM another (it coerces to 3) must be
refused here. The one leniency is an integral float for a top-level int (``3.0``), as JSON
allows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


Int = Annotated[int, Field(ge=-(2**63), lt=2**63)]
"""A 64-bit int (what vLLM and orjson take); never a string or a bool."""
INT_FIELDS = (
    "n",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "top_logprobs",
    "best_of",
    "logprobs",
)
"""Top-level int fields, which may be spelt as an integral float (``3.0``, ``1e3``: JSON
parsers read big integers as floats)."""
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
LogitBias = Annotated[
    dict[TokenId, Bias],
    # pydantic writes only patternProperties, which lets any other key through in JSON Schema.
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": r"^[0-9]{1,10}$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    ),
]
"""Token id (a decimal string) → bias in [-100, 100]."""
TokenIds = list[Annotated[Int, Field(ge=0)]]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    """One part of a message's content (``text``, ``image_url``...; the backend knows which
    kinds its model takes)."""

    type: str = Field(min_length=1)
    text: str | None = None


class ChatMessage(_Open):
    """One message. ``content`` may be a string, a list of parts, or null (tool calls)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class FunctionDefinition(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Open):
    name: str = Field(min_length=1)


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: FunctionName


class StreamOptions(_Open):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


EXACT_FLOAT_INT = 2**53
"""Beyond this a float is not an exact integer: JSON parsers read an integer literal outside
64 bits as the nearest float, so ``-9223372036854775809`` would pass as ``-2**63``."""


def exact_int(value: Any) -> Any:
    """An integral float as its int when the float is exact (``3.0`` → 3), else unchanged."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_FLOAT_INT:
        return int(value)
    return value


def _integral_tree(value: Any) -> Any:
    if isinstance(value, float):
        return exact_int(value)
    if isinstance(value, list):
        return [_integral_tree(v) for v in value]
    return value


class _SamplingFields(_Open):
    """Fields shared by chat and legacy completions."""

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: exact_int(v) if k in INT_FIELDS else v for k, v in data.items()}

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: Int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: Int | None = Field(None, ge=1)
    seed: Int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: LogitBias | None = None
    user: str | None = None


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    metadata: dict[str, str] | None = None


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions`` (legacy, single-pass only)."""

    @model_validator(mode="before")
    @classmethod
    def _integral_token_ids(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(prompt := data.get("prompt"), list):
            return {**data, "prompt": [_integral_tree(p) for p in prompt]}
        return data

    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: Int | None = Field(None, ge=1)
