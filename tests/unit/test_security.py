"""Security policy through the app (scripted vLLM): who may read what, constant-time key
checks, request-id hygiene, the body deadline and per-tenant concurrency. The same checks on
real sockets against a real gateway process are in tests/integration/test_security.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from budgets.tenants import TenantDirectory
from gateway.context import request_id_from
from gateway.metrics_server import split_bind
from gateway.settings import Settings
from routing.budget_config import TenantConfig
from routing.config import DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.test_app import CHAT, A, Factory, assert_openai_error, make_config

KEY, ADMIN_KEY = "sk-user-0123456789abcdef", "sk-admin-fedcba9876543210"
USER = {"authorization": f"Bearer {KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ADMIN_PATHS = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/v1/route/explain"),
    ("GET", "/v1/policy/export"),
]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def tenant_config(**user: Any) -> DeliberateConfig:
    data = make_config().model_dump(mode="json", exclude_unset=True)
    data["tenants"] = [
        {"name": "user-tenant", "key_sha256": sha(KEY), "requests_per_day": 100, **user},
        {"name": "ops-tenant", "key_sha256": sha(ADMIN_KEY), "admin": True},
    ]
    return DeliberateConfig.model_validate(data)


async def call(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    if method == "POST":
        kw.setdefault("json", CHAT)
    return await client.request(method, path, **kw)


def leaks_nothing(r: httpx.Response) -> None:
    """No tenant, route, backend or key in a refusal."""
    for secret in ("user-tenant", "ops-tenant", "single-pass", "default", KEY, sha(KEY)[:8]):
        assert secret not in r.text, (secret, r.text)


# --- access policy --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
async def test_admin_paths_need_the_admin_key(gateway: Factory, method: str, path: str) -> None:
    client, _ = await gateway(tenant_config())
    anonymous = await call(client, method, path)
    assert assert_openai_error(anonymous, 401)["code"] == "invalid_api_key"
    leaks_nothing(anonymous)
    wrong = await call(client, method, path, headers={"authorization": f"Bearer {KEY}x"})
    assert assert_openai_error(wrong, 401)["code"] == "invalid_api_key"
    user = await call(client, method, path, headers=USER)
    assert assert_openai_error(user, 403)["code"] == "permission_denied"
    leaks_nothing(user)
    admin = await call(client, method, path, headers=ADMIN)
    # /docs is not served at all (see gateway.app); admins learn only that
    assert admin.status_code == (404 if path == "/docs" else 200), admin.text


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
async def test_without_tenants_everything_stays_open(
    gateway: Factory, method: str, path: str
) -> None:
    client, _ = await gateway()
    r = await call(client, method, path)
    assert r.status_code == (404 if path == "/docs" else 200), r.text


@pytest.mark.anyio
async def test_models_need_a_key_and_probes_stay_open(gateway: Factory) -> None:
    client, _ = await gateway(tenant_config())
    r = await client.get("/v1/models")
    assert_openai_error(r, 401)
    leaks_nothing(r)
    assert (await client.get("/v1/models", headers=USER)).json()["data"]
    assert (await client.get("/health")).json() == {"status": "ok"}
    # /ready answers everyone (kubelet), with the replica detail for admins only
    for headers in ({}, USER):
        r = await client.get("/ready", headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert A.split("//")[1] not in r.text
    assert (await client.get("/ready", headers=ADMIN)).json()["backends"]["default"]["ready"]


@pytest.mark.anyio
async def test_admin_tenant_is_still_a_tenant(gateway: Factory) -> None:
    client, _ = await gateway(tenant_config())
    r = await client.post("/v1/chat/completions", json=CHAT, headers=ADMIN)
    assert r.status_code == 200, r.text


# --- constant-time key checks ---------------------------------------------------------------


@dataclasses.dataclass
class CountingCompare:
    """A ``Compare`` that records the length of both operands of every call."""

    calls: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((len(a), len(b)))
        return a == b


def directory() -> TenantDirectory:
    configs = [TenantConfig(name=f"t{i}", key_sha256=sha(f"sk-key-{i:04d}")) for i in range(5)]
    return TenantDirectory.build(configs, {})


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Bearer sk-key-0000", "t0"),  # the first configured key
        ("Bearer sk-key-0004", "t4"),  # the last
        ("Bearer sk-key-0005", None),  # wrong key sharing a long prefix with real ones
        ("Bearer sk-key-000", None),  # a prefix of a real key
        ("Bearer sk-key-00000", None),  # a real key plus one character
        ("Bearer " + "z" * 10_000, None),  # unknown and long
        ("Bearer x", None),  # unknown and short
        (None, None),  # no header
        ("", None),
        ("Bearer", None),  # malformed
        ("Basic sk-key-0000", None),  # a real key, the wrong scheme
    ],
)
def test_every_key_takes_the_same_path(authorization: str | None, expected: str | None) -> None:
    counting = CountingCompare()
    d = dataclasses.replace(directory(), compare=counting)
    found = d.authenticate(authorization)
    assert (found.name if found else None) == expected
    # every configured digest compared, always on two 32-byte digests: the work does not
    # depend on whether, which or how closely a key matched, nor on its length
    assert counting.calls == [(32, 32)] * 5


def test_the_empty_key_never_matches() -> None:
    d = TenantDirectory.build([TenantConfig(name="empty", key_sha256=sha(""))], {})
    assert d.authenticate(None) is None and d.authenticate("Bearer") is None


# --- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "ok\n",  # a trailing newline: `$` would have let it through
        "a\r\nset-cookie: x=1",
        "nul\x00byte",
        "tab\there",
        "ünïcode",
        '"quoted"',
        "<script>",
        "x" * 129,
        "{json}",
    ],
)
def test_bad_request_ids_are_replaced(header: str) -> None:
    rid = request_id_from(header)
    assert rid != header and len(rid) == 32 and rid.isalnum()


@pytest.mark.anyio
async def test_a_bad_request_id_is_neither_echoed_nor_logged(
    gateway: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = await gateway()
    bad = "evil<id>" + "x" * 20
    with caplog.at_level(logging.DEBUG):
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": bad})
    assert r.status_code == 200
    assert r.headers["x-request-id"] != bad and "evil" not in r.headers["x-request-id"]
    assert "evil" not in r.text and "evil" not in caplog.text
    assert r.headers["x-request-id"] in caplog.text  # the replacement is what gets logged


# --- slow bodies ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_body_that_trickles_in_gets_408(
    gateway: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIBERATE_BODY_TIMEOUT_S", "0.3")
    client, registry = await gateway()
    stop = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"model": "single-pass", '
        await stop.wait()  # never sends the rest
        yield b"}"

    r = await client.post("/v1/chat/completions", content=trickle())
    stop.set()
    err = assert_openai_error(r, 408)
    assert err["code"] == "request_timeout" and r.headers["connection"] == "close"
    labels = {"phase": "body"}
    assert registry.get_sample_value("deliberate_client_timeouts_total", labels) == 1
    # a body sent at once is unaffected
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# --- per-tenant concurrency -----------------------------------------------------------------


@pytest.mark.anyio
async def test_one_request_over_the_tenant_limit_gets_429_and_costs_nothing(
    gateway: Factory, fake: FakeVLLM
) -> None:
    gate = fake.replica(A).gate = asyncio.Event()
    client, registry = await gateway(tenant_config(max_concurrent_requests=2))
    running = [
        asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=USER))
        for _ in range(2)
    ]
    while len(fake.completions_received()) < 2:  # both are at the backend, holding a slot
        await asyncio.sleep(0.01)
    over = await client.post("/v1/chat/completions", json=CHAT, headers=USER)
    err = assert_openai_error(over, 429)
    assert err["code"] == "tenant_concurrency_exceeded" and over.headers["retry-after"] == "1"
    assert "x-ratelimit-remaining-requests" not in over.headers  # nothing was reserved
    leaks_nothing(over)
    # another tenant is not limited by this one's requests: it reaches the backend too
    running.append(
        asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=ADMIN))
    )
    while len(fake.completions_received()) < 3:
        await asyncio.sleep(0.01)
    gate.set()
    assert all(r.status_code == 200 for r in await asyncio.gather(*running))
    assert registry.get_sample_value("deliberate_tenant_concurrency_rejections_total") == 1
    # slots are released when requests end; the refused one was never charged: 2 ran before
    after = await client.post("/v1/chat/completions", json=CHAT, headers=USER)
    assert after.status_code == 200 and after.headers["x-ratelimit-remaining-requests"] == "97"


@pytest.mark.anyio
async def test_every_way_a_request_ends_gives_its_slot_back(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, registry = await gateway(tenant_config(max_concurrent_requests=1))
    post = "/v1/chat/completions"
    streamed = await client.post(post, json={**CHAT, "stream": True}, headers=USER)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert (await client.post(post, json={**CHAT, "n": "x"}, headers=USER)).status_code == 400
    assert (await client.post(post, content=b"{nope", headers=USER)).status_code == 400
    fake.replica(A).status = 500
    assert (await client.post(post, json=CHAT, headers=USER)).status_code >= 500
    fake.replica(A).status = 200
    # with a limit of 1, any slot left behind would refuse this one
    assert (await client.post(post, json=CHAT, headers=USER)).status_code == 200
    assert registry.get_sample_value("deliberate_tenant_concurrency_rejections_total") == 0


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464))],
)
def test_metrics_bind_forms(bind: str, expected: tuple[str, int]) -> None:
    assert Settings(metrics_bind=bind).metrics_bind == bind
    assert split_bind(bind) == expected


@pytest.mark.parametrize("bind", ["9464", ":9464", "host", "a b:1", "::1:9464"])
def test_metrics_bind_needs_host_and_port(bind: str) -> None:
    with pytest.raises(ValidationError, match="metrics_bind"):
        Settings(metrics_bind=bind)
