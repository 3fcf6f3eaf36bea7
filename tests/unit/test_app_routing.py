"""Routing through the HTTP app (scripted vLLM): decision headers, explain, cascades, reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import Settings
from routing.config import DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import A, Factory, assert_openai_error

pytestmark = pytest.mark.anyio


def routing_raw() -> dict[str, Any]:
    return {
        "default_route": "single",
        "backends": [
            {"name": "default", "model": "fake-model", "replicas": [A], "health_interval_s": 3600}
        ],
        "routes": [
            {
                "name": "single",
                "strategy": "single-pass",
                "backend": "default",
                "measured": {
                    "arithmetic": {"quality": 0.2, "p50_ms": 100, "p95_ms": 200, "tokens": 50}
                },
            },
            {
                "name": "cascade",
                "strategy": "single-pass",
                "backend": "default",
                "escalate_to": {"route": "vote", "verifier": "arithmetic", "threshold": 0.5},
            },
            {
                "name": "vote",
                "strategy": "best-of-n",
                "backend": "default",
                "params": {"n": 3, "selector": "majority", "max_tokens": 16},
                "measured": {
                    "arithmetic": {"quality": 0.8, "p50_ms": 900, "p95_ms": 2000, "tokens": 300}
                },
            },
        ],
        "classes": [{"name": "arithmetic", "match": {"min_operators": 1}}],
        "policy": {
            "default_class": "open",
            "classes": {
                "arithmetic": {"routes": ["single", "vote"], "min_quality": 0.5},
                "open": {"routes": ["single"]},
            },
        },
        "admission": {"scrape_interval_s": 3600},
    }


SUM = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


async def test_auto_routes_by_class_and_explains_it(gateway: Factory, fake: FakeVLLM) -> None:
    fake.replica(A).words = ("2 + 2 = 4. The answer is 4",)
    client, registry = await gateway(DeliberateConfig.model_validate(routing_raw()))
    r = await client.post("/v1/chat/completions", json=SUM)
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-class"] == "arithmetic"
    assert r.headers["x-deliberate-route"] == "vote"
    reason = dict(p.split("=", 1) for p in r.headers["x-deliberate-reason"].split("; "))
    assert reason["class"] == "arithmetic" and reason["route"] == "vote" and reason["q"] == "0.80"
    assert r.json()["deliberate"]["class"] == "arithmetic"
    assert (
        registry.get_sample_value(
            "deliberate_route_decisions_total",
            {"class": "arithmetic", "route": "vote", "source": "policy"},
        )
        == 1
    )

    sent = len(fake.completions_received())
    e = await client.post("/v1/route/explain", json=SUM)
    assert e.status_code == 200, e.text
    body = e.json()
    assert body["request_class"] == "arithmetic" and body["route"] == "vote"
    assert {c["route"] for c in body["candidates"]} == {"single", "vote"}
    assert body["admission"]["verdict"] == "admit"
    assert body["estimates"]["tenant_reservation_tokens"] > 0
    assert len(fake.completions_received()) == sent  # nothing generated

    other = await client.post(
        "/v1/chat/completions", json={**SUM, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert other.headers["x-deliberate-class"] == "open"
    assert other.headers["x-deliberate-route"] == "single"


async def test_explain_validates_like_chat(gateway: Factory) -> None:
    client, _ = await gateway(DeliberateConfig.model_validate(routing_raw()))
    r = await client.post("/v1/route/explain", json={"model": "auto", "messages": "nope"})
    assert_openai_error(r, 400, "messages")


@pytest.mark.parametrize(
    ("words", "escalated"),
    [(("2 + 2 = 4. The answer is 4",), False), (("2 + 2 = 5. The answer is 5",), True)],
)
async def test_cascade_escalates_only_when_the_check_fails(
    gateway: Factory, fake: FakeVLLM, words: tuple[str, ...], escalated: bool
) -> None:
    fake.replica(A).words = words
    client, registry = await gateway(DeliberateConfig.model_validate(routing_raw()))
    r = await client.post("/v1/chat/completions", json={**SUM, "model": "cascade"})
    assert r.status_code == 200, r.text
    body = r.json()
    ladder = body["deliberate"]["ladder"]
    assert ladder["rungs"] == ["vote"] and (ladder["stopped_at"] > 0) is escalated
    # the route whose candidate won serves the answer: a route rung's, or the cascade's own
    won_by_vote = body["deliberate"]["chosen_wave"] == 1
    assert r.headers["x-deliberate-route"] == ("vote" if won_by_vote else "cascade")
    calls = len(fake.completions_received())
    # first answer + ONE n=2 call (the first answer is one of vote's 3 candidates)
    assert calls == (2 if escalated else 1)
    if escalated:
        assert fake.completions_received()[-1]["n"] == 2
    u = body["usage"]
    hidden = u["completion_tokens_details"]["reasoning_tokens"]
    if escalated:  # the first attempt and the losing candidates are hidden
        assert 0 < hidden < u["completion_tokens"]
    else:  # the arithmetic check costs no tokens: everything generated was returned
        assert hidden == 0 and u["completion_tokens"] > 0
    outcome = "escalated" if escalated else "kept"
    assert (
        registry.get_sample_value(
            "deliberate_escalations_total",
            {"class": "explicit", "from_route": "cascade", "to_route": "vote", "outcome": outcome},
        )
        == 1
    )


async def test_hot_reload_swaps_policy_and_keeps_it_on_errors(
    tmp_path: Path, fake: FakeVLLM
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routing_raw()))
    registry = CollectorRegistry()
    settings = Settings(config=path, reload_interval_s=3600)

    def transport_factory(pool: Any) -> httpx.AsyncBaseTransport:
        return fake.transport()

    app = create_app(settings, None, registry, transport_factory)
    async with app.router.lifespan_context(app):
        from gateway.reload import ConfigWatcher

        services = app.state.services
        watcher = ConfigWatcher(path, services, 3600)
        before = services.state
        raw = routing_raw()
        raw["policy"]["classes"]["arithmetic"]["routes"] = ["single"]
        path.write_text(yaml.safe_dump(raw))
        assert watcher.reload()
        assert services.state is not before
        assert services.config.policy.classes["arithmetic"].routes == ["single"]

        current = services.state
        path.write_text("routes: [oops")
        assert not watcher.reload()
        assert services.state is current  # the old policy stays
        raw["backends"][0]["replicas"] = ["http://elsewhere:1"]
        path.write_text(yaml.safe_dump(raw))
        assert not watcher.reload()  # pools need a restart
        assert registry.get_sample_value("deliberate_config_reloads_total", {"result": "ok"}) == 1
        assert (
            registry.get_sample_value("deliberate_config_reloads_total", {"result": "error"}) == 2
        )


async def test_cascades_refuse_what_they_cannot_honour(gateway: Factory, fake: FakeVLLM) -> None:
    raw = routing_raw()
    raw["routes"][1]["budget"] = {"max_visible_tokens": 8}
    client, _ = await gateway(DeliberateConfig.model_validate(raw))
    r = await client.post("/v1/completions", json={"model": "cascade", "prompt": "2 + 2 ="})
    assert "cascade" in assert_openai_error(r, 400, "model")["message"]
    r = await client.post("/v1/chat/completions", json={**SUM, "model": "cascade", "n": 2})
    assert_openai_error(r, 400, "n")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    r = await client.post("/v1/chat/completions", json={**SUM, "model": "cascade", "tools": tools})
    assert_openai_error(r, 400, "tools")
    # the route's caps hold across its whole ladder, the route rung included
    fake.replica(A).words = ("2 + 2 = 5. The answer is 5",)
    r = await client.post("/v1/chat/completions", json={**SUM, "model": "cascade"})
    assert r.status_code == 200, r.text
    first, second = fake.completions_received()[-2:]
    assert first["max_tokens"] == 8 and second["max_tokens"] == 8


async def test_auto_passes_over_routes_that_cannot_serve(gateway: Factory) -> None:
    client, _ = await gateway(DeliberateConfig.model_validate(routing_raw()))
    r = await client.post("/v1/chat/completions", json={**SUM, "n": 2})  # vote takes no n>1
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "single"
    e = (await client.post("/v1/route/explain", json={**SUM, "n": 2})).json()
    vote = next(c for c in e["candidates"] if c["route"] == "vote")
    assert not vote["kept"] and "cannot serve" in vote["why"]
    r = await client.post("/v1/completions", json={"model": "auto", "prompt": "2 + 2 ="})
    assert r.status_code == 200, r.text


async def test_explain_says_invalid_for_requests_the_gateway_would_refuse(gateway: Factory) -> None:
    client, _ = await gateway(DeliberateConfig.model_validate(routing_raw()))
    e = (await client.post("/v1/route/explain", json={**SUM, "model": "vote", "n": 2})).json()
    assert e["admission"]["verdict"] == "invalid" and e["admission"]["status"] == 400
    e = (await client.post("/v1/route/explain", json={**SUM, "n": 99})).json()
    assert e["admission"]["verdict"] == "invalid"
