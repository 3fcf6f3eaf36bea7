"""A fake llm-d endpoint picker: a real HTTP proxy in front of a real vLLM server.

It forwards every request to ``--upstream`` (streams relayed as they come) and records what
it received, so a test can check the scheduler headers the gateway sent. It can be told to
drop the next K completion requests (``POST /v1/...``) the way llm-d's scheduler does: a
429/503 answer with a dropped-reason header. A ``rejected-*`` drop is answered before vLLM is
asked (no work done); an ``evicted-*`` one after vLLM answered (work done, then thrown away).

Control (JSON):

- ``POST /_epp/drop`` ``{"count": K, "status": 503, "reason": "rejected-queue-full",
  "header": "x-llm-d-request-dropped-reason", "when": {"<header>": "<value>"},
  "retry_after": 2}``: add a rule;
  it drops the next K matching requests (``when``: only requests carrying those headers).
- ``GET /_epp/received``: what arrived, in order: ``[{"path", "headers", "body", "dropped"}]``.
- ``POST /_epp/reset``: forget the rules and the records.

Run: ``python -m tests.fake_epp --port P --upstream http://127.0.0.1:8000``.
"""

from __future__ import annotations

import argparse
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

    def matches(self, headers: dict[str, str]) -> bool:
        return self.count > 0 and all(headers.get(k) == v for k, v in self.when.items())


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
        if request.method == "POST" and request.url.path.startswith("/v1/"):
            rule = next((r for r in rules if r.matches(headers)), None)
            received.append(record)
        if rule is not None:
            rule.count -= 1
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
