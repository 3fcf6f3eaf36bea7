"""One exception tree for everything a client can be told, mapped to OpenAI-shaped errors.

``{"error": {"message", "type", "param", "code"}}`` with the status code of the class. The
handler in ``gateway.http.errors`` is the only place that turns these into responses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DeliberateError(Exception):
    """Base of all client-visible errors."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self._status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status(self) -> int:
        """HTTP status of the response (the class default unless given)."""
        return self._status if self._status is not None else self.status_code

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(DeliberateError):
    """The request is malformed or breaks a limit (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class RequestTooLarge(InvalidRequest):
    """The body exceeds ``limits.max_body_bytes`` (413)."""

    status_code = 413
    default_code = "request_too_large"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (plus the requested completion) does not fit the model's context (400)."""

    default_code = "context_length_exceeded"


class ModelNotFound(DeliberateError):
    """``model`` names no route, backend model or ``auto`` (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFound(DeliberateError):
    """Unknown URL path (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(DeliberateError):
    """Known path, wrong HTTP method (405)."""

    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class ClientDisconnected(DeliberateError):
    """The client went away before the answer was ready; nobody reads this (499)."""

    status_code = 499
    error_type = "client_closed_request"
    default_code = "client_disconnected"


class BackendUnavailable(DeliberateError):
    """No replica of the pool could be reached (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "backend_unavailable"


class BackendTimeout(DeliberateError):
    """The backend stopped answering within the pool's read timeout (504)."""

    status_code = 504
    error_type = "timeout"
    default_code = "backend_timeout"


class BackendError(DeliberateError):
    """The backend answered with an error; its status and message are passed on."""

    error_type = "backend_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, status=status)
        self.upstream_type = error_type

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.upstream_type:
            body["error"]["type"] = self.upstream_type
        return body


class AuthenticationFailed(DeliberateError):
    """Tenants are configured and the request carries no known API key (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(DeliberateError):
    """A valid key without the admin flag on an admin-only endpoint (403)."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class RequestTimeout(InvalidRequest):
    """The client sent its request body too slowly (408); the connection is closed."""

    status_code = 408
    default_code = "request_timeout"


class RateLimited(DeliberateError):
    """The tenant's token or request budget cannot hold this request now (429)."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class TenantConcurrencyExceeded(RateLimited):
    """The tenant already has ``max_concurrent_requests`` requests running (429); nothing
    was reserved or charged."""

    default_code = "tenant_concurrency_exceeded"


class Overloaded(DeliberateError):
    """No route on the step-down ladder fits the SLOs and KV ceilings right now (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "overloaded"


class EngineDropped(DeliberateError):
    """The pool's engine-side scheduler (llm-d) dropped the request and said why (503).

    ``reason`` is the normalised dropped-reason header (``rejected-*`` or ``evicted-*``);
    the client sees it in the message and as ``code`` ``engine_rejected`` / ``engine_evicted``.
    """

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, pool: str, reason: str, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.pool = pool
        self.reason = reason


class EngineRejected(EngineDropped):
    """Every replica's scheduler refused the request before any engine work (503)."""

    default_code = "engine_rejected"


class EngineEvicted(EngineDropped):
    """The scheduler dropped the request after engine work was done (503); that work is
    charged to the tenant and the request is not retried."""

    default_code = "engine_evicted"


class BudgetStoreUnavailable(DeliberateError):
    """The budget store is unreachable and the policy is fail-closed (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "budget_store_unavailable"


class ShuttingDown(DeliberateError):
    """The gateway stopped before the answer was ready (drain timeout on SIGTERM) (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "shutting_down"
