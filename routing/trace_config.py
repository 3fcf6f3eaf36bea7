"""Policy-file knobs of the trace export for distillation: which routes export (``routes[].
trace_export``), which tenants consented and how texts are redacted (the ``traces`` section).

Pure data. Where records go (a file, Redis Streams) is a process setting
(``DELIBERATE_TRACE_*``), not policy. Nothing is exported unless a route opts in, a tenant is
on the allow-list and a sink is configured: each of the three defaults to off.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TraceExport(_Strict):
    """A route's opt-in: export requests whose chosen answer a verifier scored at least
    ``min_score`` (scores are in [0, 1]; a request no verifier scored is never exported)."""

    min_score: float = Field(
        ge=0.0,
        le=1.0,
        description="Lowest verifier score of the chosen answer that gets a request exported.",
    )


class Redaction(_Strict):
    """One regex; every match in an exported text is replaced by ``replacement``."""

    name: Name
    pattern: str = Field(min_length=1, max_length=1000, description="A Python regex.")
    replacement: str = Field("[redacted]", max_length=200)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from e
        if compiled.match(""):
            raise ValueError("the pattern matches the empty string")
        return value


DEFAULT_REDACTIONS: tuple[Redaction, ...] = (
    Redaction(
        name="email",
        pattern=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        replacement="[email]",
    ),
    Redaction(
        name="bearer",
        pattern=r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
        replacement="Bearer [key]",
    ),
    Redaction(
        name="api-key",
        pattern=r"\b(?:sk|pk|rk|ghp|gho|ghs|xox[abpr]|AKIA)[-_]?[A-Za-z0-9_-]{12,}",
        replacement="[key]",
    ),
    Redaction(
        # long tokens mixing letters and digits: hex digests, base64 secrets, session ids
        name="secret",
        pattern=r"\b(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])[A-Za-z0-9_+/=-]{24,}",
        replacement="[secret]",
    ),
    Redaction(name="ipv4", pattern=r"\b(?:\d{1,3}\.){3}\d{1,3}\b", replacement="[ip]"),
    Redaction(
        # 9 or more digits, optionally separated by spaces, dots or dashes: phone, card,
        # account and id numbers (arithmetic operands are shorter)
        name="digits",
        pattern=r"(?<!\w)\+?\d(?:[ .-]?\d){8,}(?!\w)",
        replacement="[number]",
    ),
)
"""Applied before a policy's own ``redact`` rules unless ``redact_defaults: false``."""


class TracesConfig(_Strict):
    """The ``traces`` section: consent and privacy of the trace export."""

    tenants: list[Name] = Field(
        default_factory=list,
        description="Tenants whose requests may be exported (`anonymous` = open access); "
        "empty = nobody.",
    )
    redact_defaults: bool = Field(
        True, description="Apply the shipped redactions (emails, keys, secrets, IPs, long numbers)."
    )
    redact: list[Redaction] = Field(
        default_factory=list, description="More redactions, applied after the shipped ones."
    )
    candidate_texts: bool = Field(
        True,
        description="Include every candidate's (redacted) text, not only its answer and score.",
    )

    def rules(self) -> tuple[Redaction, ...]:
        """Every redaction in the order applied."""
        return (*(DEFAULT_REDACTIONS if self.redact_defaults else ()), *self.redact)
