"""Schemathesis against the gateway's own ``/openapi.json``, on the shipped policy and a fake vLLM.

Bodies are generated from the request schemas (valid ones and ones that break them, in every
field), plus a fuzzed ``x-request-id``. Whatever comes in: no status >= 500, every error is
OpenAI-shaped and names the field it blames, and no body carries a stack trace. The run is
bounded and seeded (``derandomize``), so CI replays the same cases.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from gateway.app import create_app
from gateway.settings import Settings
from routing.config import BackendPool, DeliberateConfig
from routing.loader import load_config
from tests.fakes import FakeVLLM

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "routes.yaml"
REPLICA = "http://fuzz-replica:8000"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# (path, method, mode, examples): 1,201 generated cases in all.
RUNS = [
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE, 250),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE, 300),
    ("/v1/completions", "POST", GenerationMode.POSITIVE, 150),
    ("/v1/completions", "POST", GenerationMode.NEGATIVE, 200),
    ("/v1/route/explain", "POST", GenerationMode.POSITIVE, 150),
    ("/v1/route/explain", "POST", GenerationMode.NEGATIVE, 150),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 1),  # no inputs: one distinct case
]


def fuzz_config() -> DeliberateConfig:
    """The shipped policy, every pool pointed at the fake replica."""
    config = load_config(SHIPPED)
    backends = [b.model_copy(update={"replicas": [REPLICA]}) for b in config.backends]
    return config.model_copy(update={"backends": backends})


@pytest.fixture
def app() -> Iterator[FastAPI]:
    fake = FakeVLLM(model=fuzz_config().backends[0].model)
    transport = fake.transport()

    def transport_factory(pool: BackendPool) -> httpx.AsyncBaseTransport:
        return transport

    yield create_app(Settings(), fuzz_config(), CollectorRegistry(), transport_factory)


def model_names(config: DeliberateConfig) -> list[str]:
    return ["auto", *(r.name for r in config.routes), config.backends[0].model]


def load_schema(app: FastAPI) -> OpenApiSchema:
    """The app's ``/openapi.json``, with ``model`` narrowed to the names this deployment
    serves: valid bodies then run the whole path (routing, strategies), and invalid ones
    break some other field instead of being refused for an unknown model."""
    # what /openapi.json serves (read from the app: the access policy in front of the route
    # needs the lifespan's services, and the run below starts the lifespan itself)
    document = copy.deepcopy(app.openapi())
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/route/explain"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["properties"]["model"] = {"enum": model_names(fuzz_config())}
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app  # calls go to the app in-process (what ``from_asgi`` sets)
    return schema


def assert_clean(status: int, body: bytes) -> None:
    """No stack trace; a 4xx body is ``{"error": {message, type, param, code}}``."""
    assert b"Traceback" not in body and b'File "' not in body, body[:2000]
    if status < 400:
        return
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if error["param"] is None:  # only a body that is not JSON, or not an object, names none
        assert error["code"] == "invalid_json", error
    else:
        assert isinstance(error["param"], str) and error["param"], error


def test_the_run_is_over_a_thousand_cases() -> None:
    assert sum(examples for *_, examples in RUNS) >= 1000


@pytest.mark.parametrize(
    ("path", "method", "mode", "examples"), RUNS, ids=[f"{m} {p} {g.value}" for p, m, g, _ in RUNS]
)
def test_schema_fuzz(
    app: FastAPI, path: str, method: str, mode: GenerationMode, examples: int
) -> None:
    operation = load_schema(app)[path][method]
    statuses: list[int] = []

    @settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, response.content[:2000]
        assert_clean(response.status_code, response.content)
        case.validate_response(response, checks=CHECKS)

    run()
    # Hypothesis stops early only when it runs out of distinct inputs (GET /v1/models has none).
    assert len(statuses) >= (1 if method == "GET" else examples * 0.9), len(statuses)
    if mode.is_negative:
        assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
