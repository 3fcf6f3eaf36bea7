"""What ``/openapi.json`` says about the OpenAI routes, built from the models that validate them.

The routes read their bodies themselves (``gateway.parsing``: our own 400s naming the field),
so FastAPI cannot see them; these helpers put the same pydantic models' JSON schemas into
each operation, and the OpenAI error shape into its responses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, naming the field when one is at fault.")
    type: str = Field(description="OpenAI error type, e.g. invalid_request_error.")
    param: str | None = Field(description="The offending field, e.g. messages[0].role.")
    code: str | int | None = Field(description="Machine-readable code, e.g. invalid_json.")


class ErrorResponse(BaseModel):
    """Every error the gateway answers: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``: every route, backend model and ``auto``."""

    object: str
    data: list[ModelCard]


_ERRORS = {
    400: "Malformed body or a broken limit; `param` names the field.",
    401: "Tenants are configured and the API key is missing or unknown.",
    404: "`model` names no route, backend model or `auto`.",
    413: "The body exceeds `limits.max_body_bytes`.",
    429: "The tenant's token or request budget cannot hold the request now.",
    502: "The backend failed (its 5xx, or an answer that is not JSON).",
    503: "No backend replica, no admissible route, or the budget store is down.",
    504: "The route's deadline or the backend's read timeout ran out.",
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place (no refs), so it can sit
    inside an operation of the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body ``model`` validates (parsed by us)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(model)}},
        },
        "parameters": [
            {
                "name": "x-request-id",
                "in": "header",
                "required": False,
                "description": "Echoed back when it is 1-128 of [A-Za-z0-9._:@/+=-]; else replaced.",
                "schema": {"type": "string"},
            }
        ],
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route: the OpenAI error shape for each of ``statuses``."""
    return {s: {"model": ErrorResponse, "description": _ERRORS[s]} for s in statuses}


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; an SSE stream of chunks with `stream: true`.",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **error_responses(400, 401, 404, 413, 429, 502, 503, 504),
}
EXPLAIN_RESPONSES = error_responses(400, 401, 404, 413)
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": ModelList}}
