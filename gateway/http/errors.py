"""The one place exceptions become HTTP responses: OpenAI-shaped JSON, never a traceback."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.context import RequestContext
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BudgetStoreUnavailable,
    ClientDisconnected,
    DeliberateError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RateLimited,
)
from metrics.registry import Outcome
from routing.loader import format_loc

log = logging.getLogger(__name__)


def outcome_of(error: DeliberateError) -> Outcome:
    """The metrics outcome for an error."""
    if isinstance(error, ClientDisconnected):
        return "cancelled"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, Overloaded | BudgetStoreUnavailable):
        return "overloaded"
    if isinstance(error, BackendUnavailable):
        return "unavailable"
    if isinstance(error, BackendTimeout):
        return "timeout"
    if isinstance(error, BackendError):
        return "backend_error" if error.status >= 500 else "client_error"
    return "client_error" if error.status < 500 else "internal_error"


def error_response(request: Request, error: DeliberateError) -> Response:
    """The response for ``error``, with whatever ``x-deliberate-*`` headers are known."""
    ctx: RequestContext | None = getattr(request.state, "ctx", None)
    headers = dict(error.headers)
    if ctx is not None:
        ctx.outcome = outcome_of(error)
        headers.update(ctx.headers())
    return json_response(error.body(), error.status, headers)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    async def on_deliberate(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DeliberateError)
        return error_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [p for p in err["loc"] if p not in ("body", "query", "path")]
        param = format_loc(loc) or None
        return error_response(
            request, InvalidRequest(f"Invalid value for '{param}': {err['msg']}", param=param)
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error: DeliberateError
        if exc.status_code == 404:
            error = NotFound(f"no such endpoint: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = InvalidRequest(str(exc.detail), status=exc.status_code)
        return error_response(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, DeliberateError("internal error in the gateway; it has been logged")
        )

    app.add_exception_handler(DeliberateError, on_deliberate)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
