"""The OpenTelemetry adapter of the tracing port (``strategies.tracing.Tracer``).

Imported only when tracing is on (``gateway.tracing.tracing_from_env``): it needs the
``otel`` extra (opentelemetry-sdk and the OTLP exporter). It never touches OpenTelemetry's
global tracer provider or propagator: the provider is built here, passed in explicitly, and
trace context travels as W3C ``traceparent`` headers.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind as OtelKind
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from strategies.tracing import Attrs, AttrValue, OpenSpan, Span, SpanKind

_KINDS: Mapping[SpanKind, OtelKind] = {
    "internal": OtelKind.INTERNAL,
    "server": OtelKind.SERVER,
    "client": OtelKind.CLIENT,
}
_PROPAGATOR = TraceContextTextMapPropagator()  # stateless
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")


class OtelTracer:
    """Spans of one ``TracerProvider`` (the SDK's, or any API implementation)."""

    enabled = True

    def __init__(self, provider: trace.TracerProvider, version: str = "") -> None:
        self._tracer = provider.get_tracer("deliberate", version or None)

    def span(self, name: str, attributes: Attrs | None = None) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def start(
        self,
        name: str,
        kind: SpanKind = "internal",
        attributes: Attrs | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> OpenSpan:
        parent = _PROPAGATOR.extract(carrier) if carrier is not None else None
        span = self._tracer.start_span(name, parent, kind=_KINDS[kind], attributes=attributes)
        return _Open(span)


class _Open:
    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._ended = False

    def set_attribute(self, key: str, value: AttrValue) -> None:
        self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Attrs) -> None:
        self._span.set_attributes(attributes)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        _PROPAGATOR.inject(headers, trace.set_span_in_context(self._span))

    def activate(self) -> AbstractContextManager[None]:
        return _activated(self._span)

    def end(self, error: BaseException | str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if isinstance(error, BaseException):
            self._span.record_exception(error)
            self._span.set_attribute("error.type", type(error).__name__)
            self._span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        elif error is not None:
            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


@contextmanager
def _activated(span: trace.Span) -> Iterator[None]:
    with trace.use_span(span, end_on_exit=False, record_exception=False):
        yield


def provider_from_env(environ: Mapping[str, str], version: str) -> TracerProvider:
    """An SDK provider as ``OTEL_*`` asks: one ``BatchSpanProcessor`` per exporter named in
    ``OTEL_TRACES_EXPORTER`` (default ``otlp``). The SDK itself reads the sampler
    (``OTEL_TRACES_SAMPLER[_ARG]``), the batching (``OTEL_BSP_*``), the resource
    (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and the OTLP exporter's endpoint,
    headers, timeout and compression. Raises ``ValueError`` naming the variable for an
    exporter or protocol it does not know."""
    attrs: dict[str, str] = {"service.version": version}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attrs["service.name"] = "deliberate"
    provider = TracerProvider(resource=Resource.create(attrs))
    for processor in processors(environ):
        provider.add_span_processor(processor)
    return provider


def processors(environ: Mapping[str, str]) -> list[SpanProcessor]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    out: list[SpanProcessor] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "console":
            out.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            out.append(BatchSpanProcessor(otlp_exporter(environ)))
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; known: {', '.join(EXPORTERS)}"
            )
    return out


def otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter of ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (http/protobuf by
    default, as the specification says; grpc needs opentelemetry-exporter-otlp-proto-grpc)."""
    var = next(
        (
            v
            for v in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
            if environ.get(v, "").strip()
        ),
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    )
    protocol = environ.get(var, "").strip() or "http/protobuf"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:  # an optional package, not in the otel extra: imported by name
            grpc = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError as e:
            raise ValueError(
                f"{var}=grpc needs opentelemetry-exporter-otlp-proto-grpc installed ({e})"
            ) from e
        exporter: SpanExporter = grpc.OTLPSpanExporter()
        return exporter
    raise ValueError(f"{var}: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
