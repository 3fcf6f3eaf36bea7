"""The collaborators one app instance uses, built in the lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.backends.pool import Pool
from gateway.backends.scraper import BackendScraper
from gateway.budgeting import BudgetService
from gateway.policy_state import PolicyState
from gateway.settings import Settings
from gateway.traces import TraceExporter
from metrics.registry import Metrics
from routing.config import DeliberateConfig
from routing.online import OnlineTables
from routing.resolve import RouteTable
from strategies.tracing import NO_TRACING, Tracer


@dataclass
class Services:
    settings: Settings
    state: PolicyState
    """The loaded policy; replaced whole by a hot reload (read it once per request)."""
    pools: dict[str, Pool]
    metrics: Metrics
    budgets: BudgetService
    scraper: BackendScraper | None = None
    online: OnlineTables = field(default_factory=lambda: OnlineTables(0.02))
    """Live quality tables (used when the policy enables online updates); kept across reloads."""
    traces: TraceExporter | None = None
    """The distillation trace export; None without a sink (``DELIBERATE_TRACE_SINK``)."""
    tracer: Tracer = NO_TRACING
    """Spans of requests (``gateway.tracing``); the pools hold the same tracer."""

    @property
    def config(self) -> DeliberateConfig:
        return self.state.config

    @property
    def routes(self) -> RouteTable:
        return self.state.routes
