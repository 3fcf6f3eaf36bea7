"""The trace export through the HTTP app (scripted vLLM): a verified ladder answer of an
opted-in tenant reaches the file, another tenant's does not, and a broken sink never
touches the response."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import Settings
from routing.config import BackendPool, DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import A

pytestmark = pytest.mark.anyio

KEYS = {"acme": "key-acme-0001", "other": "key-other-0002"}


def config() -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "ladder",
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": [A],
                    "health_interval_s": 3600,
                }
            ],
            "routes": [
                {
                    "name": "ladder",
                    "strategy": "single-pass",
                    "backend": "default",
                    "escalate_to": [{"samples": 2, "verifier": "arithmetic", "threshold": 0.5}],
                    "trace_export": {"min_score": 0.8},
                },
                {"name": "plain", "strategy": "single-pass", "backend": "default"},
            ],
            "tenants": [
                {"name": n, "key_sha256": hashlib.sha256(k.encode()).hexdigest()}
                for n, k in KEYS.items()
            ],
            "traces": {"tenants": ["acme"]},
        }
    )


async def run(
    settings: Settings, fake: FakeVLLM, requests: list[tuple[str, str]], **extra: Any
) -> tuple[list[httpx.Response], CollectorRegistry]:
    fake.replica(A).words = ("2 + 2 = 4. Ask bob@example.com",)
    registry = CollectorRegistry()
    transport = fake.transport()

    def factory(pool: BackendPool) -> httpx.AsyncBaseTransport:
        return transport

    app = create_app(settings, config(), registry, factory)
    out = []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        ) as c:
            for tenant, model in requests:
                body: dict[str, Any] = {
                    "model": model,
                    "messages": [{"role": "user", "content": "What is 2 + 2? I'm bob@example.com"}],
                    "max_tokens": 16,
                    **extra,
                }
                r = await c.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={
                        "authorization": f"Bearer {KEYS[tenant]}",
                        "x-request-id": f"r-{tenant}-{model}",
                    },
                )
                out.append(r)
    return out, registry  # leaving the lifespan flushed the export queue


async def test_opted_in_tenant_is_exported_redacted(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    settings = Settings(trace_sink="file", trace_file=path)
    fake = FakeVLLM()
    responses, registry = await run(
        settings, fake, [("acme", "ladder"), ("other", "ladder"), ("acme", "plain")]
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["id"] for r in records] == ["r-acme-ladder"]
    (record,) = records
    assert record["tenant"] == "acme" and record["route"] == "ladder"
    assert record["messages"] == [{"role": "user", "content": "What is 2 + 2? I'm [email]"}]
    assert record["answer"]["text"] == "2 + 2 = 4. Ask [email]"
    assert record["verifier"]["name"] == "arithmetic" and record["verifier"]["score"] >= 0.8
    assert record["ladder"]["verified"] is True
    assert record["tokens"] == responses[0].json()["deliberate"]["tokens"]
    exported = registry.get_sample_value(
        "deliberate_trace_records_total", {"route": "ladder", "outcome": "exported"}
    )
    assert exported == 1


async def test_streamed_answers_are_exported_too(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    settings = Settings(trace_sink="file", trace_file=path)
    responses, _ = await run(settings, FakeVLLM(), [("acme", "ladder")], stream=True)
    assert responses[0].status_code == 200 and b"data: [DONE]" in responses[0].content
    (line,) = path.read_bytes().splitlines()
    assert orjson.loads(line)["answer"]["text"] == "2 + 2 = 4. Ask [email]"


async def test_a_failing_sink_never_fails_the_request(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the trace directory should be")
    settings = Settings(trace_sink="file", trace_file=blocker / "traces.jsonl")
    responses, registry = await run(settings, FakeVLLM(), [("acme", "ladder")])
    assert responses[0].status_code == 200
    assert responses[0].json()["choices"][0]["message"]["content"].startswith("2 + 2 = 4")
    lost = registry.get_sample_value(
        "deliberate_trace_export_failures_total", {"sink": "file", "reason": "sink_error"}
    )
    assert lost == 1


def test_redis_sink_needs_a_url() -> None:
    with pytest.raises(ValueError, match="DELIBERATE_TRACE_REDIS_URL"):
        Settings(trace_sink="redis")
    assert (
        Settings(trace_sink="redis", redis_url="redis://h:6379").trace_stream == "deliberate:traces"
    )
