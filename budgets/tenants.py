"""API keys → tenants. Keys are kept only as SHA-256 digests and compared in constant time.

Every presented key, whatever its length, scheme or existence, is hashed to one 32-byte digest
and compared with every configured digest: a missing, malformed, unknown or almost-right key
takes the same path, so the time taken says nothing about which keys exist or how close one is.

Pure: the environment is passed in, nothing is read or logged here. A tenant whose
``key_env`` variable is unset is disabled (the caller logs the returned warning, never a key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from budgets.ledger import Limit, TenantLimits
from routing.budget_config import TenantConfig

ANONYMOUS = "anonymous"
Compare = Callable[[bytes, bytes], bool]
"""Equality of two digests; ``hmac.compare_digest`` (constant time) unless a test counts calls."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    limits: TenantLimits
    default_route: str | None = None
    max_concurrent: int | None = None  # completion requests at once; None = no limit
    admin: bool = False  # may read /metrics, /openapi.json, explain, export


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
    compare: Compare = field(default=hmac.compare_digest, repr=False, compare=False)

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
            tenant = Tenant(
                cfg.name,
                limits_of(cfg),
                cfg.default_route,
                max_concurrent=cfg.max_concurrent_requests,
                admin=cfg.admin,
            )
            entries.append((key_digest, tenant))
        return cls(tuple(entries), bool(configs), tuple(warnings))

    @property
    def open(self) -> bool:
        return not self.configured

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant holding the bearer key; None for a missing or unknown key.

        One path for every caller: the token (empty when there is none) is hashed to a
        fixed-length digest and compared with every configured digest (no early exit), so
        timing says nothing about which key, or how much of one, matched.
        """
        if self.open:
            return Tenant(ANONYMOUS, TenantLimits(ANONYMOUS))
        token = bearer_token(authorization)
        presented = digest(token or "")
        found: Tenant | None = None
        for key_digest, tenant in self.entries:
            # compare first, always: a missing token must not skip the comparisons
            if self.compare(presented, key_digest) and token is not None:
                found = tenant
        return found
