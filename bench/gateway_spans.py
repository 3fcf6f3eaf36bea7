"""Run the real gateway with CPU-time spans around its steps (benchmark tooling only).

The gateway's code is not modified: this launcher wraps a few of its functions at import time
(``gateway.pipeline``, ``gateway.http.api``, ``metrics.registry``) and the ASGI app itself, and
adds each call's *process CPU time* (``time.process_time_ns``: user + system, not waiting) to
a per-span total. At concurrency 1 the CPU used while a span's coroutine is suspended belongs
to the same request (its socket callbacks), so the totals attribute the gateway's CPU per
request to its components without any sampling bias. Each span costs two clock reads
(~1-2 µs), so instrumented totals run slightly above an uninstrumented gateway.

Spans (nested; exclusive costs are derived by ``profile_gateway.py spans``):

- ``asgi``: the whole ASGI app call for a completion request (FastAPI + gateway + response);
- ``asgi.send``: uvicorn's ``send`` (response start + body: header encoding, socket write);
- ``_completion``: ``gateway.http.api._completion`` (the endpoint body);
- ``read_body``, ``until_disconnect``, ``complete``, ``parse_payload``,
  ``check_prompt_fits``, ``open_upstream``, ``read_json_body``, ``Metrics.record``.

Extra endpoints: ``POST /_bench/reset`` zeroes the totals, ``GET /_bench/spans`` returns them
with the process CPU used since the reset. Run: ``python bench/gateway_spans.py --config
routes.yaml --port 8081`` (the same settings as ``deliberate serve``).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ParamSpec, TypeVar

import orjson

P = ParamSpec("P")
T = TypeVar("T")
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class Spans:
    """CPU nanoseconds and call counts per span name, plus the process CPU since the reset."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.requests = 0
        self.since = time.process_time_ns()

    def reset(self) -> None:
        self.ns.clear()
        self.calls.clear()
        self.requests = 0
        self.since = time.process_time_ns()

    def add(self, name: str, ns: int) -> None:
        self.ns[name] += ns
        self.calls[name] += 1

    def report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "process_cpu_ns": time.process_time_ns() - self.since,
            "spans": {k: {"ns": v, "calls": self.calls[k]} for k, v in self.ns.items()},
        }


SPANS = Spans()


def span_async(name: str, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """``fn`` (async) with its CPU time, suspended parts included, added to span ``name``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        t0 = time.process_time_ns()
        try:
            return await fn(*args, **kwargs)
        finally:
            SPANS.add(name, time.process_time_ns() - t0)

    return wrapper


def span_sync(name: str, fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` with its CPU time added to span ``name``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        t0 = time.process_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            SPANS.add(name, time.process_time_ns() - t0)

    return wrapper


def instrument() -> None:
    """Wrap the gateway's steps where their callers look them up (module globals)."""
    import gateway.http.api as api
    import gateway.pipeline as pipeline
    import metrics.registry as registry

    for name in ("open_upstream", "read_json_body", "check_prompt_fits"):
        setattr(pipeline, name, span_async(name, getattr(pipeline, name)))
    pipeline.parse_payload = span_sync("parse_payload", pipeline.parse_payload)
    for name in ("complete", "until_disconnect", "read_body", "_completion"):
        setattr(api, name, span_async(name, getattr(api, name)))
    wrapped_record = span_sync("Metrics.record", registry.Metrics.record)
    registry.Metrics.record = wrapped_record  # type: ignore[method-assign,unused-ignore]


def with_spans(app: ASGIApp) -> ASGIApp:
    """The app, timing completion requests as a whole and their ``send`` calls, plus the
    ``/_bench/spans`` and ``/_bench/reset`` endpoints."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path in ("/_bench/spans", "/_bench/reset"):
            if path == "/_bench/reset":
                SPANS.reset()
            body = orjson.dumps(SPANS.report())
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if path not in COMPLETION_PATHS:
            await app(scope, receive, send)
            return
        SPANS.requests += 1
        timed_send = span_async("asgi.send", send)
        t0 = time.process_time_ns()
        try:
            await app(scope, receive, timed_send)
        finally:
            SPANS.add("asgi", time.process_time_ns() - t0)

    return wrapped


def main(argv: list[str] | None = None) -> None:
    """Instrument, then serve exactly like ``deliberate serve`` (gateway.cli._run's uvicorn)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="The gateway with CPU-time spans.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    instrument()
    from gateway.app import create_app
    from gateway.settings import Settings

    settings = Settings(config=args.config, host=args.host, port=args.port)
    uvicorn.run(
        with_spans(create_app(settings)),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        loop="auto",
        http="auto",
    )


if __name__ == "__main__":
    main()
