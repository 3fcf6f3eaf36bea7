"""single-pass: one backend call, forwarded as-is. The zero-overhead path."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SinglePassParams(BaseModel):
    """single-pass takes no parameters yet; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
