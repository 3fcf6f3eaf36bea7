"""Backend state re-exported from the scraper's snapshots, read at Prometheus scrape time.

A custom collector (no gauges to keep in sync): each scrape of the gateway's ``/metrics``
reports the latest snapshot of every replica, with ``deliberate_backend_up`` 0 when the
replica is down or its snapshot is stale (its other series are then left out, not zeroed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from budgets.snapshot import BackendSnapshot


@dataclass(frozen=True, slots=True)
class ReplicaView:
    pool: str
    replica: str
    up: bool
    age_s: float | None
    snapshot: BackendSnapshot | None


class BackendCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[ReplicaView]]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are dynamic-free but values are only known at collect time

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "replica"]
        up = GaugeMetricFamily(
            "deliberate_backend_up",
            "1 when the replica is healthy and its snapshot fresh.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "deliberate_backend_snapshot_age_seconds",
            "Age of the replica's latest /metrics snapshot.",
            labels=labels,
        )
        kv = GaugeMetricFamily(
            "deliberate_backend_kv_usage_ratio",
            "KV-cache usage of the replica (0-1), from vllm:kv_cache_usage_perc.",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "deliberate_backend_requests_running",
            "Requests the replica is generating.",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "deliberate_backend_requests_waiting", "Requests queued at the replica.", labels=labels
        )
        hit = GaugeMetricFamily(
            "deliberate_backend_prefix_cache_hit_ratio",
            "Prefix-cache hits / queries over the last scrape interval.",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "deliberate_backend_generation_tokens_per_second",
            "Generation throughput over the last scrape interval.",
            labels=labels,
        )
        hits = CounterMetricFamily(
            "deliberate_backend_prefix_cache_hits",
            "Prefix-cache hit tokens (vLLM's counter).",
            labels=labels,
        )
        queries = CounterMetricFamily(
            "deliberate_backend_prefix_cache_queries",
            "Prefix-cache queried tokens (vLLM's counter).",
            labels=labels,
        )
        preempt = CounterMetricFamily(
            "deliberate_backend_preemptions", "Preemptions (vLLM's counter).", labels=labels
        )
        for view in self._source():
            key = [view.pool, view.replica]
            up.add_metric(key, 1.0 if view.up else 0.0)
            if view.age_s is not None:
                age.add_metric(key, view.age_s)
            snap = view.snapshot
            if snap is None or not view.up:
                continue
            s = snap.sample
            for family, value in (
                (kv, s.kv_usage),
                (running, s.running),
                (waiting, s.waiting),
                (hit, snap.prefix_hit_ratio),
                (rate, snap.decode_tokens_per_s),
                (hits, s.prefix_hits),
                (queries, s.prefix_queries),
                (preempt, s.preemptions),
            ):
                if value is not None:
                    family.add_metric(key, float(value))
        yield from (up, age, kv, running, waiting, hit, rate, hits, queries, preempt)
