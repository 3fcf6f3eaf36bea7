"""The HTTP app against a scripted vLLM (wire formats only; tests/integration uses the real one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from routing.config import DeliberateConfig
from tests.fakes import FakeVLLM

pytestmark = pytest.mark.anyio

A, B = "http://replica-a:8000", "http://replica-b:8000"


def make_config(replicas: list[str] | None = None, **limits: int) -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "single-pass",
            "limits": limits,
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": replicas or [A],
                    "health_interval_s": 3600,
                }
            ],
            "routes": [
                {"name": "single-pass", "strategy": "single-pass", "backend": "default"},
                {"name": "fast", "strategy": "single-pass", "backend": "default"},
            ],
        }
    )


Factory = Callable[..., Any]


CHAT = {"model": "single-pass", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


async def test_chat_passes_body_through_and_rewrites_model(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, _ = await gateway()
    body = {**CHAT, "temperature": 0.3, "top_k": 5, "stop": ["\n"], "seed": 7}
    r = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello there!"
    sent = fake.completions_received()[0]
    assert sent == {**body, "model": "fake-model"}  # vLLM extras (top_k) pass through
    assert r.headers["x-request-id"] == "req-42"
    assert r.headers["x-deliberate-route"] == "single-pass"
    assert r.headers["x-deliberate-strategy"] == "single-pass"
    assert r.headers["x-deliberate-backend"] == "default"
    assert fake.received[-1][1].headers["x-request-id"] == "req-42"


async def test_model_auto_route_and_backend_model_resolve(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway()
    for model, route in (("auto", "single-pass"), ("fast", "fast"), ("fake-model", "single-pass")):
        r = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert r.status_code == 200, r.text
        assert r.headers["x-deliberate-route"] == route


async def test_request_id_generated_when_absent_or_unsafe(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert len(r.headers["x-request-id"]) == 32
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "a b\tc"})
    assert r.headers["x-request-id"] != "a b\tc"


async def read_sse(r: httpx.Response) -> list[str]:
    text = r.text
    assert text.endswith("\n\n")
    return [e.removeprefix("data: ") for e in text.strip().split("\n\n")]


async def test_stream_relays_events_and_hides_forced_usage(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, registry = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-deliberate-route"] == "single-pass"
    events = await read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello there!"
    assert all(c["choices"] for c in chunks), "usage chunk leaked to a client that did not ask"
    # The gateway asked for usage anyway, to account for tokens.
    assert fake.completions_received()[0]["stream_options"] == {"include_usage": True}
    assert (
        registry.get_sample_value(
            "deliberate_tokens_total", {"route": "single-pass", "kind": "visible"}
        )
        == 3
    )


async def test_stream_usage_when_client_asks(gateway: Factory) -> None:
    client, registry = await gateway()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    events = await read_sse(await client.post("/v1/chat/completions", json=body))
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert registry.get_sample_value("deliberate_ttft_seconds_count", {"route": "single-pass"}) == 1


async def test_backend_failure_mid_stream_becomes_error_event(
    gateway: Factory, fake: FakeVLLM
) -> None:
    fake.replica(A).break_stream_after = 1
    client, registry = await gateway()
    events = await read_sse(
        await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    )
    assert events[-1] == "[DONE]"  # the error event, then the stream ends as streams do
    assert json.loads(events[-2])["error"]["code"] == "backend_stream_error"
    assert (
        registry.get_sample_value(
            "deliberate_requests_total",
            {"route": "single-pass", "strategy": "single-pass", "outcome": "backend_error"},
        )
        == 1
    )


async def test_completions_endpoint(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post(
        "/v1/completions", json={"model": "auto", "prompt": "2+2=", "max_tokens": 3}
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "Hello there!"
    r = await client.post("/v1/completions", json={"model": "auto", "prompt": "x", "stream": True})
    assert (await read_sse(r))[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "auto"}, "messages"),
        ({"model": "auto", "messages": []}, "messages"),
        ({"model": "auto", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "auto", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "top_logprobs": 21}, "top_logprobs"),
        ({**CHAT, "max_tokens": "many"}, "max_tokens"),
        ({**CHAT, "stop": 3}, "stop"),
        ({**CHAT, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
async def test_bad_fields_name_the_field(
    gateway: Factory, fake: FakeVLLM, body: dict[str, Any], param: str
) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json=body)
    err = assert_openai_error(r, 400, param)
    assert err["type"] == "invalid_request_error"
    assert not fake.completions_received(), "a bad request reached the backend"


async def test_malformed_json_and_non_object(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert assert_openai_error(r, 400)["code"] == "invalid_json"
    r = await client.post("/v1/chat/completions", json=[1, 2])
    assert assert_openai_error(r, 400)["code"] == "invalid_json"


async def test_unknown_model_is_404_listing_names(gateway: Factory) -> None:
    client, _ = await gateway()
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    err = assert_openai_error(r, 404, "model")
    assert err["code"] == "model_not_found"
    for name in ("auto", "single-pass", "fast", "fake-model"):
        assert name in err["message"]


async def test_limits(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway(make_config(max_n=4, max_messages=2, max_body_bytes=2048))
    assert_openai_error(await client.post("/v1/chat/completions", json={**CHAT, "n": 5}), 400, "n")
    many = {**CHAT, "messages": [{"role": "user", "content": "x"}] * 3}
    assert_openai_error(await client.post("/v1/chat/completions", json=many), 400, "messages")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}
    err = assert_openai_error(await client.post("/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"
    assert not fake.completions_received()


async def test_prompt_longer_than_context_is_400_before_dispatch(
    gateway: Factory, fake: FakeVLLM
) -> None:
    fake.replica(A).max_model_len = 512
    fake.replica(A).tokens_per_prompt = 600
    client, _ = await gateway()
    body = {**CHAT, "messages": [{"role": "user", "content": "word " * 500}]}
    err = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, "messages")
    assert err["code"] == "context_length_exceeded"
    fake.replica(A).tokens_per_prompt = 400
    body["max_tokens"] = 200
    err = assert_openai_error(
        await client.post("/v1/chat/completions", json=body), 400, "max_tokens"
    )
    assert "at most 112" in err["message"]
    assert not fake.completions_received()
    # Small prompts never need the tokenizer.
    tokenize_calls = sum(1 for p, _, _ in fake.received if p == "/tokenize")
    await client.post("/v1/chat/completions", json=CHAT)
    assert sum(1 for p, _, _ in fake.received if p == "/tokenize") == tokenize_calls


async def test_backend_down_is_503_naming_pool(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).down = True
    client, registry = await gateway()
    r = await client.post("/v1/chat/completions", json=CHAT)
    err = assert_openai_error(r, 503)
    assert "'default'" in err["message"] and err["code"] == "backend_unavailable"
    assert r.headers["x-deliberate-backend"] == "default"
    assert (
        registry.get_sample_value(
            "deliberate_requests_total",
            {"route": "single-pass", "strategy": "single-pass", "outcome": "unavailable"},
        )
        == 1
    )


async def test_retry_on_live_replica(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).down = True
    client, _ = await gateway(make_config([A, B]))
    for _ in range(4):  # whichever replica is tried first, every request lands on B
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
    hosts = {req.url.host for path, req, _ in fake.received if path.endswith("completions")}
    assert hosts == {"replica-b"}


async def test_5xx_is_retried_on_live_replica_and_the_failing_one_ejected(
    gateway: Factory, fake: FakeVLLM
) -> None:
    fake.replica(A).status = 500
    client, registry = await gateway(make_config([A, B]))
    for _ in range(12):  # nothing reached the client yet: every 500 is retried on B
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
    labels = {"pool": "default", "replica": A}
    # the default policy ejects A after 5 failed calls in a row; then it gets no traffic
    assert registry.get_sample_value("deliberate_backend_ejections_total", labels) == 1
    assert registry.get_sample_value("deliberate_backend_ejected", labels) == 1
    assert registry.get_sample_value("deliberate_backend_ejected", {**labels, "replica": B}) == 0
    calls = [req for path, req, _ in fake.received if path.endswith("completions")]
    assert sum(1 for req in calls if req.url.host == "replica-a") == 5


async def test_backend_4xx_passes_status_and_message(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).status = 400
    fake.replica(A).error_message = "This model's maximum context length is 2048 tokens."
    client, _ = await gateway()
    err = assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 400)
    assert err["message"] == "This model's maximum context length is 2048 tokens."
    assert err["type"] == "invalid_request_error"


async def test_backend_5xx_is_502(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).status = 500
    client, _ = await gateway()
    err = assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 502)
    assert "scripted backend error" in err["message"]


async def test_models_lists_auto_routes_and_backend_models(gateway: Factory) -> None:
    client, _ = await gateway()
    data = (await client.get("/v1/models")).json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["auto", "single-pass", "fast", "fake-model"]
    assert data["data"][1]["max_model_len"] == 2048


async def test_health_ready_and_unknown_paths(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway()
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    fake.replica(A).down = True
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["backends"]["default"]["ready"] is False
    assert_openai_error(await client.get("/v2/nothing"), 404)
    assert_openai_error(await client.get("/v1/chat/completions"), 405)


async def test_metrics_exposition(gateway: Factory) -> None:
    client, _ = await gateway()
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    text = (await client.get("/metrics")).text
    assert (
        'deliberate_requests_total{outcome="ok",route="single-pass",strategy="single-pass"} 1.0'
        in text
    )
    assert (
        'deliberate_requests_total{outcome="client_error",route="none",strategy="none"} 1.0' in text
    )
    assert 'deliberate_tokens_total{kind="prompt",route="single-pass"} 7.0' in text
    assert 'deliberate_request_duration_seconds_count{route="single-pass"} 1.0' in text
    assert 'deliberate_ttft_seconds_count{route="single-pass"} 1.0' in text


def strategy_config() -> DeliberateConfig:
    cfg = make_config().model_dump(mode="json")
    cfg["routes"].append({"name": "think", "strategy": "bounded-reasoning", "backend": "default"})
    cfg["routes"].append({"name": "vote", "strategy": "self-consistency", "backend": "default"})
    return DeliberateConfig.model_validate(cfg)


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("vote", {"n": 2}, "n"),
        ("vote", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("think", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("think", {"tool_choice": "required"}, "tool_choice"),
    ],
)
async def test_multi_call_routes_refuse_what_they_cannot_honour(
    gateway: Factory, fake: FakeVLLM, route: str, extra: dict[str, Any], param: str
) -> None:
    client, _ = await gateway(strategy_config())
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": route, **extra})
    err = assert_openai_error(r, 400, param)
    assert repr(route) in err["message"]
    assert not fake.completions_received()


async def test_completions_endpoint_is_single_pass_only(gateway: Factory) -> None:
    client, _ = await gateway(strategy_config())
    r = await client.post("/v1/completions", json={"model": "vote", "prompt": "x"})
    assert_openai_error(r, 400, "model")
