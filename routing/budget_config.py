"""Policy-file sections for budgets: route caps and SLOs, backend KV shape, tenants, the
budget store and admission. Pure data, validated with the rest of ``routes.yaml``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteBudget(_Strict):
    """Hard caps on one request served by this route; the client may only lower them.

    A strategy that reaches a cap stops and returns its best answer so far with the reason.
    """

    max_total_tokens: int | None = Field(
        None, ge=1, description="Generated tokens (visible + hidden) per request."
    )
    max_visible_tokens: int | None = Field(
        None, ge=1, description="Tokens of the returned answer (caps the client's max_tokens)."
    )
    max_hidden_tokens: int | None = Field(
        None,
        ge=0,
        description=(
            "Generated tokens not returned (thinking, extra candidates, critiques, judges): a "
            "thinking budget is cut to it, and a request generates at most this plus its answer's cap."
        ),
    )
    max_candidates: int | None = Field(
        None, ge=1, description="Sampled candidates (sum of n over all backend calls)."
    )
    max_backend_calls: int | None = Field(
        None, ge=1, description="Generation calls to the backend (strategy and judges)."
    )
    deadline_s: float | None = Field(None, gt=0, description="Wall time per request.")


class RouteSlo(_Strict):
    """Latency objectives admission checks before serving on this route."""

    ttft_ms: float | None = Field(
        None, gt=0, description="Predicted time to first visible token must stay under this."
    )
    tpot_ms: float | None = Field(
        None,
        gt=0,
        description="Time per output token the route aims for; only forwarded to an "
        "engine-side scheduler (`scheduler` headers), not checked by admission.",
    )


class ModelShape(_Strict):
    """The attention shape that sets KV-cache bytes per token."""

    layers: int = Field(ge=1, description="Transformer layers (num_hidden_layers).")
    kv_heads: int = Field(ge=1, description="KV heads (num_key_value_heads).")
    head_dim: int = Field(ge=1, description="Head dimension (hidden_size / num_attention_heads).")
    bytes_per_value: float = Field(2, gt=0, description="2 for fp16/bf16, 1 for fp8 KV cache.")

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_value


class KvSpec(_Strict):
    """KV-cache accounting of one pool: its model's shape, capacity and admission ceiling."""

    shape: ModelShape | None = Field(None, description="Model shape; KV bytes per token.")
    capacity_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens the KV cache holds per replica; default: read from vLLM's cache_config_info.",
    )
    ceiling: float = Field(
        0.9, gt=0, le=1, description="Admission keeps each replica's KV usage under this share."
    )


class TenantConfig(_Strict):
    """An API key and what it may spend. Exactly one of key_sha256 / key_env."""

    name: Name
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the API key."
    )
    key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the key (read at start; unset disables the tenant).",
    )
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + visible + hidden.")
    tokens_per_day: int | None = Field(None, ge=1, description="prompt + visible + hidden.")
    requests_per_minute: int | None = Field(None, ge=1)
    requests_per_day: int | None = Field(None, ge=1)
    default_route: Name | None = Field(
        None, description="Route for this tenant's model 'auto' requests (instead of the router)."
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        description="Completion requests of this tenant running at once on one gateway process; more get 429 tenant_concurrency_exceeded.",
    )
    admin: bool = Field(
        False,
        description="This key may also read /metrics, /openapi.json, /v1/route/explain, /v1/policy/export and the /ready detail.",
    )

    @model_validator(mode="after")
    def _one_key(self) -> TenantConfig:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("set exactly one of key_sha256 or key_env")
        return self


class BudgetStoreConfig(_Strict):
    """Where tenant budgets are counted: in memory, or Redis when DELIBERATE_REDIS_URL is set."""

    fail_mode: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: 'open' serves and counts locally, 'closed' answers 503.",
    )
    key_prefix: str = Field("deliberate", min_length=1, description="Prefix of Redis keys.")


class AdmissionConfig(_Strict):
    """SLO and KV admission: step routes down their downgrade_to ladder, or reject."""

    enabled: bool = True
    retry_after_s: float = Field(
        2.0, gt=0, description="Retry-After of a 503 when no route on the ladder fits."
    )
    stale_after_s: float = Field(
        10.0, gt=0, description="A backend snapshot older than this is unknown, not idle."
    )
    scrape_interval_s: float = Field(
        2.0, gt=0, description="Period of the backend /metrics scrape."
    )
    default_decode_tokens_per_s: float = Field(
        30.0, gt=0, description="Per-sequence decode rate assumed until one is measured."
    )
    prefill_tokens_per_s: float = Field(
        2000.0, gt=0, description="Prompt tokens prefilled per second (from a benchmark)."
    )
