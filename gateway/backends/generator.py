"""The ``Generator`` port over a vLLM pool: one request's calls, all on the same replica.

The first call picks the least-loaded replica (with the usual retry while nothing was
received); every later call of the same request goes to that replica first, so branches and
waves reuse its prefix cache (another one when it fails or is ejected meanwhile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import count
from typing import Any

import orjson

from gateway.backends.pool import Pool, Replica
from gateway.backends.scheduling import SchedulingHints
from gateway.backends.tokenize import count_tokens
from gateway.backends.upstream import open_upstream, read_json
from gateway.errors import BackendError, DeliberateError
from strategies.base import Deadline
from strategies.ports import GenChoice, GenRequest, GenResult, TokenLogprob, TopLogprob
from strategies.usage import Usage


class VLLMGenerator:
    """Implements ``strategies.ports.Generator`` for one client request."""

    def __init__(
        self,
        pool: Pool,
        request_id: str,
        deadline: Deadline | None = None,
        hints: SchedulingHints | None = None,
    ) -> None:
        self.pool = pool
        self.headers = pool.hint_headers(hints)
        self.request_id = request_id
        self.deadline = deadline
        self.replica: Replica | None = None
        self.calls = 0
        self._seq = count()

    async def generate(self, request: GenRequest) -> GenResult:
        body = chat_body(self.pool.model, request)
        rid = f"{self.request_id}-{next(self._seq)}"
        # The first call picks the replica (by prefix affinity where the pool uses it); every
        # later call of the request prefers that one.
        key = self.pool.affinity_key(body) if self.replica is None else None
        upstream = await open_upstream(
            self.pool,
            "/v1/chat/completions",
            orjson.dumps(body),
            rid,
            prefer=self.replica,
            deadline=self.deadline,
            key=key,
            headers=self.headers,
        )
        self.replica = upstream.replica
        self.calls += 1
        _, data = await read_json(upstream)
        if not isinstance(data, dict):
            raise BackendError(
                502,
                f"backend pool {self.pool.name!r} answered JSON that is not a completion",
                code="backend_invalid_response",
            )
        result = parse_result(data)
        if not has_thinking(result):
            return result
        try:
            counts = await count_tokens(
                self.pool,
                [c.text for c in result.choices],
                rid,
                prefer=self.replica,
                headers=self.headers,
            )
        except DeliberateError:
            return result  # the samples are here; the backend's own reasoning count stands
        return split_thinking(result, counts)


def has_thinking(result: GenResult) -> bool:
    """Whether any sample came back with thinking (a reasoning parser's ``reasoning``)."""
    return any(c.reasoning for c in result.choices)


def split_thinking(result: GenResult, answer_tokens: Sequence[int]) -> GenResult:
    """``result`` with each sample's thinking counted from its answer's token count
    (``answer_tokens``, same order as the choices): everything a sample generated beyond its
    answer was thinking, end marker included, so it is hidden whatever the backend's usage
    says (vLLM's ``reasoning_tokens`` leaves the end marker out, and with n > 1 gives one
    total for all samples)."""
    choices = tuple(
        replace(c, reasoning_tokens=max(0, c.tokens - a) if c.reasoning else 0)
        for c, a in zip(result.choices, answer_tokens, strict=True)
    )
    generated = max(result.usage.completion, sum(c.tokens for c in choices))
    visible = min(generated, sum(c.answer_tokens for c in choices))
    usage = Usage(prompt=result.usage.prompt, visible=visible, hidden=generated - visible)
    return replace(result, choices=choices, usage=usage)


def chat_body(model: str, req: GenRequest) -> dict[str, Any]:
    """The vLLM chat request for ``req`` (``return_token_ids`` gives exact per-choice counts)."""
    body: dict[str, Any] = {
        **req.extra,
        "model": model,
        "messages": list(req.messages),
        "n": req.n,
        "return_token_ids": True,
    }
    for key, value in (
        ("max_tokens", req.max_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("top_logprobs", req.top_logprobs),
        ("prompt_logprobs", req.prompt_logprobs),
    ):
        if value is not None:
            body[key] = value
    if req.stop:
        body["stop"] = list(req.stop)
    if req.logprobs:
        body["logprobs"] = True
    if req.continue_final_message:
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


def parse_result(data: dict[str, Any]) -> GenResult:
    """A vLLM chat completion as a ``GenResult``."""
    usage = Usage.from_openai(data.get("usage"))
    choices: list[GenChoice] = []
    for c in data.get("choices", []):
        msg = c.get("message") or {}
        ids = c.get("token_ids")
        choices.append(
            GenChoice(
                index=int(c.get("index", len(choices))),
                text=msg.get("content") or "",
                tokens=len(ids) if isinstance(ids, list) else 0,
                finish_reason=c.get("finish_reason"),
                stop_reason=c.get("stop_reason"),
                reasoning=msg.get("reasoning") or msg.get("reasoning_content"),
                logprobs=parse_logprobs(c.get("logprobs")),
                raw_logprobs=c.get("logprobs"),
            )
        )
    choices.sort(key=lambda ch: ch.index)
    if choices and all(ch.tokens == 0 for ch in choices) and len(choices) == 1:
        # No token ids (older vLLM): a single choice generated everything.
        only = choices[0]
        choices[0] = GenChoice(
            only.index,
            only.text,
            usage.completion,
            only.finish_reason,
            only.stop_reason,
            only.reasoning,
            only.logprobs,
            only.raw_logprobs,
        )
    return GenResult(
        tuple(choices),
        usage,
        str(data.get("model", "")),
        _prompt_logprobs(data.get("prompt_logprobs")),
    )


def _prompt_logprobs(raw: Any) -> tuple[TokenLogprob | None, ...] | None:
    """vLLM's ``prompt_logprobs``: per position ``None`` (the first token) or
    ``{token_id: {logprob, rank, decoded_token}}``, the prompt's own token listed first, then
    the top-k by rank. ``top`` holds the entries in rank order, like a generated token's top
    alternatives: the own token only when it is among them (vLLM adds it as an extra entry when
    it is not, so an entry ranked beyond the number of entries is that extra)."""
    if not isinstance(raw, list):
        return None
    out: list[TokenLogprob | None] = []
    for pos in raw:
        values = [v for v in pos.values() if isinstance(v, dict)] if isinstance(pos, dict) else []
        if not values:
            out.append(None)
            continue
        own = values[0]
        ranked = [v for v in values if int(v.get("rank") or 0) <= len(values)]
        top = sorted(ranked, key=lambda v: v.get("rank") or 0)
        out.append(
            TokenLogprob(
                str(own.get("decoded_token", "")),
                float(own.get("logprob", 0.0)),
                tuple(
                    TopLogprob(str(v.get("decoded_token", "")), float(v.get("logprob", 0.0)))
                    for v in top
                ),
            )
        )
    return tuple(out)


def parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    """A chat choice's (or stream delta's) ``logprobs.content`` as tokens; None if absent."""
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    return tuple(
        TokenLogprob(
            token=str(t.get("token", "")),
            logprob=float(t.get("logprob", 0.0)),
            top=tuple(
                TopLogprob(str(a.get("token", "")), float(a.get("logprob", 0.0)))
                for a in t.get("top_logprobs") or []
            ),
        )
        for t in raw["content"]
    )
