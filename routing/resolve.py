"""Which route serves a request, from its ``model`` field.

``auto`` → the router's choice (the default route until classification exists); a route
name → that route; a backend model name → that pool's default route. A route name wins a
clash with a model name (``clashes`` lists them for check-config).
"""

from __future__ import annotations

from routing.config import DeliberateConfig, Route

AUTO = "auto"


class RouteTable:
    """Immutable lookup built once per loaded config."""

    def __init__(self, config: DeliberateConfig) -> None:
        self.config = config
        self._by_name = {r.name: r for r in config.routes}
        self._by_model: dict[str, Route] = {}
        for pool in config.backends:
            if pool.model in self._by_model:
                continue  # the first pool serving a model owns its name
            name = pool.default_route or next(
                (r.name for r in config.routes if r.backend == pool.name), None
            )
            if name is not None:
                self._by_model[pool.model] = self._by_name[name]

    def route_by_name(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def resolve(self, model: str) -> Route | None:
        """The route for ``model``, or None when it names nothing known."""
        if model == AUTO:
            return self._by_name[self.config.default_route]
        return self._by_name.get(model) or self._by_model.get(model)

    def model_ids(self) -> list[str]:
        """Every accepted ``model`` value: auto, routes, then backend models (no repeats)."""
        ids = [AUTO, *self._by_name]
        ids += [m for m in self._by_model if m not in ids]
        return ids


def clashes(config: DeliberateConfig) -> list[str]:
    """Warnings for names that mean two things, and pools no model name can reach."""
    warnings: list[str] = []
    routes = {r.name for r in config.routes}
    seen_models: dict[str, str] = {}
    in_use = set(config.pools_in_use())
    for i, pool in enumerate(config.backends):
        if pool.model in routes:
            warnings.append(
                f"backends[{i}].model: {pool.model!r} is also a route name; the route wins"
            )
        if pool.model in seen_models:
            warnings.append(
                f"backends[{i}].model: {pool.model!r} is also served by pool "
                f"{seen_models[pool.model]!r}; that pool's default route wins"
            )
        seen_models.setdefault(pool.model, pool.name)
        if pool.name not in in_use:
            warnings.append(f"backends[{i}]: pool {pool.name!r} has no route; nothing will use it")
    return warnings
