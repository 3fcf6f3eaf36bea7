"""A ``BudgetStore`` in Redis, exact across any number of gateway processes.

Each operation is one Lua script, so Redis runs it atomically:

* reserve reads the server's clock (``TIME``, so replicas with skewed clocks agree on the
  windows), checks every limit of the tenant, and only if all fit increments every counter and
  writes ``{prefix}:res:{id}`` (TTL one day + margin): the JSON array ``[tokens, key...]`` of
  the reserved tokens and the token counters it moved. Counter keys are
  ``{prefix}:{tenant}:{kind}:{window}:{bucket}`` and expire ``EXPIRY_MARGIN_S`` after their
  window ends (``EXPIREAT``), so at most window length + margin after their creation.
* settle/release deletes the reservation key and, only if it existed, moves each token counter
  it names by ``used - reserved`` -- and only counters that still exist, so a window that has
  expired is never recreated with a negative value. Acting once per reservation key makes
  settle and release exactly-once across processes, and makes a retried settle harmless.
  (A record of an older version, a bare number, is settled on the counters the caller names.)
* abandon is release by id for a reserve whose reply was lost (a timeout, a dropped
  connection): the script may or may not have run, and a command sent into a paused Redis runs
  when it resumes, after the client gave up. Abandon releases it if it ran and otherwise leaves
  a tombstone (``[0]``) so that a late run commits nothing.

Reserving an id that is still open commits nothing and returns it again, so a reserve retried
after a lost reply cannot charge twice. Keys the reserve script builds are not declared to
Redis, so this store targets a standalone Redis (or a primary with replicas), not Redis
Cluster. Every Redis or socket failure surfaces as ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from budgets.ledger import (
    WINDOW_SECONDS,
    Denied,
    Granted,
    Kind,
    Reservation,
    StoreUnavailable,
    TenantLimits,
    WindowName,
    bucket_of,
)
from budgets.memory_store import charge, denial, quota, token_windows

EXPIRY_MARGIN_S = 60
"""How long a counter outlives its window (late settles of that window still land)."""
RESERVATION_TTL_S = 86_400 + 3_600
"""How long an open reservation can still be settled."""

_RESERVE = """
local prefix, tenant, id = ARGV[1], ARGV[2], ARGV[3]
local tokens, res_ttl, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local sec = tonumber(t[1])
local n = (#ARGV - 6) / 4
local keys, kinds, amounts, limits, buckets, expiry = {}, {}, {}, {}, {}, {}
for i = 1, n do
  local b = 6 + (i - 1) * 4
  local kind, window, size = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3])
  buckets[i] = math.floor(sec / size)
  keys[i] = prefix .. ':' .. tenant .. ':' .. kind .. ':' .. window .. ':'
    .. string.format('%d', buckets[i])
  kinds[i] = kind
  amounts[i] = (kind == 'tokens') and tokens or 1
  limits[i] = tonumber(ARGV[b + 4])
  expiry[i] = (buckets[i] + 1) * size + margin
end
local res_key = prefix .. ':res:' .. id
local status, blocking = 1, 0
local held = redis.call('GET', res_key)
if held then
  local record = cjson.decode(held)
  status, tokens = 2, (type(record) == 'table') and record[1] or record
else
  for i = 1, n do
    if tonumber(redis.call('GET', keys[i]) or '0') + amounts[i] > limits[i] then
      status, blocking = 0, i
      break
    end
  end
  if status == 1 then
    local done, record = {}, {tokens}
    for i = 1, n do
      if not done[keys[i]] then
        done[keys[i]] = true
        redis.call('INCRBY', keys[i], amounts[i])
        redis.call('EXPIREAT', keys[i], expiry[i])
        if kinds[i] == 'tokens' then record[#record + 1] = keys[i] end
      end
    end
    redis.call('SET', res_key, cjson.encode(record), 'EX', res_ttl)
  end
end
local out = {status, blocking, sec, tonumber(t[2]), tokens}
for i = 1, n do
  out[#out + 1] = buckets[i]
  out[#out + 1] = tonumber(redis.call('GET', keys[i]) or '0')
end
return out
"""

_SETTLE = """
local held = redis.call('GET', KEYS[1])
if not held then
  if ARGV[2] == '1' then redis.call('SET', KEYS[1], '[0]', 'EX', ARGV[3]) end
  return 0
end
redis.call('DEL', KEYS[1])
local record, counters = cjson.decode(held), {}
if type(record) == 'table' then
  for i = 2, #record do counters[#counters + 1] = record[i] end
  record = record[1]
else
  for i = 2, #KEYS do counters[#counters + 1] = KEYS[i] end
end
local delta = tonumber(ARGV[1]) - tonumber(record)
if delta ~= 0 then
  for _, key in ipairs(counters) do
    if redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, delta) < 0 then
        redis.call('SET', key, 0, 'KEEPTTL')
      end
    end
  end
end
return 1
"""


@contextlib.contextmanager
def _unavailable(operation: str) -> Iterator[None]:
    """Turn any Redis or socket failure into ``StoreUnavailable`` (chained)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis {operation} failed: {exc!r}") from exc


class RedisStore:
    """Tenant budgets shared by every gateway process using the same Redis and ``prefix``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "deliberate") -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "deliberate", **kw: Any) -> RedisStore:
        """A store on ``redis://`` or ``rediss://`` ``url``, tuned to fail fast.

        A dead or hung Redis costs a request at most one timeout (0.5 s to connect, 0.75 s to
        answer): timeouts are not retried. Connection errors get one immediate retry, which
        transparently reconnects a pooled connection broken by a Redis restart (a retried
        reserve is idempotent by its id, a retried settle by its reservation key). ``kw``
        overrides any ``redis.asyncio.from_url`` option.
        """
        options: dict[str, Any] = {
            "socket_connect_timeout": 0.5,
            "socket_timeout": 0.75,
            "health_check_interval": 15,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        options.update(kw)
        return cls(aioredis.from_url(url, **options), prefix=prefix)

    def _counter_key(self, tenant: str, kind: Kind, window: WindowName, bucket: int) -> str:
        return f"{self._prefix}:{tenant}:{kind}:{window}:{bucket}"

    def _reservation_key(self, reservation_id: str) -> str:
        return f"{self._prefix}:res:{reservation_id}"

    async def reserve(
        self, limits: TenantLimits, tokens: int, reservation_id: str
    ) -> Granted | Denied:
        """Commit ``tokens`` and one request to every limit's current window, if all fit."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        args: list[str | int] = [
            self._prefix,
            limits.tenant,
            reservation_id,
            tokens,
            RESERVATION_TTL_S,
            EXPIRY_MARGIN_S,
        ]
        for lim in limits.limits:
            args += [lim.kind, lim.window, WINDOW_SECONDS[lim.window], lim.limit]
        with _unavailable("reserve"):
            raw = await self._reserve(keys=[], args=args)
        status, blocking, sec, usec, held, *per_limit = (int(v) for v in raw)
        now = sec + usec / 1_000_000
        quotas = tuple(quota(lim, per_limit[2 * i + 1], now) for i, lim in enumerate(limits.limits))
        if status == 0:
            lim = limits.limits[blocking - 1]
            return denial(quotas, blocking - 1, charge(lim, tokens))
        buckets = {lim.window: per_limit[2 * i] for i, lim in enumerate(limits.limits)}
        reservation = Reservation(
            id=reservation_id,
            tenant=limits.tenant,
            tokens=held,
            buckets=tuple((w, buckets[w]) for w in token_windows(limits)),
        )
        return Granted(reservation, quotas)

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Replace the reservation by ``used`` tokens; a no-op after its first settle/release."""
        keys = [self._reservation_key(reservation.id)]
        keys += [
            self._counter_key(reservation.tenant, "tokens", window, bucket)
            for window, bucket in reservation.buckets
        ]
        with _unavailable("settle"):
            await self._settle(keys=keys, args=[max(0, used), 0, 0])

    async def release(self, reservation: Reservation) -> None:
        """Give the reserved tokens back; the request itself stays counted."""
        await self.settle(reservation, 0)

    async def abandon(self, reservation_id: str) -> None:
        """Undo a reserve whose reply never came: release it if Redis committed it, and leave a
        tombstone otherwise, so a copy of it Redis runs later (sent into a paused server) finds
        the id held and commits nothing."""
        keys = [self._reservation_key(reservation_id)]
        with _unavailable("abandon"):
            await self._settle(keys=keys, args=[0, 1, RESERVATION_TTL_S])

    async def committed(self, tenant: str, window: WindowName, kind: Kind = "tokens") -> int:
        """The current window's counter (by Redis server time)."""
        with _unavailable("read"):
            sec, _usec = await self._client.time()
            value = await self._client.get(
                self._counter_key(tenant, kind, window, bucket_of(sec, window))
            )
        return int(value or 0)

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        with _unavailable("close"):
            await self._client.aclose()
