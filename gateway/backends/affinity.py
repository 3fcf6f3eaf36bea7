"""Cross-request prefix affinity: bounded-load consistent hashing on the prompt's prefix (pure).

Requests that start the same way (a shared system prompt, the earlier turns of a
conversation) should land on the replica that already holds that prefix in its KV cache.
Each replica owns ``VNODES`` points on a hash ring; a request's key (the first characters of
its conversation) hashes to a point, and the replicas are tried in ring order from there.
Consistent hashing alone piles a hot prefix onto one replica, so the load is bounded
(Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018): a
replica takes the request only while its in-flight count stays within ``load_factor`` times
the pool's mean (counting the new request); otherwise the walk moves on, and when no replica
is within the bound the least-loaded one serves.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

VNODES = 64


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """``VNODES`` points per replica (by URL, so a replica keeps its keys however the list is
    ordered, and adding one moves only about 1/n of the keys)."""

    def __init__(self, urls: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted(
            (_point(f"{url}#{v}"), i) for i, url in enumerate(urls) for v in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [i for _, i in points]
        self.size = len(urls)

    def walk(self, key: str) -> list[int]:
        """Replica indices in ring order from ``key``'s point, each once."""
        start = bisect_right(self._points, _point(key))
        seen: list[int] = []
        total = len(self._owners)
        for step in range(total):
            owner = self._owners[(start + step) % total]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == self.size:
                    break
        return seen


def bound(loads: Sequence[int], load_factor: float) -> int:
    """The most in-flight requests a replica may hold after taking one more."""
    n = max(1, len(loads))
    return max(1, math.ceil(load_factor * (sum(loads) + 1) / n))


def pick(order: Sequence[int], loads: Mapping[int, int], load_factor: float) -> int | None:
    """The first replica of ``order`` (indices) within the load bound, None if none is."""
    cap = bound([loads[i] for i in order], load_factor)
    return next((i for i in order if loads[i] + 1 <= cap), None)


def prefix_key(payload: Mapping[str, Any], chars: int) -> str | None:
    """The first ``chars`` characters of what a request shares with others: a chat's messages
    before its last one (the system prompt, the earlier turns; the whole conversation when it
    is one message), or a completions ``prompt``."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return messages_key(messages[:-1] if len(messages) > 1 else messages, chars)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt[:chars] or None
    return None


def messages_key(messages: Sequence[Any], chars: int) -> str | None:
    parts: list[str] = []
    size = 0
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        part = f"{m.get('role', '')}\x1f{content if isinstance(content, str) else ''}\x1e"
        parts.append(part)
        size += len(part)
        if size >= chars:
            break
    key = "".join(parts)[:chars]
    return key or None
