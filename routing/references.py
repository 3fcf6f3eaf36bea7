"""Checks across sections of the policy file: names that must exist, be unique, or not loop.

Each problem is ``(path, message)``; ``DeliberateConfig``'s validator joins them into the
``file:path: message`` lines ``deliberate check-config`` prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strategies.verifiers.registry import params_problems

_RESERVED_CLASSES = ("explicit", "tenant", "effort", "default")

if TYPE_CHECKING:
    from routing.config import DeliberateConfig


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
    problems += _trace_problems(cfg)
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


def _trace_problems(cfg: DeliberateConfig) -> list[tuple[str, str]]:
    """Opted-in tenants must exist (``anonymous`` only with open access)."""
    names = [t.name for t in cfg.tenants] or ["anonymous"]
    return [
        (f"traces.tenants[{i}]", f"unknown tenant {name!r}; tenants: {names}")
        for i, name in enumerate(cfg.traces.tenants)
        if name not in names
    ]


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
        if c.name in _RESERVED_CLASSES:
            problems.append(
                (f"classes[{i}].name", f"{c.name!r} is reserved (decisions made without a class)")
            )
        seen.add(c.name)
    for i, r in enumerate(cfg.routes):
        for j, rung in enumerate(r.escalate_to or ()):
            for loc, msg in params_problems(rung.verifier, rung.verifier_params):
                base = f"routes[{i}].escalate_to[{j}].verifier_params"
                problems.append((f"{base}.{loc}" if loc else base, msg))
            if rung.route is None:
                continue
            path = f"routes[{i}].escalate_to[{j}].route"
            need_route(path, rung.route)
            if rung.route == r.name:
                problems.append((path, "a route cannot escalate to itself"))
            elif any(x.name == rung.route and x.escalate_to for x in cfg.routes):
                problems.append(
                    (path, f"route {rung.route!r} has a ladder itself; ladders do not nest")
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
        if cp.gain is not None:
            for key in ("cheap", "ladder"):
                target = getattr(cp.gain, key)
                path = f"policy.classes.{name}.gain.{key}"
                if target not in cp.routes:
                    problems.append((path, f"{target!r} is not one of the class's routes"))
            ladder = next((r for r in cfg.routes if r.name == cp.gain.ladder), None)
            if ladder is not None and not ladder.escalate_to and ladder.strategy == "single-pass":
                path = f"policy.classes.{name}.gain.ladder"
                problems.append(
                    (path, f"route {ladder.name!r} is one plain pass: give it an escalate_to "
                     "ladder or name a multi-sample route")
                )  # fmt: skip
    for effort, route in p.effort_routes.items():
        need_route(f"policy.effort_routes.{effort}", route)
    return problems
