"""Request limits checked before dispatch: messages, ``n`` and the model's context length.

Pure functions. The context check has a cheap upper bound so that the common case needs no
tokenizer: a byte-level BPE token covers at least one byte of input, so the JSON body's size
plus a margin for the chat template's special tokens bounds the prompt's token count. Only a
request near the limit needs an exact count (the caller asks the backend's ``/tokenize``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Generous allowance for what a chat template adds around messages (role markers, a default
# system prompt). vLLM still checks exactly; this only decides whether we must count first.
TEMPLATE_BASE_TOKENS = 128
TEMPLATE_TOKENS_PER_MESSAGE = 8


@dataclass(frozen=True, slots=True)
class LimitViolation:
    """Why a request is refused: the OpenAI ``param`` to blame and a message."""

    param: str
    message: str
    code: str | None = None


def check_shape(
    payload: Mapping[str, Any], *, max_messages: int, max_n: int
) -> LimitViolation | None:
    """``messages`` count and ``n`` against the configured limits."""
    messages = payload.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        return LimitViolation(
            "messages",
            f"too many messages: {len(messages)} > limit {max_messages}",
            "too_many_messages",
        )
    n = payload.get("n")
    if isinstance(n, int) and n > max_n:
        return LimitViolation("n", f"n={n} exceeds the limit of {max_n}", "n_too_large")
    return None


def completion_cap(payload: Mapping[str, Any]) -> tuple[str, int] | None:
    """The client's completion cap and the field it came from (``max_completion_tokens`` wins)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int):
            return key, value
    return None


def prompt_token_upper_bound(body_bytes: int, n_messages: int) -> int:
    """An upper bound on prompt tokens for a body of ``body_bytes`` bytes (see module doc)."""
    return body_bytes + TEMPLATE_BASE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * n_messages


def check_context(
    prompt_tokens: int, cap: tuple[str, int] | None, max_model_len: int, prompt_param: str
) -> LimitViolation | None:
    """Does a prompt of ``prompt_tokens`` plus the completion cap fit ``max_model_len``?"""
    if prompt_tokens >= max_model_len:
        return LimitViolation(
            prompt_param,
            f"the prompt is {prompt_tokens} tokens; this model's context is {max_model_len} tokens",
            "context_length_exceeded",
        )
    if cap is not None and prompt_tokens + cap[1] > max_model_len:
        key, value = cap
        return LimitViolation(
            key,
            f"{key}={value} plus the prompt's {prompt_tokens} tokens exceeds this model's context of "
            f"{max_model_len} tokens; at most {max_model_len - prompt_tokens} tokens can be generated",
            "context_length_exceeded",
        )
    return None
