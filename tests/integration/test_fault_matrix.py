"""Backend faults against a real gateway process: every fault × route kind × stream or not.

The backends are ``tests.faulty_backend`` servers on real sockets (the faults are wire-level:
resets, silence, a byte every five seconds); the gateway is ``python -m gateway serve``. No
vLLM is involved, so these run without the real backend.

Each case: the client gets an OpenAI-shaped error (a stream that already started: an SSE
``error`` event, then ``data: [DONE]``) within the route's deadline — the trickle resets
every read timeout, so only the deadline can end it — and then, with the fault switched
off, the gateway is healthy and the next request succeeds. With a second, healthy replica,
the failing one is ejected and the traffic moves over entirely.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from tests.faulty_backend import ANSWER, Fault, FaultyBackend
from tests.integration.conftest import free_port, running_gateway

DEADLINE_S = 1.5
"""Deadline of the matrix routes; read_s is 10 s and the trickle 5 s, so only it ends a hang."""
READ_S = 10.0
TRICKLE_S = 5.0
EJECT_AFTER = 2
FAULTS = [f for f in Fault if f is not Fault.NONE]
PAIR_FAULTS = FAULTS
"""Two-replica pools (one per fault, each its own faulty replica beside a shared healthy one)."""


@dataclass(frozen=True)
class Expect:
    status: int
    """What a non-streaming request gets (and a stream whose backend never sent headers)."""
    before_headers: bool
    """The fault strikes before the backend's response headers: a single-pass stream has not
    started, so it too gets a plain HTTP error."""
    stream_code: str | None = None
    """The SSE error's code when a single-pass stream had started."""


EXPECT = {
    Fault.DROP_MID_STREAM: Expect(502, False, "backend_stream_error"),
    Fault.STATUS_500: Expect(502, True),
    Fault.INVALID_JSON: Expect(502, False, "backend_stream_error"),
    Fault.TRUNCATED: Expect(502, False, "backend_stream_error"),
    Fault.HANG_AFTER_HEADERS: Expect(504, False, "deadline_exceeded"),
    Fault.HANG_BEFORE_HEADERS: Expect(504, True),
    Fault.REFUSE: Expect(503, True),
    Fault.TRICKLE: Expect(504, False, "deadline_exceeded"),
    Fault.HEALTH_OK_COMPLETIONS_FAIL: Expect(503, True),
}


@dataclass
class Rig:
    url: str
    solo: FaultyBackend
    pairs: dict[Fault, FaultyBackend]
    healthy: FaultyBackend
    hang: FaultyBackend
    dead_url: str


def pool(name: str, model: str, replicas: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "replicas": replicas,
        "health_interval_s": 0.5,
        **extra,
    }


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    backends: list[FaultyBackend] = []

    def backend(model: str, **kwargs: Any) -> FaultyBackend:
        b = FaultyBackend(model=model, **kwargs).start()
        backends.append(b)
        return b

    solo = backend("solo-model", trickle_s=TRICKLE_S)
    healthy = backend("pair-model")
    pairs = {f: backend("pair-model", trickle_s=TRICKLE_S) for f in PAIR_FAULTS}
    hang = backend("pair-model")
    hang.fault = Fault.HANG_BEFORE_HEADERS
    dead_url = f"http://127.0.0.1:{free_port()}"
    matrix_outlier = {"consecutive_failures": EJECT_AFTER, "base_ejection_s": 1.0}
    pair_outlier = {"consecutive_failures": EJECT_AFTER, "base_ejection_s": 60.0}
    pair_timeouts = {"connect_s": 1.0, "read_s": 1.0}
    config = {
        "version": 1,
        "default_route": "single",
        "backends": [
            pool(
                "solo",
                "solo-model",
                [solo.url],
                timeouts={"connect_s": 1.0, "read_s": READ_S},
                outlier=matrix_outlier,
            ),
            *(
                pool(
                    f"pair-{f.value}",
                    "pair-model",
                    [b.url, healthy.url],
                    timeouts=pair_timeouts,
                    outlier=pair_outlier,
                )
                for f, b in pairs.items()
            ),
            pool(
                "dead-refuse",
                "pair-model",
                [dead_url, healthy.url],
                timeouts=pair_timeouts,
                outlier=pair_outlier,
            ),
            pool(
                "dead-hang",
                "pair-model",
                [hang.url, healthy.url],
                timeouts=pair_timeouts,
                outlier=pair_outlier,
            ),
        ],
        "routes": [
            {
                "name": "single",
                "strategy": "single-pass",
                "backend": "solo",
                "budget": {"deadline_s": DEADLINE_S},
            },
            {
                "name": "multi",
                "strategy": "adaptive-consistency",
                "backend": "solo",
                "params": {"waves": [2, 2]},
                "stream_progress": True,
                "budget": {"deadline_s": DEADLINE_S},
            },
            *(
                {
                    "name": f"pair-{f.value}",
                    "strategy": "single-pass",
                    "backend": f"pair-{f.value}",
                    "budget": {"deadline_s": 5.0},
                }
                for f in PAIR_FAULTS
            ),
            *(
                {
                    "name": name,
                    "strategy": "single-pass",
                    "backend": name,
                    "budget": {"deadline_s": 5.0},
                }
                for name in ("dead-refuse", "dead-hang")
            ),
        ],
    }
    path = tmp_path_factory.mktemp("faults") / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        with running_gateway(path, tmp_path_factory.mktemp("faults-log")) as url:
            yield Rig(url, solo, pairs, healthy, hang, dead_url)
    finally:
        for b in backends:
            b.stop()


def chat(route: str, stream: bool) -> dict[str, Any]:
    return {
        "model": route,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 16,
        "stream": stream,
    }


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n"), text[-200:]
    return [e.removeprefix("data: ") for e in text.strip().split("\n\n")]


def assert_openai_error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    return dict(err)


def post(url: str, route: str, stream: bool) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json=chat(route, stream), timeout=30)
    return r, time.monotonic() - start


def assert_success(r: httpx.Response, stream: bool) -> None:
    assert r.status_code == 200, r.text
    if not stream:
        assert r.json()["choices"][0]["message"]["content"] == ANSWER
        return
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert text == ANSWER


def assert_fault_answer(
    r: httpx.Response, fault: Fault, route: str, stream: bool
) -> dict[str, Any]:
    """The client-visible result of a fault: an HTTP error, or an SSE error then [DONE]."""
    expect = EXPECT[fault]
    sse_error = stream and (route == "multi" or not expect.before_headers)
    if not sse_error:
        assert r.status_code == expect.status, r.text
        assert r.headers["content-type"].startswith("application/json")
        return assert_openai_error(r.json())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]", events[-3:]
    err = assert_openai_error(json.loads(events[-2]))
    assert not [e for e in events[:-2] if '"error"' in e]  # one error event, at the end
    if route == "single":
        assert err["code"] == expect.stream_code
    return err


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("route", ["single", "multi"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.value for f in FAULTS])
def test_fault_gives_a_clean_error_then_the_next_request_succeeds(
    rig: Rig, fault: Fault, route: str, stream: bool
) -> None:
    rig.solo.fault = fault
    try:
        r, elapsed = post(rig.url, route, stream)
    finally:
        rig.solo.fault = Fault.NONE
    assert_fault_answer(r, fault, route, stream)
    # Within the deadline (plus process scheduling slack): never the 10 s read timeout, and a
    # trickle (a byte every 5 s) ends before its second byte.
    assert elapsed < DEADLINE_S + 2.0, f"{fault} took {elapsed:.1f}s"
    assert httpx.get(rig.url + "/health", timeout=5).status_code == 200
    r, _ = post(rig.url, route, stream)
    assert_success(r, stream)


def metric(url: str, name: str, labels: dict[str, str]) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def out_of_rotation(url: str, labels: dict[str, str], fault: Fault) -> bool:
    """Ejected, or (a refused connection) marked down by the failed call and the probe:
    a replica nothing listens on is tried last, so it never fails calls in a row."""
    if fault is Fault.REFUSE:
        ready = httpx.get(url + "/ready", timeout=10).json()  # probes every replica now
        return ready["backends"][labels["pool"]]["replicas"][labels["replica"]] is False
    return metric(url, "deliberate_backend_ejected", labels) == 1.0


@pytest.mark.parametrize("fault", PAIR_FAULTS, ids=[f.value for f in PAIR_FAULTS])
def test_failing_replica_is_ejected_and_traffic_moves_over(rig: Rig, fault: Fault) -> None:
    bad, route = rig.pairs[fault], f"pair-{fault.value}"
    labels = {"pool": route, "replica": bad.url}
    assert metric(rig.url, "deliberate_backend_ejected", labels) == 0.0
    bad.fault = fault
    try:
        failed = 0
        # Requests alternate between the two replicas. A replica whose connection fails is
        # also marked down (tried last) until the next probe, 0.5 s later, so give it time.
        give_up = time.monotonic() + 10.0
        while time.monotonic() < give_up:
            r, _ = post(rig.url, route, stream=False)
            if r.status_code != 200:
                failed += 1
                assert_openai_error(r.json())
            if out_of_rotation(rig.url, labels, fault):
                break
            time.sleep(0.05)
        assert out_of_rotation(rig.url, labels, fault)
        ejections = metric(rig.url, "deliberate_backend_ejections_total", labels)
        assert ejections == (0.0 if fault is Fault.REFUSE else 1.0)
        # faults before the headers were retried on the healthy replica; the others reached
        # the client, one per call of the run that ejected the replica
        assert failed == (0 if EXPECT[fault].before_headers else EJECT_AFTER)
        hits = bad.hits["/v1/chat/completions"]
        for stream in (False, True) * 5:
            r, _ = post(rig.url, route, stream)
            assert_success(r, stream)
        assert bad.hits["/v1/chat/completions"] == hits  # no traffic at all meanwhile
    finally:
        bad.fault = Fault.NONE


@pytest.mark.parametrize("pool_name", ["dead-refuse", "dead-hang"])
def test_two_replicas_one_dead_every_request_succeeds(rig: Rig, pool_name: str) -> None:
    for i in range(50):
        stream = i % 2 == 1
        r, _ = post(rig.url, pool_name, stream)
        assert_success(r, stream)
    if pool_name == "dead-refuse":
        labels = {"pool": pool_name, "replica": rig.dead_url}
        assert out_of_rotation(rig.url, labels, Fault.REFUSE)
    else:
        labels = {"pool": pool_name, "replica": rig.hang.url}
        assert out_of_rotation(rig.url, labels, Fault.HANG_BEFORE_HEADERS)
        # only the calls that ejected it reached it (each retried on the healthy replica)
        assert rig.hang.hits["/v1/chat/completions"] == EJECT_AFTER


def test_ejection_metrics_exist_for_every_replica(rig: Rig) -> None:
    healthy = {"pool": "dead-refuse", "replica": rig.healthy.url}
    assert metric(rig.url, "deliberate_backend_ejected", healthy) == 0.0
    assert metric(rig.url, "deliberate_backend_ejections_total", healthy) == 0.0
