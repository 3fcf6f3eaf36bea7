"""Calibration, the pure part: outcomes → evaluation cells → chosen budgets → policy file.

``gateway/calibrate.py`` runs an eval set through route variants (one per route × budget) and
records an ``Outcome`` per (item, route, budget); everything here takes and returns data.

How a budget B is applied to a route (``apply_budget``; the same edit makes the variants that
are measured and the calibrated policy file, so the file says what was measured):

- ``single-pass``: the variant measured has ``budget.max_visible_tokens`` = B (the runner also
  sends ``max_tokens: B``); the calibrated file records B in ``measured`` but does not cap the
  route — an answer cap on a plain route (the default one, a ladder) would cut every long
  answer a client asks for, and a client's own ``max_tokens`` still applies.
- ``bounded-reasoning``: B is the thinking budget (``params.budget``) and the answer cap
  (``params.max_tokens``), so a request generates at most 2B (less under the route's caps).
- every other strategy: ``params.max_tokens`` = B (per candidate, per step for prm-search).
"""

from __future__ import annotations

import copy
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from routing.config import DeliberateConfig

ALL = "all"
"""The class name of the rows that pool every class (also the router's fallback)."""


@dataclass(frozen=True)
class Outcome:
    """One eval item answered by one route at one budget."""

    item_id: str
    request_class: str
    family: str
    difficulty: str
    route: str
    budget: int | None
    correct: bool
    prompt_tokens: int
    visible_tokens: int
    hidden_tokens: int
    ttft_ms: float | None
    latency_ms: float
    error: str | None = None
    gate_features: dict[str, float] | None = None
    """The answer's learned-gate features, measured for the gate's source route only."""

    @property
    def key(self) -> tuple[str, str, int | None]:
        """The results-cache key."""
        return (self.item_id, self.route, self.budget)

    @property
    def generated(self) -> int:
        return self.visible_tokens + self.hidden_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Cell:
    """Class × route × budget: what the eval measured there."""

    request_class: str
    route: str
    budget: int | None
    items: int
    correct: int
    errors: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_tokens: float
    mean_generated: float
    mean_hidden: float
    p50_ms: float
    p95_ms: float
    p50_ttft_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _cell(request_class: str, route: str, budget: int | None, group: Sequence[Outcome]) -> Cell:
    n = len(group)
    correct = sum(o.correct for o in group)
    low, high = wilson_interval(correct, n)
    ttfts = [o.ttft_ms for o in group if o.ttft_ms is not None]
    return Cell(
        request_class=request_class,
        route=route,
        budget=budget,
        items=n,
        correct=correct,
        errors=sum(o.error is not None for o in group),
        accuracy=correct / n,
        ci_low=low,
        ci_high=high,
        mean_tokens=sum(o.tokens for o in group) / n,
        mean_generated=sum(o.generated for o in group) / n,
        mean_hidden=sum(o.hidden_tokens for o in group) / n,
        p50_ms=percentile([o.latency_ms for o in group], 50),
        p95_ms=percentile([o.latency_ms for o in group], 95),
        p50_ttft_ms=percentile(ttfts, 50) if ttfts else None,
    )


def summarize(outcomes: Iterable[Outcome]) -> list[Cell]:
    """One cell per class × route × budget, plus class ``all``; sorted by class, route, budget.

    An outcome with an error counts as answered wrongly (and in ``errors``)."""
    groups: dict[tuple[str, str, int | None], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[(o.request_class, o.route, o.budget)].append(o)
        if o.request_class != ALL:
            groups[(ALL, o.route, o.budget)].append(o)
    cells = [_cell(c, r, b, g) for (c, r, b), g in groups.items()]
    return sorted(cells, key=lambda c: (c.request_class != ALL, c.request_class, c.route, _b(c)))


def _b(cell: Cell) -> int:
    return -1 if cell.budget is None else cell.budget


def choose_budgets(
    cells: Sequence[Cell], slo_ms: Mapping[str, float | None]
) -> dict[str, int | None]:
    """Per route: the budget with the best accuracy (class ``all``) among those whose p95
    latency meets the route's SLO; ties go to fewer mean tokens, then the smaller budget.
    None when no budget meets the SLO. A route missing from ``slo_ms`` has no SLO."""
    by_route: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if c.request_class == ALL:
            by_route[c.route].append(c)
    chosen: dict[str, int | None] = {}
    for route, candidates in sorted(by_route.items()):
        slo = slo_ms.get(route)
        ok = [c for c in candidates if slo is None or c.p95_ms <= slo]
        best = min(ok, key=lambda c: (-c.accuracy, c.mean_tokens, _b(c)), default=None)
        chosen[route] = None if best is None else best.budget
    return chosen


def route_slos(config: DeliberateConfig) -> dict[str, float | None]:
    """Each route's latency SLO for budget choice: the tightest ``policy.classes.*.
    latency_slo_ms`` of the classes listing it, else its ``budget.deadline_s``, else None."""
    slos: dict[str, float | None] = {}
    for r in config.routes:
        limits = [
            cp.latency_slo_ms
            for cp in (config.policy.classes.values() if config.policy else [])
            if r.name in cp.routes and cp.latency_slo_ms is not None
        ]
        deadline = r.budget.deadline_s * 1000 if r.budget.deadline_s is not None else None
        slos[r.name] = min(limits) if limits else deadline
    return slos


def apply_budget(route: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """A copy of the route (as in the YAML) with budget B applied (see the module doc)."""
    out = copy.deepcopy(dict(route))
    strategy = out.get("strategy")
    if strategy == "single-pass":  # the answer's cap (clients' max_tokens are cut to it)
        out["budget"] = {**dict(out.get("budget") or {}), "max_visible_tokens": budget}
        return out
    params = dict(out.get("params") or {})
    if strategy == "bounded-reasoning":
        params["budget"] = budget
    params["max_tokens"] = budget
    out["params"] = params
    return out


def variant_name(route: str, budget: int) -> str:
    """The name of the route variant measured at ``budget`` (``best-of-n:64``)."""
    return f"{route}:{budget}"


def variant_config(
    raw: Mapping[str, Any], routes: Sequence[str], budgets: Sequence[int]
) -> dict[str, Any]:
    """The policy file for a calibration run: the original routes plus one variant per
    route × budget (budget applied, no downgrade, measured table cleared); admission off (a
    route is measured as itself), no tenants (open access), no router policy."""
    out = copy.deepcopy(dict(raw))
    by_name = {r["name"]: r for r in out["routes"]}
    for name in routes:
        for b in budgets:
            v = apply_budget(by_name[name], b)
            v["name"] = variant_name(name, b)
            v.pop("downgrade_to", None)
            v.pop("measured", None)
            out["routes"].append(v)
    out["admission"] = {**(out.get("admission") or {}), "enabled": False}
    out.pop("tenants", None)
    out.pop("policy", None)
    return out


def _measured(cell: Cell) -> dict[str, Any]:
    return {
        "quality": round(cell.accuracy, 4),
        "p50_ms": round(cell.p50_ms, 1),
        "p95_ms": round(cell.p95_ms, 1),
        "tokens": round(cell.mean_tokens, 1),
        "items": cell.items,
        "budget": cell.budget,
    }


def updated_config(
    raw: Mapping[str, Any],
    cells: Sequence[Cell],
    chosen: Mapping[str, int | None],
    predictor_path: str | None,
) -> dict[str, Any]:
    """A copy of the policy file with, per route with a chosen budget: the budget applied
    (except to single-pass routes, see the module doc) and ``measured`` replaced by the chosen
    budget's cells (one entry per class, plus ``all``).
    Routes without a chosen budget are left as they were. ``policy.predictor.path`` is set to
    ``predictor_path`` when given and the file has a ``policy`` section."""
    out = copy.deepcopy(dict(raw))
    routes: list[dict[str, Any]] = []
    for route in out["routes"]:
        budget = chosen.get(route["name"])
        if budget is not None:
            if route.get("strategy") != "single-pass":
                route = apply_budget(route, budget)
            route["measured"] = {
                c.request_class: _measured(c)
                for c in cells
                if c.route == route["name"] and c.budget == budget
            }
        routes.append(route)
    out["routes"] = routes
    if predictor_path is not None and isinstance(out.get("policy"), dict):
        policy = dict(out["policy"])
        policy["predictor"] = {**(policy.get("predictor") or {}), "path": predictor_path}
        out["policy"] = policy
    return out


DEFAULT_MIN_GAIN = 0.05


@dataclass(frozen=True)
class Escalation:
    """What calibration found pays for one class: ``route`` (a ladder or a multi-sample
    route) measured ``gain`` over the cheap route, at quality ``quality``; it becomes the
    class's gain-rule escalation."""

    route: str
    ladder: bool
    quality: float
    gain: float
    gain_low: float | None = None  # lower end of the gain's paired 95 % bootstrap interval


def choose_escalations(
    raw: Mapping[str, Any],
    cells: Sequence[Cell],
    chosen: Mapping[str, int | None],
    ladders: Sequence[str],
    strategies: Sequence[str] = (),
    outcomes: Sequence[Outcome] = (),
    exact: Sequence[str] = (),
) -> dict[str, Escalation]:
    """Per policy class measured in ``cells``: the escalation route (at its chosen budget)
    that pays over the class's cheap route (``gain.cheap``, else the class's first route).

    Candidates: ``ladders`` (routes with ``escalate_to``) and ``strategies`` (multi-sample
    routes). A candidate pays when its measured gain (accuracy − the cheap route's) reaches
    the class's ``gain.min_gain`` (default ``DEFAULT_MIN_GAIN``) and — with ``outcomes``, the
    per-item results — the lower end of the gain's paired 95 % bootstrap interval is not
    below 0: it was never measured significantly worse than the cheap route on the same
    items. Choosing the best of many candidates on a few dozen items rewards luck; this
    conservative rule keeps the escalations whose gain is not mostly noise (a ladder whose
    exact check only replaces rejected answers qualifies; a vote that fixes three items and
    breaks two does not). Among those that pay: the highest lower bound, then the larger
    gain, then a ladder whose check is ``exact`` (an exact checker, such as the arithmetic
    one, rather than a heuristic such as token confidence: what a few dozen items cannot tell
    apart, verification should), then fewer generated tokens. Classes where nothing pays are
    absent."""
    policy = raw.get("policy") or {}
    at = {(c.request_class, c.route): c for c in cells if c.budget == chosen.get(c.route)}
    right: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    for o in outcomes:
        if o.budget == chosen.get(o.route):
            right[(o.request_class, o.route)][o.item_id] = o.correct
    pool = [*ladders, *strategies]
    out: dict[str, Escalation] = {}
    for name, cp in (policy.get("classes") or {}).items():
        gain = cp.get("gain") or {}
        cheap = gain.get("cheap") or (cp.get("routes") or [None])[0]
        base = at.get((name, cheap))
        if base is None:
            continue
        min_gain = float(gain.get("min_gain", DEFAULT_MIN_GAIN))
        scored = []
        for r in pool:
            if (name, r) not in at or r == cheap:
                continue
            d = at[(name, r)].accuracy - base.accuracy
            low = None
            if outcomes:
                mine, theirs = right[(name, r)], right[(name, cheap)]
                items = sorted(set(mine) & set(theirs))
                _, low, _ = paired_bootstrap(
                    [mine[i] for i in items], [theirs[i] for i in items], reps=2000, seed=0
                )
                if low < 0:
                    continue
            if d >= min_gain:
                checked = r in exact
                scored.append((low or 0.0, d, checked, -at[(name, r)].mean_generated, r))
        if scored:
            low, d, _, _, route = max(scored)
            quality = round(at[(name, route)].accuracy, 4)
            lo = None if not outcomes else round(low, 4)
            out[name] = Escalation(route, route in ladders, quality, round(d, 4), lo)
    return out


def apply_escalations(
    raw: Mapping[str, Any], escalations: Mapping[str, Escalation]
) -> dict[str, Any]:
    """A copy of the policy file where each class in ``escalations`` escalates to that route
    by its gain rule: ``gain.ladder`` is set (a ``gain`` section added, cheap = the first
    route, when missing) and the route joins the class's ``routes``."""
    out = copy.deepcopy(dict(raw))
    classes = (out.get("policy") or {}).get("classes") or {}
    for name, esc in escalations.items():
        cp = classes[name]
        routes = list(cp.get("routes") or [])
        gain = dict(cp.get("gain") or {"cheap": routes[0], "min_gain": DEFAULT_MIN_GAIN})
        gain["ladder"] = esc.route
        cp["gain"] = gain
        if esc.route not in routes:
            cp["routes"] = [*routes, esc.route]
    return out


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], reps: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a − b over paired items and its 95 % percentile interval, items resampled
    with replacement ``reps`` times from ``random.Random(seed)``; (0, 0, 0) for no items."""
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    if n == 0:
        return (0.0, 0.0, 0.0)
    mean = sum(diffs) / n
    if all(d == diffs[0] for d in diffs):
        return (mean, mean, mean)
    rng = random.Random(seed)
    boot = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(reps))
    return (mean, boot[int(0.025 * (reps - 1))], boot[round(0.975 * (reps - 1))])


def training_data(
    outcomes: Iterable[Outcome], chosen: Mapping[str, int | None]
) -> tuple[list[str], dict[str, list[bool]]]:
    """Predictor labels: the item ids answered (without error) by every route at its chosen
    budget, and per route the correctness on those items, in the same order."""
    by_route: dict[str, dict[str, bool]] = {r: {} for r, b in chosen.items() if b is not None}
    for o in outcomes:
        if o.route in by_route and o.budget == chosen[o.route] and o.error is None:
            by_route[o.route][o.item_id] = o.correct
    if not by_route:
        return [], {}
    common = set.intersection(*(set(d) for d in by_route.values()))
    ids = sorted(common)
    return ids, {r: [d[i] for i in ids] for r, d in by_route.items()}


CSV_HEADER = [f.name for f in fields(Cell)]


def csv_rows(cells: Sequence[Cell]) -> list[list[str]]:
    """The header, then one row per cell (floats to 4 places; empty for None)."""

    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    return [CSV_HEADER, *([fmt(getattr(c, h)) for h in CSV_HEADER] for c in cells)]


def markdown_table(cells: Sequence[Cell], chosen: Mapping[str, int | None] | None = None) -> str:
    """The cells as a markdown table; a ✓ marks each route's chosen budget (when given)."""
    head = (
        "| class | route | budget | items | accuracy | 95 % CI | mean tokens | generated "
        "| hidden | p50 ms | p95 ms | p50 TTFT ms | errors | chosen |\n"
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|:-:|\n"
    )
    rows = []
    for c in cells:
        mark = "✓" if chosen is not None and chosen.get(c.route) == c.budget else ""
        ttft = "" if c.p50_ttft_ms is None else f"{c.p50_ttft_ms:.0f}"
        rows.append(
            f"| {c.request_class} | {c.route} | {'' if c.budget is None else c.budget} "
            f"| {c.items} | {c.accuracy:.3f} | {c.ci_low:.2f}–{c.ci_high:.2f} "
            f"| {c.mean_tokens:.1f} | {c.mean_generated:.1f} | {c.mean_hidden:.1f} "
            f"| {c.p50_ms:.0f} | {c.p95_ms:.0f} | {ttft} | {c.errors} | {mark} |\n"
        )
    return head + "".join(rows)
