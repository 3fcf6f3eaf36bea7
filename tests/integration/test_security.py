"""Security against a REAL gateway process over real sockets, with tenants configured.

The backend is the instant mock (bench/mock_openai.py) run as a process that records what the
gateway sends it and can hold completions (tests/recording_backend.py), so the checks here do
not load the real vLLM. Covered: the access policy (admin key, metrics on a private bind),
slow clients (headers and body trickled in: 408 and the connection closed, with metrics),
per-tenant concurrency (N+1 overlapping requests for a tenant limited to N), and, last, that
no output of the whole run — logs at debug, access log, /metrics, every response — contains
the known key, its SHA-256 or any 8-character prefix of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import free_port, gateway_process, http_process

KEY = "sk-sec-7f3a9c2e41b8d6f05e1a2b3c4d5e6f70"  # alice's key: the one that must never leak
ADMIN_KEY = "sk-ops-00112233445566778899aabbccddeeff"
BOB_KEY = "sk-bob-ffeeddccbbaa99887766554433221100"
SHA = hashlib.sha256(KEY.encode()).hexdigest()
ALICE = {"authorization": f"Bearer {KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
BOB = {"authorization": f"Bearer {BOB_KEY}"}
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 1.5
BOB_MAX, BOB_PER_DAY = 2, 100


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    """A small chat body (``max_tokens`` 8 keeps alice's reservations far under her budget)."""
    messages = [{"role": "user", "content": content}]
    return {"model": "single-pass", "messages": messages, "max_tokens": 8, **extra}


@dataclass
class Deployment:
    url: str
    metrics_url: str  # the DELIBERATE_METRICS_BIND listener
    backend: str
    log: Path
    record: Path
    transcript: list[str] = field(default_factory=list)  # every response seen, as text

    def keep(self, r: httpx.Response) -> httpx.Response:
        self.transcript.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.metrics_url + "/metrics", timeout=10).text
        self.transcript.append(text)
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
        for line in text.splitlines():
            if line.startswith(want + " ") or (not labels and line.startswith(name + " ")):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{want} not in /metrics")


@contextlib.contextmanager
def recording_backend(record: Path, log: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.recording_backend", "--port", str(port)]
    with http_process([*cmd, "--record", str(record)], port, log) as url:
        yield url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("security")
    record = work / "backend-requests.jsonl"
    with recording_backend(record, work / "backend.log") as backend:
        config = {
            "default_route": "single-pass",
            "backends": [{"name": "default", "model": "mock-model", "replicas": [backend]}],
            "routes": [{"name": "single-pass", "strategy": "single-pass", "backend": "default"}],
            "tenants": [
                {
                    "name": "alice",
                    "key_env": "SECURITY_TEST_KEY",
                    "tokens_per_minute": 500,
                    "requests_per_day": 40,
                },
                {
                    "name": "bob",
                    "key_sha256": hashlib.sha256(BOB_KEY.encode()).hexdigest(),
                    "max_concurrent_requests": BOB_MAX,
                    "requests_per_day": BOB_PER_DAY,
                },
                {
                    "name": "ops",
                    "key_sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
                    "admin": True,
                },
            ],
            "admission": {"scrape_interval_s": 3600},
        }
        path = work / "routes.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        metrics_bind = f"127.0.0.1:{free_port()}"
        env = {
            "SECURITY_TEST_KEY": KEY,
            "DELIBERATE_LOG_LEVEL": "debug",  # as much output as the gateway can produce
            "DELIBERATE_ACCESS_LOG": "true",
            "DELIBERATE_LOG_PROMPTS": "true",
            "DELIBERATE_METRICS_TENANT_LABELS": "true",
            "DELIBERATE_METRICS_BIND": metrics_bind,
            "DELIBERATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "DELIBERATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        }
        with gateway_process(path, work, env) as (url, _proc):
            port = url.rsplit(":", 1)[1]
            yield Deployment(
                url, f"http://{metrics_bind}", backend, work / f"gateway-{port}.log", record
            )


# --- access policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "admin_status"),
    [
        ("GET", "/metrics", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/docs", 404),  # not served (see gateway.app), and not even that is public
        ("POST", "/v1/route/explain", 200),
        ("GET", "/v1/policy/export", 200),
    ],
)
def test_admin_endpoints(deployment: Deployment, method: str, path: str, admin_status: int) -> None:
    url = deployment.url + path
    body = chat() if method == "POST" else None
    for headers, status, code in (
        ({}, 401, "invalid_api_key"),
        ({"authorization": f"Bearer {ADMIN_KEY[:-1]}"}, 401, "invalid_api_key"),
        (BOB, 403, "permission_denied"),
    ):
        r = deployment.keep(httpx.request(method, url, json=body, headers=headers, timeout=10))
        assert r.status_code == status, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.json()["error"]["code"] == code
        for detail in ("single-pass", "alice", "bob", "ops", "mock-model", deployment.backend):
            assert detail not in r.text  # no route, tenant, model or backend named
    r = deployment.keep(httpx.request(method, url, json=body, headers=ADMIN, timeout=10))
    assert r.status_code == admin_status, r.text


def test_metrics_bind_serves_prometheus_without_a_key(deployment: Deployment) -> None:
    text = httpx.get(deployment.metrics_url + "/metrics", timeout=10).text
    assert "deliberate_requests_total" in text and "deliberate_client_timeouts_total" in text


def test_probes_stay_open_and_ready_hides_its_detail(deployment: Deployment) -> None:
    assert httpx.get(deployment.url + "/health", timeout=10).status_code == 200
    r = deployment.keep(httpx.get(deployment.url + "/ready", timeout=10))
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    r = deployment.keep(httpx.get(deployment.url + "/ready", headers=ADMIN, timeout=10))
    assert deployment.backend in str(r.json()["backends"])


# --- slow clients ---------------------------------------------------------------------------


def read_until_closed(sock: socket.socket, trickle: list[bytes], every_s: float) -> bytes:
    """Send ``trickle`` one piece every ``every_s`` while reading; returns all the server sent
    once it closed the connection (fails if it stays open for 20 s)."""
    received = b""
    deadline = time.monotonic() + 20
    sock.settimeout(every_s)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if trickle:
                with contextlib.suppress(OSError):  # the server may have closed meanwhile
                    sock.sendall(trickle.pop(0))
            continue
        except ConnectionResetError:
            return received  # closed by the server, our last piece crossing its close
        if not chunk:
            return received  # closed by the server
        received += chunk
    raise AssertionError(f"the connection stayed open; received {received!r}")


def assert_408(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), raw
    assert b"connection: close" in head.lower(), raw
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_timeout"


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_slow_headers_get_408_and_the_connection_closed(deployment: Deployment) -> None:
    before = deployment.metric("deliberate_client_timeouts_total", phase="headers")
    with socket.create_connection(host_port(deployment.url)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        # a header line every 0.3 s would keep the request open for 12 s
        raw = read_until_closed(sock, [b"x-slow-%d: 1\r\n" % i for i in range(40)], 0.3)
    assert_408(raw)
    deployment.transcript.append(raw.decode())
    with socket.create_connection(host_port(deployment.url)) as sock:  # connects, sends nothing
        assert_408(read_until_closed(sock, [], 0.3))
    after = deployment.metric("deliberate_client_timeouts_total", phase="headers")
    assert after == before + 2


def test_an_idle_kept_alive_connection_is_not_a_slow_client(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.url, headers=ALICE, timeout=10) as client:
        assert deployment.keep(client.post("/v1/chat/completions", json=chat())).is_success
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle longer than the header deadline
        assert deployment.keep(client.post("/v1/chat/completions", json=chat())).is_success


def test_a_slow_body_gets_408_and_the_connection_closed(deployment: Deployment) -> None:
    before = deployment.metric("deliberate_client_timeouts_total", phase="body")
    body = json.dumps(chat()).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + KEY.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(host_port(deployment.url)) as sock:
        sock.sendall(head + body[:1])
        # one byte every 0.3 s would take len(body) * 0.3 s (well over the deadline)
        raw = read_until_closed(sock, [body[i : i + 1] for i in range(1, len(body))], 0.3)
    assert_408(raw)
    deployment.transcript.append(raw.decode())
    assert deployment.metric("deliberate_client_timeouts_total", phase="body") == before + 1
    # the gateway is fine: the next request is served
    r = httpx.post(deployment.url + "/v1/chat/completions", json=chat(), headers=ALICE)
    assert deployment.keep(r).status_code == 200


# --- per-tenant concurrency -----------------------------------------------------------------


def wait_held(deployment: Deployment, name: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while int(httpx.get(f"{deployment.backend}/_held/{name}", timeout=5).text) < count:
        assert time.monotonic() < deadline, f"{count} requests never reached the backend"
        time.sleep(0.05)


def test_one_request_over_the_tenant_limit_gets_429_and_is_not_charged(
    deployment: Deployment,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rejected_before = deployment.metric("deliberate_tenant_concurrency_rejections_total")
    held = chat("hold:bob-burst")
    with ThreadPoolExecutor(BOB_MAX) as pool:
        running = [
            pool.submit(httpx.post, deployment.url + "/v1/chat/completions", json=held, headers=BOB)
            for _ in range(BOB_MAX)
        ]
        wait_held(deployment, "bob-burst", BOB_MAX)  # both are at the backend, holding slots
        in_flight = deployment.metric("deliberate_tenant_requests_in_flight", tenant="bob")
        assert in_flight == BOB_MAX
        over = deployment.keep(
            httpx.post(deployment.url + "/v1/chat/completions", json=chat(), headers=BOB)
        )
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "tenant_concurrency_exceeded"
        assert "x-ratelimit-remaining-requests" not in over.headers  # nothing reserved
        # other tenants are not held back by bob's requests
        r = httpx.post(deployment.url + "/v1/chat/completions", json=chat(), headers=ADMIN)
        assert deployment.keep(r).status_code == 200
        httpx.post(f"{deployment.backend}/_release/bob-burst", timeout=5)
        assert [deployment.keep(f.result()).status_code for f in running] == [200] * BOB_MAX
    rejected = deployment.metric("deliberate_tenant_concurrency_rejections_total")
    assert rejected == rejected_before + 1
    assert deployment.metric("deliberate_tenant_requests_in_flight", tenant="bob") == 0
    # the slots came back, and the refused request was never counted against bob's budget
    r = deployment.keep(
        httpx.post(deployment.url + "/v1/chat/completions", json=chat(), headers=BOB)
    )
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining-requests"] == str(BOB_PER_DAY - BOB_MAX - 1)


# --- keys never leak (runs last: it reads everything the run produced) -------------------------


def requests_with_the_key(d: Deployment) -> None:
    """Good, bad, over-budget and malformed requests made with alice's key (or near it)."""
    url = d.url
    post = url + "/v1/chat/completions"
    with httpx.Client(timeout=30) as c:
        completion = {"model": "single-pass", "prompt": "hi", "max_tokens": 8}
        ok = [
            c.post(post, json=chat(), headers=ALICE),
            c.get(url + "/v1/models", headers=ALICE),
            c.post(post, json=chat(), headers={"authorization": f"bearer   {KEY}"}),
            # a bad request id is replaced, the request is served
            c.post(post, json=chat(), headers={**ALICE, "x-request-id": "bad id\twith tab"}),
        ]
        for r in ok:
            assert d.keep(r).status_code == 200, r.text
        # the mock has no /v1/completions: its 404, relayed, is one more error path
        r = d.keep(c.post(url + "/v1/completions", json=completion, headers=ALICE))
        assert r.status_code == 404
        with c.stream("POST", post, json=chat(stream=True), headers=ALICE) as s:
            d.transcript.append(f"{s.status_code} {dict(s.headers)} {s.read().decode()}")
            assert s.status_code == 200 and b"[DONE]" in s.content
        wrong_keys = [
            KEY[:-4] + "0000",  # shares all but the last 4 characters
            KEY[:12],  # a prefix
            KEY + "x",
            KEY.upper(),
            SHA,  # its hash, presented as a key
        ]
        for wrong in wrong_keys:
            r = d.keep(c.post(post, json=chat(), headers={"authorization": f"Bearer {wrong}"}))
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        for auth in (f"Basic {KEY}", f"Token {KEY}", KEY, f"Bearer{KEY}"):
            r = d.keep(c.post(post, json=chat(), headers={"authorization": auth}))
            assert r.status_code == 401, r.text
        malformed: list[dict[str, Any]] = [
            {"content": b"{not json"},
            {"content": b"\xff\xfe invalid utf-8"},
            {"json": []},
            {"json": {"model": "single-pass", "messages": "not a list"}},
            {"json": {"model": "single-pass", "messages": [{"role": "nobody", "content": "x"}]}},
            {"json": chat(n=10**9)},
            {"json": chat(max_tokens=-1)},
            {"json": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}},
        ]
        for kw in malformed:
            headers = {**ALICE, "content-type": "application/json"}
            r = d.keep(c.post(post, headers=headers, **kw))
            assert 400 <= r.status_code < 500, r.text
        # over the token budget (its worst case is capped by the budget, so: rate limited)
        too_big = d.keep(c.post(post, json=chat(max_tokens=1000), headers=ALICE))
        assert too_big.status_code == 429, too_big.text
        assert too_big.json()["error"]["code"] in ("request_too_large", "rate_limit_exceeded")
        for path in ("/metrics", "/openapi.json", "/v1/policy/export"):
            assert d.keep(c.get(url + path, headers=ALICE)).status_code == 403
        d.keep(c.get(url + "/v1/policy/export", headers=ADMIN))
        d.keep(c.get(url + "/metrics", headers=ADMIN))
        for _ in range(60):  # use up alice's requests of the day: a 429 with Retry-After
            r = d.keep(c.post(post, json=chat(), headers=ALICE))
            if r.status_code == 429:
                break
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in r.headers


def test_keys_and_their_hashes_never_reach_any_output(deployment: Deployment) -> None:
    requests_with_the_key(deployment)
    for url, headers in ((deployment.metrics_url, {}), (deployment.url, ADMIN)):
        text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
        assert 'tenant="alice"' in text  # tenant labels were on: the metrics saw alice
        deployment.transcript.append(text)
    time.sleep(0.2)  # let the last access-log lines reach the file
    outputs = {
        "gateway log (stdout + stderr, debug, access log)": deployment.log.read_text(
            errors="replace"
        ),
        "responses and /metrics": "\n".join(deployment.transcript),
        "what the backend received": deployment.record.read_text(),
    }
    assert "deliberate.access" in outputs[next(iter(outputs))]  # the access log was on
    assert '"tenant":"alice"' in outputs[next(iter(outputs))].replace(" ", "")
    secrets = {
        "the key": KEY,
        "its sha256": SHA,
        "its SHA256 (upper case)": SHA.upper(),
        "an 8-char prefix of the key": KEY[:8],
        "an 8-char prefix of its sha256": SHA[:8],
        "an 8-char prefix of its sha256 (upper case)": SHA[:8].upper(),
        "the key's unique part": KEY[7:15],
        "the admin key": ADMIN_KEY[:8],
    }
    for where, text in outputs.items():
        assert len(text) > 1000, where  # it really captured something
        for what, secret in secrets.items():
            assert secret not in text, f"{what} appears in {where}"
