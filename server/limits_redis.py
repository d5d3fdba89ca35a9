"""The key limits and variant quotas kept in Redis (``TUTOR_REDIS_URL``), shared by several
gateways: token buckets and leases as Lua scripts on Redis's clock, a heartbeat that keeps a live
gateway's leases, and a 503 in OpenAI's shape while Redis cannot be reached.

The interface, the refusals' wording and the metering of a reply are server/limits.py's, shared
with the in-memory keeper; only where the counts live differs. Why this is written here rather
than taken from the ``limits`` package: docs/OPERATIONS.md ("Several gateways").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from server.auth import Principal
from server.errors import LimitsUnavailable
from server.limits import Limits, over_rpm, over_tpm, too_many_streams, variant_busy

log = logging.getLogger(__name__)


# -- in Redis ----------------------------------------------------------------------------------

# Every script reads the clock of the Redis server (TIME), never a gateway's: gateways whose
# clocks differ still agree on when a bucket refills and when a lease expires. Each one runs
# atomically, so a check and its update cannot interleave with another gateway's.
_LUA_COMMON = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- TokenBucket's refill: a hash {tokens, stamp}; a missing bucket is a full one
local function refill(key, cap, t)
  local v = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens, stamp = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or stamp == nil then return cap end
  return math.min(cap, tokens + math.max(0, t - stamp) * cap / 60)
end
local function store(key, cap, tokens, t)
  local fmt = '%.6f'
  redis.call('HSET', key, 'tokens', string.format(fmt, tokens), 'stamp', string.format(fmt, t))
  -- gone once it would be full again, which is what a missing bucket means
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) * 60000 / cap) + 1000)
end
-- the leases still alive: a gateway that died stopped refreshing its own
local function live(key, t)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', t)
  return redis.call('ZCARD', key)
end
"""

# KEYS: streams, tpm bucket, rpm bucket. ARGV: max_streams, tpm, rpm (0: no limit).
_ADMIT = """
local t = now()
local max_streams, tpm, rpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if max_streams > 0 then
  local n = live(KEYS[1], t)
  if n >= max_streams then return {'streams', n} end
end
if tpm > 0 then
  local tokens = refill(KEYS[2], tpm, t)
  if tokens < 1 then return {'tpm', tostring((1 - tokens) * 60 / tpm)} end
end
if rpm > 0 then
  local tokens = refill(KEYS[3], rpm, t)
  if tokens < 1 then return {'rpm', tostring((1 - tokens) * 60 / rpm)} end
  store(KEYS[3], rpm, tokens - 1, t)
end
return {'ok'}
"""

# KEYS: a bucket. ARGV: capacity, tokens to take (negative: a refund). Always recorded, even
# past empty: a reply's tokens were spent whether or not they fit.
_CHARGE = """
local t = now()
local cap, n = tonumber(ARGV[1]), tonumber(ARGV[2])
store(KEYS[1], cap, math.min(cap, refill(KEYS[1], cap, t) - n), t)
return 1
"""

# KEYS: a sorted set of leases scored by expiry. ARGV: limit, ttl (s), lease id.
_ACQUIRE = """
local t = now()
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = live(KEYS[1], t)
if n >= limit then return {0, n} end
redis.call('ZADD', KEYS[1], string.format('%.6f', t + ttl), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 2000))
return {1, n + 1}
"""

# KEYS: a sorted set of leases. ARGV: ttl (s), lease ids a live gateway still holds. XX: a lease
# released meanwhile is not brought back.
_REFRESH = """
local t = now()
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', string.format('%.6f', t + ttl), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 2000))
return #ARGV - 1
"""

_SCRIPTS = {"admit": _ADMIT, "charge": _CHARGE, "acquire": _ACQUIRE, "refresh": _REFRESH}

LEASE_TTL = 30.0  # seconds a dead gateway's streams and slots go on counting
LOG_EVERY = 10.0  # seconds between two log lines about an unreachable Redis


def _where(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedisLimits(Limits):
    """The counts in Redis, shared by every gateway that points at it.

    Rates are token buckets (the in-memory ones, in Lua); streams and variant slots are leases
    in sorted sets, scored by their expiry. A live gateway refreshes its leases every third of
    ``lease_ttl``; a dead one's expire, and the next acquire clears them, so nothing leaks.
    """

    charge_every = 16

    def __init__(
        self,
        url: str,
        *,
        variant_concurrency: int = 0,
        variant_queue_timeout: float = 5.0,
        lease_ttl: float = LEASE_TTL,
        prefix: str = "tutor",
    ) -> None:
        try:
            from redis.exceptions import RedisError
        except ImportError as exc:
            raise RuntimeError(
                "TUTOR_REDIS_URL is set but the Redis client is not installed: "
                "pip install 'tutor[redis]'"
            ) from exc
        self.url, self.where = url, _where(url)
        self.variant_limit, self.variant_timeout = variant_concurrency, variant_queue_timeout
        self.lease_ttl, self.prefix = lease_ttl, prefix
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._redis: Any = None  # made in the running loop, at first use
        self._scripts: dict[str, Any] = {}
        self._gateway = uuid.uuid4().hex[:12]  # names this gateway's leases, for whoever looks
        self._seq = itertools.count()
        self._held: dict[str, str] = {}  # lease id -> its sorted set, refreshed while held
        self._heartbeat: asyncio.Task[None] | None = None
        self._tails: set[asyncio.Task[None]] = set()  # releases and last charges in flight
        self._logged = -math.inf

    # -- plumbing ------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._redis is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            # fail within seconds, not the client's default 10 retries: a learner waits on this
            # (options in the URL's query, e.g. ?socket_timeout=5, take precedence)
            self._redis = Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            )
            self._scripts = {
                name: self._redis.register_script(_LUA_COMMON + body)
                for name, body in _SCRIPTS.items()
            }
        return self._redis

    def _note_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.error("rate-limit store %s unreachable: %r", self.where, exc)

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script; Redis unreachable is a 503 the client may retry, never a 500."""
        try:
            self._client()
            return await self._scripts[script](keys=keys, args=args)
        except self._errors as exc:
            self._note_down(exc)
            raise LimitsUnavailable(
                "the gateway cannot reach its rate-limit store; try again shortly"
            ) from exc

    def _key(self, name: str, what: str) -> str:
        # one hash tag per key name: its three keys sit in one Redis Cluster slot
        return f"{self.prefix}:{{key:{name}}}:{what}"

    def _lease(self) -> str:
        return f"{self._gateway}:{next(self._seq)}"

    async def _tail(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` to its end even when the caller is cancelled (a client that went away
        cancels the task that closes its stream): a release or a charge is never dropped."""
        task = asyncio.ensure_future(work)
        self._tails.add(task)
        task.add_done_callback(self._tails.discard)
        await asyncio.shield(task)

    # -- leases --------------------------------------------------------------------------------
    async def _acquire(self, key: str, limit: int) -> tuple[str | None, int]:
        """(lease id, leases now) or (None, leases running) when ``limit`` are running."""
        lease = self._lease()
        ok, running = await self._run("acquire", [key], [limit, self.lease_ttl, lease])
        if not ok:
            return None, int(running)
        self._held[lease] = key
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name="tutor-limits-heartbeat")
        return lease, int(running)

    async def _release(self, lease: str) -> None:
        key = self._held.pop(lease, None)
        if key is None:
            return
        try:
            await self._client().zrem(key, lease)
        except self._errors as exc:  # it expires on its own: no longer refreshed
            self._note_down(exc)

    async def _beat(self) -> None:
        """Keep this gateway's leases alive while it is; ends when it holds none."""
        while self._held:
            await asyncio.sleep(self.lease_ttl / 3)
            by_key: dict[str, list[str]] = defaultdict(list)
            for lease, key in list(self._held.items()):
                by_key[key].append(lease)
            for key, leases in by_key.items():
                try:
                    await self._scripts["refresh"](keys=[key], args=[self.lease_ttl, *leases])
                except self._errors as exc:
                    self._note_down(exc)

    # -- Limits --------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._client().ping()
        except self._errors as exc:
            log.error(
                "rate-limit store %s unreachable (%r): limited requests get 503 until it answers",
                self.where,
                exc,
            )
        else:
            log.info("key limits and variant quotas shared through %s", self.where)

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._tails:
            await asyncio.wait(self._tails, timeout=5)
        # streams cut by the shutdown: free their places now (else they expire with the TTL)
        with suppress(TimeoutError):
            async with asyncio.timeout(5):
                for lease in list(self._held):
                    await self._release(lease)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def admit(self, p: Principal) -> None:
        if p.max_streams <= 0 and p.tpm <= 0 and p.rpm <= 0:
            return
        keys = [self._key(p.name, w) for w in ("streams", "tpm", "rpm")]
        verdict = await self._run("admit", keys, [p.max_streams, p.tpm, p.rpm])
        if verdict[0] == "streams":
            raise too_many_streams(p, int(verdict[1]))
        if verdict[0] == "tpm":
            raise over_tpm(p, float(verdict[1]))
        if verdict[0] == "rpm":
            raise over_rpm(p, float(verdict[1]))

    async def _open(self, p: Principal) -> str | None:
        if p.max_streams <= 0:
            return None
        # admit only looked: another gateway may have taken the last stream since
        lease, running = await self._acquire(self._key(p.name, "streams"), p.max_streams)
        if lease is None:
            if p.rpm > 0:  # as in memory, a request refused for its streams is not counted
                with suppress(LimitsUnavailable):
                    await self._run("charge", [self._key(p.name, "rpm")], [p.rpm, -1])
            raise too_many_streams(p, running)
        return lease

    async def _close(self, p: Principal, handle: str | None) -> None:
        if handle is not None:
            await self._tail(self._release(handle))

    async def _charge(self, p: Principal, n: int) -> int:
        try:
            await self._run("charge", [self._key(p.name, "tpm")], [p.tpm, n])
        except LimitsUnavailable:  # the reply goes on; the tokens are tried again later
            return 0
        return n

    async def _settle(self, p: Principal, n: int) -> None:
        async def last() -> None:
            if await self._charge(p, n) != n:
                log.warning(
                    "%d tokens of key %r not charged: %s unreachable", n, p.name, self.where
                )

        await self._tail(last())

    @asynccontextmanager
    async def slot(self, variant: str) -> AsyncIterator[None]:
        if self.variant_limit <= 0:
            yield
            return
        key = f"{self.prefix}:{{variant:{variant}}}:slots"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.variant_timeout
        pause = 0.02
        while True:
            lease, _ = await self._acquire(key, self.variant_limit)
            if lease is not None:
                break
            left = deadline - loop.time()
            if left <= 0:
                raise variant_busy(variant, self.variant_limit, self.variant_timeout)
            # no queue across gateways: poll, with jitter so waiters do not knock in step
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(pause * 2, 0.25)
        try:
            yield
        finally:
            await self._tail(self._release(lease))
