"""Who may call what: the access policy of the non-completion endpoints, as ASGI middleware.

With no tenants configured every endpoint is open, as before. With tenants:

- ``/metrics``, ``/openapi.json``, ``/docs``, ``/redoc``, ``/v1/route/explain`` and
  ``/v1/policy/export`` need the key of a tenant marked ``admin: true`` (they describe the
  policy: routes, thresholds, tenants' usage);
- ``/v1/models`` needs any tenant's key (it lists routes and backends);
- completions authenticate in their handler (401, counted as a rejection);
- ``/health`` and ``/ready`` stay open for probes (``/ready`` shows its per-replica detail to
  admins only, see ``gateway.http.api``).

A refused caller gets an OpenAI-shaped 401 ``invalid_api_key`` or 403 ``permission_denied``
whose message names no route, tenant, limit or key.
"""

from __future__ import annotations

from typing import Literal

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import DeliberateError
from gateway.http.errors import json_response
from gateway.services import Services

Access = Literal["tenant", "admin"]
POLICY: dict[str, Access] = {
    "/metrics": "admin",
    "/openapi.json": "admin",
    "/docs": "admin",
    "/docs/oauth2-redirect": "admin",
    "/redoc": "admin",
    "/v1/route/explain": "admin",
    "/v1/policy/export": "admin",
    "/v1/models": "tenant",
}
"""Paths that need a key once tenants are configured (the others are open or check their own)."""


class AccessPolicy:
    """Refuse callers of ``POLICY`` paths that lack the key the path needs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        need = POLICY.get(scope["path"]) if scope["type"] == "http" else None
        if need is not None:
            services: Services = scope["app"].state.services
            authorization = Headers(scope=scope).get("authorization")
            try:
                if need == "admin":
                    services.budgets.authorize_admin(authorization)
                else:
                    services.budgets.authenticate(authorization)
            except DeliberateError as e:
                await json_response(e.body(), e.status, e.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
