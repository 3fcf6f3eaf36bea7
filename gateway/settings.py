"""Process settings from the environment (``DELIBERATE_*``); the policy lives in routes.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the gateway process needs that is not routing policy."""

    model_config = SettingsConfigDict(env_prefix="DELIBERATE_", extra="ignore")

    config: Path = Field(Path("configs/routes.yaml"), description="Path of the policy file.")
    host: str = Field("127.0.0.1", description="Interface the gateway listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the gateway listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    redis_url: str | None = Field(
        None,
        description="redis:// or rediss:// URL of the shared budget store; unset = in memory.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may run before cancel."
    )
    reload_interval_s: float = Field(
        2.0, ge=0, description="How often the policy file is checked for changes; 0 = never."
    )
    access_log: bool = Field(True, description="One JSON line per request on deliberate.access.")
    log_prompts: bool = Field(
        False, description="Include the last user message (500 chars) in access-log lines."
    )
    metrics_tenant_labels: bool = Field(
        False,
        description="Export deliberate_tenant_budget_remaining_tokens{tenant} (tenant names as labels).",
    )
    ready_timeout_s: float = Field(
        2.0, gt=0, description="Per-replica timeout of the /ready probe."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A client must send a request's headers within this many seconds of connecting (or of its first byte on a kept-alive connection), else 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A client must send the whole request body within this many seconds of its headers, else 408 and the connection is closed.",
    )
    metrics_bind: str | None = Field(
        None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT (or [IPv6]:PORT) of a second listener serving only /metrics, without a key (for Prometheus on a private network); unset = none.",
    )
    trace_sink: Literal["none", "file", "redis"] = Field(
        "none",
        description="Where distillation traces of opted-in routes and tenants go: none, a rotating JSONL file, or a Redis stream.",
    )
    trace_file: Path = Field(
        Path("traces/traces.jsonl"), description="The JSONL file of the file sink."
    )
    trace_file_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Size at which the trace file is rotated."
    )
    trace_file_backups: int = Field(
        5, ge=1, le=1000, description="Rotated trace files kept (FILE.1 newest ... FILE.K)."
    )
    trace_redis_url: str | None = Field(
        None, description="Redis of the redis sink; unset = DELIBERATE_REDIS_URL."
    )
    trace_stream: str = Field(
        "deliberate:traces", min_length=1, description="Redis stream key of the redis sink."
    )
    trace_stream_maxlen: int = Field(
        100_000, ge=1, description="The stream is trimmed to about this many records (MAXLEN ~)."
    )
    trace_queue_size: int = Field(
        1024,
        ge=1,
        description="Records waiting for the sink; beyond it new ones are dropped and counted.",
    )

    @model_validator(mode="after")
    def _trace_redis(self) -> Settings:
        if self.trace_sink == "redis" and not (self.trace_redis_url or self.redis_url):
            raise ValueError(
                "DELIBERATE_TRACE_SINK=redis needs DELIBERATE_TRACE_REDIS_URL or DELIBERATE_REDIS_URL"
            )
        return self
