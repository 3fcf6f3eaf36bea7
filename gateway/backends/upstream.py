"""Send one request to a pool: least-loaded replica first, retry while nothing was received.

A retry is only safe while the client has seen nothing. ``open`` returns once response
headers arrived from some replica, so every failure before that point may move on to the
next replica; afterwards the caller owns the response and no retry happens.

Every call ends with a verdict for the replica's outlier record (``Pool.record_success`` /
``record_failure``): failures before the headers are recorded here, and an ``Upstream``
records its own when it is closed (see ``Upstream.aclose``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway.backends.pool import Pool, Replica
from gateway.backends.scheduling import Drop, classify_drop
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    DeliberateError,
    EngineEvicted,
    EngineRejected,
)
from gateway.tracing import backend_span, note_answer, note_replica
from strategies.base import Deadline
from strategies.tracing import NO_SPAN, OpenSpan

# Failures that happen before any response byte arrived. ReadError/RemoteProtocolError here
# typically mean a keep-alive connection the server had already closed. (The aiohttp
# transport reports a server that disconnected as ConnectTimeout.)
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
# Backend answers that say "try somebody else": nothing reached the client, and another
# replica may well answer. 502/503 say so outright; 500/504 are the replica's own failure.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_UNAVAILABLE_STATUSES = frozenset({502, 503})


@dataclass
class Upstream:
    """An open response from one replica. ``aclose`` must be called exactly once.

    Readers say how the call went before closing: ``succeeded()`` once the whole answer
    arrived, ``failed(reason)`` when it broke off or was invalid. Closed without a verdict,
    the call counts as failed when ``deadline`` has passed and ``deadline_counts`` (the call
    was the whole request and the replica too slow for it), and not at all otherwise (the
    client left, or a strategy cancelled its outstanding calls at its deadline as designed).
    """

    pool: Pool
    replica: Replica
    response: httpx.Response
    deadline: Deadline | None = None
    deadline_counts: bool = False
    span: OpenSpan = NO_SPAN
    """The call's client span (tracing on): ended here, with the verdict."""
    _closed: bool = False
    _verdict: str | None = None
    """"ok", or the reason the call failed."""

    def succeeded(self) -> None:
        self._verdict = "ok"

    def failed(self, reason: str) -> None:
        self._verdict = reason

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.replica.in_flight -= 1
            verdict = self._verdict
            if verdict is None and self.deadline_counts and _expired(self.deadline):
                verdict = "no whole answer before the route's deadline"
            if verdict == "ok":
                self.pool.record_success(self.replica)
            elif verdict is not None:
                self.pool.record_failure(self.replica, verdict)
            self.span.end(None if verdict in (None, "ok") else verdict)
            await self.response.aclose()


def dropped(pool: Pool, response: httpx.Response) -> Drop | None:
    """The scheduler's drop ``response`` reports, if any (header name from the pool)."""
    name = pool.config.scheduler.dropped_reason
    value = response.headers.get(name) if name is not None else None
    return classify_drop(pool.config.scheduler, response.status_code, value)


def drop_error(pool: Pool, drop: Drop, response: httpx.Response) -> EngineRejected:
    """Count ``drop`` on the pool; raise ``EngineEvicted`` for an eviction, else return the
    ``EngineRejected`` to raise if no other replica answers (with the scheduler's
    ``Retry-After``, when it gave whole seconds)."""
    pool.record_drop(drop)
    message = (
        f"backend pool {pool.name!r}: its scheduler dropped the request "
        f"(HTTP {response.status_code}, {drop.reason})"
    )
    if drop.kind == "evicted":
        raise EngineEvicted(pool.name, drop.reason, message + " after work was done")
    retry = response.headers.get("retry-after", "")
    return EngineRejected(
        pool.name,
        drop.reason,
        message + " before any work",
        headers={"retry-after": retry} if retry.isdigit() else None,
    )


def _expired(deadline: Deadline | None) -> bool:
    return deadline is not None and deadline.expired


# Lookups that generate nothing: they do not take a balancing turn (round-robin would
# otherwise see two turns per request, the prompt check's and the completion's).
_LOOKUP_PATHS = frozenset({"/tokenize"})


def candidates(
    pool: Pool, prefer: Replica | None, key: str | None = None, path: str = ""
) -> list[Replica]:
    """The pool's replicas in the order to try them (``key``: the request's prefix, for
    prefix affinity), ``prefer`` first unless it is ejected."""
    order = pool.ordered(None if prefer is not None else key, turn=path not in _LOOKUP_PATHS)
    if prefer is None or prefer not in order:
        return order
    return [prefer, *(r for r in order if r is not prefer)]


async def open_upstream(
    pool: Pool,
    path: str,
    body: bytes,
    request_id: str,
    prefer: Replica | None = None,
    deadline: Deadline | None = None,
    deadline_counts: bool = False,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Upstream:
    """POST ``body`` (JSON) to ``path`` on the best replica of ``pool`` (``prefer`` first).

    Returns the open response once its status is 2xx, trying the next replica after a
    connect error, a timeout or a 5xx answer (nothing has reached the client yet) while
    ``deadline`` allows (``deadline_counts``: a call cut by it is the replica's failure, see
    ``Upstream``). Raises ``BackendUnavailable`` when no replica answered,
    ``BackendTimeout`` when the last one tried stopped answering, and ``BackendError``
    with the backend's status and message for its 4xx/5xx answers. ``headers`` are sent
    too (the pool's scheduler hints). A 429/503 whose scheduler says ``rejected-*`` moves on
    like a 503, ending in ``EngineRejected``; one that says ``evicted-*`` raises
    ``EngineEvicted`` at once (see ``gateway.backends.scheduling``).

    Tracing on, the call is one client span (all its tries) from here to ``Upstream.aclose``,
    and its W3C ``traceparent`` goes out with the request, so vLLM's spans join the trace.
    """
    sent = {**(headers or {}), "content-type": "application/json", "x-request-id": request_id}
    span = backend_span(pool.tracer, pool.name, pool.model, path, sent)
    try:
        upstream = await _open(pool, path, body, sent, prefer, deadline, deadline_counts, key)
    except BaseException as e:
        span.end(e)
        raise
    if pool.tracer.enabled:
        upstream.span = span
        note_replica(span, upstream.replica.url, upstream.response.status_code)
    return upstream


async def _open(
    pool: Pool,
    path: str,
    body: bytes,
    sent: dict[str, str],
    prefer: Replica | None,
    deadline: Deadline | None,
    deadline_counts: bool,
    key: str | None,
) -> Upstream:
    failures: list[str] = []
    last: DeliberateError | None = None
    rejected: EngineRejected | None = None
    for rep in candidates(pool, prefer, key, path):
        if failures and _expired(deadline):
            break  # no time for a retry (the first try is the caller's to time out)
        rep.in_flight += 1
        try:
            response = await pool.send(rep.url + path, body, sent)
        except _RETRYABLE as e:
            rep.in_flight -= 1
            reason = f"{type(e).__name__}: {e}"
            pool.mark_down(rep, reason)
            pool.record_failure(rep, reason)
            failures.append(f"{rep.url}: {type(e).__name__}")
            last = None
            continue
        except httpx.TimeoutException as e:
            rep.in_flight -= 1
            if not isinstance(e, httpx.PoolTimeout):  # our own connection pool, not the replica
                pool.record_failure(rep, f"{type(e).__name__} before the response headers")
            failures.append(f"{rep.url}: {type(e).__name__}")
            last = BackendTimeout(
                f"backend pool {pool.name!r} did not answer in time ({type(e).__name__})"
            )
            continue
        except BaseException:
            rep.in_flight -= 1
            if deadline_counts and _expired(deadline):
                pool.record_failure(rep, "no response headers before the route's deadline")
            raise
        upstream = Upstream(pool, rep, response, deadline, deadline_counts)
        status = response.status_code
        if status < 400:
            return upstream
        drop = dropped(pool, response)
        if status >= 500 and drop is None:
            upstream.failed(f"HTTP {status}")
        else:
            upstream.succeeded()  # a 4xx or a scheduler's drop is no fault of the replica
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await upstream.aclose()
        if drop is not None:
            rejected = drop_error(pool, drop, response)  # raises at once for evicted-*
            failures.append(f"{rep.url}: {drop.reason}")
            continue
        if status in _RETRY_STATUSES:
            failures.append(f"{rep.url}: HTTP {status}")
            last = None if status in _UNAVAILABLE_STATUSES else backend_error(status, raw)
            continue
        raise backend_error(status, raw)
    if rejected is not None:
        raise rejected
    if last is not None:
        raise last
    raise BackendUnavailable(
        f"no replica of backend pool {pool.name!r} could be reached ({'; '.join(failures)})"
    )


async def read_json(upstream: Upstream) -> tuple[bytes, Any]:
    """Read a whole JSON answer and close ``upstream``: (the raw bytes, the parsed value).

    A body that breaks off or is not JSON is the replica's failure, a 502
    ``BackendError``; one that stops arriving within the read timeout a ``BackendTimeout``.
    """
    name = upstream.pool.name
    try:
        raw = await upstream.response.aread()
        data = orjson.loads(raw)
    except httpx.TimeoutException as e:
        upstream.failed(f"{type(e).__name__} reading the body")
        if isinstance(e, httpx.ConnectTimeout):  # aiohttp's name for "server disconnected"
            raise BackendError(
                502, f"backend pool {name!r} broke off its answer ({e})", code="backend_error"
            ) from e
        raise BackendTimeout(
            f"backend pool {name!r} stopped answering mid-body ({type(e).__name__})"
        ) from e
    except httpx.HTTPError as e:
        upstream.failed(f"{type(e).__name__} reading the body")
        raise BackendError(
            502,
            f"backend pool {name!r} broke off its answer ({type(e).__name__})",
            code="backend_error",
        ) from e
    except orjson.JSONDecodeError as e:
        upstream.failed("the body is not JSON")
        raise BackendError(
            502,
            f"backend pool {name!r} answered with invalid JSON",
            code="backend_invalid_response",
        ) from e
    else:
        upstream.succeeded()
        if upstream.pool.tracer.enabled:
            note_answer(upstream.span, data)
    finally:
        await upstream.aclose()
    return raw, data


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
