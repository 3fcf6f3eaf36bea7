"""API keys → tenants. Keys are kept only as SHA-256 digests and compared in constant time.

Pure: the environment is passed in, nothing is read or logged here. A tenant whose
``key_env`` variable is unset is disabled (the caller logs the returned warning, never a key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from budgets.ledger import Limit, TenantLimits
from routing.budget_config import TenantConfig

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    limits: TenantLimits
    default_route: str | None = None


def limits_of(cfg: TenantConfig) -> TenantLimits:
    pairs = (
        ("tokens", "minute", cfg.tokens_per_minute),
        ("tokens", "day", cfg.tokens_per_day),
        ("requests", "minute", cfg.requests_per_minute),
        ("requests", "day", cfg.requests_per_day),
    )
    return TenantLimits(
        cfg.name,
        tuple(Limit(kind, window, n) for kind, window, n in pairs if n is not None),  # type: ignore[arg-type]
    )


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class TenantDirectory:
    """Who a request is. With no tenants configured, every request is the open ``anonymous``."""

    entries: tuple[tuple[bytes, Tenant], ...] = ()
    configured: bool = False
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, configs: Sequence[TenantConfig], env: Mapping[str, str]) -> TenantDirectory:
        entries: list[tuple[bytes, Tenant]] = []
        warnings: list[str] = []
        for cfg in configs:
            if cfg.key_sha256 is not None:
                key_digest = bytes.fromhex(cfg.key_sha256)
            else:
                assert cfg.key_env is not None
                value = env.get(cfg.key_env, "")
                if not value:
                    warnings.append(
                        f"tenant {cfg.name!r} is disabled: environment variable {cfg.key_env} is unset"
                    )
                    continue
                key_digest = digest(value)
            entries.append((key_digest, Tenant(cfg.name, limits_of(cfg), cfg.default_route)))
        return cls(tuple(entries), bool(configs), tuple(warnings))

    @property
    def open(self) -> bool:
        return not self.configured

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant holding the bearer key; None for a missing or unknown key.

        Every configured digest is compared (no early exit), so timing says nothing about
        which key, or how much of one, matched.
        """
        if self.open:
            return Tenant(ANONYMOUS, TenantLimits(ANONYMOUS))
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = digest(token)
        found: Tenant | None = None
        for key_digest, tenant in self.entries:
            if hmac.compare_digest(presented, key_digest):
                found = tenant
        return found
