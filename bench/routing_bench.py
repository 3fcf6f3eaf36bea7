"""Routing benchmark: ``model: "auto"`` on the shipped policy against every fixed route.

Runs a HELD-OUT eval set (``routing.evalset.make_eval_set(split="heldout")``; default 60
items, seed 1, 30 % hard: questions calibration never saw, worded with phrasing templates it
never saw — ``deliberate calibrate`` fits on the "fit" split and checks itself on held-out seed
0) through an in-process gateway on the policy file ``make up``
serves (``configs/routes.yaml``, read when the run starts; ``--config`` picks another) against
the real vLLM backend it names. Every item goes to ``auto`` and to every fixed route:
``single-pass`` (greedy: the client sets no temperature, the route's own sampling is T=0),
``sampled-single-pass`` (T=0.8), ``greedy-ladder``, ``confidence-ladder``,
``bounded-reasoning``, ``best-of-n`` (n=8), ``best-of-16-checked`` (bench only: a copy of
``best-of-n`` with n=16, the weighted selector and the arithmetic verifier),
``self-consistency``, ``adaptive-consistency``, ``adaptive-confidence``, ``refine`` and
``prm-search``. In memory only,
every route's deadline is raised to 600 s (load must not cut a route short) and
``limits.max_n`` to the largest n any route uses. The client sends ``model``, ``messages`` and
``max_tokens`` — nothing else, like a new user.

Reported per model: accuracy with a Wilson 95 % CI, the paired difference auto − model with a
seeded 95 % paired bootstrap over items, generated tokens per item (visible + hidden, from
``usage``), p50/p95 latency; for auto its route mix per class and its ladders' outcomes
(``deliberate.ladder``); and the routing decision latency (``Router.decide`` of the app's own
router over every held-out item, >= 2000 decisions). Targets, each printed as met / NOT met:
(1) auto >= greedy single-pass + 10 points, paired CI of auto − greedy above 0; (2) auto not
significantly below the best fixed route (paired CI upper end >= 0); (3) auto's generated
tokens <= 35 % of best-of-16-checked's; (4) routing decision p99 <= 1 ms.

Writes ``bench/results/routing.json`` (every request's outcome), ``routing.md`` and the
accuracy-vs-tokens frontier ``routing_frontier.png``.

    python bench/routing_bench.py [--items 60] [--seed 1] [--config configs/routes.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from gateway.app import create_app
from gateway.calibration_transport import StreamingASGITransport
from gateway.settings import Settings
from routing.calibration import paired_bootstrap, percentile, wilson_interval
from routing.config import DeliberateConfig
from routing.evalset import EvalItem, check_answer, make_eval_set
from routing.loader import parse_config
from routing.policy import LiveLatency, Router

ROOT = Path(__file__).resolve().parents[1]
AUTO = "auto"
GREEDY = "single-pass"
CHECKED = "best-of-16-checked"
FIXED = (
    GREEDY,
    "sampled-single-pass",
    "greedy-ladder",
    "confidence-ladder",
    "bounded-reasoning",
    "best-of-n",
    CHECKED,
    "self-consistency",
    "adaptive-consistency",
    "adaptive-confidence",
    "refine",
    "prm-search",
)
LABELS = {GREEDY: "greedy single-pass"}
DEADLINE_S = 600.0
MIN_DECISIONS = 2000


def label(model: str) -> str:
    return LABELS.get(model, model)


# --------------------------------------------------------------------------------------------
# The benchmark's in-memory config (pure)


def bench_config(
    raw: Mapping[str, Any],
    *,
    checked_n: int = 16,
    deadline_s: float = DEADLINE_S,
    client_max_tokens: int | None = None,
) -> dict[str, Any]:
    """A patched deep copy of the policy file's YAML mapping ``raw``: a ``best-of-16-checked``
    route (a copy of ``best-of-n`` with ``n: checked_n``, ``selector: weighted``, ``verifier:
    arithmetic``, ``max_candidates`` >= n and a token budget that fits n candidates of the
    larger of the route's and the client's per-sample cap), every route's ``deadline_s`` raised
    to ``deadline_s``, and ``limits.max_n`` raised to the largest n any route samples. Nothing
    else changes (the policy section is served as written). ``ValueError`` without a
    ``best-of-n`` route or when the bench route's name is taken."""
    config: dict[str, Any] = copy.deepcopy(dict(raw))
    routes: list[dict[str, Any]] = config.get("routes") or []
    if any(r.get("name") == CHECKED for r in routes):
        raise ValueError(f"the policy file already has a route named {CHECKED!r}")
    base = next((r for r in routes if r.get("name") == "best-of-n"), None)
    if base is None:
        raise ValueError("the policy file has no 'best-of-n' route to copy")
    checked = copy.deepcopy(base)
    checked["name"] = CHECKED
    params = checked.setdefault("params", {})
    params.update({"n": checked_n, "selector": "weighted", "verifier": "arithmetic"})
    per_sample = max(int(params.get("max_tokens") or 256), client_max_tokens or 0)
    budget = checked.setdefault("budget", {})
    budget["max_candidates"] = max(int(budget.get("max_candidates") or 0), checked_n)
    need = checked_n * per_sample
    budget["max_total_tokens"] = max(int(budget.get("max_total_tokens") or 0), need)
    if budget.get("max_hidden_tokens") is not None:
        budget["max_hidden_tokens"] = max(int(budget["max_hidden_tokens"]), need)
    routes.insert(routes.index(base) + 1, checked)
    largest_n = 1
    for route in routes:
        b = route.setdefault("budget", {})
        b["deadline_s"] = max(float(b.get("deadline_s") or 0.0), deadline_s)
        p = route.get("params") or {}
        largest_n = max(largest_n, int(p.get("n") or 1), sum(p.get("waves") or [1]))
        for rung in route.get("escalate_to") or []:
            largest_n = max(largest_n, int(rung.get("samples") or 1))
    limits = config.setdefault("limits", {})
    limits["max_n"] = max(int(limits.get("max_n") or 16), largest_n)
    config["routes"] = routes
    return config


# --------------------------------------------------------------------------------------------
# Statistics and targets (pure)


def summarise(model: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One table row: accuracy [Wilson 95 %], by difficulty, tokens per item, latency, errors."""
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson_interval(correct, n)
    lat = [float(r["latency_ms"]) for r in rows]
    by_difficulty = {}
    for d in ("easy", "hard"):
        group = [r for r in rows if r.get("difficulty") == d]
        if group:
            by_difficulty[d] = sum(bool(r["correct"]) for r in group) / len(group)
    return {
        "model": model,
        "label": label(model),
        "items": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci": [lo, hi],
        "by_difficulty": by_difficulty,
        "generated_per_item": statistics.fmean(r["generated"] for r in rows) if rows else 0.0,
        "hidden_per_item": statistics.fmean(r["hidden"] for r in rows) if rows else 0.0,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "errors": sum(r["status"] != 200 for r in rows),
        "downgraded": sum(r.get("requested_route") is not None for r in rows),
    }


def route_mix(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Served route counts per request class (as the gateway reported them)."""
    mix: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        mix[str(r["class"])][str(r["route"])] += 1
    return {k: dict(v.most_common()) for k, v in sorted(mix.items())}


def ladder_outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per route that ran a ladder: requests, the ``stopped_at`` and ``start_rung``
    distributions, and how many ended verified (from ``deliberate.ladder``)."""
    out: dict[str, dict[str, Any]] = {}
    for route in sorted({str(r["route"]) for r in rows if r.get("ladder")}):
        ladders = [r["ladder"] for r in rows if r.get("ladder") and r["route"] == route]
        out[route] = {
            "requests": len(ladders),
            "rungs": ladders[0].get("rungs", []),
            "stopped_at": dict(sorted(Counter(int(x["stopped_at"]) for x in ladders).items())),
            "start_rung": dict(
                sorted(Counter(int(x.get("start_rung", 0)) for x in ladders).items())
            ),
            "verified": sum(bool(x.get("verified")) for x in ladders),
        }
    return out


def best_fixed(table: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The most accurate fixed route (ties: the one with fewer generated tokens)."""
    fixed = [t for t in table if t["model"] != AUTO]
    return max(fixed, key=lambda t: (t["accuracy"], -t["generated_per_item"]))


def check_targets(
    table: Sequence[Mapping[str, Any]],
    decision: Mapping[str, Any],
    *,
    margin: float = 0.10,
    token_share: float = 0.35,
    p99_budget_us: float = 1000.0,
) -> list[dict[str, Any]]:
    """The four targets, each ``{target, met, detail}``. Rows carry ``auto_minus`` =
    ``{diff, ci}`` (paired, auto − row) for every fixed model."""
    by = {t["model"]: t for t in table}
    auto, greedy, checked = by[AUTO], by[GREEDY], by[CHECKED]
    g = greedy["auto_minus"]
    best = best_fixed(table)
    b = best["auto_minus"]
    share = (
        auto["generated_per_item"] / checked["generated_per_item"]
        if checked["generated_per_item"]
        else float("inf")
    )
    p99 = float(decision["p99_us"])

    def ci(d: Mapping[str, Any]) -> str:
        return f"{d['diff']:+.1%} [{d['ci'][0]:+.1%}, {d['ci'][1]:+.1%}]"

    return [
        {
            "target": f"auto >= greedy single-pass + {margin:.0%} points, paired CI above 0",
            "met": g["diff"] >= margin - 1e-12 and g["ci"][0] > 0,
            "detail": f"auto {auto['accuracy']:.1%} vs greedy {greedy['accuracy']:.1%}: "
            f"auto − greedy {ci(g)}",
        },
        {
            "target": "auto not significantly below the best fixed route",
            "met": b["ci"][1] >= 0,
            "detail": f"best fixed = {best['label']} {best['accuracy']:.1%}; auto "
            f"{auto['accuracy']:.1%}; auto − best {ci(b)}",
        },
        {
            "target": f"auto's generated tokens <= {token_share:.0%} of {CHECKED}'s",
            "met": share <= token_share,
            "detail": f"{auto['generated_per_item']:.0f} vs {checked['generated_per_item']:.0f} "
            f"tok/item = {share:.1%}",
        },
        {
            "target": f"routing decision p99 <= {p99_budget_us / 1000:g} ms",
            "met": p99 <= p99_budget_us,
            "detail": f"p50 {decision['p50_us']:.1f} µs, p99 {p99:.1f} µs over "
            f"{decision['decisions']} decisions",
        },
    ]


# --------------------------------------------------------------------------------------------
# Decision latency


class Decides(Protocol):
    def decide(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, live: Any = ...
    ) -> Any: ...


def decision_latency(
    router: Decides,
    prompts: Sequence[Sequence[Mapping[str, Any]]],
    min_decisions: int = MIN_DECISIONS,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, Any]:
    """Time ``router.decide("auto", ...)`` over whole passes of ``prompts`` (after one
    untimed warm-up pass) until at least ``min_decisions``; p50/p99/max in µs. The live
    state is a constant (an idle, healthy backend): this times the router, not the scraper."""
    state = LiveLatency()

    def live(_route: Any) -> LiveLatency:
        return state

    for messages in prompts:
        router.decide(AUTO, messages, live=live)
    passes = -(-min_decisions // max(1, len(prompts)))
    times: list[float] = []
    for _ in range(passes):
        for messages in prompts:
            t0 = clock()
            router.decide(AUTO, messages, live=live)
            times.append((clock() - t0) / 1000)
    return {
        "decisions": len(times),
        "p50_us": percentile(times, 50),
        "p99_us": percentile(times, 99),
        "max_us": max(times, default=0.0),
        "mean_us": statistics.fmean(times) if times else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Requests


async def ask(
    client: httpx.AsyncClient, item: EvalItem, model: str, max_tokens: int | None
) -> dict[str, Any]:
    """One non-streaming chat request (model, messages, max_tokens only); its outcome."""
    body: dict[str, Any] = {"model": model, "messages": item.messages}
    if max_tokens:
        body["max_tokens"] = max_tokens
    start = time.perf_counter()
    try:
        r = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as e:  # counted as a wrong answer, with the error kept
        request = httpx.Request("POST", "http://gw/v1/chat/completions")
        r = httpx.Response(599, text=f"{type(e).__name__}: {e}", request=request)
    latency = (time.perf_counter() - start) * 1000
    data: dict[str, Any] = {}
    try:
        data = r.json()
    except ValueError:
        pass
    text = ""
    if r.status_code == 200 and data.get("choices"):
        text = (data["choices"][0].get("message") or {}).get("content") or ""
    usage = data.get("usage") or {}
    hidden = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    extension = data.get("deliberate") or {}
    return {
        "item": item.id,
        "family": item.family,
        "difficulty": item.difficulty,
        "model": model,
        "route": r.headers.get("x-deliberate-route", "?"),
        "class": r.headers.get("x-deliberate-class", "?"),
        "reason": r.headers.get("x-deliberate-reason"),
        "requested_route": r.headers.get("x-deliberate-requested-route"),
        "status": r.status_code,
        "correct": r.status_code == 200 and check_answer(item, text),
        "reference": item.reference,
        "text": text,
        "generated": int(usage.get("completion_tokens") or 0),
        "hidden": hidden,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "latency_ms": latency,
        "stop_reason": extension.get("stop_reason"),
        "samples": extension.get("samples"),
        "ladder": extension.get("ladder"),
        "error": None if r.status_code == 200 else r.text[:300],
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config).resolve()
    sha_start = file_sha256(config_path)
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    patched = bench_config(raw, client_max_tokens=args.max_tokens or None)
    config: DeliberateConfig = parse_config(
        yaml.safe_dump(patched, sort_keys=False), f"{config_path} (bench-patched)"
    )
    fixed = [r for r in args.routes.split(",") if r]
    for name in fixed:
        config.route(name)  # KeyError early for a route the policy file lacks
    models = [AUTO, *fixed]
    items = make_eval_set(args.items, args.seed, args.hard_share, split="heldout")
    settings = Settings(config=config_path, reload_interval_s=0, access_log=False)
    app = create_app(settings, config)
    rows: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(args.concurrency)
    total = len(items) * len(models)
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        router: Router = app.state.services.state.router
        transport = StreamingASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=900) as c:
            warm = EvalItem("warm-up", items[0].messages, "0", "number", "warm-up", "easy")
            await ask(c, warm, GREEDY, 4)

            async def one(item: EvalItem, model: str) -> None:
                async with sem:
                    rows.append(await ask(c, item, model, args.max_tokens or None))
                    done = time.perf_counter() - started
                    print(f"  {len(rows)}/{total} ({done / 60:.1f} min)", end="\r", flush=True)

            # item-major, the model order rotated per item: every model runs next to every other
            jobs = [(i, models[(k + j) % len(models)]) for k, i in enumerate(items) for j in range(len(models))]  # fmt: skip
            await asyncio.gather(*(one(i, m) for i, m in jobs))
    wall_s = time.perf_counter() - started
    print()
    prompts = [i.messages for i in items]
    decision = decision_latency(router, prompts)
    decided = [router.decide(AUTO, m) for m in prompts]
    policy_routes = Counter(dec.route for dec in decided if dec is not None)
    ids = [i.id for i in items]
    by = {m: {r["item"]: r for r in rows if r["model"] == m} for m in models}
    table = [summarise(m, [by[m][i] for i in ids]) for m in models]
    auto_correct = [bool(by[AUTO][i]["correct"]) for i in ids]
    for t in table:
        if t["model"] != AUTO:
            other = [bool(by[t["model"]][i]["correct"]) for i in ids]
            d, lo, hi = paired_bootstrap(
                auto_correct, other, args.bootstrap_reps, args.bootstrap_seed
            )
            t["auto_minus"] = {"diff": d, "ci": [lo, hi]}
    auto_rows = [by[AUTO][i] for i in ids]
    result: dict[str, Any] = {
        "benchmark": "routing",
        "config": str(
            config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
        ),
        "config_sha256": sha_start,
        "config_changed_during_run": file_sha256(config_path) != sha_start,
        "policy": raw.get("policy"),
        "items": len(items),
        "seed": args.seed,
        "hard_share": args.hard_share,
        "mix": dict(Counter(i.difficulty for i in items)),
        "max_tokens": args.max_tokens or None,
        "concurrency": args.concurrency,
        "bootstrap": {"reps": args.bootstrap_reps, "seed": args.bootstrap_seed},
        "wall_s": wall_s,
        "table": table,
        "best_fixed": best_fixed(table)["model"],
        "auto_route_mix": route_mix(auto_rows),
        "auto_ladders": ladder_outcomes(auto_rows),
        "fixed_ladders": ladder_outcomes([r for r in rows if r["model"] != AUTO]),
        "decision_latency": decision,
        "router_routes_on_items": dict(policy_routes),
        "rows": sorted(rows, key=lambda r: (ids.index(r["item"]), models.index(r["model"]))),
    }
    result["targets"] = check_targets(table, decision)
    return result


# --------------------------------------------------------------------------------------------
# Output


def _ci(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "—"
    return f"{d['diff']:+.1%} [{d['ci'][0]:+.1%}, {d['ci'][1]:+.1%}]"


def markdown(result: Mapping[str, Any]) -> str:
    out = [
        f"{result['items']} held-out items (seed {result['seed']}, held-out phrasing templates, "
        f"{result['mix']}), policy "
        f"`{result['config']}` (sha256 {result['config_sha256'][:12]}), client max_tokens "
        f"{result['max_tokens']}, concurrency {result['concurrency']}, run "
        f"{result['wall_s'] / 60:.1f} min",
        "",
        "| model | accuracy [95 % CI] | easy / hard | auto − model [95 % paired CI] "
        "| generated tok/item (hidden) | p50 s | p95 s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in result["table"]:
        name = f"**{t['label']}**" if t["model"] == AUTO else t["label"]
        diff = t["by_difficulty"]
        split = " / ".join(f"{diff[k]:.0%}" if k in diff else "—" for k in ("easy", "hard"))
        out.append(
            f"| {name} | {t['accuracy']:.1%} [{t['ci'][0]:.1%}, {t['ci'][1]:.1%}] | {split} | "
            f"{_ci(t.get('auto_minus'))} | {t['generated_per_item']:.0f} "
            f"({t['hidden_per_item']:.0f}) | {t['p50_ms'] / 1000:.1f} | "
            f"{t['p95_ms'] / 1000:.1f} | {t['errors']} |"
        )
    out += ["", "Targets:", ""]
    for t in result["targets"]:
        out.append(f"- {'met' if t['met'] else 'NOT met'}: {t['target']} — {t['detail']}")
    out += ["", "auto's route mix per class (served route: requests):", ""]
    for klass, mix in result["auto_route_mix"].items():
        out.append(f"- {klass}: " + ", ".join(f"{r} {n}" for r, n in mix.items()))
    out += ["", "Ladder outcomes (`deliberate.ladder`; stopped_at 0 = the greedy answer kept):", ""]
    for who, ladders in (("auto", result["auto_ladders"]), ("fixed", result["fixed_ladders"])):
        for route, o in ladders.items():
            out.append(
                f"- {who} → {route} ({'>'.join(o['rungs'])}): {o['requests']} requests; "
                f"stopped_at {o['stopped_at']}; start_rung {o['start_rung']}; "
                f"verified {o['verified']}/{o['requests']}"
            )
    d = result["decision_latency"]
    out += [
        "",
        f"Routing decision (`Router.decide`, the app's router, {d['decisions']} decisions over "
        f"the held-out items): p50 {d['p50_us']:.1f} µs, p99 {d['p99_us']:.1f} µs, max "
        f"{d['max_us']:.1f} µs.",
    ]
    if result["config_changed_during_run"]:
        out.append(
            f"\nNote: `{result['config']}` changed during the run; the run used its start state."
        )
    return "\n".join(out)


LABEL_OFFSETS = ((6, 4), (6, -12), (-6, 4), (-6, -12), (6, 14), (6, -22), (-6, 14), (-6, -22))
"""Label positions tried in turn (offset points from the marker; negative x: text to the left)."""


def place_labels(
    anchors: Sequence[tuple[float, float]],
    widths: Sequence[float],
    height: float = 9.0,
    marker: float = 5.0,
) -> list[tuple[float, float]]:
    """An offset from ``LABEL_OFFSETS`` per label (anchors and sizes in points): the first
    whose box overlaps neither a label placed before it nor any marker (a square of half-side
    ``marker`` around each anchor), else the first. Greedy, in the given order."""
    boxes = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    chosen: list[tuple[float, float]] = []
    for (ax_, ay), w in zip(anchors, widths, strict=True):
        pick, box = None, (0.0, 0.0, 0.0, 0.0)
        for dx, dy in LABEL_OFFSETS:
            x0 = ax_ + dx if dx >= 0 else ax_ + dx - w
            box = (x0, ay + dy, x0 + w, ay + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):  # fmt: skip
                pick = (float(dx), float(dy))
                break
        if pick is None:
            dx, dy = LABEL_OFFSETS[0]
            pick = (float(dx), float(dy))
            box = (ax_ + dx, ay + dy, ax_ + dx + w, ay + dy + height)
        boxes.append(box)
        chosen.append(pick)
    return chosen


def plot_frontier(table: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Accuracy (Wilson 95 % bars) against generated tokens per item, one labelled point per
    model (labels placed so they do not overlap), auto highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fontsize = 8.0
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    xs = [max(float(t["generated_per_item"]), 1.0) for t in table]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.3, max(xs) * 2.0)  # room for labels on the right
    ax.set_ylim(-0.02, 1.02)
    for t, x in zip(table, xs, strict=True):
        is_auto = t["model"] == AUTO
        y = t["accuracy"]
        ax.errorbar(
            [x], [y], yerr=[[y - t["ci"][0]], [t["ci"][1] - y]], fmt="*" if is_auto else "o",
            markersize=16 if is_auto else 7, color="tab:red" if is_auto else "tab:blue",
            ecolor="lightgray", capsize=3, zorder=3 if is_auto else 2,
        )  # fmt: skip
    # label 1, 2, 3 and 5 of each decade only (a log axis's minor ticks crowd otherwise)
    plain = FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "1235" else "")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel("generated tokens per item (visible + hidden, log scale)")
    ax.set_ylabel("accuracy (Wilson 95 % CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()  # before the labels are placed: it moves the axes
    to_points = 72.0 / fig.dpi
    anchors = [
        (float(px) * to_points, float(py) * to_points)
        for px, py in (ax.transData.transform((x, t["accuracy"])) for t, x in zip(table, xs, strict=True))
    ]  # fmt: skip
    widths = [0.62 * fontsize * len(t["label"]) for t in table]
    # auto first: its label gets the best spot
    order = sorted(range(len(table)), key=lambda k: table[k]["model"] != AUTO)
    placed = place_labels([anchors[k] for k in order], [widths[k] for k in order])
    for k, (dx, dy) in zip(order, placed, strict=True):
        t, is_auto = table[k], table[k]["model"] == AUTO
        ax.annotate(
            t["label"], (xs[k], t["accuracy"]), fontsize=fontsize, xytext=(dx, dy),
            textcoords="offset points", ha="left" if dx >= 0 else "right",
            fontweight="bold" if is_auto else "normal", color="tab:red" if is_auto else "black",
        )  # fmt: skip
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "routes.yaml"))
    p.add_argument("--routes", default=",".join(FIXED), help="fixed routes compared with auto")
    p.add_argument("--items", type=int, default=60)
    p.add_argument(
        "--seed", type=int, default=1, help="held-out eval-set seed (calibrate's own check uses 0)"
    )
    p.add_argument("--hard-share", type=float, default=0.3)
    p.add_argument("--max-tokens", type=int, default=128, help="client max_tokens; 0 = unset")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--bootstrap-reps", type=int, default=10000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "routing.json"))
    args = p.parse_args()
    if not {GREEDY, CHECKED} <= set(args.routes.split(",")):
        p.error(f"--routes must include {GREEDY} and {CHECKED} (the targets compare them)")
    result = asyncio.run(run(args))
    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    out.with_suffix(".md").write_text(text + "\n")
    png = out.with_name(out.stem + "_frontier.png")
    title = f"auto vs fixed routes: {result['items']} held-out items (seed {result['seed']})"
    plot_frontier(result["table"], png, title)
    print(f"\nwrote {out}, {out.with_suffix('.md')} and {png}")


if __name__ == "__main__":
    main()
