"""A process reward model (PRM) served by vLLM's pooling API, as a ``Verifier``.

One scoring call is ``POST /pooling`` on the PRM pool::

    {"model": <pool model>, "task": "token_classify", "input": "<question + tagged steps>"}

(``input`` is a list of such strings when several solutions are scored at once; vLLM 0.32's
``PoolingCompletionRequest.input`` accepts ``str | list[str]`` and answers one ``data`` item per
input, in order, with one ``usage`` for the whole call). The server pools the hidden state at
every step-tag token (``--pooler-config '{"task":"token_classify","pooling_type":"STEP",
"step_tag_id":<id>}'``) and answers one row per tag::

    {"data": [{"index": 0, "data": [[0.26], [0.38]]}], "usage": {"prompt_tokens": 17, ...}}

How a model wants its input written differs per PRM; ``PrmConventions`` holds it (``PRESETS``
has the three known ones). Scores are the probability that a step is good, in [0, 1]. The PRM
generates nothing: its input tokens are prompt tokens of the client's request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import count
from typing import Any

import orjson

from gateway.backends.pool import Pool
from gateway.backends.scheduling import SchedulingHints
from gateway.backends.upstream import open_upstream, read_json
from gateway.errors import BackendError
from routing.prm import PRESETS, PrmConventions

__all__ = ["PRESETS", "PrmConventions", "PrmVerifier"]
from strategies.ports import Candidate, Score
from strategies.usage import Usage

_EPS = 1e-3  # float noise of an activation around 0 and 1


class PrmVerifier:
    """Implements ``strategies.ports.Verifier`` over a PRM pool for one client request.

    - ``score_steps(question, steps)``: one call, one ``Score`` per step;
    - ``score_last_steps(question, solutions)``: the last step of each partial solution, all in
      ONE call (a list ``input``) — what step-level search needs per iteration;
    - ``score(question, candidates)``: each candidate's text split into steps at
      ``candidate_split``, scored by its last step, all in ONE call (an ORM view of a PRM).

    A call's usage (``prompt`` = the PRM's input tokens) rides on the FIRST ``Score`` it
    returns and the others carry none, so summing the usages of the returned scores counts each
    call exactly once. Errors surface as the gateway's own: ``BackendUnavailable`` /
    ``BackendTimeout`` from ``open_upstream``; any refusal or malformed answer of the PRM server
    is a ``BackendError`` 502 (the client did not write the PRM's input, so a 4xx from it is
    not the client's fault).
    """

    name = "prm"

    def __init__(
        self,
        pool: Pool,
        request_id: str,
        conventions: PrmConventions | None = None,
        hints: SchedulingHints | None = None,
    ) -> None:
        self.pool = pool
        self.headers = pool.hint_headers(hints.without_output() if hints else None)
        self.request_id = request_id
        self.conventions = conventions or PrmConventions()
        self.calls = 0
        self._seq = count()

    def render(self, question: str, steps: Sequence[str]) -> str:
        """The PRM input of one (partial) solution (see ``PrmConventions``)."""
        c = self.conventions
        tag = c.step_tag.strip() or c.step_tag
        clean = [s.replace(tag, "").strip() for s in steps]
        tagged = c.step_separator.join(s + c.step_tag for s in clean)
        return c.input_template.format(question=question.replace(tag, "").strip(), steps=tagged)

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[Score]:
        if not steps:
            return []
        rows, usage = await self._classify([self.render(question, steps)], [len(steps)])
        return _with_usage([Score(p, f"P(good)={p:.3f}") for p in rows[0]], usage)

    async def score_last_steps(
        self, question: str, solutions: Sequence[Sequence[str]]
    ) -> list[Score]:
        """One ``Score`` per solution: its last step, judged given the steps before it. Every
        solution must have at least one step."""
        if any(not steps for steps in solutions):
            raise ValueError("every solution needs at least one step")
        if not solutions:
            return []
        inputs = [self.render(question, steps) for steps in solutions]
        rows, usage = await self._classify(inputs, [len(steps) for steps in solutions])
        return _with_usage([Score(r[-1], f"P(good)={r[-1]:.3f} (last step)") for r in rows], usage)

    async def score(self, question: str, candidates: Sequence[Candidate]) -> list[Score]:
        split = self.conventions.candidate_split
        solutions = [[s for s in c.text.split(split) if s.strip()] for c in candidates]
        scorable = [i for i, steps in enumerate(solutions) if steps]
        scores = [Score(0.0, "empty candidate") for _ in candidates]
        if scorable:
            scored = await self.score_last_steps(question, [solutions[i] for i in scorable])
            for i, s in zip(scorable, scored, strict=True):
                scores[i] = s
        return scores

    async def _classify(
        self, inputs: list[str], steps: list[int]
    ) -> tuple[list[list[float]], Usage]:
        """POST the inputs; returns the good-probability of every tag, per input, and usage."""
        body = {
            "model": self.pool.model,
            "task": "token_classify",
            "input": inputs[0] if len(inputs) == 1 else inputs,
        }
        rid = f"{self.request_id}-prm-{next(self._seq)}"
        try:
            upstream = await open_upstream(
                self.pool, "/pooling", orjson.dumps(body), rid, headers=self.headers
            )
        except BackendError as e:
            if e.status >= 500:
                raise
            raise BackendError(
                502,
                f"PRM backend {self.pool.name!r} refused the scoring request "
                f"(HTTP {e.status}): {e.message}",
                code="backend_error",
            ) from e
        self.calls += 1
        _, data = await read_json(upstream)  # broken off or not JSON: a 502 naming the pool
        return self._parse(data, steps), Usage(prompt=_prompt_tokens(data))

    def _parse(self, data: Any, steps: list[int]) -> list[list[float]]:
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != len(steps):
            raise self._malformed(f"expected {len(steps)} data items")
        items = sorted(items, key=lambda it: it.get("index", 0) if isinstance(it, dict) else 0)
        out: list[list[float]] = []
        for item, expected in zip(items, steps, strict=True):
            rows = item.get("data") if isinstance(item, dict) else None
            if not isinstance(rows, list) or len(rows) != expected:
                got = len(rows) if isinstance(rows, list) else "no"
                raise self._malformed(
                    f"{got} step scores for {expected} steps (is the server's step_tag_id the "
                    f"token of {self.conventions.step_tag!r}?)"
                )
            out.append([self._good(row) for row in rows])
        return out

    def _good(self, row: Any) -> float:
        values = row if isinstance(row, list) else [row]
        c = self.conventions
        if c.score_format == "p_good":
            if len(values) != 1:
                raise self._malformed(
                    f"a row of {len(values)} values where score_format p_good expects one "
                    "(use score_format: classes)"
                )
            value = values[0]
        else:
            if len(values) <= c.good_index:
                raise self._malformed(f"a row of {len(values)} classes has no class {c.good_index}")
            value = values[c.good_index]
        if (
            not isinstance(value, int | float)
            or not math.isfinite(value)
            or not -_EPS <= value <= 1 + _EPS
        ):
            raise self._malformed(f"score {value!r} is not a probability")
        return min(1.0, max(0.0, float(value)))

    def _malformed(self, what: str) -> BackendError:
        return BackendError(
            502,
            f"PRM backend {self.pool.name!r} answered unexpectedly: {what}",
            code="backend_error",
        )


def _prompt_tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens > 0 else 0


def _with_usage(scores: list[Score], usage: Usage) -> list[Score]:
    """Put the whole call's usage on the first score (see ``PrmVerifier``)."""
    if scores:
        first = scores[0]
        scores[0] = Score(first.value, first.detail, usage)
    return scores
