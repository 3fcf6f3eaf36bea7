"""Token counts from the backend's own tokenizer (vLLM's ``POST /tokenize``).

Used where the backend's usage does not say how a reply splits into thinking and answer: the
answer (``content``) is tokenized on the same replica, and whatever else the reply generated
was thinking (its end marker included), which is hidden.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import orjson

from gateway.backends.pool import Pool, Replica
from gateway.backends.upstream import open_upstream, read_json
from gateway.errors import BackendError


async def count_tokens(
    pool: Pool,
    texts: Sequence[str],
    request_id: str,
    prefer: Replica | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[int]:
    """The token count of each of ``texts`` as generated text (no special tokens added);
    ``headers``: the request's scheduler hints."""

    async def one(i: int, text: str) -> int:
        if not text:
            return 0
        body = {"model": pool.model, "prompt": text, "add_special_tokens": False}
        upstream = await open_upstream(
            pool,
            "/tokenize",
            orjson.dumps(body),
            f"{request_id}-tok{i}",
            prefer=prefer,
            headers=headers,
        )
        _, data = await read_json(upstream)
        count = data.get("count") if isinstance(data, dict) else None
        if not isinstance(count, int) or count < 0:
            raise BackendError(
                502,
                f"backend pool {pool.name!r} answered /tokenize without a token count",
                code="backend_invalid_response",
            )
        return count

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
