"""Tracing at the gateway: whether it is on, and the spans' names and attributes.

Tracing is opt-in through the standard OpenTelemetry environment, read once at start-up
(``tracing_from_env``). Off — the default — the gateway runs on ``NO_TRACING`` and never
loads the OpenTelemetry SDK, so it creates no span at all. On, ``gateway.otel`` builds an SDK
tracer provider with the configured exporters (the ``otel`` extra must be installed).

The span tree of one request (see docs/configuration.md, "Tracing"):

    POST /v1/chat/completions          server span: gen_ai.* and deliberate.* of the request
    ├─ deliberate.route                the router's class and route
    ├─ deliberate.admission            admission: caps, live backend state, downgrade
    ├─ deliberate.budget               the tenant's token budget and rate limit (reserve)
    ├─ deliberate.strategy             a multi-call route's strategy run
    │  ├─ deliberate.rung              each ladder rung (0: the route's own answer)
    │  ├─ deliberate.verify            each verifier call
    │  └─ chat <model>                 each backend call (client span, traceparent sent)
    └─ chat <model>                    a pass-through route's one backend call
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.context import RequestContext
from routing.decision import Decision
from strategies.base import StrategyResult
from strategies.tracing import NO_SPAN, NO_TRACING, AttrValue, OpenSpan, Span, Tracer
from strategies.usage import Usage

_TRUE = {"true", "1", "yes", "on"}

# The backend paths that are GenAI operations, and their gen_ai.operation.name.
OPERATIONS: Mapping[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
}
ENDPOINT_OPERATIONS: Mapping[str, str] = {"chat": "chat", "completions": "text_completion"}
PROVIDER = "vllm"
ROUTE_SPAN = "deliberate.route"
ADMISSION_SPAN = "deliberate.admission"
BUDGET_SPAN = "deliberate.budget"
STRATEGY_SPAN = "deliberate.strategy"


class HasModel(Protocol):
    @property
    def model(self) -> str: ...


class TracingConfigError(ValueError):
    """``OTEL_*`` asks for what cannot be had: an unknown exporter or protocol, or tracing
    without the ``otel`` extra installed. The message names the variable or the package."""


@dataclass(frozen=True)
class Tracing:
    """The tracer the app uses and what to call once at shutdown (flush the exporters)."""

    tracer: Tracer = NO_TRACING
    shutdown: Callable[[], Awaitable[None]] | None = None


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """True when the environment asks for traces: ``OTEL_TRACES_EXPORTER`` names an exporter
    other than ``none``, or (that variable unset) an OTLP endpoint is set; never when
    ``OTEL_SDK_DISABLED`` is true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return any(e.strip().lower() not in ("", "none") for e in exporters.split(","))
    return any(
        environ.get(k, "").strip()
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_from_env(environ: Mapping[str, str], version: str) -> Tracing:
    """The app's tracing as the environment asks (``Tracing()``, tracing off, by default);
    ``TracingConfigError`` when it asks for what cannot be had."""
    if not tracing_wanted(environ):
        return Tracing()
    try:
        from gateway import otel
    except ImportError as e:
        raise TracingConfigError(
            "OTEL_* asks for traces but OpenTelemetry is not installed: "
            "pip install 'deliberate-gateway[otel]' (or unset OTEL_TRACES_EXPORTER and "
            f"OTEL_EXPORTER_OTLP_ENDPOINT) [{e}]"
        ) from e
    try:
        provider = otel.provider_from_env(environ, version)
    except ValueError as e:
        raise TracingConfigError(str(e)) from e

    async def shutdown() -> None:
        await asyncio.to_thread(provider.shutdown)  # may wait on an exporter's network call

    return Tracing(otel.OtelTracer(provider, version), shutdown)


def backend_span_name(path: str, model: str) -> str:
    """``chat <model>`` for a GenAI operation (the semantic conventions' name), else
    ``POST <path>`` (``/tokenize``, a PRM's ``/pooling``)."""
    op = OPERATIONS.get(path)
    return f"{op} {model}" if op is not None else f"POST {path}"


def backend_attrs(pool_name: str, model: str, path: str) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
        "deliberate.backend": pool_name,
        "url.path": path,
    }
    if (op := OPERATIONS.get(path)) is not None:
        attrs["gen_ai.operation.name"] = op
    return attrs


def backend_span(
    tracer: Tracer, pool: str, model: str, path: str, headers: dict[str, str]
) -> OpenSpan:
    """The client span of one backend call (``NO_SPAN`` when tracing is off), its
    ``traceparent`` written into the outgoing ``headers``."""
    if not tracer.enabled:
        return NO_SPAN
    span = tracer.start(backend_span_name(path, model), "client", backend_attrs(pool, model, path))
    span.inject(headers)
    return span


def note_replica(span: Span, url: str, status: int) -> None:
    """Which replica answered, with what status."""
    parts = urlsplit(url)
    a: dict[str, AttrValue] = {"http.response.status_code": status}
    if parts.hostname:
        a["server.address"] = parts.hostname
    if parts.port is not None:
        a["server.port"] = parts.port
    span.set_attributes(a)


def note_answer(span: Span, data: Any) -> None:
    """A backend's JSON answer on its span: response model and id, usage, finish reasons."""
    if not isinstance(data, dict):
        return
    a: dict[str, AttrValue] = {}
    if isinstance(model := data.get("model"), str):
        a["gen_ai.response.model"] = model
    if isinstance(rid := data.get("id"), str):
        a["gen_ai.response.id"] = rid
    if isinstance(usage := data.get("usage"), dict):
        a.update(usage_attrs(Usage.from_openai(usage)))
    choices = data.get("choices")
    if isinstance(choices, list):
        reasons = tuple(str(c.get("finish_reason")) for c in choices if isinstance(c, dict))
        if reasons:
            a["gen_ai.response.finish_reasons"] = reasons
    span.set_attributes(a)


def usage_attrs(usage: Usage) -> dict[str, AttrValue]:
    """``gen_ai.usage.*``: input = prompt tokens, output = every generated token (visible and
    hidden), ``reasoning.output_tokens`` = the hidden ones (for one backend call: what it
    reports as ``completion_tokens_details.reasoning_tokens``)."""
    return {
        "gen_ai.usage.input_tokens": usage.prompt,
        "gen_ai.usage.output_tokens": usage.completion,
        "gen_ai.usage.reasoning.output_tokens": usage.hidden,
    }


def note_usage(span: Span, usage: Usage) -> None:
    span.set_attributes(usage_attrs(usage))


def note_strategy(span: Span, result: StrategyResult, backend_calls: int) -> None:
    """How a strategy run ended: stop reason, samples, calls, and every token it spent."""
    a = usage_attrs(result.usage)
    a["deliberate.stop_reason"] = result.stop_reason
    a["deliberate.backend_calls"] = backend_calls
    if isinstance(samples := result.info.get("samples"), int):
        a["deliberate.samples"] = samples
    span.set_attributes(a)


_REQUEST_FIELDS = (
    ("model", "gen_ai.request.model"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
    ("stream", "gen_ai.request.stream"),
)


def note_request_body(span: Span, payload: Mapping[str, Any]) -> None:
    """The client's request parameters on the server span (never the prompt)."""
    a: dict[str, AttrValue] = {}
    for key, attr in _REQUEST_FIELDS:
        value = payload.get(key)
        if isinstance(value, str | bool | int | float):
            a[attr] = value
    cap = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if isinstance(cap, int):
        a["gen_ai.request.max_tokens"] = cap
    span.set_attributes(a)


def note_decision(span: Span, decision: Decision) -> None:
    a: dict[str, AttrValue] = {
        "deliberate.class": decision.request_class,
        "deliberate.route": decision.route,
        "deliberate.reason": decision.header_reason(),
        "deliberate.decision_source": decision.source,
    }
    if decision.start_rung:
        a["deliberate.start_rung"] = decision.start_rung
    span.set_attributes(a)


def note_admission(span: Span, requested: str, admitted: str, ctx: RequestContext) -> None:
    a: dict[str, AttrValue] = {
        "deliberate.requested_route": requested,
        "deliberate.route": admitted,
    }
    if ctx.downgrade_cause is not None:
        a["deliberate.downgrade"] = ctx.downgrade_cause
    span.set_attributes(a)


def note_request(span: Span, ctx: RequestContext, pools: Mapping[str, HasModel]) -> None:
    """What the request turned out to be, on its server span, once it is over: the route
    and class, the model that answered, every token it spent and how it ended (the
    decision's reason is on the ``deliberate.route`` span)."""
    a = usage_attrs(ctx.usage)
    a["deliberate.request_id"] = ctx.request_id
    a["deliberate.outcome"] = ctx.outcome
    for key, value in (
        ("deliberate.route", ctx.route),
        ("deliberate.strategy", ctx.strategy),
        ("deliberate.backend", ctx.backend),
        ("deliberate.requested_route", ctx.requested_route),
        ("deliberate.downgrade", ctx.downgrade_cause),
    ):
        if value is not None:
            a[key] = value
    if (d := ctx.decision) is not None:
        a["deliberate.class"] = d.request_class
    if ctx.backend is not None and (pool := pools.get(ctx.backend)) is not None:
        a["gen_ai.response.model"] = pool.model
    if ctx.ttft_s is not None:
        a["gen_ai.response.time_to_first_chunk"] = round(ctx.ttft_s, 6)
    if (stats := ctx.stats) is not None and stats.stop_reason is not None:
        a["deliberate.stop_reason"] = stats.stop_reason
    span.set_attributes(a)


def request_span(
    tracer: Tracer, method: str, path: str, operation: str, headers: Mapping[str, str]
) -> OpenSpan:
    """The server span of one API request, child of the client's ``traceparent`` if any."""
    return tracer.start(
        f"{method} {path}",
        "server",
        {
            "http.request.method": method,
            "http.route": path,
            "url.path": path,
            "gen_ai.operation.name": operation,
        },
        carrier=headers,
    )
