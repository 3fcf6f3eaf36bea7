"""Stream relay clean-up: a backend response is released however the client leaves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from budgets.ledger import Limit, TenantLimits
from budgets.memory_store import MemoryStore
from budgets.tenants import Tenant
from gateway.backends.pool import Pool
from gateway.backends.upstream import open_upstream
from gateway.budgeting import BudgetService
from gateway.context import RequestContext
from gateway.http.api import RelayResponse
from gateway.passthrough import relay_stream
from gateway.pipeline import Answer
from gateway.policy_state import build_state
from gateway.services import Services
from gateway.settings import Settings
from metrics.registry import Metrics
from tests.fakes import FakeVLLM
from tests.unit.test_app import make_config

pytestmark = pytest.mark.anyio


async def start_stream(fake: FakeVLLM) -> tuple[Pool, Answer, RequestContext, Services]:
    config = make_config()
    pool = Pool(config.backends[0], fake.transport())
    metrics = Metrics(CollectorRegistry())
    budgets = BudgetService(config, MemoryStore(), metrics)
    services = Services(Settings(), build_state(config), {"default": pool}, metrics, budgets)
    body = orjson.dumps({"model": "fake-model", "stream": True, "messages": []})
    upstream = await open_upstream(pool, "/v1/chat/completions", body, "rid")
    ctx = RequestContext("rid", route="single-pass", strategy="single-pass", backend="default")
    answer = Answer(stream=relay_stream(upstream, ctx, client_wants_usage=False), upstream=upstream)
    return pool, answer, ctx, services


async def test_client_gone_before_first_chunk_releases_backend() -> None:
    fake = FakeVLLM()
    fake.replica("http://replica-a:8000").chunk_delay_s = 30.0
    pool, answer, ctx, services = await start_stream(fake)
    assert pool.replicas[0].in_flight == 1
    tenant = Tenant("t", TenantLimits("t", (Limit("tokens", "minute", 1000),)))
    await services.budgets.reserve(tenant, 300, ctx)
    assert await services.budgets.store.committed("t", "minute") == 300
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}
    await RelayResponse(answer, ctx, services)(scope, receive, send)
    assert pool.replicas[0].in_flight == 0
    assert answer.upstream is not None and answer.upstream.response.is_closed
    assert await services.budgets.store.committed("t", "minute") == 0  # reservation released
    assert ctx.reservation is None
    assert (
        services.metrics.registry.get_sample_value(
            "deliberate_requests_total",
            {"route": "single-pass", "strategy": "single-pass", "outcome": "cancelled"},
        )
        == 1
    )


async def test_full_relay_records_ok() -> None:
    pool, answer, ctx, services = await start_stream(FakeVLLM())
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        import anyio

        await anyio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}
    await RelayResponse(answer, ctx, services)(scope, receive, send)
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    assert pool.replicas[0].in_flight == 0
    assert ctx.outcome == "ok" and ctx.ttft_s is not None
