"""uvicorn's HTTP protocol, answering a request it cannot parse in the OpenAI error shape.

A malformed request line, header (a bare CR or LF, a NUL byte) or framing (a bad
``content-length``) never reaches the app: uvicorn answers it itself, in plain text. This
protocol gives those clients the same ``{"error": {...}}`` body as every other 400.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import InvalidRequest

_BODY = orjson.dumps(
    InvalidRequest(
        "the HTTP request is malformed (request line, a header or the body framing)",
        code="invalid_http_request",
    ).body()
)


class OpenAIErrorHttpProtocol(HttpToolsProtocol):
    """httptools' protocol; only its parse-error answer differs."""

    def send_400_response(self, msg: str) -> None:
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(_BODY),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + _BODY)
        self.transport.close()
