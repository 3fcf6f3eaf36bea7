"""Engine-scheduler (llm-d) hints and drops: the pure header building and reason reading, and
``open_upstream``'s handling of a dropped request (httpx.MockTransport as the wire)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from gateway.backends.pool import Pool
from gateway.backends.scheduling import (
    Drop,
    SchedulingHints,
    classify_drop,
    hint_headers,
    hints_for,
)
from gateway.backends.upstream import open_upstream
from gateway.errors import EngineEvicted, EngineRejected
from routing.config import BackendPool, DeliberateConfig, SinglePassRoute
from routing.scheduler_config import SchedulerHeaders
from tests.fakes import FakeVLLM
from tests.unit.conftest import Factory
from tests.unit.test_app import A as TA

ON = SchedulerHeaders(forward=True)
HINTS = SchedulingHints("acme", "premium", 250.0, 40.4, 512)
A, B = "http://a:8000", "http://b:8000"


def test_forwarding_is_off_by_default_and_sends_nothing() -> None:
    assert SchedulerHeaders().forward is False
    assert hint_headers(SchedulerHeaders(), HINTS) == {}
    assert hint_headers(ON, None) == {}


def test_llm_d_header_names_and_values_by_default() -> None:
    assert hint_headers(ON, HINTS) == {
        "x-llm-d-inference-fairness-id": "acme",
        "x-llm-d-inference-objective": "premium",
        "x-llm-d-slo-ttft-ms": "250",
        "x-llm-d-slo-tpot-ms": "40",
        "x-llm-d-predicted-output-tokens": "512",
    }


def test_configured_names_are_used_and_null_names_or_unknown_values_are_not_sent() -> None:
    cfg = SchedulerHeaders(
        forward=True,
        fairness_id="x-tenant",
        objective=None,
        ttft_slo_ms="x-ttft",
        predicted_output_tokens="x-out",
    )
    hints = SchedulingHints("acme", "premium", 0.2, None, None)
    # sub-millisecond SLOs round up to 1 ms; unknown values and disabled names are left out
    assert hint_headers(cfg, hints) == {"x-tenant": "acme", "x-ttft": "1"}


@pytest.mark.parametrize("name", ["X-Upper", "has space", "", "a:b", "x" * 65])
def test_header_names_must_be_lower_case_tokens(name: str) -> None:
    with pytest.raises(ValidationError, match="dropped_reason"):
        SchedulerHeaders(dropped_reason=name)


def test_hints_come_from_the_route_and_the_tenant() -> None:
    route = SinglePassRoute.model_validate(
        {
            "name": "fast",
            "strategy": "single-pass",
            "backend": "default",
            "objective": "interactive",
            "slo": {"ttft_ms": 300, "tpot_ms": 25},
        }
    )
    assert hints_for(route, "acme", 128) == SchedulingHints("acme", "interactive", 300, 25, 128)
    plain = SinglePassRoute(name="p", strategy="single-pass", backend="default")
    assert hints_for(plain, "t", None) == SchedulingHints("t")
    assert HINTS.without_output() == SchedulingHints("acme", "premium", 250.0, 40.4, None)


@pytest.mark.parametrize(
    ("status", "value", "expected"),
    [
        (503, "rejected-queue-full", Drop("rejected", "rejected-queue-full")),
        (429, " Rejected-Sheddable ", Drop("rejected", "rejected-sheddable")),
        (503, "evicted-kv-pressure", Drop("evicted", "evicted-kv-pressure")),
        (429, "evicted_preempted", Drop("evicted", "evicted-other")),  # no dash after the kind
        (503, "rejected", Drop("rejected", "rejected-other")),
        (503, "rejected-" + "x" * 60, Drop("rejected", "rejected-other")),  # bounded labels
        (503, "rejected-<script>", Drop("rejected", "rejected-other")),
        (503, "overloaded", None),  # neither kind: a plain 503
        (503, None, None),
        (500, "rejected-queue-full", None),  # only 429 and 503 are drops
        (200, "evicted-x", None),
    ],
)
def test_classify_drop(status: int, value: str | None, expected: Drop | None) -> None:
    assert classify_drop(SchedulerHeaders(), status, value) == expected


def test_a_disabled_dropped_reason_header_is_never_read() -> None:
    assert classify_drop(SchedulerHeaders(dropped_reason=None), 503, "rejected-x") is None


class Script:
    """A scripted pool: replica URL -> list of (status, dropped reason) answers, in order."""

    def __init__(self, answers: dict[str, list[tuple[int, str | None]]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, httpx.Headers]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.seen.append((base, request.headers))
        status, reason = self.answers[base].pop(0)
        headers = {"x-why": reason, "retry-after": "3"} if reason else {}
        return httpx.Response(status, headers=headers, json={"ok": status < 400})


def pool_on(script: Script, drops: list[tuple[str, Drop]]) -> Pool:
    cfg = BackendPool(
        name="llmd",
        model="m",
        replicas=[A, B],  # type: ignore[list-item]
        scheduler=SchedulerHeaders(forward=True, dropped_reason="x-why"),
    )
    return Pool(
        cfg,
        httpx.MockTransport(script),
        on_drop=lambda name, drop: drops.append((name, drop)),
    )


async def call(pool: Pool) -> httpx.Response:
    up = await open_upstream(pool, "/v1/chat/completions", b"{}", "rid", headers=HINT_HEADERS)
    try:
        return up.response
    finally:
        up.succeeded()
        await up.aclose()


HINT_HEADERS = hint_headers(ON, HINTS)


@pytest.mark.anyio
async def test_rejected_moves_on_to_the_next_replica_without_blaming_the_first() -> None:
    script = Script({A: [(503, "rejected-queue-full")], B: [(200, None)]})
    drops: list[tuple[str, Drop]] = []
    pool = pool_on(script, drops)
    pool.replicas[1].in_flight = 1  # A is the least loaded: tried first
    r = await call(pool)
    assert r.status_code == 200
    assert [base for base, _ in script.seen] == [A, B]
    assert all(h["x-llm-d-inference-fairness-id"] == "acme" for _, h in script.seen)
    assert drops == [("llmd", Drop("rejected", "rejected-queue-full"))]
    assert pool.replicas[0].outlier.failures == 0  # a drop is no failure of the replica


@pytest.mark.anyio
async def test_rejected_everywhere_raises_engine_rejected_with_the_reason() -> None:
    script = Script({A: [(429, "rejected-sheddable")], B: [(503, "rejected-sheddable")]})
    drops: list[tuple[str, Drop]] = []
    with pytest.raises(EngineRejected) as info:
        await call(pool_on(script, drops))
    e = info.value
    assert (e.status, e.reason, e.pool) == (503, "rejected-sheddable", "llmd")
    assert e.body()["error"]["code"] == "engine_rejected"
    assert "rejected-sheddable" in e.body()["error"]["message"]
    assert e.headers == {"retry-after": "3"}  # the scheduler's own hint is passed on
    assert len(drops) == 2


@pytest.mark.anyio
async def test_evicted_is_not_retried() -> None:
    script = Script({A: [(503, "evicted-preempted")], B: [(200, None)]})
    drops: list[tuple[str, Drop]] = []
    pool = pool_on(script, drops)
    pool.replicas[1].in_flight = 1
    with pytest.raises(EngineEvicted) as info:
        await call(pool)
    assert info.value.body()["error"]["code"] == "engine_evicted"
    assert [base for base, _ in script.seen] == [A]  # B never asked
    assert drops == [("llmd", Drop("evicted", "evicted-preempted"))]


@pytest.mark.anyio
async def test_a_plain_503_is_still_a_replica_failure() -> None:
    script = Script({A: [(503, None)], B: [(200, None)]})
    pool = pool_on(script, [])
    pool.replicas[1].in_flight = 1
    assert (await call(pool)).status_code == 200
    assert pool.replicas[0].outlier.failures == 1


@pytest.mark.anyio
async def test_explain_shows_the_headers_the_served_route_would_send(
    gateway: Factory, fake: FakeVLLM
) -> None:
    raw = {
        "default_route": "fast",
        "backends": [
            {
                "name": "default",
                "model": "fake-model",
                "replicas": [TA],
                "health_interval_s": 3600,
                "scheduler": {"forward": True, "ttft_slo_ms": "x-ttft"},
            }
        ],
        "routes": [
            {
                "name": "fast",
                "strategy": "single-pass",
                "backend": "default",
                "objective": "interactive",
                "slo": {"ttft_ms": 900},
                "budget": {"max_visible_tokens": 64},
            }
        ],
        "admission": {"scrape_interval_s": 3600},
    }
    client, _ = await gateway(DeliberateConfig.model_validate(raw))
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/route/explain", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["scheduler_headers"] == {
        "x-llm-d-inference-fairness-id": "anonymous",
        "x-llm-d-inference-objective": "interactive",
        "x-ttft": "900",
        "x-llm-d-predicted-output-tokens": "64",
    }
