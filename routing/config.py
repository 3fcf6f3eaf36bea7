"""The policy file (``configs/routes.yaml``) as typed, validated pydantic models.

Pure data: no I/O happens here. ``routing.loader`` reads and parses the file and turns
validation errors into ``file:path: message`` lines. Every model forbids unknown keys so a
typo in the YAML is an error, not a silently ignored knob.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from routing.budget_config import (
    AdmissionConfig,
    BudgetStoreConfig,
    KvSpec,
    RouteBudget,
    RouteSlo,
    TenantConfig,
)
from routing.policy_config import Escalation, Measured, RequestClass, RoutingPolicy
from routing.prm import PrmConventions
from strategies.adaptive_consistency import AdaptiveConsistencyParams
from strategies.best_of_n import BestOfNParams
from strategies.bounded_reasoning import BoundedReasoningParams
from strategies.prm_search import PrmSearchParams
from strategies.refine import RefineParams
from strategies.self_consistency import SelfConsistencyParams
from strategies.single_pass import SinglePassParams

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Timeouts for one backend pool, in seconds."""

    connect_s: float = Field(2.0, gt=0, description="TCP connect timeout.")
    read_s: float = Field(600.0, gt=0, description="Max wait between two bytes from the backend.")
    write_s: float = Field(30.0, gt=0, description="Max time to send the request body.")
    pool_s: float = Field(5.0, gt=0, description="Max wait for a free pooled connection.")


class BackendPool(_Strict):
    """A pool of interchangeable vLLM replicas serving one model."""

    name: Name
    model: str = Field(
        min_length=1, description="Model name the replicas serve (--served-model-name)."
    )
    replicas: list[AnyHttpUrl] = Field(min_length=1, description="Base URLs, without /v1.")
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(512, ge=1, description="Pooled connections per pool.")
    health_interval_s: float = Field(5.0, gt=0, description="Period of the /health probe.")
    prm: PrmConventions | None = Field(
        None, description="Set when this pool serves a process reward model over /pooling."
    )
    default_route: Name | None = Field(
        None,
        description="Route used when a request names this pool's model; default: first route on the pool.",
    )
    kv: KvSpec = KvSpec()

    @model_validator(mode="after")
    def _unique_replicas(self) -> BackendPool:
        urls = [str(u).rstrip("/") for u in self.replicas]
        if len(set(urls)) != len(urls):
            raise ValueError("replicas must be distinct URLs")
        return self

    @property
    def replica_urls(self) -> list[str]:
        """Replica base URLs without a trailing slash."""
        return [str(u).rstrip("/") for u in self.replicas]


class _RouteBase(_Strict):
    name: Name
    backend: Name = Field(description="Name of a backend pool.")
    budget: RouteBudget = RouteBudget()
    slo: RouteSlo = RouteSlo()
    downgrade_to: Name | None = Field(
        None,
        description="Cheaper route admission steps down to when this one breaks its SLO or KV ceiling.",
    )
    stream_progress: bool = Field(
        False,
        description="Multi-call routes: stream progress notes as delta.reasoning while working.",
    )
    escalate_to: Escalation | None = Field(
        None, description="Answer here first; run a stronger route only when a verifier rejects it."
    )
    measured: dict[Name, Measured] = Field(
        default_factory=dict, description="Per request class, written by `deliberate calibrate`."
    )


class SinglePassRoute(_RouteBase):
    """One backend call, streamed through untouched."""

    strategy: Literal["single-pass"]
    params: SinglePassParams = SinglePassParams()


class BoundedReasoningRoute(_RouteBase):
    strategy: Literal["bounded-reasoning"]
    params: BoundedReasoningParams = BoundedReasoningParams()


class BestOfNRoute(_RouteBase):
    strategy: Literal["best-of-n"]
    params: BestOfNParams = BestOfNParams()


class SelfConsistencyRoute(_RouteBase):
    strategy: Literal["self-consistency"]
    params: SelfConsistencyParams = SelfConsistencyParams()


class AdaptiveConsistencyRoute(_RouteBase):
    strategy: Literal["adaptive-consistency"]
    params: AdaptiveConsistencyParams = AdaptiveConsistencyParams()


class RefineRoute(_RouteBase):
    strategy: Literal["refine"]
    params: RefineParams = RefineParams()


class PrmSearchRoute(_RouteBase):
    strategy: Literal["prm-search"]
    params: PrmSearchParams = PrmSearchParams()


Route = Annotated[
    SinglePassRoute
    | BoundedReasoningRoute
    | BestOfNRoute
    | SelfConsistencyRoute
    | AdaptiveConsistencyRoute
    | RefineRoute
    | PrmSearchRoute,
    Field(discriminator="strategy"),
]
STRATEGY_NAMES = (
    "single-pass",
    "bounded-reasoning",
    "best-of-n",
    "self-consistency",
    "adaptive-consistency",
    "refine",
    "prm-search",
)


class Limits(_Strict):
    """Request limits checked before anything is sent to a backend."""

    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest accepted request body."
    )
    max_messages: int = Field(512, ge=1, description="Most messages in one chat request.")
    max_n: int = Field(16, ge=1, description="Largest `n` (choices per request).")


class DeliberateConfig(_Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    default_route: Name = Field(description="Route used for model 'auto'.")
    limits: Limits = Limits()
    backends: list[BackendPool] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    tenants: list[TenantConfig] = Field(
        default_factory=list, description="API keys and budgets; none = open access."
    )
    budget_store: BudgetStoreConfig = BudgetStoreConfig()
    admission: AdmissionConfig = AdmissionConfig()
    classes: list[RequestClass] = Field(
        default_factory=list, description="Request classes, tried in order (first match wins)."
    )
    policy: RoutingPolicy | None = Field(
        None, description="How model 'auto' is routed; without it, auto = default_route."
    )

    @model_validator(mode="after")
    def _cross_references(self) -> DeliberateConfig:
        problems = cross_reference_problems(self)
        if problems:
            # One line per problem, each starting with its path; the loader prints them as-is.
            raise ValueError("\n".join(f"{path}: {msg}" for path, msg in problems))
        return self

    def pools_in_use(self) -> list[str]:
        """Pools some route needs: its own backend and any PRM pool it scores with."""
        used = {r.backend for r in self.routes}
        used |= {p for r in self.routes if (p := getattr(r.params, "prm_backend", None))}
        return [b.name for b in self.backends if b.name in used]

    def route(self, name: str) -> Route:
        """The route called ``name`` (validated to exist wherever it is referenced)."""
        return next(r for r in self.routes if r.name == name)

    def ladder(self, name: str) -> list[Route]:
        """``name`` and the routes its ``downgrade_to`` chain steps down to (validated acyclic)."""
        chain = [self.route(name)]
        while (nxt := chain[-1].downgrade_to) is not None:
            chain.append(self.route(nxt))
        return chain

    def pool(self, name: str) -> BackendPool:
        """The backend pool called ``name`` (validated to exist for every route)."""
        return next(b for b in self.backends if b.name == name)


def cross_reference_problems(cfg: DeliberateConfig) -> list[tuple[str, str]]:
    """Problems between sections (names that must exist or be unique), as ``(path, message)``."""
    problems: list[tuple[str, str]] = []
    pools = [b.name for b in cfg.backends]
    routes = [r.name for r in cfg.routes]
    for section, names in (("backends", pools), ("routes", routes)):
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                problems.append((f"{section}[{i}].name", f"duplicate name {n!r}"))
            seen.add(n)
    if cfg.default_route not in routes:
        problems.append(("default_route", f"unknown route {cfg.default_route!r}; routes: {routes}"))
    for i, r in enumerate(cfg.routes):
        if r.name == "auto":
            problems.append((f"routes[{i}].name", "'auto' is reserved for the router"))
        prm = getattr(r.params, "prm_backend", None)
        if prm is not None:
            prm_pool = next((b for b in cfg.backends if b.name == prm), None)
            if prm_pool is None:
                problems.append(
                    (
                        f"routes[{i}].params.prm_backend",
                        f"unknown backend {prm!r}; backends: {pools}",
                    )
                )
            elif prm_pool.prm is None:
                problems.append(
                    (
                        f"routes[{i}].params.prm_backend",
                        f"backend {prm!r} has no `prm:` section (it must serve a PRM over /pooling)",
                    )
                )
        if r.backend not in pools:
            problems.append(
                (f"routes[{i}].backend", f"unknown backend {r.backend!r}; backends: {pools}")
            )
    problems += _ladder_problems(cfg, routes)
    problems += _tenant_problems(cfg)
    problems += _policy_problems(cfg, routes)
    for i, b in enumerate(cfg.backends):
        if b.default_route is not None and b.default_route not in routes:
            problems.append(
                (
                    f"backends[{i}].default_route",
                    f"unknown route {b.default_route!r}; routes: {routes}",
                )
            )
    return problems


def _ladder_problems(cfg: DeliberateConfig, routes: list[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    nxt = {r.name: r.downgrade_to for r in cfg.routes}
    for i, r in enumerate(cfg.routes):
        if r.downgrade_to is None:
            continue
        if r.downgrade_to not in nxt:
            problems.append(
                (f"routes[{i}].downgrade_to", f"unknown route {r.downgrade_to!r}; routes: {routes}")
            )
            continue
        seen: list[str] = [r.name]
        cur: str | None = r.downgrade_to
        while cur is not None and cur in nxt:
            if cur in seen:
                cycle = " -> ".join([*seen, cur])
                problems.append((f"routes[{i}].downgrade_to", f"the ladder loops: {cycle}"))
                break
            seen.append(cur)
            cur = nxt[cur]
    return problems


def _tenant_problems(cfg: DeliberateConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for i, t in enumerate(cfg.tenants):
        if t.name in seen_names:
            problems.append((f"tenants[{i}].name", f"duplicate name {t.name!r}"))
        seen_names.add(t.name)
        key = t.key_sha256 or f"env:{t.key_env}"
        if key in seen_keys:
            field = "key_sha256" if t.key_sha256 else "key_env"
            problems.append((f"tenants[{i}].{field}", "another tenant has the same key"))
        seen_keys.add(key)
    return problems


def _policy_problems(cfg: DeliberateConfig, routes: list[str]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def need_route(path: str, name: str) -> None:
        if name not in routes:
            problems.append((path, f"unknown route {name!r}; routes: {routes}"))

    classes = [c.name for c in cfg.classes]
    seen: set[str] = set()
    for i, c in enumerate(cfg.classes):
        if c.name in seen:
            problems.append((f"classes[{i}].name", f"duplicate name {c.name!r}"))
        if c.name == "explicit":
            problems.append(
                (f"classes[{i}].name", "'explicit' is reserved (a route named in `model`)")
            )
        seen.add(c.name)
    for i, r in enumerate(cfg.routes):
        if r.escalate_to is not None:
            need_route(f"routes[{i}].escalate_to.route", r.escalate_to.route)
            if r.escalate_to.route == r.name:
                problems.append(
                    (f"routes[{i}].escalate_to.route", "a route cannot escalate to itself")
                )
    for i, t in enumerate(cfg.tenants):
        if t.default_route is not None:
            need_route(f"tenants[{i}].default_route", t.default_route)
    p = cfg.policy
    if p is None:
        return problems
    known = [*classes, p.default_class]
    if p.default_class not in p.classes:
        problems.append(
            ("policy.default_class", f"{p.default_class!r} has no entry under policy.classes")
        )
    for name, cp in p.classes.items():
        if name not in known:
            problems.append((f"policy.classes.{name}", f"unknown class {name!r}; classes: {known}"))
        for j, route in enumerate(cp.routes):
            need_route(f"policy.classes.{name}.routes[{j}]", route)
    for effort, route in p.effort_routes.items():
        need_route(f"policy.effort_routes.{effort}", route)
    return problems
