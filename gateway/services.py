"""The collaborators one app instance uses, built in the lifespan and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.pool import Pool
from gateway.backends.scraper import BackendScraper
from gateway.budgeting import BudgetService
from gateway.settings import Settings
from metrics.registry import Metrics
from routing.config import DeliberateConfig
from routing.resolve import RouteTable


@dataclass
class Services:
    settings: Settings
    config: DeliberateConfig
    routes: RouteTable
    pools: dict[str, Pool]
    metrics: Metrics
    budgets: BudgetService
    scraper: BackendScraper | None = None
