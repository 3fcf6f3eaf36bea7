"""The instant mock backend (bench/mock_openai.py) as a process that also records and holds.

- Every request it receives is appended to ``--record`` as one JSON line (method, path,
  headers, body), so a test can check what the gateway sent upstream.
- A completion whose body contains ``hold:<name>`` waits until ``POST /_release/<name>``;
  ``GET /_held/<name>`` says how many are waiting. Tests use it to overlap requests
  deterministically (no sleeps).

Run: ``python -m tests.recording_backend --port P --record FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
MOCK = Path(__file__).resolve().parents[1] / "bench" / "mock_openai.py"
_HOLD = re.compile(rb"hold:([A-Za-z0-9_-]+)")


def load_mock() -> Any:
    spec = importlib.util.spec_from_file_location("mock_openai", MOCK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(parts)


def recording_app(inner: App, record: Path) -> App:
    """``inner`` behind the recorder and the hold gates."""
    gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    held: Counter[str] = Counter()

    async def reply(send: Send, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_release/"):
            gates[path.rsplit("/", 1)[1]].set()
            await reply(send, b"released")
            return
        if path.startswith("/_held/"):
            await reply(send, str(held[path.rsplit("/", 1)[1]]).encode())
            return
        body = await _body(receive)
        line = {
            "method": scope["method"],
            "path": path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("utf-8", "replace"),
        }
        with record.open("a") as f:
            f.write(json.dumps(line) + "\n")
        if (m := _HOLD.search(body)) is not None:
            name = m.group(1).decode()
            held[name] += 1
            try:
                await gates[name].wait()
            finally:
                held[name] -= 1
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await inner(scope, replay, send)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--model", default="mock-model")
    args = parser.parse_args()
    app = recording_app(load_mock().make_app(args.model), args.record)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
