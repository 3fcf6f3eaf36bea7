"""A fake llm-d endpoint picker: a real HTTP proxy in front of a real vLLM server.

It forwards every request to ``--upstream`` (streams relayed as they come) and records what
it received, so a test can check the scheduler headers the gateway sent. It can be told to
drop the next K completion requests (``POST /v1/...``) the way llm-d's scheduler does: a
429/503 answer with a dropped-reason header. A ``rejected-*`` drop is answered before vLLM is
asked (no work done); an ``evicted-*`` one after vLLM answered (work done, then thrown away).

Control (JSON):

- ``POST /_epp/drop`` ``{"count": K, "status": 503, "reason": "rejected-queue-full",
  "header": "x-llm-d-request-dropped-reason", "when": {"<header>": "<value>"},
  "retry_after": 2, "after": 0}``: add a rule (``after``: let that many matching requests
  through first);
  it drops the next K matching requests (``when``: only requests carrying those headers).
- ``GET /_epp/received``: the completion requests that arrived, in order: ``[{"path",
  "headers", "body", "dropped", "usage"}]`` (``usage``: of a whole JSON answer relayed).
- ``POST /_epp/reset``: forget the rules and the records.

Run: ``python -m tests.fake_epp --port P --upstream http://127.0.0.1:8000``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_HEADER = "x-llm-d-request-dropped-reason"
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    count: int
    status: int
    reason: str
    header: str = DEFAULT_HEADER
    when: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None
    after: int = 0
    """Matching requests to let through before the first drop."""

    def applies(self, headers: dict[str, str]) -> bool:
        """Whether this rule drops a request with ``headers`` (counting it when it matches)."""
        if self.count <= 0 or any(headers.get(k) != v for k, v in self.when.items()):
            return False
        if self.after > 0:
            self.after -= 1
            return False
        self.count -= 1
        return True


def make_app(upstream: str) -> Starlette:
    rules: list[Rule] = []
    received: list[dict[str, Any]] = []
    client = httpx.AsyncClient(base_url=upstream, timeout=600, trust_env=False)

    async def drop(request: Request) -> Response:
        spec = await request.json()
        rules.append(
            Rule(
                int(spec["count"]),
                int(spec.get("status", 503)),
                str(spec["reason"]),
                str(spec.get("header", DEFAULT_HEADER)),
                dict(spec.get("when", {})),
                spec.get("retry_after"),
                int(spec.get("after", 0)),
            )
        )
        return JSONResponse({"rules": len(rules)})

    async def show(request: Request) -> Response:
        return JSONResponse(received)

    async def reset(request: Request) -> Response:
        rules.clear()
        received.clear()
        return JSONResponse({})

    async def proxy(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        record: dict[str, Any] = {
            "path": request.url.path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
            "dropped": None,
        }
        rule = None
        completion = request.method == "POST" and request.url.path.startswith("/v1/")
        if completion:
            rule = next((r for r in rules if r.applies(headers)), None)
            received.append(record)
        if rule is not None:
            record["dropped"] = rule.reason
            if rule.reason.startswith("evicted"):
                # The engine did the work; the scheduler throws the answer away.
                done = await client.post(request.url.path, content=body, headers=headers)
                await done.aread()
            return JSONResponse(
                {"error": {"message": f"dropped: {rule.reason}", "type": "overloaded"}},
                status_code=rule.status,
                headers={
                    rule.header: rule.reason,
                    **({"retry-after": str(rule.retry_after)} if rule.retry_after else {}),
                },
            )
        if completion and b'"stream":true' not in body.replace(b" ", b""):
            # A whole JSON answer: relayed as one body, its usage recorded for the tests.
            whole = await client.post(request.url.path, content=body, headers=headers)
            with contextlib.suppress(ValueError, AttributeError):
                record["usage"] = whole.json().get("usage")
            kept = {k: v for k, v in whole.headers.items() if k.lower() not in _HOP}
            kept.pop("content-encoding", None)
            return Response(whole.content, status_code=whole.status_code, headers=kept)
        sent = client.build_request(request.method, request.url.path, content=body, headers=headers)
        answer = await client.send(sent, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        kept.pop("content-encoding", None)
        return StreamingResponse(relay(), status_code=answer.status_code, headers=kept)

    methods = ["GET", "POST"]
    return Starlette(
        routes=[
            Route("/_epp/drop", drop, methods=["POST"]),
            Route("/_epp/received", show, methods=["GET"]),
            Route("/_epp/reset", reset, methods=["POST"]),
            Route("/{path:path}", proxy, methods=methods),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = make_app(args.upstream.rstrip("/"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
