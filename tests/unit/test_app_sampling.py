"""Route-owned sampling and ladders through the HTTP app (scripted vLLM)."""

from __future__ import annotations

from typing import Any

import pytest

from routing.config import DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import A, Factory

pytestmark = pytest.mark.anyio

SUM = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 16}


def raw(lock: bool = False, honour: bool = False) -> dict[str, Any]:
    return {
        "default_route": "greedy",
        "backends": [
            {"name": "default", "model": "fake-model", "replicas": [A], "health_interval_s": 3600}
        ],
        "routes": [
            {
                "name": "greedy",
                "strategy": "single-pass",
                "backend": "default",
                "sampling": {"temperature": 0, "top_k": 1},
                "lock_sampling": lock,
            },
            {
                "name": "ladder",
                "strategy": "single-pass",
                "backend": "default",
                "sampling": {"temperature": 0},
                "escalate_to": [
                    {"samples": 2, "verifier": "arithmetic", "threshold": 0.5},
                    {"samples": 4, "sampling": {"temperature": 1.0, "seed": 3}},
                ],
            },
        ],
        "policy": {
            "default_class": "any",
            "client_sampling": "honour" if honour else "route",
            "classes": {"any": {"routes": ["greedy"]}},
        },
    }


async def post(gateway: Factory, cfg: dict[str, Any], body: dict[str, Any]) -> Any:
    client, registry = await gateway(DeliberateConfig.model_validate(cfg))
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r, registry


@pytest.mark.parametrize(
    ("model", "lock", "honour", "temperature"),
    [
        ("auto", False, False, 0),  # the client delegated: the route wins
        ("auto", False, True, 0.9),  # ... unless the policy honours the client
        ("greedy", False, False, 0.9),  # an explicit route: the client wins
        ("greedy", True, False, 0),  # ... unless the route locks its sampling
    ],
)
async def test_precedence_reaches_the_backend_body(
    gateway: Factory,
    fake: FakeVLLM,
    model: str,
    lock: bool,
    honour: bool,
    temperature: float,
) -> None:
    await post(gateway, raw(lock, honour), {**SUM, "model": model, "temperature": 0.9})
    sent = fake.completions_received()[-1]
    assert sent["temperature"] == temperature
    assert sent["top_k"] == 1  # set by the route only: applied either way


async def test_route_sampling_fills_what_the_client_leaves_unset(
    gateway: Factory, fake: FakeVLLM
) -> None:
    await post(gateway, raw(), {**SUM, "model": "greedy"})
    assert fake.completions_received()[-1]["temperature"] == 0


async def test_explain_shows_the_sampling_rule(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway(DeliberateConfig.model_validate(raw()))
    r = await client.post("/v1/route/explain", json={**SUM, "model": "auto", "temperature": 0.9})
    assert r.status_code == 200, r.text
    s = r.json()["sampling"]
    assert s["rule"] == "route-wins" and s["applied"] == {"temperature": 0.0, "top_k": 1}
    assert s["sources"] == {"temperature": "route", "top_k": "route"}
    r = await client.post("/v1/route/explain", json={**SUM, "model": "ladder"})
    assert [x["label"] for x in r.json()["ladder"]] == ["samples:2", "samples:4"]


@pytest.mark.parametrize(
    ("words", "calls", "stopped_at"),
    [(("2 + 2 = 4. The answer is 4",), 1, 0), (("The answer is 5",), 3, 2)],
)
async def test_ladder_through_the_app(
    gateway: Factory, fake: FakeVLLM, words: tuple[str, ...], calls: int, stopped_at: int
) -> None:
    fake.replica(A).words = words
    r, registry = await post(gateway, raw(), {**SUM, "model": "ladder"})
    body = r.json()
    sent = fake.completions_received()
    assert len(sent) == calls
    assert sent[0]["temperature"] == 0 and sent[0]["n"] == 1
    if calls > 1:
        assert (sent[1]["n"], sent[1]["temperature"]) == (2, 0.8)  # the rung's default
        assert (sent[2]["n"], sent[2]["temperature"], sent[2]["seed"]) == (4, 1.0, 3)
    d = body["deliberate"]
    assert d["ladder"]["stopped_at"] == stopped_at
    assert len(d["candidates"]) == d["samples"] == 1 + (6 if calls > 1 else 0)
    u = body["usage"]
    visible = u["completion_tokens"] - u["completion_tokens_details"]["reasoning_tokens"]
    assert visible == d["candidates"][d["chosen_index"]]["tokens"]
    outcome = "escalated" if calls > 1 else "kept"
    value = registry.get_sample_value(
        "deliberate_escalations_total",
        {"class": "explicit", "from_route": "ladder", "to_route": "samples:2", "outcome": outcome},
    )
    assert value == 1


async def test_reservation_covers_the_whole_ladder(gateway: Factory, fake: FakeVLLM) -> None:
    client, _ = await gateway(DeliberateConfig.model_validate(raw()))
    e = (await client.post("/v1/route/explain", json={**SUM, "model": "ladder"})).json()
    est = e["estimates"]
    # the first answer, then 2 and 4 more samples, each at most max_tokens=16; three calls
    assert est["generated_tokens_max"] == (1 + 2 + 4) * 16
    assert est["tokens_worst_case"] == 3 * est["prompt_tokens"] + 7 * 16
    assert est["parallel_sequences"] == 4
