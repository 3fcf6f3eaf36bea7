"""The policy file (``configs/routes.yaml``) as typed, validated pydantic models.

Pure data: no I/O happens here. ``routing.loader`` reads and parses the file and turns
validation errors into ``file:path: message`` lines. Every model forbids unknown keys so a
typo in the YAML is an error, not a silently ignored knob.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from routing.budget_config import (
    AdmissionConfig,
    BudgetStoreConfig,
    KvSpec,
    RouteBudget,
    RouteSlo,
    TenantConfig,
)
from routing.policy_config import Ladder, Measured, RequestClass, RoutingPolicy, as_ladder
from routing.prm import PrmConventions
from routing.references import cross_reference_problems
from routing.scheduler_config import SchedulerHeaders
from routing.trace_config import TraceExport, TracesConfig
from strategies.adaptive_consistency import AdaptiveConsistencyParams
from strategies.best_of_n import BestOfNParams
from strategies.bounded_reasoning import BoundedReasoningParams
from strategies.prm_search import PrmSearchParams
from strategies.refine import RefineParams
from strategies.sampling import SamplingOverrides
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


class Balancing(_Strict):
    """How a request's first backend call picks a replica (its later calls stay there)."""

    policy: Literal["least-loaded", "round-robin", "prefix-affinity"] = Field(
        "least-loaded",
        description="least-loaded: fewest in-flight requests; round-robin: in turn; "
        "prefix-affinity: bounded-load consistent hashing on the prompt's prefix, so requests "
        "sharing a system prompt or conversation reuse one replica's prefix cache.",
    )
    prefix_chars: int = Field(
        512, ge=16, description="prefix-affinity: leading characters of the conversation hashed."
    )
    load_factor: float = Field(
        1.5,
        ge=1.0,
        description="prefix-affinity: a replica takes a request while its in-flight count stays "
        "within this multiple of the pool's mean; else the next on the ring, else least-loaded.",
    )


class OutlierDetection(_Strict):
    """Outlier ejection (like Envoy's): replicas that keep failing calls get no traffic."""

    enabled: bool = Field(True, description="Eject replicas that fail consecutive calls.")
    consecutive_failures: int = Field(
        5,
        ge=1,
        description="Failed calls in a row (5xx, connect errors, timeouts, invalid bodies) "
        "that eject a replica; 4xx answers count as successes.",
    )
    base_ejection_s: float = Field(
        10.0, gt=0, description="First ejection time; doubles with each ejection in a row."
    )
    max_ejection_s: float = Field(300.0, gt=0, description="Longest ejection time.")

    @model_validator(mode="after")
    def _ordered(self) -> OutlierDetection:
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must be at least base_ejection_s")
        return self


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
    outlier: OutlierDetection = OutlierDetection()
    balance: Balancing = Balancing()
    prm: PrmConventions | None = Field(
        None, description="Set when this pool serves a process reward model over /pooling."
    )
    default_route: Name | None = Field(
        None,
        description="Route used when a request names this pool's model; default: first route on the pool.",
    )
    kv: KvSpec = KvSpec()
    responses_api: Literal["forward", "translate"] = Field(
        "forward",
        description="single-pass /v1/responses: forward to the backend's own /v1/responses "
        "(falls back to translate if it answers 404), or translate to chat completions.",
    )
    scheduler: SchedulerHeaders = Field(
        SchedulerHeaders(), description="Hint headers for an engine-side scheduler (llm-d)."
    )

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
    objective: Name | None = Field(
        None,
        description="The route's priority class for an engine-side scheduler: sent as the "
        "pool's `scheduler.objective` header (an llm-d InferenceObjective's name).",
    )
    downgrade_to: Name | None = Field(
        None,
        description="Cheaper route admission steps down to when this one breaks its SLO or KV ceiling.",
    )
    stream_progress: bool = Field(
        False,
        description="Multi-call routes: stream progress notes as delta.reasoning while working.",
    )
    escalate_to: Annotated[Ladder | None, BeforeValidator(as_ladder)] = Field(
        None,
        description="Escalation ladder: answer here first; climb a rung (more samples or a "
        "stronger route) only while a verifier rejects the best answer so far.",
    )
    sampling: SamplingOverrides = Field(
        SamplingOverrides(), description="Sampling applied to every backend call of the route."
    )
    candidate_detail: int = Field(
        32,
        ge=0,
        le=64,
        description="List every candidate (tokens, answer, score, confidence) in the "
        "`deliberate` object when a request has at most this many; 0 = never.",
    )
    lock_sampling: bool = Field(
        False, description="The route's sampling wins even over a client that names the route."
    )
    measured: dict[Name, Measured] = Field(
        default_factory=dict, description="Per request class, written by `deliberate calibrate`."
    )
    trace_export: TraceExport | None = Field(
        None,
        description="Export verified requests of this route as distillation traces "
        "(see the `traces` section); unset = never.",
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
    traces: TracesConfig = Field(
        TracesConfig(), description="Consent and redaction of the distillation trace export."
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
        """The route called ``name`` (validated to exist wherever it is referenced);
        ``KeyError`` otherwise."""
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(f"no route {name!r}")

    def ladder(self, name: str) -> list[Route]:
        """``name`` and the routes its ``downgrade_to`` chain steps down to (validated acyclic)."""
        chain = [self.route(name)]
        while (nxt := chain[-1].downgrade_to) is not None:
            chain.append(self.route(nxt))
        return chain

    def pool(self, name: str) -> BackendPool:
        """The backend pool called ``name`` (validated to exist for every route)."""
        return next(b for b in self.backends if b.name == name)
