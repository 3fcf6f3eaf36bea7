"""DeepConf-style confidence of a generated text from its token logprobs (arXiv 2508.15260).

Pure maths, no I/O. Confidence over a span of tokens is the geometric mean probability of the
tokens actually chosen, ``exp(mean logprob)``: in [0, 1], comparable across requests, and it
needs only ``logprobs=true`` (no top alternatives). Over a sequence of tokens:

- ``mean``: over all tokens (the inverse of the text's perplexity);
- ``lowest_group``: the minimum over every sliding window of ``window`` consecutive tokens
  (one window of all tokens when there are fewer) — one confused stretch lowers it even when
  the rest of the text is confident (DeepConf's "lowest group confidence");
- ``tail``: over the last ``tail`` tokens (the final answer usually lives there).

Why a geometric, not an arithmetic, mean: a corrupted number or an answer cut off mid-sentence
shows up as one or two tokens of probability ~1e-10 among confident ones. The arithmetic mean
of probabilities barely moves (−1/16 per such token in a 16-token window); the mean logprob
drops by ~1.4 per token, which is the signal (measured on SmolLM2: tests/integration/
test_ladders.py). A logprob below -100 (or NaN) counts as -100.

DeepConf's own token confidence is the negative mean logprob of the top-k alternatives,
``-(1/k) Σ_j log P(j)``: unbounded (≥ 0), high when the distribution is peaked.
``deepconf_mean`` is its mean over the tokens, computed only when every token carries top
alternatives (``top_logprobs=k`` was asked), ``None`` otherwise.

``text_segments`` aligns texts with the prompt logprobs of a chat turn that contains them (how
a verifier scores a text it did not sample; see its docstring for the rule).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from strategies.ports import TokenLogprob

Signal = Literal["mean", "lowest_group", "tail"]
SIGNALS: tuple[Signal, ...] = ("mean", "lowest_group", "tail")
DEFAULT_WINDOW = 16
DEFAULT_TAIL = 16
LOGPROB_FLOOR = -100.0
CHARS_PER_TOKEN = 3  # the fallback's token estimate for a text that cannot be located


@dataclass(frozen=True, slots=True)
class ConfidenceStats:
    """Confidence of one token sequence. ``mean``, ``lowest_group`` and ``tail`` are in [0, 1]
    (0.0 for an empty sequence); ``tokens`` is the sequence's length; ``deepconf_mean`` (≥ 0)
    is DeepConf's measure, ``None`` without top alternatives."""

    mean: float
    lowest_group: float
    tail: float
    tokens: int
    deepconf_mean: float | None = None


def token_probability(position: TokenLogprob) -> float:
    """``exp(logprob)`` of the chosen token, in [0, 1] (a positive rounding error counts as
    probability 1, NaN as 0)."""
    if math.isnan(position.logprob):
        return 0.0
    return math.exp(min(position.logprob, 0.0))


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def confidence_stats(
    logprobs: Sequence[TokenLogprob], window: int = DEFAULT_WINDOW, tail: int = DEFAULT_TAIL
) -> ConfidenceStats:
    """The stats of ``logprobs`` (see the module docstring) in O(n). ``window`` and ``tail``
    must be ≥ 1 (``ValueError`` otherwise)."""
    if window < 1 or tail < 1:
        raise ValueError(f"window and tail must be >= 1, got window={window}, tail={tail}")
    lps = [_logprob(t) for t in logprobs]
    n = len(lps)
    if n == 0:
        return ConfidenceStats(0.0, 0.0, 0.0, 0)
    w = min(window, n)
    running = sum(lps[:w])
    lowest = running
    for i in range(w, n):
        running += lps[i] - lps[i - w]
        lowest = min(lowest, running)
    t = min(tail, n)
    return ConfidenceStats(
        _prob(sum(lps) / n), _prob(lowest / w), _prob(sum(lps[n - t :]) / t), n, _deepconf(logprobs)
    )


def _logprob(position: TokenLogprob) -> float:
    """The chosen token's logprob, ≤ 0 (a positive rounding error is 0); NaN and -inf count
    as a floor of -100 so that one broken value cannot make a whole window undefined."""
    lp = position.logprob
    if math.isnan(lp):
        return LOGPROB_FLOOR
    return max(LOGPROB_FLOOR, min(lp, 0.0))


def _prob(mean_logprob: float) -> float:
    return _clamp(math.exp(mean_logprob))


def _deepconf(logprobs: Sequence[TokenLogprob]) -> float | None:
    if not logprobs or not all(t.top for t in logprobs):
        return None
    per_token = [-sum(a.logprob for a in t.top) / len(t.top) for t in logprobs]
    return max(0.0, sum(per_token) / len(per_token))


def signal_value(stats: ConfidenceStats, signal: Signal) -> float:
    """The named confidence of ``stats``, in [0, 1]."""
    values: dict[Signal, float] = {
        "mean": stats.mean,
        "lowest_group": stats.lowest_group,
        "tail": stats.tail,
    }
    return values[signal]


def as_json(stats: ConfidenceStats) -> dict[str, float | int | None]:
    """``stats`` for a response's detail object, floats rounded to 4 decimals."""
    deepconf = stats.deepconf_mean
    return {
        "mean": round(stats.mean, 4),
        "lowest_group": round(stats.lowest_group, 4),
        "tail": round(stats.tail, 4),
        "tokens": stats.tokens,
        "deepconf_mean": None if deepconf is None else round(deepconf, 4),
    }


def describe(stats: ConfidenceStats, signal: Signal) -> str:
    """A one-line summary, the chosen signal first: "lowest_group=0.62 mean=0.81 tail=0.77
    over 34 tokens"."""
    order = (signal, *(s for s in SIGNALS if s != signal))
    parts = " ".join(f"{s}={signal_value(stats, s):.2f}" for s in order)
    return f"{parts} over {stats.tokens} tokens"


@dataclass(frozen=True, slots=True)
class Segment:
    """The tokens scored for one text; ``aligned`` is False when the text could not be located
    and the tokens are the fallback estimate."""

    tokens: tuple[TokenLogprob, ...]
    aligned: bool


def trim_prompt(positions: Sequence[TokenLogprob | None]) -> list[TokenLogprob]:
    """Prompt logprobs without the positions that have none (the first) and without the
    whitespace-only tokens after the last non-whitespace one (a chat template's trailing
    newline after its end-of-turn marker)."""
    tokens = [p for p in positions if p is not None]
    end = len(tokens)
    while end and not tokens[end - 1].token.strip():
        end -= 1
    return tokens[:end]


def text_segments(tokens: Sequence[TokenLogprob], texts: Sequence[str]) -> list[Segment]:
    """Split the end of ``tokens`` (trimmed prompt logprobs) into one segment per text.

    ``texts`` are the last texts of the prompt, in order (one assistant answer, or the steps of
    a solution). They are located from the end: each stripped text must occur in the decoded
    tokens' concatenation before the previous one's start, with only whitespace between it and
    that start — or, for the last text, whitespace and the final token (the end-of-turn marker
    of a closed turn, which so counts in the last text's segment: a cut-off answer gets a low
    end-of-turn probability). A segment runs from the token holding the text's first character
    to the next segment's first token. A text that is empty or cannot be located that way gets
    the last ``max(1, len(text) // 3)`` tokens still available (``aligned=False``).
    """
    concat = "".join(t.token for t in tokens)
    starts: list[int] = []
    offset = 0
    for t in tokens:
        starts.append(offset)
        offset += len(t.token)
    limit_tok, limit_char = len(tokens), len(concat)
    final = tokens[-1].token.strip() if tokens else ""
    segments: list[Segment] = []
    for k, text in enumerate(reversed(texts)):
        needle = text.strip()
        pos = concat.rfind(needle, 0, limit_char) if needle else -1
        rest = concat[pos + len(needle) : limit_char].strip() if pos >= 0 else None
        if rest is not None and (rest == "" or (k == 0 and rest == final)):
            first = bisect_right(starts, pos) - 1
            segments.append(Segment(tuple(tokens[first:limit_tok]), True))
            limit_tok, limit_char = first, pos
        else:
            first = max(0, limit_tok - max(1, len(text) // CHARS_PER_TOKEN))
            segments.append(Segment(tuple(tokens[first:limit_tok]), False))
            limit_tok = first
            limit_char = starts[first] if first < len(starts) else len(concat)
    return segments[::-1]
