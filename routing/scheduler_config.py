"""Per-pool knobs for an engine-side scheduler (llm-d, or an InferencePool's endpoint picker):
the request headers that carry the gateway's hints, and the response header that explains a
dropped request. Pure data, validated with the rest of ``routes.yaml``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

HeaderName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
]
"""An HTTP field name (an RFC 9110 token), lower-case as HTTP/2 wants it."""


class SchedulerHeaders(BaseModel):
    """What the gateway tells the pool's scheduler on every backend call, and how it reads a
    scheduler's refusal. A name set to null is never sent (or never read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    forward: bool = Field(
        False,
        description="Send the hint headers below on every backend call (off for plain vLLM "
        "pools, which ignore them; on for an llm-d / InferencePool gateway).",
    )
    fairness_id: HeaderName | None = Field(
        "x-llm-d-inference-fairness-id",
        description="Carries the tenant's name, the scheduler's fairness key.",
    )
    objective: HeaderName | None = Field(
        "x-llm-d-inference-objective",
        description="Carries the route's `objective` (its priority class), when it has one.",
    )
    ttft_slo_ms: HeaderName | None = Field(
        "x-llm-d-slo-ttft-ms", description="Carries the route's `slo.ttft_ms`, when set."
    )
    tpot_slo_ms: HeaderName | None = Field(
        "x-llm-d-slo-tpot-ms", description="Carries the route's `slo.tpot_ms`, when set."
    )
    predicted_output_tokens: HeaderName | None = Field(
        "x-llm-d-predicted-output-tokens",
        description="Carries the most tokens one sequence of the request may generate (the "
        "route's and the client's caps, within the context room), when that is known.",
    )
    dropped_reason: HeaderName | None = Field(
        "x-llm-d-request-dropped-reason",
        description="Read on a 429/503 (whatever `forward` says): `rejected-*` (no work done) "
        "is retried on another replica, then stepped down the route's `downgrade_to`; "
        "`evicted-*` (work done, then dropped) is charged and not retried.",
    )
