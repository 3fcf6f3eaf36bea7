"""Route-owned sampling: the ``sampling:`` section of a route or a ladder rung.

Every field is optional; only the fields that are set are applied to the route's backend
calls. Which side wins when the client sets the same field is decided by
``routing.sampling.plan_sampling`` (precedence) — this module only holds the values.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 16
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
)
"""The request fields a ``sampling:`` section may set (all of ``SamplingOverrides``)."""


class SamplingOverrides(BaseModel):
    """Sampling fields applied to every backend call a route (or rung) makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(None, ge=0, le=5, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM: -1 (or 0) = off.")
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, description="Same seed, same prompt → same sample.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=5)
    stop: list[str] | None = Field(
        None, max_length=MAX_STOP_SEQUENCES, description="Stop sequences (a string or a list)."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @cached_property
    def _set_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def fields(self) -> dict[str, Any]:
        """The fields that are set, as OpenAI/vLLM request fields (computed once per model:
        it is on every request's path; callers get their own copy)."""
        return dict(self._set_fields)
