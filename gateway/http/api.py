"""HTTP routes. Each is parse → call → serialise; the work happens in ``gateway.pipeline``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from gateway.access_log import log_access
from gateway.context import RequestContext, request_id_from
from gateway.decide import Endpoint, explain
from gateway.errors import (
    AuthenticationFailed,
    BudgetStoreUnavailable,
    ClientDisconnected,
    DeliberateError,
    RateLimited,
    RequestTooLarge,
    ShuttingDown,
)
from gateway.http.errors import error_response, json_response
from gateway.http.openapi import (
    COMPLETION_RESPONSES,
    EXPLAIN_RESPONSES,
    MODELS_RESPONSES,
    json_body,
)
from gateway.pipeline import Answer, complete
from gateway.policy_export import export_policy
from gateway.responses import (
    Translation,
    rename_param,
    response_body,
    response_stream,
    translate_request,
)
from gateway.responses_schema import ResponsesRequest
from gateway.schemas import ChatCompletionRequest, CompletionRequest
from gateway.services import Services
from gateway.tracing import ENDPOINT_OPERATIONS, note_request, request_span
from metrics.registry import RejectReason

T = TypeVar("T")
router = APIRouter()
_REJECTIONS: dict[type[DeliberateError], RejectReason] = {
    AuthenticationFailed: "unauthorized",
    RateLimited: "rate_limited",
    BudgetStoreUnavailable: "budget_store",
}


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post(
    "/v1/chat/completions",
    openapi_extra=json_body(ChatCompletionRequest),
    responses=COMPLETION_RESPONSES,
)
async def chat_completions(request: Request) -> Response:
    return await _completion(request, "chat")


@router.post(
    "/v1/completions",
    openapi_extra=json_body(CompletionRequest),
    responses=COMPLETION_RESPONSES,
)
async def completions(request: Request) -> Response:
    return await _completion(request, "completions")


@router.post(
    "/v1/responses",
    openapi_extra=json_body(ResponsesRequest),
    responses=COMPLETION_RESPONSES,
)
async def responses(request: Request) -> Response:
    """The Responses API (``store: false``): single-pass forwarded to the backend's own
    ``/v1/responses``, every other route served as the chat completion it translates to."""
    return await _completion(request, "chat", responses_dialect=True)


async def _completion(
    request: Request, endpoint: Endpoint, *, responses_dialect: bool = False
) -> Response:
    services = services_of(request)
    ctx = RequestContext(request_id_from(request.headers.get("x-request-id")))
    request.state.ctx = ctx
    if not services.tracer.enabled:
        return await _serve(request, services, ctx, endpoint, responses_dialect)
    span = ctx.span = request_span(
        services.tracer,
        request.method,
        request.url.path,
        ENDPOINT_OPERATIONS[endpoint],
        request.headers,
    )
    try:
        with span.activate():
            response = await _serve(request, services, ctx, endpoint, responses_dialect)
    except BaseException as e:
        span.end(e)
        raise
    status = response.status_code
    span.set_attribute("http.response.status_code", status)
    if not isinstance(response, RelayResponse):  # a stream's span ends with the stream
        span.end(f"HTTP {status}" if status >= 500 else None)
    return response


async def _serve(
    request: Request,
    services: Services,
    ctx: RequestContext,
    endpoint: Endpoint,
    responses_dialect: bool,
) -> Response:
    translation: Translation | None = None
    streaming = False
    try:
        tenant = services.budgets.authenticate(request.headers.get("authorization"))
        ctx.tenant = tenant.name
        services.budgets.enter(tenant, ctx)  # per-tenant concurrency, released by settle
        raw = await read_body(request, services.config.limits.max_body_bytes)
        if responses_dialect:
            translation = translate_request(raw)
            raw = orjson.dumps(translation.chat)
        answer = await until_disconnect(
            request, ctx, complete(services, endpoint, raw, ctx, tenant, translation)
        )
        translate = translation is not None and answer.dialect == "chat"
        if answer.stream is not None:
            streaming = True
            if translate and (t := translation) is not None:
                answer = answer.translated(lambda chat: response_stream(chat, t))
            return RelayResponse(answer, ctx, services)
        assert answer.body is not None
        body = response_body(answer.body, translation) if translate and translation else answer.body
        return Response(body, media_type="application/json", headers=ctx.headers())
    except DeliberateError as e:
        if services.tracer.enabled:
            ctx.span.set_attribute("error.type", type(e).__name__)
        if responses_dialect:
            rename_param(e, translation)
        if (reason := _REJECTIONS.get(type(e))) is not None:
            services.metrics.reject(ctx.route or "none", reason)
        return error_response(request, e)
    except asyncio.CancelledError:
        # Only the server cancels a handler (a leaving client is ClientDisconnected): the
        # drain timeout of a shutdown ran out. The cleanup below still releases the
        # reservation and the backend call was cancelled with us; answer 503 rather than
        # letting the server log the cancellation as a crash.
        ctx.outcome = "cancelled"
        return error_response(
            request, ShuttingDown("the gateway shut down before the answer was ready; retry")
        )
    except Exception:
        ctx.outcome = "internal_error"
        raise
    finally:
        if not streaming:
            await services.budgets.settle(ctx)
            finish(services, ctx)


def finish(services: Services, ctx: RequestContext) -> None:
    """Record the request's metrics and access-log line, once."""
    if (rec := ctx.finish()) is not None:
        services.metrics.record(rec)
        if services.settings.access_log:
            log_access(ctx, rec)
        if services.tracer.enabled:
            note_request(ctx.span, ctx, services.pools)


class RelayResponse(StreamingResponse):
    """A relayed SSE stream whose ``on_close`` runs however the response ends.

    A plain generator's ``finally`` never runs if the client leaves before the first chunk
    (the generator was never started); the backend response would then leak. Running the
    cleanup around ``__call__`` closes it in every case.
    """

    def __init__(self, answer: Answer, ctx: RequestContext, services: Services) -> None:
        assert answer.stream is not None
        super().__init__(
            answer.stream,
            media_type="text/event-stream",
            headers={**ctx.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self._answer, self._ctx, self._services = answer, ctx, services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = self._ctx.span
        try:
            with span.activate():  # a strategy streaming its progress runs in here
                await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            pass  # the server's drain timeout ran out mid-stream; clean up and end quietly
        finally:
            try:
                await self._answer.aclose()
            finally:
                if not self._ctx.stream_done and self._ctx.outcome == "ok":
                    self._ctx.outcome = "cancelled"  # the client left before the end
                await self._services.budgets.settle(self._ctx)
                finish(self._services, self._ctx)
                span.end()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    if declared is not None:
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnect(request: Request, ctx: RequestContext, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client goes away first.

    Cancelling closes the backend connection, which makes vLLM abort the generation, so a
    client that gives up stops costing compute. (Streams get this from Starlette itself.)
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    job: asyncio.Future[T] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((job, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    if job.cancelled():
        ctx.outcome = "cancelled"
        raise ClientDisconnected("the client disconnected before the answer was ready")
    return job.result()


@router.post(
    "/v1/route/explain",
    openapi_extra=json_body(ChatCompletionRequest),
    responses=EXPLAIN_RESPONSES,
)
async def route_explain(request: Request) -> Response:
    """The routing decision for a chat completion body, without generating or reserving."""
    services = services_of(request)
    try:
        tenant = services.budgets.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, services.config.limits.max_body_bytes)
        return json_response(await explain(services, raw, tenant))
    except DeliberateError as e:
        return error_response(request, e)


@router.get("/v1/policy/export")
async def policy_export(request: Request) -> Response:
    """The policy file with the live (online) quality tables written in, as YAML."""
    services = services_of(request)
    try:
        services.budgets.authenticate(request.headers.get("authorization"))
    except DeliberateError as e:
        return error_response(request, e)
    text, observations = export_policy(services)
    headers = {"x-deliberate-online-observations": str(observations)}
    return Response(text, 200, headers, media_type="application/yaml")


@router.get("/v1/models", responses=MODELS_RESPONSES)
async def models(request: Request) -> Response:
    services = services_of(request)
    created = int(time.time())
    cards: list[dict[str, Any]] = []
    for model_id in services.routes.model_ids():
        route = services.routes.resolve(model_id)
        card: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "deliberate",
        }
        if route is not None:
            pool = services.pools[route.backend]
            card["deliberate"] = {
                "route": route.name,
                "strategy": route.strategy,
                "backend": pool.name,
                "backend_model": pool.model,
            }
            if pool.max_model_len is not None:
                card["max_model_len"] = pool.max_model_len
        cards.append(card)
    return json_response({"object": "list", "data": cards})


@router.get("/health")
async def health() -> Response:
    """Liveness: the process answers. Says nothing about backends (see /ready)."""
    return json_response({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: at least one replica of every pool a route uses answers /health now."""
    services = services_of(request)
    timeout = services.settings.ready_timeout_s
    pools = [services.pools[name] for name in services.config.pools_in_use()]
    results = await asyncio.gather(*(p.probe_all(timeout) for p in pools))
    detail = {
        p.name: {
            "ready": any(ok),
            "replicas": {r.url: ok_r for r, ok_r in zip(p.replicas, ok, strict=True)},
        }
        for p, ok in zip(pools, results, strict=True)
    }
    is_ready = all(d["ready"] for d in detail.values())
    body: dict[str, Any] = {"status": "ready" if is_ready else "not_ready"}
    if services.budgets.is_admin(request.headers.get("authorization")):
        body["backends"] = detail  # pool names and replica URLs: admins (or open access) only
    return json_response(body, 200 if is_ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
