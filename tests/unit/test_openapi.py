"""``/openapi.json`` describes the real bodies of the OpenAI routes and their error shape."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.conftest import Factory

ROUTES = {
    "/v1/chat/completions": ("messages", "model", "n", "max_tokens", "tools", "logit_bias"),
    "/v1/completions": ("prompt", "model", "n", "max_tokens", "best_of"),
    "/v1/route/explain": ("messages", "model", "n"),
}

pytestmark = pytest.mark.anyio


def request_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


async def test_openapi_has_the_request_bodies(gateway: Factory) -> None:
    client, _ = await gateway()
    document = (await client.get("/openapi.json")).json()
    for path, fields in ROUTES.items():
        schema = request_schema(document, path)
        assert set(fields) <= set(schema["properties"]), path
        assert "model" in schema["required"]
        assert "$ref" not in str(schema), "bodies are inlined, every nested model written out"
    chat = request_schema(document, "/v1/chat/completions")
    assert chat["required"] == ["model", "messages"]
    assert chat["properties"]["messages"]["minItems"] == 1
    role = chat["properties"]["messages"]["items"]["properties"]["role"]
    assert "user" in role["enum"] and "wizard" not in role["enum"]
    n = chat["properties"]["n"]["anyOf"][0]
    assert n["type"] == "integer" and n["minimum"] == 1
    assert request_schema(document, "/v1/completions")["required"] == ["model", "prompt"]
    params = document["paths"]["/v1/chat/completions"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["x-request-id"]


async def test_openapi_documents_errors_and_model_list(gateway: Factory) -> None:
    client, _ = await gateway()
    document = (await client.get("/openapi.json")).json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "404", "413", "429", "502", "503", "504"):
        assert chat[status]["content"]["application/json"]["schema"] == error_ref, status
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    explain = document["paths"]["/v1/route/explain"]["post"]["responses"]
    assert explain["400"]["content"]["application/json"]["schema"] == error_ref
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}
    models = document["paths"]["/v1/models"]["get"]["responses"]["200"]
    assert models["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelList"
    }
    assert "requestBody" not in document["paths"]["/v1/models"]["get"]


async def test_models_answer_matches_its_schema(gateway: Factory) -> None:
    client, _ = await gateway()
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert {"id", "object", "created", "owned_by"} <= set(body["data"][0])
