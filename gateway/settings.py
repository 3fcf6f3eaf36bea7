"""Process settings from the environment (``DELIBERATE_*``); the policy lives in routes.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
