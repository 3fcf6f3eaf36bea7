"""The tracing port: how policy code opens spans without knowing OpenTelemetry.

The gateway passes a ``Tracer`` in (``StrategyContext.tracer``); ``NO_TRACING`` is the
default and does nothing at all: no span object is created, ``span`` hands back one shared
inert context manager. Code that would compute attributes only for a span checks
``tracer.enabled`` first, so a gateway started without tracing pays one attribute read.

Contract: ``span`` makes the new span the parent of every span started inside it (also in
tasks created inside it), records an exception that leaves it, and ends it on exit.
``start`` opens a span the caller ends itself with ``end`` (exactly once), for work that
outlives one ``with`` block (a streamed response, a backend response read later).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Literal, Protocol

from strategies.ports import Candidate, Score, Verifier

AttrValue = str | bool | int | float | tuple[str, ...]
Attrs = Mapping[str, AttrValue]
SpanKind = Literal["internal", "server", "client"]


class Span(Protocol):
    def set_attribute(self, key: str, value: AttrValue) -> None: ...

    def set_attributes(self, attributes: Attrs) -> None:
        """Several at once (cheaper than one by one on the SDK's spans)."""
        ...


class OpenSpan(Span, Protocol):
    """A span started with ``Tracer.start``: the caller ends it."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Write this span's W3C trace context (``traceparent``) into ``headers``."""
        ...

    def activate(self) -> AbstractContextManager[None]:
        """Within the block, spans started are this span's children."""
        ...

    def end(self, error: BaseException | str | None = None) -> None:
        """End the span (once); failed with ``error`` (an exception or a description)."""
        ...


class Tracer(Protocol):
    @property
    def enabled(self) -> bool: ...

    def span(self, name: str, attributes: Attrs | None = None) -> AbstractContextManager[Span]:
        """An internal child span of the current one, for the ``with`` block."""
        ...

    def start(
        self,
        name: str,
        kind: SpanKind = "internal",
        attributes: Attrs | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> OpenSpan:
        """A span the caller ends; its parent is the trace context in ``carrier`` (incoming
        request headers) when it holds one, else the current span."""
        ...


class _NullSpan:
    """Every method a no-op; also its own context manager."""

    def set_attribute(self, key: str, value: AttrValue) -> None:
        pass

    def set_attributes(self, attributes: Attrs) -> None:
        pass

    def inject(self, headers: MutableMapping[str, str]) -> None:
        pass

    def activate(self) -> AbstractContextManager[None]:
        return _NULL_BLOCK

    def end(self, error: BaseException | str | None = None) -> None:
        pass

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _NullBlock:
    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NULL_SPAN = _NullSpan()
_NULL_BLOCK = _NullBlock()


class NullTracer:
    """Tracing off: no spans, no allocations."""

    enabled = False

    def span(self, name: str, attributes: Attrs | None = None) -> AbstractContextManager[Span]:
        return _NULL_SPAN

    def start(
        self,
        name: str,
        kind: SpanKind = "internal",
        attributes: Attrs | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> OpenSpan:
        return _NULL_SPAN


NO_TRACING: Tracer = NullTracer()
NO_SPAN: OpenSpan = _NULL_SPAN
"""The span of a request when tracing is off."""

VERIFY_SPAN = "deliberate.verify"


async def traced_score(
    tracer: Tracer, verifier: Verifier, question: str, candidates: Sequence[Candidate]
) -> list[Score]:
    """``verifier.score`` inside a ``deliberate.verify`` span (name, candidates, tokens)."""
    if not tracer.enabled:
        return await verifier.score(question, candidates)
    with tracer.span(VERIFY_SPAN, verify_attrs(verifier.name, len(candidates))) as span:
        scores = await verifier.score(question, candidates)
        note_scores(span, scores)
        return scores


def verify_attrs(name: str, candidates: int) -> dict[str, AttrValue]:
    return {"deliberate.verifier": name, "deliberate.verifier.candidates": candidates}


def note_scores(span: Span, scores: Sequence[Score]) -> None:
    """The verifier's backend tokens and best score on its span."""
    attrs: dict[str, AttrValue] = {
        "gen_ai.usage.input_tokens": sum(s.usage.prompt for s in scores),
        "gen_ai.usage.output_tokens": sum(s.usage.completion for s in scores),
    }
    if scores:
        attrs["deliberate.verifier.best_score"] = round(max(s.value for s in scores), 4)
    span.set_attributes(attrs)
