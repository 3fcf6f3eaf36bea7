"""Test-time scaling on the real model: what extra compute buys, where, and at what token cost.

Runs the seeded task suite of ``bench/tasks.py`` (small exactly-checkable questions in six
families) THROUGH THE GATEWAY against the real vLLM-CPU backend serving SmolLM2-135M-Instruct,
and reports per strategy: accuracy with a 95 % Wilson interval, the paired difference against
single-pass greedy and against fixed N=16 majority (95 % paired-bootstrap interval over items,
plus the exact McNemar p-value), mean visible / hidden / total generated tokens per item, and
mean latency per request.

What is measured end to end (one gateway request per item and strategy):

- ``single-pass`` route, greedy (temperature 0, with ``logprobs`` top 2 and
  ``return_token_ids``: the ladder replays start from this answer) and sampled (temperature
  0.8); and once with NO client temperature, so the route's own ``sampling: {temperature: 0}``
  applies (``greedy-route``: same text as greedy, item by item?);
- ``bounded-reasoning`` route (scratchpad mode) with ``reasoning_effort`` none / low / medium /
  high = thinking budgets 0 / 64 / 128 / 256 tokens, greedy;
- the real ``best-of-n`` (n=8, selector auto), ``self-consistency`` (n=8 majority) and
  ``adaptive-consistency`` (waves 2, 2, 4, 8; stop at leader confidence 0.95) routes, with the
  shipped parameters (answer format per family; deadlines raised so load cannot cut them);
- the shipped escalation ladders ``greedy-ladder`` (greedy → 4 → 12 samples while the
  arithmetic checker rejects the best answer) and ``confidence-ladder`` (the same, checked by
  the model's token confidence), and ``adaptive-confidence`` (DeepConf online: waves 4, 4, 8,
  stop once the confidence-weighted leader holds ``share`` of the weight, confidence-filtered
  vote). Ladder routes are single-pass routes, whose params have no answer format (the
  gateway's ladder extracts ``last_number``, and only route rungs could carry another one), so
  they get no ``.mc`` copy: multiple-choice items go to the shipped route and are judged from
  the returned text, like every row.

What is derived (to fit a session): ONE shared pool of 16 samples per item, drawn through the
gateway's ``single-pass`` route as one ``n=16`` request at temperature 0.8 with
``return_token_ids`` and ``logprobs`` (top 2) (the strategy routes' ``deliberate`` object has
no per-candidate token counts, and the derived rows need them; logprobs stay in memory, not in
the JSON). Over the pool's first N samples (N = 4, 8, 16) each
selector is applied with the gateway's own selection code (``strategies.best_of_n.select``:
``verifier`` = best score of the reference-free ``ArithmeticConsistencyVerifier``, ``majority``,
``weighted`` = verifier-weighted vote, ``auto``); adaptive self-consistency is replayed over the
pool's order with the route's waves and ``strategies.voting.leader_confidence``. A derived row's
tokens are the exact token counts of the candidates it needed (the chosen one visible, the
rest hidden). ``oracle pass@N`` (a correct answer exists among the first N) is an upper bound,
not a strategy: selector recall = selector accuracy / oracle. Derived rows have no latency of
their own (the whole pool is one request; its latency is reported separately).

Replayed rows run the REAL strategy code on a ``ReplayGenerator`` that serves the recorded
candidates (the greedy answer for the first n=1 call, then the pool's next samples in order,
refusing any call whose temperature or max_tokens differs from how they were drawn), under the
route's caps, with the route parameters read from ``configs/routes.yaml``:
``greedy-ladder`` / ``confidence-ladder`` (``strategies.ladder.Ladder`` with the rungs built as
``gateway.escalation`` builds them; per-family answer format, and ``-ship`` copies with the
shipped ``last_number`` format to pair with the end-to-end rows; thresholds 0.4 / 0.5 / 0.7 for
the confidence ladder as a sensitivity sweep, not the shipped setting), ``conf-vote@8/@16``
(``BestOfN`` with ``selector: confidence``, keep_top 1.0 and DeepConf's 0.9) and
``adaptive-confidence`` (``AdaptiveConsistency`` with the shipped params, plus share 0.7 / 0.9
as sensitivity). Their tokens are the replay's usage: exactly the candidates the strategy drew
(the greedy answer counts for ladders). The report also gives the ladders' verifier scores of
right vs wrong greedy answers and pool samples (quartiles, share passing, AUROC).

The target check ("adaptive voting is not significantly below fixed-16 majority at ≤ 40 % of
its tokens": the paired 95 % interval of Δ vs maj@16 does not lie wholly below 0, and mean
total tokens ≤ 40 % of maj@16's) covers adaptive voting with the posterior stop and with the
confidence stop, derived and end to end, with the margin by which each half is met or missed.

The real best-of-n / self-consistency / adaptive routes draw their own samples, so they are
compared with their derivations in distribution (accuracy, samples used, stop reasons, tokens),
not item by item.

Usage (repo root): ``.venv/bin/python bench/test_time_scaling.py`` (full run, ~25 min on
an idle machine), ``--quick`` (smoke run, ~4 min), ``--items N``, ``--seed S``, ``--concurrency C``.
``DELIBERATE_BENCH_BACKEND_URL`` reuses a running vLLM instead of starting one. Results:
``bench/results/test_time_scaling.{json,md}`` (``--quick``: ``test_time_scaling-quick.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from overhead import (
    BenchError,
    free_port,
    gateway_server,
    machine_info,
    unpinned,
    vllm_backend,
)
from rich.console import Console
from rich.table import Table
from tasks import FAMILIES, Task, family_counts, make_suite

from gateway.backends.generator import parse_result
from gateway.compute import route_budget, strategy_request
from gateway.escalation import RUNG_TEMPERATURE, ladder_params
from routing.calibration import paired_bootstrap
from routing.config import DeliberateConfig, Route
from routing.loader import load_config
from strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyParams
from strategies.answers import ExtractSpec, extract_answer, normalize_answer
from strategies.base import BudgetGuard, Strategy, StrategyContext, TokenBudget
from strategies.best_of_n import (
    CONFIDENCE_TOP_LOGPROBS,
    BestOfN,
    BestOfNParams,
    Sampled,
    Selector,
    select,
)
from strategies.confidence import confidence_stats
from strategies.ladder import Ladder, RungPlan
from strategies.ports import Candidate, GenChoice, GenRequest, GenResult, TokenLogprob, Verifier
from strategies.usage import Usage
from strategies.verifiers.registry import VerifierContext, build_verifier
from strategies.voting import leader_confidence, majority_vote

REPO_ROOT = Path(__file__).resolve().parent.parent
ROUTES_YAML = REPO_ROOT / "configs" / "routes.yaml"
RESULTS_DIR = REPO_ROOT / "bench" / "results"

DEFAULT_ITEMS = 96
QUICK_ITEMS = 12
POOL_SIZE = 16
SAMPLED_TEMPERATURE = 0.8
EFFORTS = (("none", 0), ("low", 64), ("medium", 128), ("high", 256))
FIXED_NS = (4, 8, 16)
SENSITIVITY_CONFIDENCES = (0.9, 0.8)  # adaptive replays with a looser stopping rule
SELECTORS: tuple[Selector, ...] = ("verifier", "majority", "weighted")
MC_SUFFIX = ".mc"  # route variants whose answers are option letters
BASELINE_GREEDY = "greedy"
BASELINE_MAJ16 = "maj@16"
TARGET_TOKEN_RATIO = 0.40
LADDER_ROUTES = ("greedy-ladder", "confidence-ladder")  # shipped ladder routes (single-pass)
ADAPTIVE_CONF_ROUTE = "adaptive-confidence"  # shipped DeepConf-online route
LADDER_SENSITIVITY = (0.4, 0.5, 0.7)  # confidence-ladder thresholds (not the shipped one)
SHARE_SENSITIVITY = (0.7, 0.9)  # adaptive-confidence stop shares (not the shipped one)
CONF_VOTE_NS = (8, 16)
KEEP_TOPS = (1.0, 0.9)  # conf-vote: all samples, and DeepConf's filter (most confident 90 %)
SEARCH_ITEMS = 24  # default item count of a --strategies run
PRM_POOL = "prm"
# --strategies rows: key -> (label, route). Each runs with the route's shipped parameters.
SEARCH_STRATEGIES: dict[str, tuple[str, str]] = {
    "refine": ("refine route (≤3 critique/revise rounds, arithmetic verifier)", "refine"),
    "prm-arith": ("prm-search, scorer arithmetic (beam 3×4, ≤6 steps, agg min)", "prm-search"),
    "prm-judge": (
        "prm-search, scorer logprob-judge (beam 3×4, ≤6 steps, agg min)",
        "prm-search-judge",
    ),
    "prm-prm": (
        "prm-search, scorer prm = real PRM server (beam 3×4, ≤6 steps, agg last)",
        "prm-search-prm",
    ),
}
ANSWER_ROUTES = (
    "best-of-n",
    "self-consistency",
    "adaptive-consistency",
    "refine",
    "prm-search",
)  # strategies with an ``answer`` param: these get ``.mc`` copies

T = TypeVar("T")
console = Console(width=None if sys.stdout.isatty() else 200)


# --------------------------------------------------------------------------------------------
# Statistics (pure)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs)."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = float(sum(math.comb(m, i) for i in range(k + 1))) / float(2**m)
    return min(1.0, 2 * tail)


# --------------------------------------------------------------------------------------------
# Per-item outcomes and rows


@dataclass
class Outcome:
    """One strategy on one item."""

    correct: bool
    answer: str | None
    visible: int
    hidden: int
    prompt: int = 0
    latency_s: float | None = None
    samples: int | None = None
    stop_reason: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    candidate: GenChoice | None = field(default=None, repr=False, compare=False)
    """The parsed reply (text, exact tokens, logprobs) of a single-pass answer: the greedy
    phase's candidate is what a ladder replay serves first. Not written to the JSON."""

    @property
    def total(self) -> int:
        return self.visible + self.hidden


@dataclass
class Row:
    key: str
    label: str
    source: str  # "gateway" (measured end to end) | "derived" (from the shared pool) | "oracle"
    outcomes: list[Outcome]


def spec_of(task: Task) -> ExtractSpec:
    if task.answer_format == "option_letter":
        return ExtractSpec(format="option_letter", options="ABCD")
    return ExtractSpec(format="last_number")


def judge(task: Task, text: str | None) -> tuple[bool, str | None]:
    """(correct, normalised answer) of a reply's text for ``task``."""
    raw = extract_answer(text or "", spec_of(task))
    answer = None if raw is None else normalize_answer(raw)
    return answer is not None and answer == normalize_answer(task.reference), answer


def is_right(task: Task, answer: str | None) -> bool:
    return answer is not None and answer == normalize_answer(task.reference)


# --------------------------------------------------------------------------------------------
# Gateway configuration


def bench_config(backend_url: str, prm_url: str | None = None) -> dict[str, Any]:
    """``configs/routes.yaml`` with the default pool pointed at ``backend_url``, plus
    ``prm-search-judge`` (scorer logprob-judge) and, given ``prm_url``, a ``prm`` pool and
    ``prm-search-prm`` (scorer prm, aggregation last, as in ``configs/examples/prm.yaml``);
    ``.mc`` copies of the routes with an answer format whose answers are option letters, and
    deadlines raised to 600 s (the benchmark measures compute, not load-induced timeouts)."""
    config: dict[str, Any] = yaml.safe_load(ROUTES_YAML.read_text())
    for pool in config["backends"]:
        if pool["name"] == "default":
            pool["replicas"] = [backend_url]
    search = next((r for r in config["routes"] if r["name"] == "prm-search"), None)
    if search is not None:
        judge_route = copy.deepcopy(search)
        judge_route["name"] = "prm-search-judge"
        judge_route.setdefault("params", {})["scorer"] = "logprob-judge"
        config["routes"].append(judge_route)
        if prm_url is not None:
            from gateway.localbackend import SERVED_MODEL_NAME

            config["backends"].append(
                {
                    "name": PRM_POOL,
                    "model": SERVED_MODEL_NAME + "-prm",
                    "replicas": [prm_url],
                    "prm": {},
                }
            )
            prm_route = copy.deepcopy(search)
            prm_route["name"] = "prm-search-prm"
            prm_route.setdefault("params", {}).update(
                {"scorer": "prm", "prm_backend": PRM_POOL, "aggregation": "last"}
            )
            config["routes"].append(prm_route)
    extra = []
    for route in config["routes"]:
        budget = route.get("budget")
        if isinstance(budget, dict) and "deadline_s" in budget:
            budget["deadline_s"] = 600
        if route["strategy"] in ANSWER_ROUTES:
            mc = copy.deepcopy(route)
            mc["name"] = route["name"] + MC_SUFFIX
            mc.setdefault("params", {})["answer"] = {"format": "option_letter", "options": "ABCD"}
            extra.append(mc)
    config["routes"] += extra
    return config


def route_for(task: Task, route: str) -> str:
    return route + MC_SUFFIX if task.answer_format == "option_letter" else route


# --------------------------------------------------------------------------------------------
# Phases: one kind of gateway request over every item


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    route: str
    body: dict[str, Any]
    voting: bool = False  # multi-call route: answers come with a ``deliberate`` object
    pool: bool = False  # the shared n=16 pool (not a row itself)
    mc: bool = True  # voting route with a ``.mc`` copy (an answer-format param) for MC items


LOGPROBS = {"logprobs": True, "top_logprobs": CONFIDENCE_TOP_LOGPROBS}
"""What the greedy and pool phases ask for on top: the confidence rows replay these logprobs
(top 2 = what the gateway's confidence strategies ask for)."""


def ladder_desc(route: Route) -> str:
    """``greedy → samples:4 → samples:12, confidence ≥ 0.6`` (from the route's config)."""
    rungs = route.escalate_to or ()
    checks = sorted({f"{r.verifier} ≥ {r.threshold:g}" for r in rungs})
    return "greedy → " + " → ".join(r.label for r in rungs) + ", " + "/".join(checks)


def adaptive_desc(p: AdaptiveConsistencyParams) -> str:
    """``waves 4,4,8, stop confidence share 0.8 (≥ 4 samples), vote confidence top 0.9``."""
    stop = (
        f"stop confidence share {p.share:g} (≥ {p.min_samples} samples)"
        if p.stop == "confidence"
        else f"stop posterior {p.confidence:g}"
    )
    vote = f"vote confidence top {p.keep_top:g}" if p.vote == "confidence" else "vote majority"
    return f"waves {','.join(map(str, p.waves))}, {stop}, {vote}"


def adaptive_params(
    config: DeliberateConfig, name: str = ADAPTIVE_CONF_ROUTE
) -> AdaptiveConsistencyParams:
    params = config.route(name).params
    if not isinstance(params, AdaptiveConsistencyParams):
        raise BenchError(f"route {name!r} is not an adaptive-consistency route")
    return params


def phases(max_tokens: int, shipped: DeliberateConfig) -> list[Phase]:
    """Every end-to-end phase; labels of the shipped ladder / adaptive-confidence routes are
    read from ``shipped`` (``configs/routes.yaml``)."""
    m = {"max_tokens": max_tokens}
    out = [
        Phase(
            "greedy",
            "single-pass greedy (T=0)",
            "single-pass",
            {**m, "temperature": 0, **LOGPROBS, "return_token_ids": True},
        ),
        Phase(
            "sampled",
            f"single-pass sampled (T={SAMPLED_TEMPERATURE})",
            "single-pass",
            {**m, "temperature": SAMPLED_TEMPERATURE},
        ),
        Phase(
            "greedy-route",
            "single-pass, no client temperature (route-owned sampling "
            f"{shipped.route('single-pass').sampling.fields()})",
            "single-pass",
            m,
        ),
    ]
    for suffix, temperature in (("", 0.0), ("-t", SAMPLED_TEMPERATURE)):
        for effort, budget in EFFORTS:
            out.append(
                Phase(
                    f"br-{effort}{suffix}",
                    f"bounded-reasoning effort={effort} (B={budget}, T={temperature:g})",
                    "bounded-reasoning",
                    {**m, "temperature": temperature, "reasoning_effort": effort},
                )
            )
    out += [
        Phase(
            "pool",
            f"shared pool: single-pass n={POOL_SIZE}, T={SAMPLED_TEMPERATURE}",
            "single-pass",
            {
                **m,
                "n": POOL_SIZE,
                "temperature": SAMPLED_TEMPERATURE,
                "return_token_ids": True,
                **LOGPROBS,
            },
            pool=True,
        ),
        Phase("route-bon8", "best-of-n route (n=8, auto)", "best-of-n", m, voting=True),
        Phase("route-sc8", "self-consistency route (n=8)", "self-consistency", m, voting=True),
        Phase(
            "route-adaptive",
            "adaptive-consistency route (2,2,4,8)",
            "adaptive-consistency",
            m,
            voting=True,
        ),
    ]
    for name in LADDER_ROUTES:
        # single-pass params have no answer format: no ``.mc`` copy (see bench_config)
        out.append(
            Phase(
                f"route-{name}",
                f"{name} route ({ladder_desc(shipped.route(name))})",
                name,
                m,
                voting=True,
                mc=False,
            )
        )
    out.append(
        Phase(
            "route-adaptive-conf",
            f"{ADAPTIVE_CONF_ROUTE} route ({adaptive_desc(adaptive_params(shipped))})",
            ADAPTIVE_CONF_ROUTE,
            m,
            voting=True,
        )
    )
    return out


def search_phases(max_tokens: int, strategies: Sequence[str]) -> list[Phase]:
    """Greedy single-pass (the paired baseline) and the ``--strategies`` rows. ``refine`` gets
    the client ``max_tokens`` (its cap per version, like every other row's answer cap);
    prm-search does not (a client ``max_tokens`` caps a whole beam, which would cut the search
    to one or two steps): its per-step cap (96) and 6 steps come from the route."""
    out = [
        Phase(
            "greedy",
            "single-pass greedy (T=0)",
            "single-pass",
            {"max_tokens": max_tokens, "temperature": 0},
        )
    ]
    for key in strategies:
        label, route = SEARCH_STRATEGIES[key]
        body = {"max_tokens": max_tokens} if key == "refine" else {}
        out.append(Phase(key, label, route, body, voting=True))
    return out


@dataclass
class PoolItem:
    """The shared pool of one item: the samples in order, with exact token counts and their
    token logprobs (``top_logprobs`` 2; kept in memory for the replays, not in the JSON)."""

    texts: list[str]
    tokens: list[int]
    finish: list[str | None]
    answers: list[str | None]
    prompt_tokens: int
    latency_s: float
    logprobs: list[tuple[TokenLogprob, ...] | None] = field(default_factory=list, repr=False)

    def choices(self) -> list[GenChoice]:
        """The samples as the backend adapter parsed them (index = position in the pool)."""
        lps = self.logprobs or [None] * len(self.texts)
        return [
            GenChoice(i, text, tokens, finish, logprobs=lp)
            for i, (text, tokens, finish, lp) in enumerate(
                zip(self.texts, self.tokens, self.finish, lps, strict=True)
            )
        ]

    def confidences(self) -> list[float | None]:
        """Each sample's geometric-mean token probability (``mean`` signal), 4 decimals."""
        return [
            round(confidence_stats(lp).mean, 4) if lp else None
            for lp in (self.logprobs or [None] * len(self.texts))
        ]

    def to_json(self) -> dict[str, Any]:
        d = asdict(replace(self, logprobs=[]))
        del d["logprobs"]
        d["confidence"] = self.confidences()
        return d


SERVED_ROUTE = "_served_route"  # added to a reply's JSON: the route that answered (header)


async def post_chat(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """One chat completion; (JSON, latency in s). Retries once on a transport error."""
    for attempt in (1, 2):
        started = time.perf_counter()
        try:
            r = await client.post(url + "/v1/chat/completions", json=body)
        except httpx.TransportError:
            if attempt == 2:
                raise
            await asyncio.sleep(1.0)
            continue
        latency = time.perf_counter() - started
        if r.status_code != 200:
            raise BenchError(f"HTTP {r.status_code}: {r.text[:300]}")
        data: dict[str, Any] = r.json()
        data[SERVED_ROUTE] = r.headers.get("x-deliberate-route")
        return data, latency
    raise AssertionError("unreachable")


def parse_reply(task: Task, data: dict[str, Any], latency: float) -> Outcome:
    choice = data["choices"][0]
    text = (choice.get("message") or {}).get("content")
    correct, answer = judge(task, text)
    usage = Usage.from_openai(data.get("usage"))
    d = data.get("deliberate")
    if isinstance(d, dict):
        tokens = d.get("tokens") or {}
        detail = {
            k: d[k]
            for k in (
                "selector",
                "answers",
                "chosen_index",
                "scores",
                "confidence",
                "backend_calls",
                "thinking_tokens",
                "forced_close",
                "chosen_version",
                "rounds",
                "verifier_calls",
                "prm_seconds",
                "scorer",
                "steps",
                "ladder",
                "chosen_wave",
                "leader_share",
                "stop",
                "verifier",
                "requested_route",
                "downgrade_cause",
            )
            if k in d
        }
        return Outcome(
            correct,
            answer,
            int(tokens.get("visible", usage.visible)),
            int(tokens.get("hidden", usage.hidden)),
            int(tokens.get("prompt", usage.prompt)),
            latency,
            d.get("samples"),
            d.get("stop_reason"),
            extra=detail | {"text": text},
        )
    candidate = parse_result({"choices": [choice], "usage": data.get("usage")}).choices[0]
    extra: dict[str, Any] = {"text": text}
    if candidate.logprobs:
        extra["confidence"] = round(confidence_stats(candidate.logprobs).mean, 4)
    return Outcome(
        correct,
        answer,
        usage.visible,
        usage.hidden,
        usage.prompt,
        latency,
        1,
        choice.get("finish_reason"),
        extra=extra,
        candidate=candidate,
    )


def parse_pool(task: Task, data: dict[str, Any], latency: float) -> PoolItem:
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != POOL_SIZE:
        raise BenchError(f"pool for {task.id}: {len(choices)} choices, expected {POOL_SIZE}")
    parsed = parse_result({"choices": choices}).choices
    texts, tokens, finish, answers = [], [], [], []
    logprobs: list[tuple[TokenLogprob, ...] | None] = []
    for c, g in zip(choices, parsed, strict=True):
        ids = c.get("token_ids")
        if not isinstance(ids, list):
            raise BenchError("the backend returned no token_ids (needs return_token_ids)")
        if g.logprobs is None:
            raise BenchError("the backend returned no logprobs (needs logprobs: true)")
        text = (c.get("message") or {}).get("content") or ""
        texts.append(text)
        tokens.append(len(ids))
        finish.append(c.get("finish_reason"))
        answers.append(judge(task, text)[1])
        logprobs.append(g.logprobs)
    prompt = int((data.get("usage") or {}).get("prompt_tokens") or 0)
    return PoolItem(texts, tokens, finish, answers, prompt, latency, logprobs)


async def run_phase(
    client: httpx.AsyncClient,
    gw_url: str,
    phase: Phase,
    tasks: Sequence[Task],
    concurrency: int,
) -> tuple[list[Any], float]:
    """Every item through one phase, ``concurrency`` requests in flight; (results, wall s)."""
    results: list[Any] = [None] * len(tasks)
    queue = list(range(len(tasks)))
    queue.reverse()
    started = time.perf_counter()

    async def one(i: int) -> Any:
        task = tasks[i]
        route = route_for(task, phase.route) if phase.voting and phase.mc else phase.route
        body = {
            "model": route,
            "messages": [{"role": "user", "content": task.prompt}],
            **phase.body,
        }
        try:
            data, latency = await post_chat(client, gw_url, body)
        except (BenchError, httpx.HTTPError) as e:
            if phase.pool:
                raise
            return Outcome(False, None, 0, 0, error=str(e)[:300])
        if phase.pool:
            return parse_pool(task, data, latency)
        out = parse_reply(task, data, latency)
        served = data.get(SERVED_ROUTE)
        if served is not None and served != route:  # admission stepped the route down
            out.extra["downgraded_to"] = served
        return out

    async def worker() -> None:
        while queue:
            i = queue.pop()
            results[i] = await one(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(tasks)))))
    return results, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Derivations from the shared pool


def _sampled(pool: PoolItem, n: int) -> Sampled:
    choices = tuple(GenChoice(i, pool.texts[i], pool.tokens[i], pool.finish[i]) for i in range(n))
    return Sampled(choices, tuple(pool.answers[:n]), Usage(visible=sum(pool.tokens[:n])))


async def derive_fixed(task: Task, pool: PoolItem, n: int, selector: Selector) -> Outcome:
    """Best-of-N with ``selector`` over the pool's first ``n`` samples (gateway code)."""
    chosen, info, _ = await select(task.prompt, _sampled(pool, n), selector, None)
    answer = pool.answers[chosen]
    visible = pool.tokens[chosen]
    return Outcome(
        is_right(task, answer),
        answer,
        visible,
        sum(pool.tokens[:n]) - visible,
        samples=n,
        stop_reason="completed",
        extra={"selector": info["selector"], "chosen_index": chosen, "scores": info.get("scores")},
    )


def derive_oracle(task: Task, pool: PoolItem, n: int) -> Outcome:
    right = [i for i in range(n) if is_right(task, pool.answers[i])]
    chosen = right[0] if right else 0
    visible = pool.tokens[chosen]
    return Outcome(
        bool(right),
        pool.answers[chosen],
        visible,
        sum(pool.tokens[:n]) - visible,
        samples=n,
        stop_reason="completed",
    )


def derive_adaptive(task: Task, pool: PoolItem, params: AdaptiveConsistencyParams) -> Outcome:
    """Replay the adaptive route's waves over the pool's order (same stopping rule)."""
    used, confidences, reason = 0, [], "max_steps"
    for wave in params.waves:
        used = min(used + wave, len(pool.answers))
        confidences.append(round(leader_confidence(pool.answers[:used]), 4))
        if confidences[-1] >= params.confidence:
            reason = "converged"
            break
    vote = majority_vote(pool.answers[:used])
    chosen = vote.chosen if vote.chosen is not None else 0
    visible = pool.tokens[chosen]
    return Outcome(
        is_right(task, pool.answers[chosen]),
        pool.answers[chosen],
        visible,
        sum(pool.tokens[:used]) - visible,
        samples=used,
        stop_reason=reason,
        extra={"confidence": confidences},
    )


async def derived_rows(tasks: Sequence[Task], pools: Sequence[PoolItem]) -> list[Row]:
    rows: list[Row] = []
    for n in FIXED_NS:
        for sel in (*SELECTORS, "auto"):
            key = f"maj@{n}" if sel == "majority" else f"{sel}@{n}"
            outcomes = [await derive_fixed(t, p, n, sel) for t, p in zip(tasks, pools, strict=True)]
            label = {
                "verifier": f"best-of-{n}, selector verifier (arithmetic checker)",
                "majority": f"best-of-{n}, majority (self-consistency N={n})",
                "weighted": f"best-of-{n}, verifier-weighted vote",
                "auto": f"best-of-{n}, selector auto",
            }[sel]
            rows.append(Row(key, label, "derived", outcomes))
    shipped = AdaptiveConsistencyParams()
    for confidence in (shipped.confidence, *SENSITIVITY_CONFIDENCES):
        params = shipped.model_copy(update={"confidence": confidence})
        key = "adaptive" if confidence == shipped.confidence else f"adaptive-c{confidence:g}"
        note = "" if confidence == shipped.confidence else ", sensitivity: not the shipped setting"
        rows.append(
            Row(
                key,
                f"adaptive self-consistency (waves {','.join(map(str, params.waves))}, "
                f"conf {confidence:g}{note})",
                "derived",
                [derive_adaptive(t, p, params) for t, p in zip(tasks, pools, strict=True)],
            )
        )
    for n in FIXED_NS:
        rows.append(
            Row(
                f"oracle@{n}",
                f"oracle pass@{n} (upper bound, not a strategy)",
                "oracle",
                [derive_oracle(t, p, n) for t, p in zip(tasks, pools, strict=True)],
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# Faithful replays: the real strategy code over recorded candidates


class ReplayMismatch(BenchError):
    """A strategy asked the replay for something the recorded candidates cannot stand for."""


class ReplayGenerator:
    """A ``strategies.ports.Generator`` that serves recorded candidates instead of sampling.

    The first ``n=1`` call gets ``greedy`` (when given); every other call gets the next ``n``
    samples of ``pool``, in order (indices renumbered from 0 per call, as vLLM does). A call's
    usage is ``prompt_tokens`` (its prompt, sent once per call) plus the exact generated
    tokens of the candidates it served, all ``visible`` (the strategy re-labels them).
    Candidates keep their logprobs only when the call asks for logprobs.

    Invariant: a served candidate was drawn the way the call asks. ``ReplayMismatch`` is
    raised when a call's temperature differs from the candidates' (``greedy_temperature``
    for the greedy one, ``pool_temperature`` for the pool), its ``max_tokens`` differs from
    ``max_tokens``, it asks more top logprobs than were recorded, asks for prompt logprobs or
    a continued message, or asks for more samples than remain. ``calls`` records
    ``(n, temperature)`` per call; ``generated`` the tokens served so far.
    """

    def __init__(
        self,
        pool: Sequence[GenChoice],
        prompt_tokens: int,
        *,
        greedy: GenChoice | None = None,
        pool_temperature: float = SAMPLED_TEMPERATURE,
        greedy_temperature: float = 0.0,
        max_tokens: int | None = None,
        top_logprobs: int = CONFIDENCE_TOP_LOGPROBS,
    ) -> None:
        self._pool = list(pool)
        self._greedy = greedy
        self._prompt = prompt_tokens
        self._temperatures = (greedy_temperature, pool_temperature)
        self._max_tokens = max_tokens
        self._top = top_logprobs
        self.cursor = 0
        self.generated = 0
        self.calls: list[tuple[int, float | None]] = []

    async def generate(self, request: GenRequest) -> GenResult:
        greedy = self._greedy is not None and not self.calls and request.n == 1
        self.calls.append((request.n, request.temperature))
        expected = self._temperatures[0 if greedy else 1]
        if request.temperature is None or not math.isclose(request.temperature, expected):
            raise ReplayMismatch(
                f"call {len(self.calls)} asks temperature {request.temperature}, the "
                f"recorded {'greedy candidate' if greedy else 'pool'} was drawn at {expected}"
            )
        if self._max_tokens is not None and request.max_tokens != self._max_tokens:
            raise ReplayMismatch(
                f"call {len(self.calls)} asks max_tokens {request.max_tokens}, the "
                f"candidates were drawn with {self._max_tokens}"
            )
        if request.logprobs and (request.top_logprobs or 0) > self._top:
            raise ReplayMismatch(f"top_logprobs {request.top_logprobs} > recorded {self._top}")
        if request.prompt_logprobs is not None or request.continue_final_message:
            raise ReplayMismatch("prompt logprobs / continued messages cannot be replayed")
        if greedy:
            assert self._greedy is not None
            served = [self._greedy]
        else:
            if self.cursor + request.n > len(self._pool):
                raise ReplayMismatch(
                    f"call {len(self.calls)} asks {request.n} samples, "
                    f"{len(self._pool) - self.cursor} of {len(self._pool)} remain"
                )
            served = self._pool[self.cursor : self.cursor + request.n]
            self.cursor += request.n
        choices = tuple(
            replace(
                c,
                index=i,
                logprobs=c.logprobs if request.logprobs else None,
                raw_logprobs=None,
            )
            for i, c in enumerate(served)
        )
        tokens = sum(c.tokens for c in choices)
        self.generated += tokens
        return GenResult(choices, Usage(prompt=self._prompt, visible=tokens), "replay")


def replay_ladder(
    route: Route,
    config: DeliberateConfig,
    spec: ExtractSpec,
    threshold: float | None = None,
) -> Ladder:
    """The route's ladder as ``gateway.escalation.build_ladder`` builds it (sample rungs at
    ``RUNG_TEMPERATURE`` unless the rung sets one, ``ladder_params`` for the candidates),
    with answers extracted by ``spec`` and, given ``threshold``, every rung's threshold
    replaced (sensitivity). Verifiers get no generator: a candidate without logprobs scores
    the confidence verifier's neutral 0.5 instead of a prompt-logprobs call (replayed
    candidates carry their logprobs, so this only touches empty answers)."""
    rungs = []
    for rung in route.escalate_to or ():
        if rung.samples is None:
            raise BenchError(f"{route.name}: route rung {rung.label} cannot be replayed")
        verifier = build_verifier(rung.verifier, VerifierContext(), rung.verifier_params)
        sampling = {"temperature": RUNG_TEMPERATURE, **rung.sampling.fields()}
        rungs.append(
            RungPlan(
                rung.label,
                verifier,
                rung.threshold if threshold is None else threshold,
                samples=rung.samples,
                sampling=sampling,
            )
        )
    if route.strategy != "single-pass":
        raise BenchError(f"{route.name}: only single-pass ladders are replayed")
    params = ladder_params(route, config).model_copy(update={"answer": spec})
    return Ladder(tuple(rungs), params)


def replay_payload(task: Task, max_tokens: int, route: Route | None) -> dict[str, Any]:
    """The chat body a client sends naming ``route`` (no sampling of its own), after the
    gateway applied the route's sampling (the client sets none, so the route's applies)."""
    sampling = route.sampling.fields() if route is not None else {}
    return {
        "model": route.name if route is not None else "replay",
        "messages": [{"role": "user", "content": task.prompt}],
        "max_tokens": max_tokens,
        **sampling,
    }


async def replay_outcome(
    task: Task,
    strategy: Strategy,
    generator: ReplayGenerator,
    payload: dict[str, Any],
    budget: TokenBudget,
) -> Outcome:
    """Run ``strategy`` as the gateway does (budget-guarded generator, the payload's
    ``StrategyRequest``) on ``generator``; judge its answer like every other row. Tokens are
    the result's usage, which must account for exactly the tokens the replay served."""
    ctx = StrategyContext(BudgetGuard(generator, budget), budget)
    try:
        result = await strategy.run(strategy_request(payload), ctx)
    except ReplayMismatch as e:
        return Outcome(False, None, 0, 0, error=f"replay: {e}"[:300])
    usage = result.usage
    if usage.visible + usage.hidden != generator.generated:
        raise BenchError(
            f"{task.id}: replay usage {usage.visible}+{usage.hidden} != "
            f"{generator.generated} tokens served"
        )
    text = result.choices[0].text
    correct, answer = judge(task, text)
    info = result.info
    extra: dict[str, Any] = {"calls": [n for n, _ in generator.calls]}
    if "ladder" in info:
        path = info["ladder"]["path"]
        extra |= {
            "stopped_at": info["ladder"]["stopped_at"],
            "verified": info["ladder"]["verified"],
            "chosen_wave": info.get("chosen_wave"),
            "best_scores": [step.get("best_score") for step in path],
        }
    if "leader_share" in info:
        extra["leader_share"] = info["leader_share"]
    if "chosen_index" in info:
        extra["chosen_index"] = info["chosen_index"]
    return Outcome(
        correct,
        answer,
        usage.visible,
        usage.hidden,
        usage.prompt,
        samples=info.get("samples"),
        stop_reason=result.stop_reason,
        extra=extra,
    )


async def replay_rows(
    tasks: Sequence[Task],
    pools: Sequence[PoolItem],
    greedy: Sequence[Outcome],
    config: DeliberateConfig,
    max_tokens: int,
) -> list[Row]:
    """The ladder, confidence-vote and adaptive-confidence rows, replayed with the real
    strategies over each item's greedy answer and shared pool (see ``ReplayGenerator``).
    Route parameters (rungs, verifiers, thresholds, waves, shares) come from ``config``."""
    items = list(zip(tasks, pools, greedy, strict=True))

    def replayer(p: PoolItem, g: GenChoice | None = None) -> ReplayGenerator:
        return ReplayGenerator(p.choices(), p.prompt_tokens, greedy=g, max_tokens=max_tokens)

    async def ladder_row(
        key: str, label: str, route: Route, shipped_format: bool, threshold: float | None = None
    ) -> Row:
        outs = []
        for t, p, g in items:
            if g.candidate is None:  # the greedy request failed: nothing to start from
                outs.append(Outcome(False, None, 0, 0, error="no greedy candidate"))
                continue
            spec = ladder_params(route, config).answer if shipped_format else spec_of(t)
            payload = replay_payload(t, max_tokens, route)
            outs.append(
                await replay_outcome(
                    t,
                    replay_ladder(route, config, spec, threshold),
                    replayer(p, g.candidate),
                    payload,
                    route_budget(route, payload),
                )
            )
        return Row(key, label, "derived", outs)

    rows: list[Row] = []
    for name in LADDER_ROUTES:
        route = config.route(name)
        desc = ladder_desc(route)
        rows.append(await ladder_row(name, f"{name} ({desc})", route, False))
        rows.append(
            await ladder_row(
                f"{name}-ship",
                f"{name} ({desc}), shipped answer format: last_number on MC items too",
                route,
                True,
            )
        )
    conf = config.route("confidence-ladder")
    shipped_thresholds = {r.threshold for r in conf.escalate_to or ()}
    for th in LADDER_SENSITIVITY:
        if th not in shipped_thresholds:
            rows.append(
                await ladder_row(
                    f"confidence-ladder-t{th:g}",
                    f"confidence-ladder, threshold {th:g} (sensitivity: not the shipped setting)",
                    conf,
                    False,
                    th,
                )
            )
    for n in CONF_VOTE_NS:
        for keep in KEEP_TOPS:
            outs = []
            for t, p, _ in items:
                params = BestOfNParams(
                    n=n,
                    selector="confidence",
                    keep_top=keep,
                    temperature=SAMPLED_TEMPERATURE,
                    max_tokens=max_tokens,
                    answer=spec_of(t),
                )
                outs.append(
                    await replay_outcome(
                        t,
                        BestOfN(params),
                        replayer(p),
                        replay_payload(t, max_tokens, None),
                        TokenBudget(),
                    )
                )
            key = f"conf-vote@{n}" + ("" if keep == 1.0 else f"-k{keep:g}")
            what = "all samples" if keep == 1.0 else f"most confident {100 * keep:.0f} % (DeepConf)"
            rows.append(Row(key, f"best-of-{n}, confidence-weighted vote, {what}", "derived", outs))
    route = config.route(ADAPTIVE_CONF_ROUTE)
    shipped = adaptive_params(config)
    for share in dict.fromkeys((shipped.share, *SHARE_SENSITIVITY)):
        outs = []
        for t, p, _ in items:
            adaptive = shipped.model_copy(update={"share": share, "answer": spec_of(t)})
            payload = replay_payload(t, max_tokens, route)
            outs.append(
                await replay_outcome(
                    t,
                    AdaptiveConsistency(adaptive),
                    replayer(p),
                    payload,
                    route_budget(route, payload),
                )
            )
        is_shipped = share == shipped.share
        key = ADAPTIVE_CONF_ROUTE if is_shipped else f"{ADAPTIVE_CONF_ROUTE}-s{share:g}"
        note = "" if is_shipped else ", sensitivity: not the shipped setting"
        desc = adaptive_desc(shipped.model_copy(update={"share": share}))
        rows.append(Row(key, f"{ADAPTIVE_CONF_ROUTE} ({desc}{note})", "derived", outs))
    return rows


# --------------------------------------------------------------------------------------------
# How well the ladders' verifiers separate right from wrong answers


def quartiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, min, q1, median, q3, max and mean of ``values`` (4 decimals; None when empty)."""
    if not values:
        return {"n": 0, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    xs = sorted(values)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {
        "n": len(xs),
        "min": round(xs[0], 4),
        "q1": round(q[0], 4),
        "median": round(q[1], 4),
        "q3": round(q[2], 4),
        "max": round(xs[-1], 4),
        "mean": round(sum(xs) / len(xs), 4),
    }


def auroc(right: Sequence[float], wrong: Sequence[float]) -> float | None:
    """P(a right answer's score > a wrong one's), ties counting half (None if one is empty)."""
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def separation(right: Sequence[float], wrong: Sequence[float], threshold: float) -> dict[str, Any]:
    return {
        "right": quartiles(right) | {"pass": sum(v >= threshold for v in right)},
        "wrong": quartiles(wrong) | {"pass": sum(v >= threshold for v in wrong)},
        "auroc": auroc(right, wrong),
    }


async def verifier_scores(
    tasks: Sequence[Task],
    pools: Sequence[PoolItem],
    greedy: Sequence[Outcome],
    config: DeliberateConfig,
) -> dict[str, Any]:
    """Per ladder route: its first rung's verifier (built as in the replays) on every greedy
    answer and every pool sample, split by right / wrong; ``pass`` = scores ≥ the rung's
    threshold (the greedy answer is kept without escalating)."""
    out: dict[str, Any] = {}
    for name in LADDER_ROUTES:
        rungs = config.route(name).escalate_to
        if not rungs:
            raise BenchError(f"route {name!r} has no escalation ladder")
        rung = rungs[0]
        verifier: Verifier = build_verifier(rung.verifier, VerifierContext(), rung.verifier_params)
        g_right: list[float] = []
        g_wrong: list[float] = []
        p_right: list[float] = []
        p_wrong: list[float] = []
        by_family: dict[str, tuple[list[float], list[float]]] = {}
        for t, p, o in zip(tasks, pools, greedy, strict=True):
            if o.candidate is not None:
                c = o.candidate
                (s,) = await verifier.score(
                    t.prompt, [Candidate(0, c.text, o.answer, c.logprobs, c.finish_reason)]
                )
                (g_right if o.correct else g_wrong).append(s.value)
                fam = by_family.setdefault(t.family, ([], []))
                fam[0 if o.correct else 1].append(s.value)
            cands = [
                Candidate(i, c.text, p.answers[i], c.logprobs, c.finish_reason)
                for i, c in enumerate(p.choices())
            ]
            for a, s in zip(p.answers, await verifier.score(t.prompt, cands), strict=True):
                (p_right if is_right(t, a) else p_wrong).append(s.value)
        out[name] = {
            "verifier": verifier.name,
            "threshold": rung.threshold,
            "greedy": separation(g_right, g_wrong, rung.threshold),
            "pool": separation(p_right, p_wrong, rung.threshold),
            "greedy_by_family": {
                f: separation(r, w, rung.threshold) for f, (r, w) in by_family.items()
            },
        }
    return out


# --------------------------------------------------------------------------------------------
# Summaries


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarise(row: Row, baselines: dict[str, Row], resamples: int, seed: int) -> dict[str, Any]:
    outs = row.outcomes
    n = len(outs)
    right = [o.correct for o in outs]
    k = sum(right)
    lo, hi = wilson(k, n)
    latencies = [o.latency_s for o in outs if o.latency_s is not None]
    samples = [o.samples for o in outs if o.samples is not None]
    summary: dict[str, Any] = {
        "key": row.key,
        "label": row.label,
        "source": row.source,
        "items": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "mean_visible_tokens": _mean([o.visible for o in outs]),
        "mean_hidden_tokens": _mean([o.hidden for o in outs]),
        "mean_total_tokens": _mean([o.total for o in outs]),
        "mean_prompt_tokens": _mean([o.prompt for o in outs]) if row.source == "gateway" else None,
        "mean_latency_s": _mean(latencies),
        "mean_samples": _mean(samples),
        "errors": sum(o.error is not None for o in outs),
        "stop_reasons": dict(Counter(o.stop_reason for o in outs if o.stop_reason)),
    }
    calls = [o.extra["backend_calls"] for o in outs if "backend_calls" in o.extra]
    if calls:
        summary["mean_backend_calls"] = _mean(calls)
    vcalls = [o.extra["verifier_calls"] for o in outs if "verifier_calls" in o.extra]
    if vcalls:
        summary["mean_verifier_calls"] = _mean(vcalls)
    prm = [
        (o.extra["prm_seconds"], o.latency_s)
        for o in outs
        if "prm_seconds" in o.extra and o.latency_s
    ]
    if prm:
        # share of the summed request latency spent waiting on step scoring
        summary["mean_prm_seconds"] = _mean([a for a, _ in prm])
        summary["prm_latency_share"] = sum(a for a, _ in prm) / sum(b for _, b in prm)
    if down := sum("downgraded_to" in o.extra for o in outs):
        summary["downgraded"] = down  # admission served another route: not this strategy
    stops = [_stopped_at(o) for o in outs]
    if any(x is not None for x in stops):
        # ladders: the rung each item stopped at (0 = the greedy answer was kept)
        summary["ladder_stopped_at"] = {
            str(k): v for k, v in sorted(Counter(x for x in stops if x is not None).items())
        }
    if any("forced_close" in o.extra for o in outs):
        # bounded reasoning: items whose thinking hit the budget (closed by the gateway)
        summary["forced_close"] = sum(bool(o.extra.get("forced_close")) for o in outs)
    for name, base in baselines.items():
        other = [o.correct for o in base.outcomes]
        mean, dlo, dhi = paired_bootstrap(right, other, resamples, seed)
        summary[f"vs_{name}"] = {
            "diff": mean,
            "ci95": [dlo, dhi],
            "mcnemar_p": mcnemar_exact(right, other),
            "only_this_right": sum(a and not b for a, b in zip(right, other, strict=True)),
            "only_baseline_right": sum(b and not a for a, b in zip(right, other, strict=True)),
        }
    return summary


def _stopped_at(o: Outcome) -> int | None:
    """The ladder rung an item stopped at (replay: ``stopped_at``; gateway: ``ladder``)."""
    if isinstance(o.extra.get("stopped_at"), int):
        return int(o.extra["stopped_at"])
    ladder = o.extra.get("ladder")
    if isinstance(ladder, dict) and isinstance(ladder.get("stopped_at"), int):
        return int(ladder["stopped_at"])
    return None


def per_family(rows: Sequence[Row], tasks: Sequence[Task]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        acc: dict[str, list[bool]] = {}
        for t, o in zip(tasks, row.outcomes, strict=True):
            acc.setdefault(t.family, []).append(o.correct)
        out[row.key] = {f: sum(v) / len(v) for f, v in acc.items()}
    return out


def sample_accuracy(tasks: Sequence[Task], pools: Sequence[PoolItem]) -> dict[str, float]:
    """Mean per-sample accuracy p over the pool, per family (what voting works with)."""
    acc: dict[str, list[float]] = {}
    for t, p in zip(tasks, pools, strict=True):
        acc.setdefault(t.family, []).append(sum(is_right(t, a) for a in p.answers) / len(p.answers))
    out = {f: sum(v) / len(v) for f, v in acc.items()}
    out["all"] = sum(sum(v) for v in acc.values()) / sum(len(v) for v in acc.values())
    return out


# --------------------------------------------------------------------------------------------
# Rendering


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _diff(s: dict[str, Any], name: str) -> str:
    v = s.get(f"vs_{name}")
    if v is None:
        return "—"
    lo, hi = v["ci95"]
    return f"{100 * v['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] p={v['mcnemar_p']:.2g}"


def _num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


COLUMNS = (
    "strategy",
    "source",
    "acc % [95% CI]",
    "Δ vs greedy, pts [95% CI]",
    "Δ vs maj@16, pts [95% CI]",
    "visible",
    "hidden",
    "total tok",
    "samples",
    "latency s",
)


def accuracy_cell(s: dict[str, Any]) -> str:
    """``29.2 [21.0, 38.9]``, plus the error count when some requests failed."""
    lo, hi = s["accuracy_ci95"]
    acc = f"{_pct(s['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"
    return acc + (f" ({s['errors']} err)" if s["errors"] else "")


def table_cells(s: dict[str, Any]) -> list[str]:
    acc = accuracy_cell(s)
    return [
        s["label"],
        s["source"],
        acc,
        _diff(s, BASELINE_GREEDY) if s["key"] != BASELINE_GREEDY else "(baseline)",
        _diff(s, BASELINE_MAJ16) if s["key"] != BASELINE_MAJ16 else "(baseline)",
        _num(s["mean_visible_tokens"]),
        _num(s["mean_hidden_tokens"]),
        _num(s["mean_total_tokens"]),
        _num(s["mean_samples"]),
        _num(s["mean_latency_s"], 2),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(summaries: Sequence[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("strategy", "source") else "right")
    for s in summaries:
        table.add_row(*table_cells(s))
    return table


def comparison_rows(by_key: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Real routes vs their derivations from the pool, in distribution."""
    pairs = (
        ("route-bon8", "auto@8"),
        ("route-sc8", "maj@8"),
        ("route-adaptive", "adaptive"),
        ("route-greedy-ladder", "greedy-ladder-ship"),
        ("route-confidence-ladder", "confidence-ladder-ship"),
        ("route-adaptive-conf", ADAPTIVE_CONF_ROUTE),
    )
    out = []
    for real, derived in pairs:
        for key in (real, derived):
            if key not in by_key:
                continue
            s = by_key[key]
            lo, hi = s["accuracy_ci95"]
            stops = ", ".join(f"{k}: {v}" for k, v in sorted(s["stop_reasons"].items()))
            if rungs := s.get("ladder_stopped_at"):
                stops += "; stopped at rung " + ", ".join(f"{k}: {v}" for k, v in rungs.items())
            if s.get("downgraded"):
                stops += f"; {s['downgraded']} downgraded"
            out.append(
                [
                    s["label"],
                    s["source"],
                    f"{_pct(s['accuracy'])} [{_pct(lo)}, {_pct(hi)}]",
                    _num(s["mean_samples"], 2),
                    _num(s["mean_total_tokens"]),
                    stops or "—",
                ]
            )
    return out


TARGET_ROWS = (
    "adaptive",
    "route-adaptive",
    *(f"adaptive-c{c:g}" for c in SENSITIVITY_CONFIDENCES),
    ADAPTIVE_CONF_ROUTE,
    "route-adaptive-conf",
    *(f"{ADAPTIVE_CONF_ROUTE}-s{s:g}" for s in SHARE_SENSITIVITY),
)
"""Rows the target is checked for: adaptive voting with the posterior stop and with the
confidence stop (derived and end to end), then their sensitivity rows."""


def target_check(by_key: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Adaptive not significantly below fixed N=16 majority, at <= 40 % of its tokens.

    "Not significantly below": the paired 95 % interval of Δ accuracy vs maj@16 does not lie
    wholly below 0 (``ci_upper_margin`` = its upper end, in accuracy, ≥ 0). Tokens: mean total
    generated tokens per item ÷ maj@16's (``token_margin`` = 0.40 − that ratio, ≥ 0)."""
    base_tokens = by_key[BASELINE_MAJ16]["mean_total_tokens"] or 0.0
    out = []
    for key in TARGET_ROWS:
        if key not in by_key:
            continue
        s = by_key[key]
        v = s[f"vs_{BASELINE_MAJ16}"]
        ratio = (s["mean_total_tokens"] or 0.0) / base_tokens if base_tokens else None
        not_below = v["ci95"][1] >= 0.0  # the 95 % interval does not lie wholly below 0
        within = ratio is not None and ratio <= TARGET_TOKEN_RATIO
        out.append(
            {
                "row": key,
                "label": s["label"],
                "source": s["source"],
                "diff_vs_maj16": v["diff"],
                "diff_ci95": v["ci95"],
                "mcnemar_p": v["mcnemar_p"],
                "token_ratio_vs_maj16": ratio,
                "not_significantly_below": not_below,
                "ci_upper_margin": v["ci95"][1],
                "tokens_within_40pct": within,
                "token_margin": None if ratio is None else TARGET_TOKEN_RATIO - ratio,
                "met": not_below and within,
            }
        )
    return out


def target_line(t: dict[str, Any]) -> str:
    """One target result, with by how much each half is met or missed."""
    lo, hi = t["diff_ci95"]
    ratio = t["token_ratio_vs_maj16"]
    acc = (
        f"CI upper end {100 * hi:+.1f} pts ≥ 0: not significantly below"
        if t["not_significantly_below"]
        else f"CI upper end {100 * hi:+.1f} pts < 0: significantly below"
    )
    if ratio is None:
        tok = "tokens: no maj@16 baseline"
    else:
        margin = 100 * (t["token_margin"] or 0.0)
        tok = (
            f"tokens {100 * ratio:.0f} % of maj@16 "
            f"({abs(margin):.0f} pts {'under' if margin >= 0 else 'over'} the "
            f"{100 * TARGET_TOKEN_RATIO:.0f} % cap)"
        )
    return (
        f"Δ vs maj@16 = {100 * t['diff_vs_maj16']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], "
        f"McNemar p = {t['mcnemar_p']:.2g}; {acc}; {tok} → {'MET' if t['met'] else 'NOT MET'}"
    )


def _loads(values: Sequence[float] | None) -> str:
    return "—" if not values else "/".join(f"{v:.1f}" for v in values)


def render_markdown(report: dict[str, Any]) -> str:
    s = report["summaries"]
    by_key = {x["key"]: x for x in s}
    counts = ", ".join(f"{f} {c}" for f, c in report["family_counts"].items())
    lines = [
        "# Test-time scaling on SmolLM2-135M-Instruct (vLLM CPU) through the Deliberate gateway",
        "",
        f"- {report['settings']['items']} items (seed {report['settings']['seed']}): {counts}.",
        f"- max_tokens {report['settings']['max_tokens']} per sample / answer; "
        f"{report['settings']['concurrency']} items in flight; run took "
        f"{report['duration_s'] / 60:.1f} min ({report['machine']['cpu_count']} CPUs).",
        f"- Load average (1/5/15 min) before {_loads(report['machine'].get('loadavg_before'))}, "
        f"after {_loads(report['machine'].get('loadavg_after'))}: latencies include whatever "
        "else the machine was running.",
        "- Δ columns: paired difference in accuracy points, 95 % paired-bootstrap interval "
        f"({report['settings']['bootstrap']} resamples), exact McNemar p.",
        "- `gateway` rows: one gateway request per item and strategy (latency = that request, "
        "under the stated concurrency). `derived` rows: selections over ONE shared pool of 16 "
        "samples per item (one `n=16` request through the `single-pass` route with "
        "`return_token_ids`, because the strategy routes do not return per-candidate token "
        "counts), using the gateway's own selection code; their tokens are the exact counts of "
        "the candidates needed. `oracle` = a correct sample exists (upper bound).",
        f"- Pool request: mean latency {_num(report['pool']['mean_latency_s'], 2)} s for "
        f"{POOL_SIZE} samples; mean per-sample accuracy p = "
        f"{_pct(report['pool']['sample_accuracy']['all'])} %.",
        "- The `verifier` selector is the reference-free `ArithmeticConsistencyVerifier`: on "
        "plain-arithmetic questions it recomputes the question itself, elsewhere it only checks "
        "equations the candidates write (neutral 0.5 otherwise).",
        "- The greedy and pool requests also ask for `logprobs` (top 2). The ladder, "
        "`conf-vote` and `adaptive-confidence` derived rows are REPLAYS: the real `Ladder`, "
        "`BestOfN` and `AdaptiveConsistency` code, with the shipped routes' parameters read "
        "from `configs/routes.yaml`, runs on a generator that serves the item's greedy answer "
        "for the first n=1 call and the next slice of the pool for every other call; their "
        "tokens are the exact tokens of what they drew (the greedy answer counts for ladders).",
        "- Ladder routes are single-pass routes, whose params carry no answer format: the "
        "gateway's ladder extracts `last_number` on every item, and no `.mc` copy can change "
        "that (only route rungs carry one). So the end-to-end ladder rows send multiple-choice "
        "items to the shipped route and are judged from the returned text like every row; the "
        "`-ship` replays do the same (their comparison pair), the plain replays use the "
        "per-family format like the other derived rows.",
        "",
        "## All strategies",
        "",
        markdown_table(COLUMNS, [table_cells(x) for x in s]),
        "",
        "## Accuracy per family (%)",
        "",
    ]
    fams = list(report["family_counts"])
    fam_rows = [
        ["per-sample p (pool mean)", "pool"]
        + [_pct(report["pool"]["sample_accuracy"][f]) for f in fams]
    ]
    for x in s:
        fam_rows.append(
            [x["label"], x["source"]] + [_pct(report["per_family"][x["key"]][f]) for f in fams]
        )
    lines += [markdown_table(["strategy", "source", *fams], fam_rows), ""]
    lines += [
        "## Real routes vs their derivation from the pool (in distribution)",
        "",
        markdown_table(
            ["row", "source", "acc % [95% CI]", "samples", "total tok", "stop reasons"],
            comparison_rows(by_key),
        ),
        "",
        "## Target: adaptive voting not significantly below fixed N=16 majority at ≤ 40 % of "
        "its tokens",
        "",
        "With the confidence stop (the shipped `adaptive-confidence` route, derived and end to "
        "end) and with the posterior stop (`adaptive-consistency`); sensitivity rows last.",
        "",
    ]
    for t in report["target_check"]:
        lines.append(f"- `{t['row']}` [{t['source']}] ({t['label']}): {target_line(t)}")
    lines += ["", *verifier_markdown(report.get("verifier_scores") or {})]
    check = report.get("route_sampling_check")
    if check:
        lines += [
            "## Route-owned sampling",
            "",
            f"`single-pass` named with no client temperature (the route's "
            f"`sampling: {check['route_sampling']}`) vs the client's `temperature: 0`: same "
            f"text on {check['identical_text']}/{check['items']} items, same answer on "
            f"{check['same_answer']}/{check['items']}.",
            "",
        ]
    lines += ["## Findings", "", *report.get("findings", ["(see the table)"]), ""]
    return "\n".join(lines)


def verifier_markdown(scores: dict[str, Any]) -> list[str]:
    """The ladders' verifier scores of right vs wrong answers, as a table."""
    if not scores:
        return []
    header = ["verifier (route)", "answers", "right/wrong", "n", "min", "q1", "median", "q3"]
    header += ["max", "≥ threshold", "AUROC"]
    rows = []
    for name, v in scores.items():
        for what in ("greedy", "pool"):
            sep = v[what]
            for side in ("right", "wrong"):
                q = sep[side]
                rows.append(
                    [
                        f"{v['verifier']} ({name}, threshold {v['threshold']:g})",
                        "greedy answer" if what == "greedy" else "pool samples",
                        side,
                        str(q["n"]),
                        *(_num(q[k], 3) for k in ("min", "q1", "median", "q3", "max")),
                        f"{q['pass']}/{q['n']}",
                        _num(sep["auroc"], 3) if side == "right" else "",
                    ]
                )
    return [
        "## Ladder verifiers: scores of right vs wrong answers",
        "",
        "Each ladder's first-rung verifier on every greedy answer and every pool sample "
        "(per-family answer format). A greedy answer scoring ≥ the threshold is kept without "
        "escalating; AUROC = P(a right answer outscores a wrong one).",
        "",
        markdown_table(header, rows),
        "",
    ]


def findings(report: dict[str, Any]) -> list[str]:
    """Facts read off the numbers (the interpretation is left to the reader)."""
    by_key = {x["key"]: x for x in report["summaries"]}
    out = [
        f"- single-pass greedy {_pct(by_key['greedy']['accuracy'])} %, sampled "
        f"{_pct(by_key['sampled']['accuracy'])} %."
    ]
    for suffix, temperature in (("", 0.0), ("-t", SAMPLED_TEMPERATURE)):
        curve = ", ".join(
            f"{e} {_pct(by_key[f'br-{e}{suffix}']['accuracy'])} % "
            f"({_num(by_key[f'br-{e}{suffix}']['mean_hidden_tokens'], 0)} hidden tok, "
            f"budget hit on {by_key[f'br-{e}{suffix}'].get('forced_close', 0)} items)"
            for e, _ in EFFORTS
        )
        out.append(f"- bounded reasoning T={temperature:g} by effort: {curve}.")
    for n in FIXED_NS:
        orc = by_key[f"oracle@{n}"]["accuracy"]
        parts = []
        for sel in SELECTORS:
            acc = by_key[f"maj@{n}" if sel == "majority" else f"{sel}@{n}"]["accuracy"]
            recall = f", recall {_pct(acc / orc)} %" if orc else ""
            parts.append(f"{sel} {_pct(acc)} %{recall}")
        out.append(
            f"- N={n} ({_num(by_key[f'maj@{n}']['mean_total_tokens'], 0)} tok): "
            + "; ".join(parts)
            + f" (oracle pass@{n} {_pct(orc)} %)."
        )
    for key in TARGET_ROWS:
        if key not in by_key:
            continue
        a = by_key[key]
        stops = ", ".join(f"{k} {v}" for k, v in sorted(a["stop_reasons"].items()))
        out.append(
            f"- {a['label']} [{a['source']}]: {_pct(a['accuracy'])} %, "
            f"{_num(a['mean_samples'], 1)} samples on average ({stops}), "
            f"{_num(a['mean_total_tokens'], 0)} tokens."
        )
    ladder_keys = [
        k
        for k in ORDER
        if k in by_key and ("ladder" in k) and by_key[k].get("ladder_stopped_at") is not None
    ]
    for key in ladder_keys:
        a = by_key[key]
        rungs = ", ".join(f"rung {k}: {v}" for k, v in a["ladder_stopped_at"].items())
        out.append(
            f"- {a['label']} [{a['source']}]: {_pct(a['accuracy'])} % "
            f"(Δ vs greedy {_diff(a, BASELINE_GREEDY)}), stopped at {rungs}; "
            f"{_num(a['mean_samples'], 1)} samples, {_num(a['mean_total_tokens'], 0)} tokens."
        )
    for n in CONF_VOTE_NS:
        parts = [
            f"{by_key[k]['label'].split(', ', 1)[1]} {_pct(by_key[k]['accuracy'])} %"
            for k in (f"conf-vote@{n}" + ("" if kt == 1.0 else f"-k{kt:g}") for kt in KEEP_TOPS)
            if k in by_key
        ]
        if parts and f"maj@{n}" in by_key:
            out.append(
                f"- N={n}: majority {_pct(by_key[f'maj@{n}']['accuracy'])} %; " + "; ".join(parts)
            )
    if (d := by_key.get("greedy-route")) is not None:
        check = report.get("route_sampling_check") or {}
        out.append(
            f"- single-pass with the route's own sampling (no client temperature): "
            f"{_pct(d['accuracy'])} % vs greedy {_pct(by_key['greedy']['accuracy'])} %; same text "
            f"on {check.get('identical_text', '?')}/{check.get('items', '?')} items."
        )
    return out


# --------------------------------------------------------------------------------------------
# Main


@dataclass(frozen=True)
class Options:
    items: int
    seed: int
    concurrency: int
    max_tokens: int
    bootstrap: int
    quick: bool
    output_dir: Path
    backend_url: str | None
    strategies: tuple[str, ...] = ()


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ITEMS} items")
    p.add_argument("--items", type=int, default=None, help=f"items (default {DEFAULT_ITEMS})")
    p.add_argument("--seed", type=int, default=0, help="task-suite seed (default 0)")
    p.add_argument("--concurrency", type=int, default=4, help="items in flight (default 4)")
    p.add_argument("--max-tokens", type=int, default=80, help="per sample/answer (default 80)")
    p.add_argument("--bootstrap", type=int, default=None, help="resamples (default 5000)")
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--backend-url", default=None, help="reuse this running vLLM")
    p.add_argument(
        "--strategies",
        default=None,
        help="run only these rows (plus greedy single-pass as the paired baseline), comma-"
        f"separated from {','.join(SEARCH_STRATEGIES)}; default {SEARCH_ITEMS} items; writes "
        "test_time_scaling-search.*",
    )
    a = p.parse_args(argv)
    strategies: tuple[str, ...] = ()
    if a.strategies is not None:
        strategies = tuple(x.strip() for x in a.strategies.split(",") if x.strip())
        unknown = [x for x in strategies if x not in SEARCH_STRATEGIES]
        if unknown or not strategies:
            p.error(f"--strategies: unknown {unknown}; choose from {', '.join(SEARCH_STRATEGIES)}")
    default_items = SEARCH_ITEMS if strategies else DEFAULT_ITEMS
    items = a.items if a.items is not None else (QUICK_ITEMS if a.quick else default_items)
    if items < 1 or a.concurrency < 1 or a.max_tokens < 1:
        p.error("--items, --concurrency and --max-tokens must be >= 1")
    boot = a.bootstrap if a.bootstrap is not None else (1000 if a.quick else 5000)
    return Options(
        items,
        a.seed,
        a.concurrency,
        a.max_tokens,
        boot,
        a.quick,
        a.output_dir,
        a.backend_url,
        strategies,
    )


async def run_all(
    opts: Options, gw_url: str, tasks: Sequence[Task], shipped: DeliberateConfig
) -> tuple[list[Row], list[PoolItem], dict[str, float]]:
    rows: list[Row] = []
    pools: list[PoolItem] = []
    walls: dict[str, float] = {}
    limits = httpx.Limits(max_connections=opts.concurrency * 2)
    timeout = httpx.Timeout(900.0, connect=10.0)
    async with httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits) as client:
        warm = {"model": "single-pass", "messages": [{"role": "user", "content": "Hi"}]}
        await post_chat(client, gw_url, {**warm, "max_tokens": 4})
        for phase in phases(opts.max_tokens, shipped):
            results, wall = await run_phase(client, gw_url, phase, tasks, opts.concurrency)
            walls[phase.key] = wall
            if phase.pool:
                pools = results
                console.print(f"  {phase.label}: {wall:.0f} s")
                continue
            rows.append(Row(phase.key, phase.label, "gateway", results))
            acc = sum(o.correct for o in results) / len(results)
            errs = sum(o.error is not None for o in results)
            console.print(
                f"  {phase.label}: acc {_pct(acc)} %, {wall:.0f} s"
                + (f", [red]{errs} errors[/red]" if errs else "")
            )
    return rows, pools, walls


ORDER = (
    "greedy",
    "sampled",
    "greedy-route",
    "br-none",
    "br-low",
    "br-medium",
    "br-high",
    "br-none-t",
    "br-low-t",
    "br-medium-t",
    "br-high-t",
    "verifier@4",
    "maj@4",
    "weighted@4",
    "verifier@8",
    "maj@8",
    "weighted@8",
    "verifier@16",
    "maj@16",
    "weighted@16",
    "adaptive",
    "adaptive-c0.9",
    "adaptive-c0.8",
    "route-bon8",
    "auto@8",
    "route-sc8",
    "route-adaptive",
    "greedy-ladder",
    "greedy-ladder-ship",
    "route-greedy-ladder",
    "confidence-ladder",
    "confidence-ladder-ship",
    *(f"confidence-ladder-t{t:g}" for t in LADDER_SENSITIVITY),
    "route-confidence-ladder",
    *(f"conf-vote@{n}" + ("" if k == 1.0 else f"-k{k:g}") for n in CONF_VOTE_NS for k in KEEP_TOPS),
    ADAPTIVE_CONF_ROUTE,
    *(f"{ADAPTIVE_CONF_ROUTE}-s{s:g}" for s in SHARE_SENSITIVITY),
    "route-adaptive-conf",
    "oracle@4",
    "oracle@8",
    "oracle@16",
)


def outcome_json(o: Outcome) -> dict[str, Any]:
    d = asdict(replace(o, candidate=None))
    del d["candidate"]
    if d["extra"].get("text") is not None:
        d["extra"]["text"] = d["extra"]["text"][:400]
    return d


def route_sampling_check(greedy: Row, route: Row, shipped: DeliberateConfig) -> dict[str, Any]:
    """Whether the single-pass route's own sampling (no client temperature) gives the same
    replies as the client's ``temperature: 0``, item by item."""
    pairs = list(zip(greedy.outcomes, route.outcomes, strict=True))
    return {
        "route_sampling": shipped.route("single-pass").sampling.fields(),
        "items": len(pairs),
        "identical_text": sum(
            a.error is None and a.extra.get("text") == b.extra.get("text") for a, b in pairs
        ),
        "same_answer": sum(a.error is None and a.answer == b.answer for a, b in pairs),
    }


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    tasks = make_suite(opts.items, opts.seed)
    counts = family_counts(tasks)
    console.print(
        f"{len(tasks)} items (seed {opts.seed}): "
        + ", ".join(f"{f} {c}" for f, c in counts.items())
    )
    if opts.strategies:
        return main_search(opts, tasks)
    started = time.monotonic()
    load_before = os.getloadavg()
    shipped = load_config(ROUTES_YAML)  # the replays' route parameters, as shipped
    try:
        with contextlib.ExitStack() as stack:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlb-tts-")))
            with unpinned():
                url, model = stack.enter_context(vllm_backend(opts.backend_url))
            gw_url, _ = stack.enter_context(gateway_server(bench_config(url), log_dir))
            console.print(f"backend {url} ({model}); gateway {gw_url}")
            rows, pools, walls = _run(run_all(opts, gw_url, tasks, shipped))
    except KeyboardInterrupt:
        console.print("[red]interrupted: everything started was stopped[/red]")
        return 130
    except (BenchError, httpx.HTTPError) as e:
        console.print(f"[red]benchmark failed: {e}[/red]")
        return 1
    rows += _run(derived_rows(tasks, pools))
    greedy = next(r for r in rows if r.key == BASELINE_GREEDY).outcomes
    rows += _run(replay_rows(tasks, pools, greedy, shipped, opts.max_tokens))
    scores = _run(verifier_scores(tasks, pools, greedy, shipped))
    by_key = {r.key: r for r in rows}
    rows = [by_key[k] for k in ORDER if k in by_key]
    baselines = {BASELINE_GREEDY: by_key[BASELINE_GREEDY], BASELINE_MAJ16: by_key[BASELINE_MAJ16]}
    summaries = [summarise(r, baselines, opts.bootstrap, opts.seed) for r in rows]
    duration = time.monotonic() - started
    report: dict[str, Any] = {
        "benchmark": "test-time-scaling",
        "description": __doc__,
        "machine": machine_info()
        | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "items": len(tasks),
            "seed": opts.seed,
            "concurrency": opts.concurrency,
            "max_tokens": opts.max_tokens,
            "bootstrap": opts.bootstrap,
            "quick": opts.quick,
            "pool_size": POOL_SIZE,
            "sampled_temperature": SAMPLED_TEMPERATURE,
            "efforts": dict(EFFORTS),
            "model": model,
            "logprobs": LOGPROBS,
            "shipped_routes": {
                name: shipped.route(name).model_dump(
                    mode="json", include={"strategy", "sampling", "escalate_to", "params"}
                )
                for name in (*LADDER_ROUTES, ADAPTIVE_CONF_ROUTE)
            },
        },
        "family_counts": counts,
        "families": list(FAMILIES),
        "phase_wall_s": {k: round(v, 1) for k, v in walls.items()},
        "pool": {
            "mean_latency_s": _mean([p.latency_s for p in pools]),
            "mean_tokens_per_sample": _mean([t for p in pools for t in p.tokens]),
            "sample_accuracy": sample_accuracy(tasks, pools),
            "token_source": "vLLM token_ids of each choice (return_token_ids), via the "
            "gateway's single-pass route",
        },
        "summaries": summaries,
        "per_family": per_family(rows, tasks),
        "duration_s": round(duration, 1),
    }
    sby_key = {s["key"]: s for s in summaries}
    report["verifier_scores"] = scores
    if "greedy-route" in by_key:
        report["route_sampling_check"] = route_sampling_check(
            by_key[BASELINE_GREEDY], by_key["greedy-route"], shipped
        )
    report["target_check"] = target_check(sby_key)
    report["findings"] = findings(report)
    report["items"] = [
        {
            "task": t.to_json(),
            "pool": p.to_json(),
            "outcomes": {r.key: outcome_json(r.outcomes[i]) for r in rows if r.source == "gateway"},
            "derived_correct": {
                r.key: r.outcomes[i].correct for r in rows if r.source != "gateway"
            },
            "ladder_stopped_at": {
                r.key: _stopped_at(r.outcomes[i])
                for r in rows
                if _stopped_at(r.outcomes[i]) is not None
            },
        }
        for i, (t, p) in enumerate(zip(tasks, pools, strict=True))
    ]
    console.print(rich_table(summaries, "Test-time scaling (SmolLM2-135M, through the gateway)"))
    for t in report["target_check"]:
        console.print(f"target ({t['row']}, {t['source']}): {target_line(t)}")
    stem = "test_time_scaling-quick" if opts.quick else "test_time_scaling"
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = opts.output_dir / f"{stem}.json"
    md_path = opts.output_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(render_markdown(report))
    console.print(f"results: {json_path} and {md_path} (run took {duration / 60:.1f} min)")
    return 0


# --------------------------------------------------------------------------------------------
# --strategies: refine and prm-search rows on their own (slow) item set


@contextlib.contextmanager
def prm_server(run_dir: Path) -> Iterator[str]:
    """The project's real PRM server (SmolLM2 with a No/Yes head over ``<file_sep>`` step tags:
    real wire and latency, scores of no trained PRM) on a free port; yields its URL."""
    from gateway import localbackend as lb

    paths = lb.BackendPaths.default(run_dir=run_dir)
    spec = lb.ServerSpec(port=free_port(), kind="prm")
    progress = lambda line: console.print(f"  [dim]prm: {line}[/dim]")  # noqa: E731
    try:
        started = time.monotonic()
        with unpinned():
            status = lb.start(paths, spec, progress)
        console.print(f"PRM server {status.url} up in {time.monotonic() - started:.0f} s")
        yield status.url
    finally:
        lb.stop(paths, spec, progress)


async def run_search(
    opts: Options, gw_url: str, tasks: Sequence[Task]
) -> tuple[list[Row], dict[str, float]]:
    rows: list[Row] = []
    walls: dict[str, float] = {}
    limits = httpx.Limits(max_connections=opts.concurrency * 2)
    timeout = httpx.Timeout(900.0, connect=10.0)
    async with httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits) as client:
        warm = {"model": "single-pass", "messages": [{"role": "user", "content": "Hi"}]}
        await post_chat(client, gw_url, {**warm, "max_tokens": 4})
        for phase in search_phases(opts.max_tokens, opts.strategies):
            results, wall = await run_phase(client, gw_url, phase, tasks, opts.concurrency)
            walls[phase.key] = wall
            rows.append(Row(phase.key, phase.label, "gateway", results))
            acc = sum(o.correct for o in results) / len(results)
            errs = sum(o.error is not None for o in results)
            console.print(
                f"  {phase.label}: acc {_pct(acc)} %, {wall:.0f} s"
                + (f", [red]{errs} errors[/red]" if errs else "")
            )
    return rows, walls


SEARCH_COLUMNS = (
    "strategy",
    "acc % [95% CI]",
    "Δ vs greedy, pts [95% CI]",
    "visible",
    "hidden",
    "total tok",
    "latency s",
    "backend calls",
    "scoring share of latency",
)


def search_cells(s: dict[str, Any]) -> list[str]:
    acc = accuracy_cell(s)
    share = s.get("prm_latency_share")
    return [
        s["label"],
        acc,
        _diff(s, BASELINE_GREEDY) if s["key"] != BASELINE_GREEDY else "(baseline)",
        _num(s["mean_visible_tokens"]),
        _num(s["mean_hidden_tokens"]),
        _num(s["mean_total_tokens"]),
        _num(s["mean_latency_s"], 2),
        _num(s.get("mean_backend_calls", 1.0 if s["key"] == BASELINE_GREEDY else None)),
        "—" if share is None else f"{100 * share:.1f} %",
    ]


def render_search_markdown(report: dict[str, Any]) -> str:
    st = report["settings"]
    s = report["summaries"]
    counts = ", ".join(f"{f} {c}" for f, c in report["family_counts"].items())
    lines = [
        "# Test-time scaling, search rows: refine and prm-search on SmolLM2-135M-Instruct "
        "(vLLM CPU) through the Deliberate gateway",
        "",
        f"- {st['items']} items (seed {st['seed']}; the first {st['items']} of the same seeded "
        f"suite as the full run): {counts}.",
        f"- {st['concurrency']} items in flight; run took {report['duration_s'] / 60:.1f} min "
        f"({report['machine']['cpu_count']} CPUs); phase wall times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["phase_wall_s"].items())
        + ".",
        f"- Load average (1/5/15 min) before {_loads(report['machine'].get('loadavg_before'))}, "
        f"after {_loads(report['machine'].get('loadavg_after'))}: latencies include whatever "
        "else the machine was running (the PRM server shares the CPUs with the generator).",
        "- Δ vs greedy: paired difference in accuracy points on the same items, 95 % "
        f"paired-bootstrap interval ({st['bootstrap']} resamples), exact McNemar p.",
        f"- Greedy and refine: `max_tokens` {st['max_tokens']} per answer / version. prm-search "
        "runs with the shipped route parameters and no client `max_tokens` (a client cap "
        "bounds a whole beam): beam 3, branch 4, ≤ 6 steps of ≤ 96 tokens, T=0.8, budget "
        "8192 tokens. `.mc` route copies extract option letters on multiple-choice items.",
        "- Tokens: visible = the returned answer, hidden = everything else generated "
        "(other candidates/beams, critiques, judge calls) as the gateway's `deliberate.tokens` "
        "reports it; backend calls = `deliberate.backend_calls` (calls to the generation "
        "backend, the logprob judge's included; arithmetic-checker and PRM-server calls are "
        "not: see verifier calls below). Scoring share of latency = Σ `prm_seconds` / Σ "
        "request latency over items (time the search waited on step scoring: the PRM server "
        "for the prm row, the judge's calls for logprob-judge, pure Python for arithmetic).",
        "- The PRM server is SmolLM2 with an untrained No/Yes head: its wire and latency are "
        "real, its scores are NOT those of a trained process reward model, so the prm row "
        "measures cost, not what a real PRM would buy.",
        "",
        markdown_table(SEARCH_COLUMNS, [search_cells(x) for x in s]),
        "",
        "## Accuracy per family (%)",
        "",
    ]
    fams = list(report["family_counts"])
    fam_rows = [[x["label"]] + [_pct(report["per_family"][x["key"]][f]) for f in fams] for x in s]
    lines += [markdown_table(["strategy", *fams], fam_rows), ""]
    lines += ["## Stop reasons and verifier calls", ""]
    for x in s:
        stops = ", ".join(f"{k} {v}" for k, v in sorted(x["stop_reasons"].items()))
        extra = ""
        if x.get("mean_verifier_calls") is not None:
            extra += f"; mean verifier calls {_num(x['mean_verifier_calls'])}"
        if x.get("mean_prm_seconds") is not None and x["key"] != "greedy":
            extra += f"; mean prm_seconds {_num(x['mean_prm_seconds'], 2)}"
        lines.append(f"- {x['label']}: {stops or '—'}{extra}.")
    lines.append("")
    return "\n".join(lines)


def main_search(opts: Options, tasks: Sequence[Task]) -> int:
    """Greedy single-pass plus the ``--strategies`` rows; writes ``test_time_scaling-search.*``
    (the full run's files stay as they are)."""
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        with contextlib.ExitStack() as stack:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlb-tts-")))
            with unpinned():
                url, model = stack.enter_context(vllm_backend(opts.backend_url))
            prm_url = None
            if "prm-prm" in opts.strategies:
                prm_url = stack.enter_context(prm_server(log_dir / "prm-run"))
            gw_url, _ = stack.enter_context(gateway_server(bench_config(url, prm_url), log_dir))
            console.print(f"backend {url} ({model}); gateway {gw_url}")
            rows, walls = _run(run_search(opts, gw_url, tasks))
    except KeyboardInterrupt:
        console.print("[red]interrupted: everything started was stopped[/red]")
        return 130
    except (BenchError, httpx.HTTPError) as e:
        console.print(f"[red]benchmark failed: {e}[/red]")
        return 1
    baselines = {BASELINE_GREEDY: rows[0]}
    summaries = [summarise(r, baselines, opts.bootstrap, opts.seed) for r in rows]
    duration = time.monotonic() - started
    report: dict[str, Any] = {
        "benchmark": "test-time-scaling-search",
        "machine": machine_info()
        | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "items": len(tasks),
            "seed": opts.seed,
            "concurrency": opts.concurrency,
            "max_tokens": opts.max_tokens,
            "bootstrap": opts.bootstrap,
            "strategies": list(opts.strategies),
            "routes": {k: SEARCH_STRATEGIES[k][1] for k in opts.strategies},
            "model": model,
        },
        "family_counts": family_counts(tasks),
        "phase_wall_s": {k: round(v, 1) for k, v in walls.items()},
        "summaries": summaries,
        "per_family": per_family(rows, tasks),
        "duration_s": round(duration, 1),
        "items": [
            {"task": t.to_json(), "outcomes": {r.key: outcome_json(r.outcomes[i]) for r in rows}}
            for i, t in enumerate(tasks)
        ],
    }
    table = Table(title="Search rows (SmolLM2-135M, through the gateway)")
    for c in SEARCH_COLUMNS:
        table.add_column(c, justify="left" if c == "strategy" else "right")
    for x in summaries:
        table.add_row(*search_cells(x))
    console.print(table)
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = opts.output_dir / "test_time_scaling-search.json"
    md_path = opts.output_dir / "test_time_scaling-search.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(render_search_markdown(report))
    console.print(f"results: {json_path} and {md_path} (run took {duration / 60:.1f} min)")
    return 0


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
