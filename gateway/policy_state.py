"""Everything derived from one loaded policy file, swapped as a whole on hot reload.

A request reads ``services.state`` once and keeps that object to the end, so a reload never
changes a decision in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metrics.registry import Metrics
from routing.config import DeliberateConfig
from routing.online import OnlineTables
from routing.policy import RoutePredictor, Router
from routing.resolve import RouteTable


class PredictorUnavailable(Exception):
    """The policy names a predictor artefact that cannot be loaded."""


@dataclass(frozen=True)
class PolicyState:
    config: DeliberateConfig
    routes: RouteTable
    router: Router


def load_predictor(config: DeliberateConfig, config_path: Path | None) -> RoutePredictor | None:
    """The learned predictor the policy names (path relative to the policy file), or None."""
    ref = config.policy.predictor if config.policy else None
    if ref is None:
        return None
    from routing.predictor import Predictor, PredictorError  # numpy/sklearn only when used

    path = Path(ref.path)
    if not path.is_absolute() and config_path is not None:
        path = config_path.parent / path
    try:
        return Predictor.load(path)
    except PredictorError as e:
        raise PredictorUnavailable(f"policy.predictor.path: {e}") from e


def build_state(
    config: DeliberateConfig, config_path: Path | None = None, online: OnlineTables | None = None
) -> PolicyState:
    """``online``: the live quality tables, used only when the policy enables them."""
    predictor = load_predictor(config, config_path)
    enabled = config.policy is not None and config.policy.online_update.enabled
    router = Router(config, predictor, online if enabled else None)
    return PolicyState(config, RouteTable(config), router)


def init_metrics(metrics: Metrics, config: DeliberateConfig) -> None:
    """Create the series of every route, ladder step and cascade of ``config`` at zero."""
    ladders = [(r.name, lower.name) for r in config.routes for lower in config.ladder(r.name)[1:]]
    cascades = [(r.name, rung.label) for r in config.routes for rung in r.escalate_to or ()]
    metrics.init_routes([(r.name, r.strategy) for r in config.routes], ladders, cascades)
