"""One calibration measurement: an eval item sent to one route variant as a client would send
it (a streaming chat request), its answer checked. For the learned gate's source route the
request asks for logprobs, and the answer's gate features are recorded with the outcome
(``gateway.calibrate_gate``)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.backends.generator import parse_logprobs
from gateway.calibrate_gate import features
from routing import calibration as cal
from routing.evalset import EvalItem, check_answer
from strategies.best_of_n import question_of
from strategies.ports import TokenLogprob


@dataclass(frozen=True)
class Job:
    item: EvalItem
    request_class: str
    route: str
    strategy: str
    budget: int | None  # None: the route as configured (``auto`` and the held-out check)
    gate: bool = False  # record the answer's learned-gate features (asks for logprobs)

    @property
    def model(self) -> str:
        return self.route if self.budget is None else cal.variant_name(self.route, self.budget)


def item_seed(item_id: str) -> int:
    """A fixed sampling seed per eval item (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") >> 1


async def measure(client: httpx.AsyncClient, job: Job) -> cal.Outcome:
    """Send one item to one route variant as a streaming chat request; check the answer."""
    item, budget = job.item, job.budget
    body: dict[str, Any] = {
        "model": job.model,
        "messages": item.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Sampled routes draw the same samples for the same item on every run.
        "seed": item_seed(item.id),
    }
    if job.strategy == "single-pass" and budget is not None:
        body["max_tokens"] = budget
    if job.gate:
        body["logprobs"] = True
    text: list[str] = []
    tokens: list[TokenLogprob] = []
    finish: str | None = None
    usage: dict[str, Any] = {}
    ttft: float | None = None
    error: str | None = None
    done = False
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                error = f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    if (data := line[5:].strip()) == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = f"stream error: {json.dumps(event['error'])[:300]}"
                        break
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        tokens.extend(parse_logprobs(choice.get("logprobs")) or ())
                        if piece := (choice.get("delta") or {}).get("content"):
                            if ttft is None:
                                ttft = (time.perf_counter() - start) * 1000
                            text.append(piece)
                if error is None and not done:
                    error = "the stream ended without [DONE]"
    except (httpx.HTTPError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    latency = (time.perf_counter() - start) * 1000
    hidden = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    answer = "".join(text)
    gate = None
    if job.gate and error is None:
        gate = await features(question_of(item.messages), answer, finish, tokens)
    return cal.Outcome(
        item_id=item.id,
        request_class=job.request_class,
        family=str(item.family),
        difficulty=str(item.difficulty),
        route=job.route,
        budget=budget,
        correct=error is None and check_answer(item, answer),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        visible_tokens=max(0, completion - hidden),
        hidden_tokens=hidden,
        ttft_ms=ttft,
        latency_ms=latency,
        error=error,
        gate_features=gate,
    )
