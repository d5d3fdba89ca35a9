"""Per-key rate limits (requests and tokens per minute), per-key concurrent streams, and
per-variant concurrency, so one school or one busy adapter cannot starve the rest.

One interface (``Limits``), two keepers of the counts:

- ``Limiter``, in this process's memory: the default, for one gateway (here).
- ``RedisLimits``, in Redis (``TUTOR_REDIS_URL``; server/limits_redis.py): several gateways share
  the counts, so together they give a key exactly its limit instead of N times it.

Both meter a reply the same way (``Limits.hold``): its tokens are charged as they stream, one per
delta, and squared with the engine's usage on the last delta, so a reply the client cancels or
an engine that fails half-way is still charged for what was generated. A grounded reply's
corrector turn (server/grounding.py), finished before the first delta, is charged with it.

Why the Redis keeper is written here rather than taken from the ``limits`` package is in
docs/OPERATIONS.md ("Several gateways"): in short, its window strategies refuse (and so drop) a
charge that overshoots, and it has nothing for concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from common.settings import Settings
from server.auth import Principal
from server.engines.base import TextDelta
from server.errors import RateLimited

log = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    """``capacity`` per minute, refilled continuously; it may go negative after a charge."""

    capacity: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now

    def wait_for(self, need: float) -> float:
        """Seconds until ``need`` tokens are there (0: they are now)."""
        self._refill(time.monotonic())
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / (self.capacity / 60.0)

    def take(self, n: float) -> None:
        self._refill(time.monotonic())
        self.tokens -= n


# -- the refusals, worded the same whoever keeps the counts ------------------------------------


def too_many_streams(p: Principal, running: int) -> RateLimited:
    return RateLimited(
        f"key {p.name!r} already has {running} requests running (limit {p.max_streams})",
        retry_after=1,
        code="too_many_streams",
    )


def over_tpm(p: Principal, wait: float) -> RateLimited:
    return RateLimited(
        f"key {p.name!r} is over its {p.tpm} tokens per minute", retry_after=math.ceil(wait)
    )


def over_rpm(p: Principal, wait: float) -> RateLimited:
    return RateLimited(
        f"key {p.name!r} is over its {p.rpm} requests per minute", retry_after=math.ceil(wait)
    )


def variant_busy(variant: str, limit: int, timeout: float) -> RateLimited:
    return RateLimited(
        f"{variant} is busy ({limit} requests running); try again shortly",
        retry_after=max(1, math.ceil(timeout)),
        code="variant_busy",
    )


def _counted(delta: TextDelta, counted: int) -> int:
    """A reply's tokens so far, ``delta`` included.

    Only the last delta carries usage, so until then each delta with content counts as one token
    (vLLM streams about one token per delta); the usage, when it comes, replaces the estimate, so
    the total charged is the engine's own count whenever the engine gives one."""
    if delta.finish_reason is not None and (
        delta.prompt_tokens is not None or delta.completion_tokens is not None
    ):
        return (delta.prompt_tokens or 0) + (delta.completion_tokens or 0)
    if delta.text or delta.tool_calls or delta.logprobs:
        return counted + 1
    return counted


class Limits(ABC):
    """Key limits and variant quotas, whoever keeps the counts.

    The conductor (``ChatService.open_turn``) calls ``admit`` before any work, then wraps the
    engine's deltas in ``hold``; ``ChatService.generate`` takes a ``slot`` of the variant around
    each generation.
    """

    # Tokens counted before they are charged: each one in memory, where a charge costs nothing;
    # a few at a time over the network, so a stream does not wait on Redis at every token.
    charge_every: int = 1

    async def start(self) -> None:
        """Called by the app's lifespan once the event loop runs."""

    async def aclose(self) -> None:
        """Release what the keeper holds; called when the app stops."""

    @abstractmethod
    async def admit(self, p: Principal) -> None:
        """Count one request, or raise 429 with the wait in Retry-After (503 when the counts
        cannot be reached)."""

    @abstractmethod
    def slot(self, variant: str) -> AbstractAsyncContextManager[None]:
        """At most the configured generations of ``variant`` at once; the rest wait a little,
        then 429 ``variant_busy``."""

    @abstractmethod
    async def _open(self, p: Principal) -> Any:
        """Count a running stream of ``p``; returns what ``_close`` needs to uncount it."""

    @abstractmethod
    async def _close(self, p: Principal, handle: Any) -> None:
        """The stream opened by ``_open`` ended, however it ended."""

    @abstractmethod
    async def _charge(self, p: Principal, n: int) -> int:
        """Take ``n`` tokens (a refund when negative) from ``p``'s budget; returns how many were
        charged: 0 when they could not be, so they are tried again with the next charge."""

    async def _settle(self, p: Principal, n: int) -> None:
        """The last charge of a reply, from its ``finally``: nothing may be left uncharged."""
        await self._charge(p, n)

    async def hold(
        self, p: Principal, deltas: AsyncIterator[TextDelta]
    ) -> AsyncIterator[TextDelta]:
        """A reply counts as a running stream until it ends; its tokens are charged as they
        pass, and what is still due is charged when it ends, cancelled or failed included."""
        try:
            handle = await self._open(p)
        except BaseException:
            await deltas.aclose()
            raise
        counted = charged = side = 0  # side: a grounded reply's corrector turn, already done
        try:
            if p.tpm <= 0:  # nothing to meter: the plain loop
                async for delta in deltas:
                    yield delta
                return
            async for delta in deltas:
                counted = _counted(delta, counted)
                side += delta.extra.get("corrector_tokens", 0)
                due = counted + side - charged
                if due >= self.charge_every or (delta.finish_reason is not None and due):
                    charged += await self._charge(p, due)
                yield delta
        finally:
            try:
                if counted + side != charged:
                    await self._settle(p, counted + side - charged)
            finally:
                try:
                    await self._close(p, handle)
                finally:
                    await deltas.aclose()


# -- in memory ---------------------------------------------------------------------------------


@dataclass
class _KeyState:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    streams: int = 0


class VariantGate:
    """At most ``limit`` generations per variant at once; the rest wait a little, then 429."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit, self.timeout = limit, timeout
        self._sems: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, variant: str) -> AsyncIterator[None]:
        if self.limit <= 0:
            yield
            return
        sem = self._sems.setdefault(variant, asyncio.Semaphore(self.limit))
        try:
            if sem.locked():  # wait_for makes a task per call: only when there is a wait
                await asyncio.wait_for(sem.acquire(), self.timeout)
            else:
                await sem.acquire()  # free: returns at once
        except TimeoutError:
            raise variant_busy(variant, self.limit, self.timeout) from None
        try:
            yield
        finally:
            sem.release()


class Limiter(Limits):
    """The counts in this process's memory: exact for one gateway, per gateway for several."""

    def __init__(self, variant_concurrency: int = 0, variant_queue_timeout: float = 5.0) -> None:
        self._keys: dict[str, _KeyState] = {}
        self.gate = VariantGate(variant_concurrency, variant_queue_timeout)

    def _state(self, p: Principal) -> _KeyState:
        state = self._keys.get(p.name)
        if state is None:
            state = self._keys[p.name] = _KeyState(
                TokenBucket(p.rpm) if p.rpm > 0 else None,
                TokenBucket(p.tpm) if p.tpm > 0 else None,
            )
        return state

    async def admit(self, p: Principal) -> None:
        state = self._state(p)
        if p.max_streams > 0 and state.streams >= p.max_streams:
            raise too_many_streams(p, state.streams)
        if state.tokens is not None and (wait := state.tokens.wait_for(1)) > 0:
            raise over_tpm(p, wait)
        if state.requests is not None:
            if (wait := state.requests.wait_for(1)) > 0:
                raise over_rpm(p, wait)
            state.requests.take(1)

    def slot(self, variant: str) -> AbstractAsyncContextManager[None]:
        return self.gate.slot(variant)

    async def _open(self, p: Principal) -> _KeyState:
        state = self._state(p)
        state.streams += 1
        return state

    async def _close(self, p: Principal, handle: _KeyState) -> None:
        handle.streams -= 1

    async def _charge(self, p: Principal, n: int) -> int:
        bucket = self._state(p).tokens
        if bucket is not None:
            bucket.take(n)
        return n


def build_limits(settings: Settings) -> Limits:
    """Redis when ``TUTOR_REDIS_URL`` is set, else this process's memory."""
    if settings.redis_url:
        from server.limits_redis import RedisLimits  # the redis client only when configured

        return RedisLimits(
            settings.redis_url,
            variant_concurrency=settings.variant_concurrency,
            variant_queue_timeout=settings.variant_queue_timeout,
        )
    return Limiter(settings.variant_concurrency, settings.variant_queue_timeout)
