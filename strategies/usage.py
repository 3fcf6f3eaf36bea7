"""Token accounting in the three kinds used everywhere: prompt, visible, hidden.

- prompt: every token sent to any backend for the request;
- visible: generated tokens the client receives;
- hidden: generated tokens the client does not receive (reasoning, discarded candidates,
  critiques, judge outputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request (or one backend call); all non-negative."""

    prompt: int = 0
    visible: int = 0
    hidden: int = 0

    @property
    def completion(self) -> int:
        """Every generated token, visible or not (OpenAI's ``completion_tokens``)."""
        return self.visible + self.hidden

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt + other.prompt, self.visible + other.visible, self.hidden + other.hidden
        )

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """From an OpenAI ``usage`` object — chat's (``prompt_tokens``, ``completion_tokens``)
        or the Responses API's (``input_tokens``, ``output_tokens``); reasoning tokens count
        as hidden."""
        if not usage:
            return cls()
        if "input_tokens" in usage or "output_tokens" in usage:
            prompt = _int(usage.get("input_tokens"))
            completion = _int(usage.get("output_tokens"))
            details = usage.get("output_tokens_details")
        else:
            prompt = _int(usage.get("prompt_tokens"))
            completion = _int(usage.get("completion_tokens"))
            details = usage.get("completion_tokens_details")
        hidden = _int(details.get("reasoning_tokens")) if isinstance(details, Mapping) else 0
        hidden = min(hidden, completion)
        return cls(prompt=prompt, visible=completion - hidden, hidden=hidden)


def _int(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
