"""Every test-time-compute strategy through the gateway, on the REAL SmolLM2 backend.

Token accounting is checked against vLLM's own counters: what the gateway reports as prompt
and completion tokens must equal what the backend processed and generated for the request.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

ADD = [{"role": "user", "content": "What is 23 + 48? Reply with the number."}]


def vllm_metrics(backend_url: str) -> dict[str, float]:
    """vLLM's counters summed over label sets, by metric name."""
    out: dict[str, float] = {}
    for line in httpx.get(backend_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def create(client: openai.OpenAI, **kw: Any) -> dict[str, Any]:
    """A chat completion as the raw JSON dict (the `deliberate` object included)."""
    raw = client.chat.completions.with_raw_response.create(**kw)
    body: dict[str, Any] = raw.http_response.json()
    body["_headers"] = dict(raw.headers)
    return body


def assert_usage_matches_backend(
    body: dict[str, Any], before: dict[str, float], after: dict[str, float]
) -> None:
    usage = body["usage"]
    ext = body["deliberate"]["tokens"]
    assert usage["completion_tokens"] == ext["visible"] + ext["hidden"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == ext["hidden"]
    assert usage["prompt_tokens"] == ext["prompt"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == delta(before, after, "vllm:generation_tokens_total")
    # vLLM counts a prompt once per sequence (n copies for an n-sample request); we count what
    # was sent, once per call. Voting strategies send the same prompt on every call.
    ext_all = body["deliberate"]
    calls, samples = ext_all["backend_calls"], ext_all.get("samples", ext_all["backend_calls"])
    per_sequence = usage["prompt_tokens"] / calls * samples
    assert per_sequence == delta(before, after, "vllm:prompt_tokens_total")


def test_best_of_n_one_backend_request_and_exact_usage(
    client: openai.OpenAI, backend_url: str
) -> None:
    before = vllm_metrics(backend_url)
    body = create(client, model="best-of-n", messages=ADD, max_tokens=24)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert body["_headers"]["x-deliberate-strategy"] == "best-of-n"
    assert ext["samples"] == 8 and ext["backend_calls"] == 1
    assert ext["selector"] in ("weighted", "majority")
    assert body["choices"][0]["message"]["content"]
    # ONE backend request with n=8 (vLLM's own histogram of n).
    assert delta(before, after, "vllm:request_params_n_count") == 1
    assert delta(before, after, "vllm:request_params_n_sum") == 8
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert_usage_matches_backend(body, before, after)


def test_best_of_n_shares_the_prompt_prefix(client: openai.OpenAI, backend_url: str) -> None:
    facts = " ".join(f"Item {i} costs {i * 3} dollars." for i in range(60))
    msgs = [{"role": "user", "content": facts + " What does item 7 cost?"}]
    before = vllm_metrics(backend_url)
    body = create(client, model="best-of-n", messages=msgs, max_tokens=8)
    after = vllm_metrics(backend_url)
    prompt = body["usage"]["prompt_tokens"]
    assert prompt >= 300
    cached = (prompt // 128) * 128  # CPU blocks are 128 tokens; a partial block is not cached
    hits = delta(before, after, "vllm:prefix_cache_hits_total")
    assert hits >= (8 - 1) * cached, f"prefix hits {hits} for n=8 and a {prompt}-token prompt"


def test_self_consistency_votes(client: openai.OpenAI, backend_url: str) -> None:
    before = vllm_metrics(backend_url)
    body = create(client, model="self-consistency", messages=ADD, max_tokens=24)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert ext["selector"] == "majority" and ext["samples"] == 8
    assert len(ext["answers"]) == 8
    if not ext["no_answer"]:
        assert sum(ext["votes"].values()) == sum(a is not None for a in ext["answers"])
    assert_usage_matches_backend(body, before, after)


def test_adaptive_consistency_reports_samples_and_reason(
    client: openai.OpenAI, backend_url: str
) -> None:
    before = vllm_metrics(backend_url)
    body = create(client, model="adaptive-consistency", messages=ADD, max_tokens=24)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert ext["stop_reason"] in ("converged", "max_steps")
    assert ext["samples"] in (4, 8, 16)  # cumulative wave sizes; 2 can never reach 0.95
    assert ext["backend_calls"] == len(ext["confidence"])
    assert delta(before, after, "vllm:request_params_n_count") == ext["backend_calls"]
    assert_usage_matches_backend(body, before, after)


def test_bounded_reasoning_hidden_thinking(client: openai.OpenAI, backend_url: str) -> None:
    before = vllm_metrics(backend_url)
    body = create(
        client, model="bounded-reasoning", messages=ADD, max_tokens=32, reasoning_effort="low"
    )
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    msg = body["choices"][0]["message"]
    assert ext["thinking_budget"] == 64 and ext["backend_calls"] == 2
    assert 0 < ext["thinking_tokens"] <= 64
    assert msg["reasoning"] and msg["reasoning_content"] == msg["reasoning"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == ext["thinking_tokens"]
    assert_usage_matches_backend(body, before, after)


def test_budget_cut_samples_fewer(client: openai.OpenAI, backend_url: str) -> None:
    before = vllm_metrics(backend_url)
    body = create(client, model="best-of-n", messages=ADD, max_tokens=20, max_completion_tokens=45)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert ext["samples"] == 2 and ext["stop_reason"] == "budget"
    assert body["usage"]["completion_tokens"] <= 45
    assert_usage_matches_backend(body, before, after)


def test_streaming_a_multi_candidate_route(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="self-consistency",
            messages=ADD,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_progress_notes_then_answer(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="adaptive-consistency", messages=ADD, max_tokens=16, stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    notes = [getattr(d, "reasoning", None) for d in deltas]
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    progress = [n for n in notes[:first_content] if n and "leader confidence" in n]
    assert progress, "no progress note before the answer"
    assert "".join(d.content or "" for d in deltas)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ],
)
def test_refusals_name_parameter_and_route(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="self-consistency", messages=ADD, **extra)
    assert e.value.body["param"] == param  # type: ignore[index]
    assert "self-consistency" in str(e.value)


def test_hidden_tokens_in_metrics(client: openai.OpenAI, gateway_url: str) -> None:
    create(client, model="best-of-n", messages=ADD, max_tokens=8)
    text = httpx.get(gateway_url + "/metrics", timeout=10).text
    hidden = [
        line
        for line in text.splitlines()
        if line.startswith('deliberate_tokens_total{kind="hidden",route="best-of-n"}')
    ]
    assert hidden and float(hidden[0].split()[-1]) > 0


def test_refine_returns_best_version(client: openai.OpenAI, backend_url: str) -> None:
    before = vllm_metrics(backend_url)
    body = create(client, model="refine", messages=ADD, max_tokens=48)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert body["_headers"]["x-deliberate-strategy"] == "refine"
    assert ext["stop_reason"] in ("converged", "max_steps", "budget")
    scores = ext["scores"]
    assert scores[ext["chosen_version"]] == max(scores)  # the best, not blindly the last
    assert body["usage"]["completion_tokens"] == delta(
        before, after, "vllm:generation_tokens_total"
    )
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0  # critiques


def test_prm_search_expands_with_n_and_shares_prefix(
    client: openai.OpenAI, backend_url: str
) -> None:
    facts = " ".join(f"Box {i} holds {i + 2} marbles." for i in range(50))
    msgs = [
        {"role": "user", "content": facts + " How many marbles are in box 3 and box 4 together?"}
    ]
    before = vllm_metrics(backend_url)
    body = create(client, model="prm-search", messages=msgs, max_tokens=48)
    after = vllm_metrics(backend_url)
    ext = body["deliberate"]
    assert body["choices"][0]["message"]["content"]
    assert ext["steps"] >= 1 and ext["backend_calls"] >= 1
    # Every expansion is ONE request with n=branch_factor (4): vLLM's own n histogram.
    expansions = delta(before, after, "vllm:request_params_n_count")
    assert expansions >= 1
    assert (
        delta(before, after, "vllm:request_params_n_sum") >= 4 * expansions - 3
    )  # greedy finish is n=1
    prompt = body["usage"]["prompt_tokens"] / max(1, ext["backend_calls"])
    assert prompt >= 300
    assert delta(before, after, "vllm:prefix_cache_hits_total") > 0
    usage = body["usage"]
    assert usage["completion_tokens"] == delta(before, after, "vllm:generation_tokens_total")
    assert (
        usage["completion_tokens"]
        == body["deliberate"]["tokens"]["visible"] + body["deliberate"]["tokens"]["hidden"]
    )
