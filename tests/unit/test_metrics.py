"""Recording: a finished request (or a backend snapshot) produces exactly the expected samples."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from budgets.snapshot import BackendSample, BackendSnapshot
from gateway.access_log import access_line
from gateway.context import RequestContext
from metrics.backends import BackendCollector, ReplicaView
from metrics.detail import Detail, StrategyStats
from metrics.registry import Metrics, RequestRecord
from routing.decision import Decision
from strategies.usage import Usage
from tests.unit.test_app import CHAT, Factory

pytestmark = pytest.mark.anyio


def test_a_request_record_becomes_samples() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "1.2.3")
    m.init_routes([("bon", "best-of-n")])
    assert (
        reg.get_sample_value(
            "deliberate_requests_total", {"route": "bon", "strategy": "best-of-n", "outcome": "ok"}
        )
        == 0
    )
    detail = Detail(
        hidden_sources={"candidates": 300, "judge": 20},
        token_gaps_s=(0.02, 0.04),
        stats=StrategyStats(
            samples=8,
            backend_calls=1,
            stop_reason="completed",
            verifier="logprob-judge",
            verifier_calls=8,
            vote_margin=0.5,
        ),
        kv_bytes=(1000.0, 8000.0),
    )
    m.record(
        RequestRecord(
            "bon", "best-of-n", "ok", 2.0, 1.5, Usage(prompt=50, visible=40, hidden=320), detail
        )
    )

    def v(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert v("deliberate_requests_total", route="bon", strategy="best-of-n", outcome="ok") == 1
    assert v("deliberate_tokens_total", route="bon", kind="hidden") == 320
    assert v("deliberate_hidden_tokens_total", route="bon", source="candidates") == 300
    assert v("deliberate_hidden_tokens_total", route="bon", source="judge") == 20
    assert v("deliberate_hidden_ttft_share_sum", route="bon") == pytest.approx(320 / 360)
    assert v("deliberate_request_tokens_sum", route="bon") == 410
    assert v("deliberate_inter_token_latency_seconds_count", route="bon") == 2
    assert v("deliberate_strategy_samples_sum", route="bon") == 8
    assert v("deliberate_strategy_stops_total", route="bon", reason="completed") == 1
    assert v("deliberate_verifier_calls_total", route="bon", verifier="logprob-judge") == 8
    assert v("deliberate_vote_margin_sum", route="bon") == 0.5
    assert v("deliberate_kv_estimate_bytes_sum", route="bon", sharing="unshared") == 8000
    assert v("deliberate_build_info", version="1.2.3") == 1


def test_backend_collector_reports_fresh_replicas_only() -> None:
    sample = BackendSample(
        taken_at=0.0,
        healthy=True,
        kv_usage=0.4,
        running=3,
        waiting=1,
        prefix_hits=50,
        prefix_queries=100,
        preemptions=2,
    )
    fresh = BackendSnapshot("http://a:8000", sample, decode_tokens_per_s=60.0, prefix_hit_ratio=0.5)
    views = [
        ReplicaView("default", "http://a:8000", True, 1.0, fresh),
        ReplicaView("default", "http://b:8000", False, 30.0, fresh),  # stale: only up=0 and age
    ]
    reg = CollectorRegistry()
    reg.register(BackendCollector(lambda: views))
    a = {"pool": "default", "replica": "http://a:8000"}
    b = {"pool": "default", "replica": "http://b:8000"}
    assert reg.get_sample_value("deliberate_backend_up", a) == 1
    assert reg.get_sample_value("deliberate_backend_up", b) == 0
    assert reg.get_sample_value("deliberate_backend_kv_usage_ratio", a) == 0.4
    assert reg.get_sample_value("deliberate_backend_kv_usage_ratio", b) is None
    assert reg.get_sample_value("deliberate_backend_prefix_cache_hit_ratio", a) == 0.5
    assert reg.get_sample_value("deliberate_backend_preemptions_total", a) == 2
    assert reg.get_sample_value("deliberate_backend_snapshot_age_seconds", b) == 30


def test_access_line_has_no_secrets_and_the_decision() -> None:
    ctx = RequestContext("rid", route="r", strategy="single-pass", backend="b", tenant="team")
    ctx.decision = Decision("arithmetic", "r", "policy", "cheapest")
    rec = RequestRecord("r", "single-pass", "ok", 0.25, 0.1, Usage(prompt=5, visible=7))
    line = orjson.loads(access_line(ctx, rec))
    assert line["class"] == "arithmetic" and line["tokens"] == {
        "prompt": 5,
        "visible": 7,
        "hidden": 0,
    }
    assert line["latency_ms"] == 250 and "prompt" not in line and "decision" in line


async def test_backend_series_on_the_gateway_metrics(gateway: Factory) -> None:
    client, _ = await gateway()
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    text = (await client.get("/metrics")).text
    assert 'deliberate_backend_up{pool="default",replica="http://replica-a:8000"} 1.0' in text
    assert "deliberate_backend_kv_usage_ratio{" in text
    assert 'deliberate_inter_token_latency_seconds_count{route="single-pass"}' in text


def test_stream_gaps_are_kept_compactly_and_all_recorded() -> None:
    ctx = RequestContext("rid", route="single-pass", strategy="single-pass")
    ctx.mark_first_token()
    for _ in range(1000):
        ctx.mark_token()
    gaps = ctx.token_gaps_s
    assert len(gaps) == 1000 and min(gaps) >= 0
    assert gaps.itemsize == 8  # C doubles, not a list of float objects
    rec = ctx.finish()
    assert rec is not None
    reg = CollectorRegistry()
    m = Metrics(reg, "1.2.3")
    m.record(rec)
    labels = {"route": "single-pass"}
    assert reg.get_sample_value("deliberate_inter_token_latency_seconds_count", labels) == 1000
    total = reg.get_sample_value("deliberate_inter_token_latency_seconds_sum", labels)
    assert total == pytest.approx(sum(gaps))
