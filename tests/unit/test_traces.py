"""Trace export for distillation: eligibility, redaction, records, the exporter, the file sink
(rotation) and ``deliberate traces stats``. Pure parts directly; the exporter on fake sinks."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from gateway.cli import app
from gateway.context import RequestContext
from gateway.trace_record import (
    SCHEMA,
    Redactor,
    TraceInput,
    Verification,
    build_record,
    encode,
    verification_of,
)
from gateway.trace_sinks import RedisStreamSink, RotatingJsonl, SinkError
from gateway.trace_stats import rotated_files, summarise
from gateway.traces import TraceExporter
from metrics.traces import TraceMetrics
from routing.config import DeliberateConfig
from routing.loader import ConfigError, parse_config
from routing.trace_config import DEFAULT_REDACTIONS, Redaction, TracesConfig
from strategies.base import Choice, StrategyResult
from strategies.ports import GenChoice
from strategies.usage import Usage

pytestmark = pytest.mark.anyio

EMAIL = "jane.doe+x@example.co.uk"
KEY = "sk-proj-AbCdEf0123456789xyzXYZ"


def ladder_result(score: float = 1.0, verified: bool = True) -> StrategyResult:
    """What the ladder returns for "What is 2 + 2?" after one climb (3 candidates)."""
    texts = ["2 + 2 = 5. Mail me at " + EMAIL, "2 + 2 = 4", "2 + 2 = 4. The answer is 4."]
    candidates = tuple(GenChoice(i, t, 7 + i, "stop") for i, t in enumerate(texts))
    info: dict[str, Any] = {
        "ladder": {
            "rungs": ["samples:2"],
            "start_rung": 0,
            "path": [
                {"rung": 0, "label": "first", "candidates": 1, "verifier": "arithmetic",
                 "best_score": 0.0, "passed": False},
                {"rung": 1, "label": "samples:2", "candidates": 2, "verifier": "arithmetic",
                 "best_score": score, "passed": verified},
            ],
            "stopped_at": 1,
            "verified": verified,
            "first_index": 0,
        },
        "verifier": "arithmetic",
        "answers": ["5", "4", "4"],
        "chosen_index": 2,
        "chosen_wave": 1,
        "candidates": [
            {"index": 0, "wave": 0, "tokens": 7, "answer": "5", "finish_reason": "stop",
             "chosen": False, "score": 0.0},
            {"index": 1, "wave": 1, "tokens": 8, "answer": "4", "finish_reason": "stop",
             "chosen": False, "score": score},
            {"index": 2, "wave": 1, "tokens": 9, "answer": "4", "finish_reason": "stop",
             "chosen": True, "score": score, "confidence": {"mean": 0.9}},
        ],
    }  # fmt: skip
    return StrategyResult(
        choices=(Choice(texts[2], "stop"),),
        usage=Usage(prompt=40, visible=9, hidden=15),
        stop_reason="verified",
        info=info,
        candidates=candidates,
    )


def trace_input(result: StrategyResult | None = None, **kw: Any) -> TraceInput:
    result = result or ladder_result()
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "ts": 1_780_000_000.25,
        "tenant": "acme",
        "route": "ladder",
        "served_route": "ladder",
        "strategy": "single-pass",
        "request_class": "arithmetic",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is 2 + 2? I am {EMAIL}, key {KEY}"},
        ],
        "result": result,
        "verification": verification_of(result.info) or Verification("none", 0.0),
        "min_score": 0.8,
    }
    return TraceInput(**{**fields, **kw})


DEFAULT = Redactor.of(DEFAULT_REDACTIONS)


# --- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"write to {EMAIL} today", "write to [email] today"),
        (f"my key is {KEY}", "my key is [key]"),
        ("Authorization: Bearer abc.DEF-123_456", "Authorization: Bearer [key]"),
        ("digest 3f786850e387550fdab836ed7e6dc881de23001b", "digest [secret]"),
        ("call +1 415 555 0100 or 4111-1111-1111-1111", "call [number] or [number]"),
        ("from 192.168.10.7", "from [ip]"),
        # what the arithmetic routes see stays as it is
        ("What is 36 + 47? 12 x 3 = 36, $1,200 - $300", "What is 36 + 47? 12 x 3 = 36, $1,200 - $300"),
        ("year 2026, order 12345678", "year 2026, order 12345678"),
    ],
)  # fmt: skip
def test_default_redactions(text: str, expected: str) -> None:
    assert DEFAULT(text)[0] == expected


def test_policy_rules_run_after_the_defaults_and_replacements_are_literal() -> None:
    cfg = TracesConfig(
        redact=[Redaction(name="ticket", pattern=r"TICKET-\d+", replacement=r"[t\1]")]
    )
    assert [r.name for r in cfg.rules()][-1] == "ticket"
    text, n = Redactor.of(cfg.rules())(f"TICKET-42 from {EMAIL}")
    assert (text, n) == ("[t\\1] from [email]", 2)
    only = TracesConfig(redact_defaults=False, redact=[Redaction(name="x", pattern="hunter2")])
    assert Redactor.of(only.rules())(f"hunter2 {EMAIL}") == (f"[redacted] {EMAIL}", 1)


POLICY = """
version: 1
default_route: ladder
backends: [{name: default, model: m, replicas: ["http://127.0.0.1:8000"]}]
routes:
  - name: ladder
    strategy: single-pass
    backend: default
    escalate_to: [{samples: 2, verifier: arithmetic, threshold: 0.5}]
    trace_export: {min_score: 0.8}
tenants:
  - {name: acme, key_sha256: "KEY_A"}
  - {name: other, key_sha256: "KEY_B"}
traces:
  tenants: [acme]
""".replace("KEY_A", "a" * 64).replace("KEY_B", "b" * 64)


def test_policy_knobs_parse_and_are_checked() -> None:
    cfg = parse_config(POLICY, "r.yaml")
    assert cfg.route("ladder").trace_export is not None
    assert cfg.traces.tenants == ["acme"] and cfg.traces.redact_defaults
    assert DeliberateConfig.model_fields["traces"].default.tenants == []  # nobody by default

    def errors(text: str) -> str:
        with pytest.raises(ConfigError) as e:
            parse_config(text, "r.yaml")
        return "\n".join(e.value.lines)

    assert "traces.tenants[0]" in errors(POLICY.replace("tenants: [acme]", "tenants: [nobody]"))
    assert "min_score" in errors(POLICY.replace("min_score: 0.8", "min_score: 1.5"))
    bad = POLICY + "  redact: [{name: r, pattern: '(unclosed'}]\n"
    assert "not a valid regex" in errors(bad)
    assert "empty string" in errors(POLICY + "  redact: [{name: r, pattern: 'a*'}]\n")


# --- eligibility and records ---------------------------------------------------------------


def test_verification_by_strategy() -> None:
    assert verification_of(ladder_result().info) == Verification("arithmetic", 1.0)
    assert verification_of(ladder_result(verified=False).info) is None
    best = {"verifier": "arithmetic", "scores": [0.2, 0.9], "chosen_index": 1}
    assert verification_of(best) == Verification("arithmetic", 0.9)
    refine = {"verifier": "logprob-judge", "scores": [0.4, None], "chosen_version": 0}
    assert verification_of(refine) == Verification("logprob-judge", 0.4)
    assert verification_of({**refine, "chosen_version": 1}) is None  # never scored
    prm = {"scorer": "prm", "chosen": {"score": 0.7}}
    assert verification_of(prm) == Verification("prm", 0.7)
    voting = {"selector": "majority", "answers": ["4", "4"], "chosen_index": 0}
    assert verification_of(voting) is None


def test_record_has_every_field_and_every_text_redacted() -> None:
    record = build_record(trace_input(), DEFAULT, candidate_texts=True)
    assert record["schema"] == SCHEMA and record["id"] == "req-1"
    assert record["ts"] == "2026-05-28T20:26:40.250+00:00"
    assert (record["tenant"], record["route"], record["class"]) == ("acme", "ladder", "arithmetic")
    assert record["messages"][1]["content"] == "What is 2 + 2? I am [email], key [key]"
    assert record["answer"] == {
        "text": "2 + 2 = 4. The answer is 4.",
        "answer": "4",
        "reasoning": None,
        "finish_reason": "stop",
    }
    assert record["verifier"] == {"name": "arithmetic", "score": 1.0, "min_score": 0.8}
    cands = record["candidates"]
    assert [c["score"] for c in cands] == [0.0, 1.0, 1.0]
    assert [c["chosen"] for c in cands] == [False, False, True]
    assert cands[0]["text"] == "2 + 2 = 5. Mail me at [email]"
    assert cands[2]["confidence"] == {"mean": 0.9} and cands[2]["wave"] == 1
    assert [s["rung"] for s in record["ladder"]["path"]] == [0, 1]
    assert record["tokens"] == {"prompt": 40, "visible": 9, "hidden": 15}
    assert record["redactions"] == 3
    line = encode(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert EMAIL.encode() not in line and KEY.encode() not in line
    lean = build_record(trace_input(), DEFAULT, candidate_texts=False)
    assert all("text" not in c for c in lean["candidates"])


def test_record_of_best_of_n_builds_candidates_from_scores() -> None:
    result = StrategyResult(
        choices=(Choice("4", "stop"),),
        usage=Usage(10, 1, 2),
        stop_reason="completed",
        info={"verifier": "arithmetic", "answers": ["4", "5"], "scores": [1.0, 0.0],
              "chosen_index": 0, "confidence": [0.8, 0.3]},
        candidates=(GenChoice(0, "4", 1, "stop"), GenChoice(1, "5", 1, "stop")),
    )  # fmt: skip
    record = build_record(trace_input(result), DEFAULT, True)
    assert [(c["answer"], c["score"], c["confidence"], c["chosen"]) for c in record["candidates"]] == [
        ("4", 1.0, 0.8, True),
        ("5", 0.0, 0.3, False),
    ]  # fmt: skip
    assert record["ladder"] is None


# --- the exporter ----------------------------------------------------------------------------


class ListSink:
    name = "file"

    def __init__(self, fail: bool = False) -> None:
        self.lines: list[bytes] = []
        self.fail = fail
        self.closed = False

    async def write(self, lines: Sequence[bytes]) -> None:
        if self.fail:
            raise SinkError("disk full")
        self.lines += lines

    async def aclose(self) -> None:
        self.closed = True


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def ctx_for(tenant: str | None) -> RequestContext:
    ctx = RequestContext("req-9")
    ctx.tenant = tenant
    return ctx


async def offer_all(
    sink: ListSink, offers: list[tuple[str | None, StrategyResult]], queue_size: int = 16
) -> CollectorRegistry:
    registry = CollectorRegistry()
    cfg = parse_config(POLICY, "r.yaml")
    route = cfg.route("ladder")
    exporter = TraceExporter(sink, TraceMetrics(registry), queue_size, clock=lambda: 0.0)
    exporter.start(cfg)
    for tenant, result in offers:
        exporter.offer(
            route, route, result, [{"role": "user", "content": "2+2?"}], ctx_for(tenant), cfg
        )
    await exporter.aclose()
    assert sink.closed
    return registry


async def test_only_opted_in_tenants_and_answers_at_the_threshold_are_exported() -> None:
    sink = ListSink()
    registry = await offer_all(
        sink,
        [
            ("acme", ladder_result(1.0)),
            ("acme", ladder_result(0.8)),  # at the threshold: exported
            ("acme", ladder_result(0.79)),  # below
            ("acme", ladder_result(1.0, verified=False)),  # the ladder's check failed
            ("other", ladder_result(1.0)),  # not opted in
            (None, ladder_result(1.0)),  # anonymous: not on the list either
        ],
    )
    scores = [orjson.loads(line)["verifier"]["score"] for line in sink.lines]
    assert scores == [1.0, 0.8]
    count = "deliberate_trace_records_total"
    assert sample(registry, count, route="ladder", outcome="exported") == 2
    assert sample(registry, count, route="ladder", outcome="not_verified") == 2
    assert sample(registry, count, route="ladder", outcome="tenant_not_opted_in") == 2


async def test_export_failures_are_counted_never_raised() -> None:
    failures = "deliberate_trace_export_failures_total"
    registry = await offer_all(ListSink(fail=True), [("acme", ladder_result())] * 3)
    assert sample(registry, failures, sink="file", reason="sink_error") == 3
    # a queue that is full drops the newest record (the worker has not run yet)
    sink = ListSink()
    registry = await offer_all(sink, [("acme", ladder_result())] * 3, queue_size=2)
    assert len(sink.lines) == 2
    assert sample(registry, failures, sink="file", reason="queue_full") == 1
    # a result the record cannot be built from
    broken = StrategyResult(
        choices=(), usage=Usage(), stop_reason="verified", info=ladder_result().info
    )
    registry = await offer_all(ListSink(), [("acme", broken)])
    assert sample(registry, failures, sink="file", reason="build_error") == 1


# --- the rotating file -----------------------------------------------------------------------


def test_rotation_keeps_k_files_of_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "t" / "traces.jsonl"
    out = RotatingJsonl(path, max_bytes=200, backups=3)
    lines = [encode({"n": i, "pad": "x" * 40}) for i in range(40)]  # ~60 bytes each
    for i in range(0, 40, 4):
        out.write_lines(lines[i : i + 4])
    out.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2", "traces.jsonl.3"]
    kept: list[int] = []
    for p in [*rotated_files(path), path]:  # oldest first
        assert p.stat().st_size <= 200
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        kept += [orjson.loads(line)["n"] for line in p.read_bytes().splitlines()]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 9  # newest, in order
    # a line longer than max_bytes gets a file of its own
    out.write_lines([encode({"big": "y" * 500})])
    out.close()
    assert path.read_bytes().count(b"\n") == 1


def test_a_line_cut_by_a_crash_is_closed_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    record = {"messages": [], "answer": {"text": "4"}}
    path.write_bytes(encode(record) + b'{"messages": [], "cut')
    out = RotatingJsonl(path, max_bytes=10_000, backups=1)
    out.write_lines([encode(record)])
    out.close()
    assert path.read_bytes().splitlines()[-1] == encode(record).rstrip()
    summary = summarise([path])
    assert summary.total.records == 2 and summary.bad_lines == 1
    assert summary.first_bad is not None
    assert summary.first_bad.endswith(":2: not JSON")


# --- deliberate traces stats -----------------------------------------------------------------


def write_records(path: Path, records: list[dict[str, Any]], junk: bytes = b"") -> None:
    path.write_bytes(b"".join(encode(r) for r in records) + junk)


def test_stats_counts_per_class_across_rotated_files(tmp_path: Path) -> None:
    base = build_record(trace_input(), DEFAULT, True)
    other = {
        **base,
        "class": "lookup",
        "candidates": [],
        "tokens": {"prompt": 5, "visible": 1, "hidden": 0},
    }
    path = tmp_path / "traces.jsonl"
    write_records(path, [base, base], junk=b"not json\n[1, 2]\n")
    write_records(tmp_path / "traces.jsonl.1", [other])
    write_records(
        tmp_path / "traces.jsonl.2", [{**base, "verifier": {"score": 0.5, "min_score": 0.8}}]
    )
    summary = summarise([*rotated_files(path), path])
    arith, lookup = summary.classes["arithmetic"], summary.classes["lookup"]
    assert (arith.records, arith.verified, arith.candidates, arith.verified_candidates) == (
        3,
        2,
        9,
        6,
    )
    assert (arith.prompt, arith.visible, arith.hidden) == (120, 27, 45)
    assert (lookup.records, lookup.prompt) == (1, 5)
    assert summary.total.records == 4 and summary.bad_lines == 2

    result = CliRunner().invoke(app, ["traces", "stats", str(path)])
    assert result.exit_code == 0, result.output
    assert "arithmetic" in result.output and "lookup" in result.output
    assert "75.0%" in result.output  # arithmetic: 2 of 3 answers at their min_score
    assert "skipped 2 line(s)" in result.output and "not JSON" in result.output
    only = CliRunner().invoke(app, ["traces", "stats", "--no-rotated", str(path)])
    assert "lookup" not in only.output and "100.0%" in only.output


@pytest.mark.parametrize("what", ["missing", "directory", "empty", "unreadable"])
def test_stats_refuses_bad_input_with_a_message(tmp_path: Path, what: str) -> None:
    path = tmp_path / "traces.jsonl"
    if what == "directory":
        path.mkdir()
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "unreadable":
        path.write_bytes(b"{}\n")
        path.chmod(0)
    result = CliRunner().invoke(app, ["traces", "stats", str(path)])
    if what == "unreadable" and os.geteuid() == 0:  # root reads anything
        assert result.exit_code == 0 and "not trace records" in result.output
        return
    assert result.exception is None or isinstance(result.exception, SystemExit)
    expected = {
        "missing": (2, "no such file"),
        "directory": (2, "is a directory"),
        "empty": (0, "no trace records"),
        "unreadable": (2, "cannot read"),
    }[what]
    assert (result.exit_code, expected[1] in result.output) == (expected[0], True), result.output


async def test_exporter_worker_batches_without_blocking_offer() -> None:
    """``offer`` returns before anything is written: the sink runs on the worker."""
    written = asyncio.Event()

    class SlowSink(ListSink):
        async def write(self, lines: Sequence[bytes]) -> None:
            await asyncio.sleep(0.05)
            await super().write(lines)
            written.set()

    sink = SlowSink()
    cfg = parse_config(POLICY, "r.yaml")
    exporter = TraceExporter(sink, TraceMetrics(CollectorRegistry()), 64)
    exporter.start(cfg)
    route = cfg.route("ladder")
    for _ in range(5):
        exporter.offer(route, route, ladder_result(), [], ctx_for("acme"), cfg)
    assert sink.lines == []  # nothing written on the request path
    await asyncio.wait_for(written.wait(), 5)
    await exporter.aclose()
    assert len(sink.lines) == 5


async def test_a_redis_sink_without_redis_raises_sink_error() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = RedisStreamSink.from_url(f"redis://127.0.0.1:{port}/0", "traces", 10)
    with pytest.raises(SinkError, match="redis stream 'traces'"):
        await sink.write([encode({"messages": [], "answer": {}})])
    await sink.aclose()
