"""Admission: serve the requested route, step it down its ``downgrade_to`` ladder, or reject.

``admit`` walks the ladder from the requested route towards cheaper ones (never up) and
serves on the first rung whose predicted TTFT meets its SLO and whose KV reservation keeps
the backend under its KV ceiling. When no rung fits, the request is rejected as overload
(503 + Retry-After) before anything is sent or reserved. Unknown backend state (no fresh
snapshot) is not treated as idle: the KV check is skipped and the TTFT prediction has no
queue term, and the verdict says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from budgets.estimates import CostShape, PoolLoad, kv_tokens, predict_ttft_s
from routing.budget_config import AdmissionConfig, KvSpec
from routing.config import Route


@dataclass(frozen=True, slots=True)
class RungCheck:
    """One route of the ladder, as admission judged it."""

    route: str
    fits: bool
    ttft_s: float
    kv_after: float | None
    """Predicted KV usage share of the replica with this request's reservation (None: unknown)."""
    cause: str | None = None
    """Why it does not fit, as ``kind:detail`` (``slo:ttft_ms=1830>800``, ``kv:0.93>0.90``)."""


@dataclass(frozen=True, slots=True)
class Admit:
    route: Route
    checks: tuple[RungCheck, ...]


@dataclass(frozen=True, slots=True)
class Downgrade:
    route: Route
    requested: Route
    checks: tuple[RungCheck, ...]

    @property
    def cause(self) -> str:
        return next(c.cause for c in self.checks if c.cause is not None)


@dataclass(frozen=True, slots=True)
class Reject:
    requested: Route
    checks: tuple[RungCheck, ...]
    retry_after_s: float

    @property
    def cause(self) -> str:
        return "; ".join(f"{c.route}: {c.cause}" for c in self.checks)


Verdict = Admit | Downgrade | Reject


def check_rung(
    route: Route,
    shape: CostShape,
    prompt_tokens: int,
    load: PoolLoad | None,
    kv: KvSpec,
    cfg: AdmissionConfig,
) -> RungCheck:
    """Does ``route`` fit its TTFT SLO and its pool's KV ceiling right now?"""
    ttft = predict_ttft_s(
        prompt_tokens,
        shape,
        load,
        prefill_tokens_per_s=cfg.prefill_tokens_per_s,
        default_decode_tokens_per_s=cfg.default_decode_tokens_per_s,
    )
    capacity = kv.capacity_tokens or (load.kv_capacity_tokens if load else None)
    kv_after = None
    if load is not None and load.kv_usage is not None and capacity:
        kv_after = load.kv_usage + kv_tokens(prompt_tokens, shape) / capacity
    slo = route.slo.ttft_ms
    cause = None
    if slo is not None and ttft * 1000 > slo:
        cause = f"slo:ttft_ms={ttft * 1000:.0f}>{slo:.0f}"
    elif kv_after is not None and kv_after > kv.ceiling:
        cause = f"kv:{kv_after:.2f}>{kv.ceiling:.2f}"
    return RungCheck(route.name, cause is None, ttft, kv_after, cause)


def admit(
    ladder: Sequence[Route], check: Callable[[Route], RungCheck], retry_after_s: float
) -> Verdict:
    """The first rung of ``ladder`` (requested route first) that fits, or a rejection."""
    checks: list[RungCheck] = []
    for route in ladder:
        result = check(route)
        checks.append(result)
        if result.fits:
            if route is ladder[0]:
                return Admit(route, tuple(checks))
            return Downgrade(route, ladder[0], tuple(checks))
    return Reject(ladder[0], tuple(checks), retry_after_s)
