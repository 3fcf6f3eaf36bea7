"""The router's policy: from a request to a ``Decision``.

Explicit route names and client hints come first (a route in ``model``, a tenant's default
route, ``reasoning_effort`` mapped in YAML). Otherwise the request is classified and, among the
class's candidate routes: routes whose predicted p95 latency breaks the class SLO are dropped;
the cheapest route whose predicted quality reaches ``min_quality`` wins; if none does, the best
predicted quality within the SLO; if no route meets the SLO, the fastest. Predicted quality
blends the measured table (calibration) with the learned predictor. Pure and synchronous.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from routing.classify import Classifier
from routing.config import DeliberateConfig, Route
from routing.decision import CandidateView, Decision, QualitySource
from routing.features import Features, extract, message_text
from routing.gain import apply_gain
from routing.online import OnlineTables
from routing.policy_config import ClassPolicy, Measured, ladder_label
from routing.resolve import AUTO, RouteTable


class RoutePredictor(Protocol):
    def predict(self, text: str) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True)
class LiveLatency:
    """What the gateway knows of a route's backend right now."""

    queue_ms: float = 0.0
    """Predicted wait for a slot (from the scraped queue)."""
    unmeasured_ms: float | None = None
    """A latency estimate from the cost model, for routes without measurements."""
    up: bool = True
    """Some replica of the route's pool answers (a down pool's candidates are passed over)."""


LiveFn = Callable[[Route], LiveLatency | None]
UnfitFn = Callable[[Route], str | None]
"""Why a route cannot serve this request at all (``n``, ``tools``, the endpoint), or None."""


class Router:
    """Built once per loaded policy file (hot reload builds a new one)."""

    def __init__(
        self,
        config: DeliberateConfig,
        predictor: RoutePredictor | None = None,
        online: OnlineTables | None = None,
    ) -> None:
        self.config = config
        self.table = RouteTable(config)
        self.predictor = predictor
        self.online = online
        """Live quality updates (``routing.online``), when the policy enables them."""
        policy = config.policy
        default = policy.default_class if policy else "default"
        self.classifier = Classifier(config.classes, default)

    def decide(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        metadata: Any = None,
        reasoning_effort: str | None = None,
        tenant_route: str | None = None,
        live: LiveFn | None = None,
        unfit: UnfitFn | None = None,
    ) -> Decision | None:
        """The decision for a request, or None when ``model`` names nothing known. A hint
        (tenant default, effort) naming a route that cannot serve the request is passed over,
        and so are such candidates of the class."""

        def serves(route: Route) -> bool:
            return unfit is None or unfit(route) is None

        if model != AUTO:
            route = self.table.resolve(model)
            if route is None:
                return None
            return self._fixed("explicit", route, "named in model")
        by_name = self.table.route_by_name
        if tenant_route is not None and (route := by_name(tenant_route)) and serves(route):
            return self._fixed("tenant", route, "tenant default")
        policy = self.config.policy
        if policy is None:
            default = self.config.route(self.config.default_route)
            if not serves(default):  # e.g. /v1/completions and a multi-call default route
                default = next((r for r in self.config.routes if serves(r)), default)
            return self._fixed("default", default, "no policy")
        effort_route = policy.effort_routes.get(reasoning_effort)  # type: ignore[call-overload]
        if effort_route is not None and (route := by_name(effort_route)) and serves(route):
            return self._fixed("effort", route, f"reasoning_effort={reasoning_effort}")
        features = extract(messages, metadata)
        match = self.classifier.classify(features)
        class_policy = policy.classes.get(match.name) or policy.classes[policy.default_class]
        question = last_user_text(messages)
        return self.choose(match.name, match.why, class_policy, features, live, unfit, question)

    def _fixed(self, source: Any, route: Route, why: str) -> Decision:
        cls = "explicit" if source == "explicit" else source
        esc = ladder_label(route.escalate_to)
        return Decision(cls, route.name, source, why, escalate_to=esc)

    def choose(
        self,
        request_class: str,
        class_why: str,
        policy: ClassPolicy,
        features: Features,
        live: LiveFn | None,
        unfit: UnfitFn | None = None,
        question: str = "",
    ) -> Decision:
        predicted = self._predictions(features, policy.routes)
        views = []
        for name in policy.routes:
            view = self._view(self.config.route(name), request_class, policy, predicted, live)
            if unfit is not None and (why := unfit(self.config.route(name))) is not None:
                view = replace(view, kept=False, why=f"cannot serve this request ({why})")
            views.append(view)
        if policy.gain is not None:
            name, why, gain, start = apply_gain(policy.gain, self.config, views, question)
            esc = ladder_label(self.config.route(name).escalate_to)
            return Decision(
                request_class, name, "policy", why, class_why, tuple(views), esc,
                gain=gain, start_rung=start,
            )  # fmt: skip
        servable = [v for v in views if not v.why.startswith("cannot serve")] or views
        kept = [v for v in views if v.kept]
        good = [v for v in kept if v.quality is not None and v.quality >= policy.min_quality]
        if good:
            pick, why = min(good, key=lambda v: v.cost), f"cheapest with q>={policy.min_quality:g}"
        elif kept:
            pick = max(kept, key=lambda v: (v.quality if v.quality is not None else -1, -v.cost))
            why = f"no route predicted q>={policy.min_quality:g}; best quality within the SLO"
        else:
            pick = min(servable, key=lambda v: v.latency_ms if v.latency_ms is not None else 0.0)
            why = "no route meets the latency SLO (or can serve); the fastest"
        route = self.config.route(pick.route)
        esc = ladder_label(route.escalate_to)
        return Decision(request_class, pick.route, "policy", why, class_why, tuple(views), esc)

    def _predictions(self, features: Features, routes: Sequence[str]) -> dict[str, float]:
        if self.predictor is None:
            return {}
        probs = self.predictor.predict(features.text)
        return {r: p for r, p in probs.items() if r in routes}

    def _view(
        self,
        route: Route,
        request_class: str,
        policy: ClassPolicy,
        predicted: Mapping[str, float],
        live: LiveFn | None,
    ) -> CandidateView:
        m: Measured | None = route.measured.get(request_class) or route.measured.get("all")
        live_q = self.online.quality(route.name, request_class) if self.online else None
        if m is not None and live_q is not None:
            m = m.model_copy(update={"quality": live_q})
        p = predicted.get(route.name)
        ref = self.config.policy.predictor if self.config.policy else None
        weight = ref.weight if ref is not None else 0.5
        quality: float | None
        source: QualitySource
        if m is not None and p is not None:
            quality, source = (1 - weight) * m.quality + weight * p, "blend"
        elif m is not None:
            quality, source = m.quality, "measured"
        elif p is not None:
            quality, source = p, "predicted"
        else:
            quality, source = None, "unknown"
        state = live(route) if live is not None else None
        queue = state.queue_ms if state else 0.0
        if state is not None and not state.up:
            why = "its backend pool has no healthy replica"
            return CandidateView(route.name, quality, source, None, None, 1e12, False, why)
        if m is not None:
            latency: float | None = m.p95_ms + queue
            p50_s = (m.p50_ms + queue) / 1000
        elif state is not None and state.unmeasured_ms is not None:
            latency = state.unmeasured_ms + queue
            p50_s = latency / 1000
        else:
            latency, p50_s = None, 0.0
        tokens = m.tokens if m is not None else None
        w = policy.cost_weights
        cost = w.tokens * (tokens if tokens is not None else 1e9) + w.latency_s * p50_s
        slo = policy.latency_slo_ms
        if slo is not None and latency is not None and latency > slo:
            why = f"p95 {latency:.0f} ms > SLO {slo:.0f} ms"
            return CandidateView(route.name, quality, source, latency, tokens, cost, False, why)
        why = "within the SLO" if slo is not None else "no SLO"
        return CandidateView(route.name, quality, source, latency, tokens, cost, True, why)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user message's text (what a verifier judges answers against)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m.get("content"))
    return ""
