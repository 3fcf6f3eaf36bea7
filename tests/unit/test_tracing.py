"""Tracing: when it is on, the span tree of a request, its attributes, and the ``traceparent``
sent to the backend (the scripted vLLM's MockTransport sees the wire)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from gateway import otel
from gateway.app import create_app
from gateway.otel import OtelTracer
from gateway.settings import Settings
from gateway.tracing import Tracing, TracingConfigError, tracing_from_env, tracing_wanted
from routing.config import BackendPool, DeliberateConfig
from strategies.tracing import NO_SPAN, NO_TRACING
from tests.fakes import FakeVLLM
from tests.unit.test_app import CHAT, A, make_config

pytestmark = pytest.mark.anyio
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_wanted_only_when_the_environment_asks(
    env: dict[str, str], wanted: bool
) -> None:
    assert tracing_wanted(env) is wanted
    if not wanted:
        off = tracing_from_env(env, "1")
        assert off.tracer is NO_TRACING and off.shutdown is None


def test_grpc_is_an_optional_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc is not in the otel extra: without it, a clear error naming the variable."""
    real = importlib.import_module
    grpc_module = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"

    def missing(name: str, *args: Any) -> Any:
        if name == grpc_module:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs"):
        otel.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})

    class Exporter:
        pass

    def present(name: str, *args: Any) -> Any:
        return (
            types.SimpleNamespace(OTLPSpanExporter=Exporter)
            if name == grpc_module
            else real(name, *args)
        )

    monkeypatch.setattr(importlib, "import_module", present)
    assert isinstance(otel.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}), Exporter)


def test_exporters_from_the_environment() -> None:
    provider = otel.provider_from_env({"OTEL_TRACES_EXPORTER": "console,otlp"}, "1.2")
    procs = provider._active_span_processor._span_processors  # what the SDK was given
    assert [type(p) for p in procs] == [BatchSpanProcessor, BatchSpanProcessor]
    assert provider.resource.attributes["service.name"] == "deliberate"
    assert provider.resource.attributes["service.version"] == "1.2"
    provider.shutdown()
    http = otel.otlp_exporter({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert type(http).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"):
        otel.processors({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(
        ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol 'http/json'"
    ):
        otel.otlp_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_an_explicit_service_name_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-eu")  # the SDK's resource reads os.environ
    provider = otel.provider_from_env({"OTEL_SERVICE_NAME": "gw-eu"}, "1")
    assert provider.resource.attributes["service.name"] == "gw-eu"
    provider.shutdown()


def test_a_bad_otel_environment_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "jaeger"}, "1")
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        tracing_from_env(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, "1"
        )


def test_serve_refuses_a_bad_otel_environment() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "jaeger", "DELIBERATE_CONFIG": str(SHIPPED)}
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "tracing: OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'" in r.stderr
    assert "Traceback" not in r.stderr


def test_tracing_from_env_builds_an_sdk_tracer() -> None:
    on = tracing_from_env({"OTEL_TRACES_EXPORTER": "console"}, "1")
    assert isinstance(on.tracer, OtelTracer) and on.tracer.enabled
    assert on.shutdown is not None


class Traced:
    """The app on the scripted vLLM with an in-memory exporter."""

    def __init__(self, fake: FakeVLLM) -> None:
        self.fake = fake
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.stack: list[Any] = []

    async def start(
        self, config: DeliberateConfig | None = None, tracing: Tracing | None = None
    ) -> httpx.AsyncClient:
        transport = self.fake.transport()

        def transport_factory(pool: BackendPool) -> httpx.AsyncBaseTransport:
            return transport

        traces = tracing or Tracing(OtelTracer(self.provider, "test"))
        app = create_app(
            Settings(), config or make_config(), CollectorRegistry(), transport_factory, traces
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        self.stack.append((lifespan, client))
        return client

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
async def traced(fake: FakeVLLM) -> AsyncIterator[Traced]:
    t = Traced(fake)
    yield t
    for lifespan, client in t.stack:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
    t.provider.shutdown()


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    pid = parent.context.span_id
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == pid),
        key=lambda s: s.start_time or 0,
    )


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def traceparent_of(span: ReadableSpan) -> str:
    """``span``'s W3C ``traceparent`` without its flags (sampled, and the SDK's random-id bit)."""
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}"


def sent_parent(request: httpx.Request) -> str:
    version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
    assert int(flags, 16) & 1  # sampled
    return f"{version}-{trace_id}-{span_id}"


async def test_pass_through_request_span_tree_and_traceparent(
    traced: Traced, fake: FakeVLLM
) -> None:
    fake.replica(A).reasoning_tokens = 3
    client = await traced.start()
    r = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.2})
    assert r.status_code == 200, r.text
    spans = traced.spans()
    root = only(spans, "POST /v1/chat/completions")
    assert root.parent is None and root.kind is SpanKind.SERVER
    tree = [s.name for s in children(spans, root)]
    assert tree == [
        "deliberate.route",
        "deliberate.admission",
        "deliberate.budget",
        "chat fake-model",
    ]
    assert {s.context.trace_id for s in spans if s.context} == {root.context.trace_id}  # type: ignore[union-attr]
    a = attrs(root)
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "single-pass"
    assert a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.response.model"] == "fake-model"
    assert a["deliberate.route"] == "single-pass"
    assert a["deliberate.class"]
    assert a["deliberate.outcome"] == "ok"
    usage = r.json()["usage"]
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] == 7
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["gen_ai.usage.reasoning.output_tokens"] == 3

    backend = only(spans, "chat fake-model")
    b = attrs(backend)
    assert backend.kind is SpanKind.CLIENT
    assert b["gen_ai.provider.name"] == "vllm"
    assert b["gen_ai.request.model"] == b["gen_ai.response.model"] == "fake-model"
    assert b["server.address"] == "replica-a" and b["server.port"] == 8000
    assert b["http.response.status_code"] == 200
    assert b["gen_ai.usage.input_tokens"] == 7
    assert b["gen_ai.usage.reasoning.output_tokens"] == 3
    assert b["gen_ai.response.finish_reasons"] == ("stop",)
    # the wire: vLLM got the backend span's context, so its own spans nest under it
    sent = fake.received[-1][1]
    assert sent_parent(sent) == traceparent_of(backend)
    route = attrs(only(spans, "deliberate.route"))
    assert route["deliberate.route"] == "single-pass"
    assert route["deliberate.class"] == a["deliberate.class"]
    assert attrs(only(spans, "deliberate.admission"))["deliberate.requested_route"] == "single-pass"
    assert attrs(only(spans, "deliberate.budget"))["deliberate.token_ceiling"] > 0


async def test_the_clients_trace_context_is_continued(traced: Traced) -> None:
    client = await traced.start()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": parent})
    assert r.status_code == 200
    root = only(traced.spans(), "POST /v1/chat/completions")
    assert root.context is not None and root.parent is not None
    assert root.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert root.parent.span_id == 0xB7AD6B7169203331 and root.parent.is_remote


async def test_a_stream_span_ends_with_the_stream(traced: Traced, fake: FakeVLLM) -> None:
    client = await traced.start()
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        text = (await r.aread()).decode()
    assert "[DONE]" in text
    spans = traced.spans()
    root = only(spans, "POST /v1/chat/completions")
    backend = only(spans, "chat fake-model")
    assert backend.parent is not None and root.context is not None
    assert backend.parent.span_id == root.context.span_id
    assert (root.end_time or 0) >= (backend.end_time or 0)  # closed after the relay
    assert attrs(root)["gen_ai.request.stream"] is True
    assert attrs(backend)["gen_ai.usage.output_tokens"] == attrs(root)["gen_ai.usage.output_tokens"]
    assert attrs(backend)["gen_ai.usage.output_tokens"] > 0
    assert sent_parent(fake.received[-1][1]) == traceparent_of(backend)


def ladder_config() -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "ladder",
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": [A],
                    "health_interval_s": 3600,
                }
            ],
            "routes": [
                {
                    "name": "ladder",
                    "strategy": "single-pass",
                    "backend": "default",
                    "escalate_to": [
                        {"samples": 2, "verifier": "arithmetic", "threshold": 1.0},
                        {"samples": 3, "verifier": "arithmetic", "threshold": 1.0},
                    ],
                },
            ],
        }
    )


async def test_ladder_rungs_verifiers_and_their_backend_calls(
    traced: Traced, fake: FakeVLLM
) -> None:
    client = await traced.start(ladder_config())
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "ladder"})
    assert r.status_code == 200, r.text
    spans = traced.spans()
    root = only(spans, "POST /v1/chat/completions")
    strategy = only(spans, "deliberate.strategy")
    assert strategy.parent is not None and root.context is not None
    assert strategy.parent.span_id == root.context.span_id
    steps = [(s.name, attrs(s).get("deliberate.rung")) for s in children(spans, strategy)]
    assert steps == [
        ("deliberate.rung", 0),
        ("deliberate.verify", None),
        ("deliberate.rung", 1),
        ("deliberate.verify", None),
        ("deliberate.rung", 2),
        ("deliberate.verify", None),
    ]
    rungs = [s for s in children(spans, strategy) if s.name == "deliberate.rung"]
    assert [attrs(s)["deliberate.rung.candidates"] for s in rungs] == [1, 2, 3]
    assert [attrs(s)["deliberate.rung.label"] for s in rungs][0] == "first"
    # every rung made exactly one backend call, under its own span
    calls = []
    for rung in rungs:
        (call,) = children(spans, rung)
        assert call.name == "chat fake-model" and call.kind is SpanKind.CLIENT
        calls.append(call)
    sent = [sent_parent(req) for path, req, _ in fake.received if "chat" in path]
    assert sent == [traceparent_of(c) for c in calls]
    verify = [s for s in children(spans, strategy) if s.name == "deliberate.verify"]
    assert all(attrs(v)["deliberate.verifier"] == "arithmetic" for v in verify)
    assert attrs(verify[0])["deliberate.verifier.passed"] is False
    assert attrs(verify[0])["deliberate.verifier.threshold"] == 1.0
    s = attrs(strategy)
    assert s["deliberate.backend_calls"] == 3
    assert s["gen_ai.usage.output_tokens"] == attrs(root)["gen_ai.usage.output_tokens"]
    hidden = r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert attrs(root)["gen_ai.usage.reasoning.output_tokens"] == hidden > 0


async def test_errors_mark_the_spans(traced: Traced, fake: FakeVLLM) -> None:
    fake.replica(A).status = 400
    client = await traced.start()
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400
    spans = traced.spans()
    backend = only(spans, "chat fake-model")
    assert backend.status.status_code is StatusCode.ERROR
    assert attrs(backend)["error.type"] == "BackendError"
    root = only(spans, "POST /v1/chat/completions")
    assert attrs(root)["http.response.status_code"] == 400
    assert attrs(root)["error.type"] == "BackendError"
    assert root.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not ours


async def test_tracing_off_sends_no_traceparent_and_makes_no_span(
    traced: Traced, fake: FakeVLLM
) -> None:
    client = await traced.start(tracing=Tracing())
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert "traceparent" not in fake.received[-1][1].headers
    assert traced.spans() == []


async def test_the_null_tracer_hands_out_one_inert_span() -> None:
    with NO_TRACING.span("x", {"a": 1}) as s:
        s.set_attribute("b", 2)
    opened = NO_TRACING.start("y", "server", carrier={"traceparent": "junk"})
    headers: dict[str, str] = {}
    opened.inject(headers)
    with opened.activate():
        pass
    opened.end(RuntimeError("x"))
    assert headers == {} and opened is NO_SPAN and s is NO_SPAN


async def test_a_streamed_ladder_traces_under_the_request(traced: Traced) -> None:
    cfg = ladder_config().model_dump(mode="json", by_alias=True, exclude_unset=True)
    cfg["routes"][0]["stream_progress"] = True
    client = await traced.start(DeliberateConfig.model_validate(cfg))
    body = {**CHAT, "model": "ladder", "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        await r.aread()
    spans = traced.spans()
    root = only(spans, "POST /v1/chat/completions")
    strategy = only(spans, "deliberate.strategy")
    assert strategy.parent is not None and root.context is not None
    assert strategy.parent.span_id == root.context.span_id  # run inside the SSE relay
    assert len([s for s in spans if s.name == "chat fake-model"]) == 3
    assert attrs(root)["gen_ai.usage.output_tokens"] > 0


async def test_a_best_of_n_verifier_call_has_its_span(traced: Traced) -> None:
    cfg = DeliberateConfig.model_validate(
        {
            "default_route": "vote",
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": [A],
                    "health_interval_s": 3600,
                }
            ],
            "routes": [
                {
                    "name": "vote",
                    "strategy": "best-of-n",
                    "backend": "default",
                    "params": {"n": 3, "selector": "weighted"},
                }
            ],
        }
    )
    client = await traced.start(cfg)
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "vote"})
    assert r.status_code == 200, r.text
    spans = traced.spans()
    strategy = only(spans, "deliberate.strategy")
    assert [s.name for s in children(spans, strategy)] == ["chat fake-model", "deliberate.verify"]
    v = attrs(only(spans, "deliberate.verify"))
    assert v["deliberate.verifier"] == "arithmetic"
    assert v["deliberate.verifier.candidates"] == 3
    assert v["gen_ai.usage.output_tokens"] == 0  # the arithmetic checker calls no backend
    assert attrs(strategy)["deliberate.samples"] == 3


async def test_a_rate_limit_ends_the_budget_span_with_the_error(traced: Traced) -> None:
    from tests.unit.test_app_budgets import AUTH, budget_config

    client = await traced.start(budget_config(requests_per_minute=1))
    codes = [
        (await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code
        for _ in range(2)
    ]
    assert codes == [200, 429]
    spans = traced.spans()
    budget = [s for s in spans if s.name == "deliberate.budget"]
    assert [s.status.status_code for s in budget] == [StatusCode.UNSET, StatusCode.ERROR]
    assert [e.name for e in budget[1].events] == ["exception"]
    roots = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert attrs(roots[1])["http.response.status_code"] == 429
    assert attrs(roots[1])["error.type"] == "RateLimited"
    # the second request never reached the backend
    assert len([s for s in spans if s.name == "chat fake-model"]) == 1


def test_fastapis_own_tracing_is_off() -> None:
    """FastAPI releases with native OpenTelemetry would add a second server span per request
    once a global provider exists; the gateway turns it off (older releases have none)."""
    app = create_app(Settings(), make_config(), CollectorRegistry(), tracing=Tracing())
    assert getattr(app, "_telemetry", {"tracing": False})["tracing"] is False
