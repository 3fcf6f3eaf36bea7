"""Routing benchmark: ``model: "auto"`` against every fixed route on a mixed workload.

Runs a HELD-OUT eval set (``routing.evalset``; default 60 items, seed 1, 30 % hard — the
calibration set uses seed 0) through an in-process gateway on the calibrated policy file
(``configs/calibrated/routes.yaml``: routes at their calibrated budgets, measured tables,
learned predictor) against the real vLLM backend it names. Every item is sent to every fixed
route and to ``auto``; the table reports accuracy with a Wilson 95 % CI, the paired
difference auto − route (95 % paired bootstrap over items), generated tokens per item
(visible + hidden) and p50/p95 latency, plus the route mix ``auto`` chose.

Target (issue 6): ``auto`` not significantly below the best fixed route's accuracy (paired)
at no more than 35 % of its generated tokens.

    python bench/routing_bench.py [--items 60] [--seed 1] [--config configs/calibrated/routes.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.calibration_transport import StreamingASGITransport
from gateway.settings import Settings
from routing.calibration import percentile, wilson_interval
from routing.evalset import EvalItem, check_answer, make_eval_set
from routing.loader import load_config

ROOT = Path(__file__).resolve().parents[1]


async def ask(client: httpx.AsyncClient, item: EvalItem, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": item.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text: list[str] = []
    usage: dict[str, Any] = {}
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        route = r.headers.get("x-deliberate-route", "?")
        klass = r.headers.get("x-deliberate-class", "?")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    latency = (time.perf_counter() - start) * 1000
    return {
        "item": item.id,
        "model": model,
        "route": route,
        "class": klass,
        "difficulty": item.difficulty,
        "correct": r.status_code == 200 and check_answer(item, "".join(text)),
        "generated": int(usage.get("completion_tokens") or 0),
        "latency_ms": latency,
        "status": r.status_code,
    }


def paired_bootstrap(
    a: list[bool], b: list[bool], reps: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    rng = random.Random(seed)
    n = len(a)
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    boot = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return sum(diffs) / n, boot[int(0.025 * reps)], boot[int(0.975 * reps)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config)
    config = load_config(config_path)
    fixed = [r for r in args.routes.split(",") if r]
    models = [*fixed, "auto"]
    items = make_eval_set(args.items, seed=args.seed, hard_share=args.hard_share)
    app = create_app(Settings(config=config_path, reload_interval_s=0), config)
    rows: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(args.concurrency)
    async with app.router.lifespan_context(app):
        transport = StreamingASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=600) as c:

            async def one(item: EvalItem, model: str) -> None:
                async with sem:
                    rows.append(await ask(c, item, model))
                    print(f"  {len(rows)}/{len(items) * len(models)}", end="\r", flush=True)

            await asyncio.gather(*(one(i, m) for i in items for m in models))
    print()
    by = {m: {r["item"]: r for r in rows if r["model"] == m} for m in models}
    ids = [i.id for i in items]
    table = []
    for m in models:
        rs = [by[m][i] for i in ids]
        correct = sum(r["correct"] for r in rs)
        lo, hi = wilson_interval(correct, len(rs))
        lat = [r["latency_ms"] for r in rs]
        table.append(
            {
                "model": m,
                "accuracy": correct / len(rs),
                "ci": [lo, hi],
                "generated_per_item": statistics.mean(r["generated"] for r in rs),
                "p50_ms": percentile(lat, 50),
                "p95_ms": percentile(lat, 95),
                "errors": sum(r["status"] != 200 for r in rs),
            }
        )
    best = max((t for t in table if t["model"] != "auto"), key=lambda t: t["accuracy"])
    auto = next(t for t in table if t["model"] == "auto")
    for t in table:
        if t["model"] != "auto":
            d, lo, hi = paired_bootstrap(
                [by["auto"][i]["correct"] for i in ids], [by[t["model"]][i]["correct"] for i in ids]
            )
            t["auto_minus_route"] = {"diff": d, "ci": [lo, hi]}
    ratio = (
        auto["generated_per_item"] / best["generated_per_item"]
        if best["generated_per_item"]
        else 0.0
    )
    gap = next(t["auto_minus_route"] for t in table if t["model"] == best["model"])
    mix = Counter(by["auto"][i]["route"] for i in ids)
    return {
        "benchmark": "routing",
        "items": len(items),
        "seed": args.seed,
        "hard_share": args.hard_share,
        "mix": dict(Counter(i.difficulty for i in items)),
        "config": str(config_path),
        "table": table,
        "best_fixed": best["model"],
        "auto_tokens_vs_best": ratio,
        "auto_route_mix": dict(mix),
        "target_met": gap["ci"][1] >= 0 and ratio <= 0.35,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    out = [
        f"{result['items']} held-out items (seed {result['seed']}; {result['mix']}), "
        f"policy `{result['config']}`",
        "",
        "| model | accuracy [95 % CI] | auto − route [95 % CI] | generated tok/item | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["table"]:
        d = t.get("auto_minus_route")
        delta = f"{d['diff']:+.1%} [{d['ci'][0]:+.1%}, {d['ci'][1]:+.1%}]" if d else "—"
        out.append(
            f"| {t['model']} | {t['accuracy']:.1%} [{t['ci'][0]:.1%}, {t['ci'][1]:.1%}] | {delta} | "
            f"{t['generated_per_item']:.0f} | {t['p50_ms']:.0f} | {t['p95_ms']:.0f} |"
        )
    out += [
        "",
        f"auto's route mix: {result['auto_route_mix']}; auto's tokens = "
        f"{result['auto_tokens_vs_best']:.0%} of the best fixed route ({result['best_fixed']}); "
        f"target met: {result['target_met']}",
    ]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "calibrated" / "routes.yaml"))
    p.add_argument("--routes", default="single-pass,bounded-reasoning,best-of-n,self-consistency")
    p.add_argument("--items", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hard-share", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "routing.json"))
    args = p.parse_args()
    result = asyncio.run(run(args))
    text = markdown(result)
    print(text)
    Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
