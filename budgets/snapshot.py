"""Live backend state: one vLLM replica's ``/metrics`` as an immutable sample, the rates
derived from two consecutive samples, and the pool summary admission reads.

Pure: the scraper (``gateway.backends.scraper``) does the HTTP; everything here is a function
of the scraped text and monotonic timestamps. Unknown is ``None``, never zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from budgets.estimates import PoolLoad

# Sample names (not family names: the parser strips ``_total`` from counter families). The
# first name present wins; later ones are vLLM's deprecated spellings.
_NAMES: dict[str, tuple[str, ...]] = {
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "prefix_hits": (
        "vllm:prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits",
    ),
    "prefix_queries": (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries",
    ),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "preemptions": ("vllm:num_preemptions_total",),
    "e2e_sum": ("vllm:e2e_request_latency_seconds_sum",),
    "e2e_count": ("vllm:e2e_request_latency_seconds_count",),
}
_CACHE_INFO = "vllm:cache_config_info"
_WANTED = {n for names in _NAMES.values() for n in names} | {_CACHE_INFO}


@dataclass(frozen=True, slots=True)
class BackendSample:
    """One scrape of one replica. Gauges are instantaneous, counters cumulative since start."""

    taken_at: float
    """Monotonic seconds when the scrape answered."""
    healthy: bool
    kv_usage: float | None = None
    """Share of the KV cache in use, 0..1 (mean over the replica's engines)."""
    running: int | None = None
    waiting: int | None = None
    prefix_hits: float | None = None
    prefix_queries: float | None = None
    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    preemptions: float | None = None
    e2e_sum: float | None = None
    e2e_count: float | None = None
    kv_capacity_tokens: int | None = None
    """Tokens the KV cache holds (summed over engines)."""


def _number(value: object) -> float | None:
    try:
        x = float(str(value))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _capacity(labels: dict[str, str]) -> int | None:
    """Tokens one engine's KV cache holds, from ``cache_config_info``'s labels."""
    direct = _number(labels.get("kv_cache_size_tokens"))  # group-aware, newer vLLM
    if direct is not None and direct > 0:
        return int(direct)
    block = _number(labels.get("block_size"))
    for key in ("num_gpu_blocks", "num_cpu_blocks"):
        blocks = _number(labels.get(key))
        if blocks is not None and blocks > 0 and block is not None and block > 0:
            return int(blocks * block)
    return None


def _relevant(text: str) -> str:
    """Only the sample lines we read: parsing vLLM's whole page (~600 lines, mostly histogram
    buckets) costs ~10 ms of event-loop time, the filtered one about 1 ms. Without their
    ``# TYPE`` lines the samples parse as untyped families that keep their full names."""
    keep = [
        line
        for line in text.splitlines()
        if line.startswith("vllm:") and line.split("{", 1)[0].split(" ", 1)[0] in _WANTED
    ]
    return "\n".join(keep) + "\n"


def _collect(text: str) -> tuple[dict[str, list[float]], list[int]]:
    values: dict[str, list[float]] = {}
    capacities: list[int] = []
    for family in text_string_to_metric_families(_relevant(text)):
        for s in family.samples:
            if s.name not in _WANTED:
                continue
            if s.name == _CACHE_INFO:
                cap = _capacity(s.labels)
                if cap is not None:
                    capacities.append(cap)
                continue
            x = _number(s.value)
            if x is not None:
                values.setdefault(s.name, []).append(x)
    return values, capacities


def parse_vllm_metrics(text: str, taken_at: float, healthy: bool) -> BackendSample:
    """A sample from vLLM's Prometheus text; series of one name are summed over their labels
    (KV usage is averaged over engines). Never raises: unparseable text gives all None."""
    try:
        values, capacities = _collect(text)
    except Exception:  # the parser raises assorted errors on malformed lines
        return BackendSample(taken_at=taken_at, healthy=healthy)

    def pick(field: str) -> float | None:
        for name in _NAMES[field]:
            if name in values:
                return math.fsum(values[name])
        return None

    def count(field: str) -> int | None:
        x = pick(field)
        return None if x is None else int(round(x))

    usage = next((values[n] for n in _NAMES["kv_usage"] if n in values), None)
    return BackendSample(
        taken_at=taken_at,
        healthy=healthy,
        kv_usage=math.fsum(usage) / len(usage) if usage else None,
        running=count("running"),
        waiting=count("waiting"),
        prefix_hits=pick("prefix_hits"),
        prefix_queries=pick("prefix_queries"),
        generation_tokens=pick("generation_tokens"),
        prompt_tokens=pick("prompt_tokens"),
        preemptions=pick("preemptions"),
        e2e_sum=pick("e2e_sum"),
        e2e_count=pick("e2e_count"),
        kv_capacity_tokens=sum(capacities) if capacities else None,
    )


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """A replica's latest sample and the rates measured since the previous one."""

    replica: str
    sample: BackendSample
    decode_tokens_per_s: float | None = None
    """Generation tokens per second over the last interval, all sequences together."""
    per_sequence_decode_tokens_per_s: float | None = None
    """The aggregate rate over the running count; the last measured value while idle."""
    prefix_hit_ratio: float | None = None
    """Prefix-cache hit tokens over queried tokens in the last interval."""
    mean_request_s: float | None = None
    """Mean end-to-end time of the requests finished in the last interval (else the last known)."""


def _increase(prev: float | None, cur: float | None) -> float | None:
    """Counter increase; a counter that went down restarted from zero (backend restart)."""
    if prev is None or cur is None:
        return None
    return cur if cur < prev else cur - prev


def advance(prev: BackendSnapshot | None, sample: BackendSample, replica: str) -> BackendSnapshot:
    """The snapshot after ``sample``, with rates measured against ``prev``'s sample."""
    last_seq = prev.per_sequence_decode_tokens_per_s if prev is not None else None
    last_mean = prev.mean_request_s if prev is not None else None
    if prev is None or sample.taken_at <= prev.sample.taken_at:
        return BackendSnapshot(replica, sample, None, last_seq, None, last_mean)
    p = prev.sample
    dt = sample.taken_at - p.taken_at
    generated = _increase(p.generation_tokens, sample.generation_tokens)
    rate = None if generated is None else generated / dt
    per_seq = last_seq
    if rate is not None and generated and sample.running:
        per_seq = rate / sample.running
    queries = _increase(p.prefix_queries, sample.prefix_queries)
    hits = _increase(p.prefix_hits, sample.prefix_hits)
    ratio = None
    if queries and hits is not None:
        ratio = min(max(hits / queries, 0.0), 1.0)
    finished = _increase(p.e2e_count, sample.e2e_count)
    spent = _increase(p.e2e_sum, sample.e2e_sum)
    mean = last_mean
    if finished and spent is not None:
        mean = spent / finished
    return BackendSnapshot(replica, sample, rate, per_seq, ratio, mean)


def fresh(snapshot: BackendSnapshot, now: float, stale_after_s: float) -> bool:
    """Whether the snapshot is recent enough to describe the replica."""
    return now - snapshot.sample.taken_at <= stale_after_s


def _load_key(s: BackendSnapshot) -> tuple[float, float, float]:
    inf = math.inf
    x = s.sample
    return (
        inf if x.kv_usage is None else x.kv_usage,
        inf if x.waiting is None else x.waiting,
        inf if x.running is None else x.running,
    )


def pool_load(
    snapshots: Iterable[BackendSnapshot], now: float, stale_after_s: float
) -> PoolLoad | None:
    """The pool as admission sees it: its least-loaded fresh, healthy replica (lowest KV
    usage, then fewest waiting and running). None when no replica is both."""
    live = sorted(
        (s for s in snapshots if s.sample.healthy and fresh(s, now, stale_after_s)),
        key=_load_key,
    )
    if not live:
        return None
    best = live[0]
    rates = [r for s in live if (r := s.per_sequence_decode_tokens_per_s) is not None]
    # The chosen replica's mean first, else the next least-loaded replica's that is known.
    means = [s.mean_request_s for s in live if s.mean_request_s is not None]
    caps = [s.sample.kv_capacity_tokens for s in live if s.sample.kv_capacity_tokens is not None]
    return PoolLoad(
        kv_usage=best.sample.kv_usage,
        kv_capacity_tokens=min(caps) if caps else None,
        running=best.sample.running,
        waiting=best.sample.waiting,
        decode_tokens_per_s=max(rates) if rates else None,
        mean_request_s=means[0] if means else None,
    )
