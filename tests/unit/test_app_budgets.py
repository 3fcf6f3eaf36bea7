"""Tenants, reservations and admission through the HTTP app (scripted vLLM; the real
backend and a real Redis are in tests/integration/test_budgets.py)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import pytest

from routing.config import DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import CHAT, A, Factory, assert_openai_error

pytestmark = pytest.mark.anyio
KEY = "sk-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def budget_config(**tenant: Any) -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "single-pass",
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": [A],
                    "health_interval_s": 3600,
                    "kv": {"ceiling": 0.9},
                }
            ],
            "routes": [
                {"name": "single-pass", "strategy": "single-pass", "backend": "default"},
                {
                    "name": "best-of-n",
                    "strategy": "best-of-n",
                    "backend": "default",
                    "params": {"n": 4, "max_tokens": 500},
                    "downgrade_to": "single-pass",
                },
            ],
            "tenants": [
                {"name": "t", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), **tenant}
            ],
            "admission": {"scrape_interval_s": 3600},
        }
    )


async def test_missing_or_unknown_key_is_401(gateway: Factory) -> None:
    client, registry = await gateway(budget_config())
    r = await client.post("/v1/chat/completions", json=CHAT)
    err = assert_openai_error(r, 401)
    assert err["code"] == "invalid_api_key" and "no API key" in err["message"]
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer x"})
    assert "not valid" in assert_openai_error(r, 401)["message"]
    assert KEY not in r.text
    assert (
        registry.get_sample_value(
            "deliberate_admission_rejections_total", {"route": "none", "reason": "unauthorized"}
        )
        == 2
    )


async def test_success_carries_ratelimit_headers_and_settles_usage(gateway: Factory) -> None:
    client, registry = await gateway(budget_config(tokens_per_minute=5000, requests_per_minute=5))
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 16}, headers=AUTH)
    assert r.status_code == 200, r.text
    used = r.json()["usage"]["total_tokens"]
    assert r.headers["x-ratelimit-limit-tokens"] == "5000"
    assert r.headers["x-ratelimit-limit-requests"] == "5"
    assert r.headers["x-ratelimit-remaining-requests"] == "4"
    assert r.headers["x-ratelimit-reset-tokens"].endswith("s")
    # the header shows what was left with this request's worst case still held...
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 5000 - used
    # ...and once settled, exactly the usage returned to the client is charged
    r2 = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 16}, headers=AUTH)
    held = 5000 - int(r2.headers["x-ratelimit-remaining-tokens"])
    assert held > used
    assert registry.get_sample_value("deliberate_budget_settled_tokens_total") == 2 * used
    assert registry.get_sample_value("deliberate_budget_reservations_in_flight") == 0


async def test_budget_exhausted_is_429_with_retry_after(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).chunk_delay_s = 0.2  # streams stay open, holding their reservations
    client, registry = await gateway(budget_config(tokens_per_minute=1000))
    body = {**CHAT, "max_tokens": 200, "stream": True}
    statuses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body, headers=AUTH) for _ in range(6))
    )
    ok = [r for r in statuses if r.status_code == 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert ok and limited and len(ok) + len(limited) == 6
    r = limited[0]
    err = assert_openai_error(r, 429)
    assert err["code"] == "rate_limit_exceeded" and "token budget" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit-tokens"] == "1000"
    assert registry.get_sample_value(
        "deliberate_requests_total",
        {"route": "single-pass", "strategy": "single-pass", "outcome": "rate_limited"},
    ) == len(limited)


async def test_request_larger_than_the_whole_budget(gateway: Factory) -> None:
    client, _ = await gateway(budget_config(tokens_per_minute=100))
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 500}, headers=AUTH)
    err = assert_openai_error(r, 429, "max_completion_tokens")
    assert err["code"] == "request_too_large" and "retry-after" not in r.headers


async def test_request_rate_limit(gateway: Factory) -> None:
    client, _ = await gateway(budget_config(requests_per_minute=2))
    codes = [
        (await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]


async def test_kv_pressure_downgrades_along_the_ladder(gateway: Factory, fake: FakeVLLM) -> None:
    # 4 candidates x 500 tokens on a 10,000-token cache at 0.75 → 0.95 > 0.9: step down.
    fake.replica(A).kv_usage = 0.75
    client, registry = await gateway(budget_config())
    body = {**CHAT, "model": "best-of-n"}
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "single-pass"
    assert r.headers["x-deliberate-requested-route"] == "best-of-n"
    assert r.headers["x-deliberate-downgrade"].startswith("kv:")
    ext = r.json()["deliberate"]
    assert ext["requested_route"] == "best-of-n" and ext["route"] == "single-pass"
    assert (
        registry.get_sample_value(
            "deliberate_admission_downgrades_total",
            {"requested_route": "best-of-n", "route": "single-pass", "cause": "kv"},
        )
        == 1
    )


async def test_nothing_fits_is_503_with_retry_after(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).kv_usage = 0.97
    client, _ = await gateway(budget_config(tokens_per_minute=5000))
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "best-of-n"}, headers=AUTH)
    err = assert_openai_error(r, 503)
    assert err["code"] == "overloaded" and "best-of-n" in err["message"]
    assert r.headers["retry-after"] == "2"
    assert fake.completions_received() == []  # nothing half-done
    # nothing reserved either: the full budget is still there
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}, headers=AUTH)
    assert r.status_code == 503


async def test_downgraded_stream_reports_it_in_the_last_chunk(
    gateway: Factory, fake: FakeVLLM
) -> None:
    fake.replica(A).kv_usage = 0.75
    client, _ = await gateway(budget_config())
    body = {**CHAT, "model": "best-of-n", "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        text = (await r.aread()).decode()
    assert r.headers["x-deliberate-requested-route"] == "best-of-n"
    events = [line[6:] for line in text.splitlines() if line.startswith("data: {")]
    last = orjson.loads(events[-1])
    assert last["deliberate"]["requested_route"] == "best-of-n"
    assert "usage" not in last  # the client did not ask for usage


def capped_config(**budget: Any) -> DeliberateConfig:
    raw = budget_config().model_dump(mode="json")
    raw["routes"][0]["budget"] = budget
    return DeliberateConfig.model_validate(raw)


async def test_single_pass_caps_are_shared_by_n_choices(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway(capped_config(max_total_tokens=100, max_candidates=4))
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "n": 4, "max_tokens": 500}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert fake.completions_received()[-1]["max_tokens"] == 25  # 100 tokens over 4 choices
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 5}, headers=AUTH)
    assert "max_candidates" in assert_openai_error(r, 400, "n")["message"]


async def test_a_rung_that_cannot_serve_the_request_is_skipped(
    gateway: Factory, fake: FakeVLLM
) -> None:
    raw = budget_config().model_dump(mode="json")
    raw["routes"][0]["slo"] = {"ttft_ms": 0.001}  # single-pass cannot promise this...
    raw["routes"][0]["downgrade_to"] = "best-of-n"  # ...and best-of-n cannot serve n=2
    raw["routes"][1].pop("downgrade_to")
    client, _ = await gateway(DeliberateConfig.model_validate(raw))
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 2}, headers=AUTH)
    err = assert_openai_error(r, 503)
    assert "unfit:n" in err["message"] and "slo:" in err["message"]


async def test_cancelled_reserve_releases_what_the_store_committed() -> None:
    from prometheus_client import CollectorRegistry

    from budgets.ledger import Limit, TenantLimits
    from budgets.memory_store import MemoryStore
    from budgets.tenants import Tenant
    from gateway.budgeting import BudgetService
    from gateway.context import RequestContext
    from metrics.registry import Metrics

    class SlowStore(MemoryStore):
        async def reserve(self, *args: Any, **kw: Any) -> Any:
            result = await super().reserve(*args, **kw)  # committed...
            await asyncio.sleep(0.2)  # ...but the answer is slow
            return result

    store = SlowStore()
    budgets = BudgetService(budget_config(), store, Metrics(CollectorRegistry()))
    tenant = Tenant("t", TenantLimits("t", (Limit("tokens", "minute", 1000),)))
    task = asyncio.ensure_future(budgets.reserve(tenant, 300, RequestContext("r")))
    await asyncio.sleep(0.05)
    assert await store.committed("t", "minute") == 300
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await budgets.drain(2.0)
    assert await store.committed("t", "minute") == 0
    assert store.open_reservations() == 0


async def test_integral_floats_cannot_slip_past_limits(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway(capped_config(max_total_tokens=100, max_candidates=2))
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "n": 3.0, "max_tokens": 50.0}, headers=AUTH
    )
    assert "max_candidates" in assert_openai_error(r, 400, "n")["message"]
    r = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "max_completion_tokens": 1000.0, "n": 2.0},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    sent = fake.completions_received()[-1]
    assert sent["n"] == 2 and sent["max_completion_tokens"] == 50  # 100 over 2 choices
