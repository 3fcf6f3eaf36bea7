"""Send one request to a pool: least-loaded replica first, retry while nothing was received.

A retry is only safe while the client has seen nothing. ``open`` returns once response
headers arrived from some replica, so every failure before that point may move on to the
next replica; afterwards the caller owns the response and no retry happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway.backends.pool import Pool, Replica
from gateway.errors import BackendError, BackendTimeout, BackendUnavailable

# Failures that happen before any response byte arrived. ReadError/RemoteProtocolError here
# typically mean a keep-alive connection the server had already closed.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
# Backend answers that say "try somebody else" rather than "your request is wrong".
_RETRY_STATUSES = frozenset({502, 503})


@dataclass
class Upstream:
    """An open response from one replica. ``aclose`` must be called exactly once."""

    pool: Pool
    replica: Replica
    response: httpx.Response
    _closed: bool = False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.replica.in_flight -= 1
            await self.response.aclose()


async def open_upstream(
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    replica: Replica | None = None,
) -> Upstream:
    """POST ``body`` (JSON) to ``path`` on the best replica (or the given one) of ``pool``.

    Returns the open response once its status is 2xx. Raises ``BackendUnavailable`` when no
    replica answered, ``BackendTimeout`` when one stopped answering, and ``BackendError`` with
    the backend's status and message for its 4xx/5xx answers.
    """
    headers = {"content-type": "application/json", "x-request-id": request_id}
    candidates = [replica] if replica is not None else pool.ordered()
    failures: list[str] = []
    for rep in candidates:
        rep.in_flight += 1
        try:
            response = await pool.send(rep.url + path, body, headers)
        except _RETRYABLE as e:
            rep.in_flight -= 1
            pool.mark_down(rep, f"{type(e).__name__}: {e}")
            failures.append(f"{rep.url}: {type(e).__name__}")
            continue
        except httpx.TimeoutException as e:
            rep.in_flight -= 1
            raise BackendTimeout(
                f"backend pool {pool.name!r} did not answer in time ({type(e).__name__})"
            ) from e
        except BaseException:
            rep.in_flight -= 1
            raise
        upstream = Upstream(pool, rep, response)
        if response.status_code < 400:
            return upstream
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await upstream.aclose()
        if response.status_code in _RETRY_STATUSES:
            failures.append(f"{rep.url}: HTTP {response.status_code}")
            continue
        raise backend_error(response.status_code, raw)
    raise BackendUnavailable(
        f"no replica of backend pool {pool.name!r} could be reached ({'; '.join(failures)})"
    )


def backend_error(status: int, raw: bytes) -> BackendError:
    """A backend's error answer as a ``BackendError`` (status kept; 5xx become 502)."""
    message, etype, param = _parse_error(raw)
    if status >= 500:
        return BackendError(502, f"backend error (HTTP {status}): {message}", code="backend_error")
    return BackendError(status, message, error_type=etype or "invalid_request_error", param=param)


def _parse_error(raw: bytes) -> tuple[str, str | None, str | None]:
    """vLLM answers ``{"error": {...}}`` (new) or ``{"object": "error", ...}`` (old)."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return (text[:500] or "empty response"), None, None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            etype = err.get("type")
            param = err.get("param")
            return (
                str(err["message"]),
                _openai_type(etype),
                param if isinstance(param, str) else None,
            )
    return str(data)[:500], None, None


def _openai_type(etype: object) -> str | None:
    # vLLM reports Python exception names ("BadRequestError"); clients expect OpenAI's types.
    if not isinstance(etype, str):
        return None
    return {
        "BadRequestError": "invalid_request_error",
        "NotFoundError": "invalid_request_error",
    }.get(etype, etype)
