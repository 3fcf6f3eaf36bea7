"""Prefix affinity: the hash ring, the load bound and how a pool orders its replicas (pure)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from gateway.backends.affinity import HashRing, bound, messages_key, pick, prefix_key
from gateway.backends.pool import Pool
from routing.config import BackendPool, Balancing, DeliberateConfig
from tests.fakes import FakeVLLM
from tests.unit.conftest import Factory

pytestmark = pytest.mark.anyio

URLS = [f"http://r{i}:8000" for i in range(4)]


def make_pool(policy: str = "prefix-affinity", urls: list[str] = URLS, **kw: float) -> Pool:
    config = BackendPool(name="p", model="m", replicas=urls, balance=Balancing(policy=policy, **kw))
    return Pool(config, httpx.MockTransport(lambda r: httpx.Response(200)))


def test_ring_is_stable_and_spreads_keys() -> None:
    ring = HashRing(URLS)
    assert ring.walk("system: you are a tutor") == HashRing(URLS).walk("system: you are a tutor")
    assert sorted(ring.walk("x")) == [0, 1, 2, 3]  # every replica once
    firsts = Counter(ring.walk(f"prompt {i}")[0] for i in range(4000))
    assert all(700 < c < 1300 for c in firsts.values()), firsts  # about 1000 each


def test_adding_a_replica_moves_few_keys() -> None:
    before, after = HashRing(URLS), HashRing([*URLS, "http://r4:8000"])
    keys = [f"conversation {i}" for i in range(2000)]
    moved = sum(before.walk(k)[0] != after.walk(k)[0] for k in keys)
    assert moved < 2000 * 0.35  # ~1/5 expected; plain modulo hashing would move ~4/5


def test_the_bound_counts_the_new_request() -> None:
    assert bound([0, 0], 1.25) == 1
    assert bound([4, 0, 0, 0], 1.25) == 2
    assert pick([0, 1, 2, 3], {0: 4, 1: 0, 2: 0, 3: 0}, 1.25) == 1  # the hot one is full
    assert pick([2, 0], {0: 0, 2: 0}, 1.25) == 2
    assert pick([0], {0: 5}, 1.0) == 0  # a lone replica always fits its own bound


def test_keys_are_the_conversations_first_characters() -> None:
    system = {"role": "system", "content": "You are a careful tutor. " * 40}
    a = {"messages": [system, {"role": "user", "content": "What is 2+2?"}]}
    b = {"messages": [system, {"role": "user", "content": "Spell cat."}]}
    assert prefix_key(a, 256) == prefix_key(b, 256)  # the shared system prompt decides
    assert prefix_key(a, 5000) == prefix_key(b, 5000)  # the last message never counts
    lone = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
    assert prefix_key(lone, 256) == messages_key(lone["messages"], 256)
    assert prefix_key({"prompt": "abc"}, 2) == "ab"
    assert prefix_key({}, 10) is None
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert messages_key(parts, 64) == messages_key([{"role": "user", "content": "hi"}], 64)


def test_same_prefix_same_replica_until_it_is_full() -> None:
    pool = make_pool()
    key = "system\x1fYou are a careful tutor."
    home = pool.ordered(key)[0]
    assert all(pool.ordered(key)[0] is home for _ in range(10))
    home.in_flight = 3  # hot: 3 + 1 > ceil(1.5 * 4 / 4)
    assert pool.ordered(key)[0] is not home
    assert pool.ordered(key)[0].in_flight == 0


def test_without_a_key_or_affinity_the_least_loaded_goes_first() -> None:
    pool = make_pool()
    for i, r in enumerate(pool.replicas):
        r.in_flight = 3 - i
    assert pool.ordered(None)[0] is pool.replicas[3]
    assert make_pool("least-loaded").affinity_key({"messages": []}) is None
    assert make_pool(urls=URLS[:1]).affinity_key({"prompt": "x"}) is None  # one replica


def test_an_unhealthy_home_is_skipped() -> None:
    pool = make_pool()
    key = "conversation 7"
    home = pool.ordered(key)[0]
    home.healthy = False
    first = pool.ordered(key)[0]
    assert first is not home and first.healthy
    assert pool.ordered(key)[-1] is home


def test_round_robin_takes_turns_whatever_the_load() -> None:
    pool = make_pool("round-robin")
    pool.replicas[0].in_flight = 50
    firsts = Counter(pool.ordered("k")[0].url for _ in range(40))
    assert set(firsts.values()) == {10}


def test_a_lookup_takes_no_turn() -> None:
    """Each request's prompt check (/tokenize) must not skip the next replica's turn."""
    pool = make_pool("round-robin", urls=URLS[:2])
    firsts = []
    for _ in range(10):
        pool.ordered(turn=False)  # the request's /tokenize
        firsts.append(pool.ordered()[0].url)
    assert Counter(firsts) == {URLS[0]: 5, URLS[1]: 5}


def test_the_default_bound_lets_a_home_take_a_third_of_three() -> None:
    # Two replicas, 2 requests in flight, both on the home: at c = 1.5 it takes the third.
    assert pick([0, 1], {0: 2, 1: 0}, Balancing().load_factor) == 0
    assert pick([0, 1], {0: 2, 1: 0}, 1.25) == 1


# -- through the app: which replica each backend call of a request reached -----------------


def affinity_config() -> DeliberateConfig:
    return DeliberateConfig.model_validate(
        {
            "default_route": "single-pass",
            "backends": [
                {
                    "name": "default",
                    "model": "fake-model",
                    "replicas": URLS,
                    "health_interval_s": 3600,
                    "balance": {"policy": "prefix-affinity", "prefix_chars": 64},
                }
            ],
            "routes": [
                {"name": "single-pass", "strategy": "single-pass", "backend": "default"},
                {
                    "name": "ladder",
                    "strategy": "single-pass",
                    "backend": "default",
                    "escalate_to": [
                        {"samples": 2, "verifier": "arithmetic", "threshold": 0.9},
                        {"samples": 4, "verifier": "arithmetic", "threshold": 0.9},
                    ],
                },
            ],
        }
    )


def _hosts(fake: FakeVLLM) -> list[str]:
    return [
        f"{req.url.scheme}://{req.url.netloc.decode()}"
        for path, req, _ in fake.received
        if path == "/v1/chat/completions"
    ]


async def test_requests_sharing_a_system_prompt_share_a_replica(
    gateway: Factory, fake: FakeVLLM
) -> None:
    client, _ = await gateway(affinity_config())
    system = {"role": "system", "content": "You are the billing assistant of Example Corp."}
    for question in ("Why was I charged twice?", "Where is my invoice?", "Cancel my plan."):
        body = {"model": "single-pass", "messages": [system, {"role": "user", "content": question}]}
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
    assert len(set(_hosts(fake))) == 1


async def test_every_rung_of_a_ladder_stays_on_its_replica(
    gateway: Factory, fake: FakeVLLM
) -> None:
    for url in URLS:  # wrong sums: the check rejects every answer, so the ladder climbs
        fake.replica(url).words = ("2 + 2 = 5",)
    client, _ = await gateway(affinity_config())
    seen: set[str] = set()
    for i in range(6):
        before = len(_hosts(fake))
        body = {
            "model": "ladder",
            "messages": [{"role": "user", "content": f"Conversation {i}: what is 2 + 2?"}],
        }
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        calls = _hosts(fake)[before:]
        assert len(calls) == 3 and len(set(calls)) == 1, calls  # first + 2 rungs, one replica
        seen |= set(calls)
    assert len(seen) > 1  # different conversations spread over the pool
