"""Per-key rate limits (requests and tokens per minute), per-key concurrent streams, and
per-variant concurrency, so one school or one busy adapter cannot starve the rest."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from server.auth import Principal
from server.engines.base import TextDelta
from server.errors import RateLimited


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


@dataclass
class _KeyState:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    streams: int = 0


class Limiter:
    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}

    def _state(self, p: Principal) -> _KeyState:
        state = self._keys.get(p.name)
        if state is None:
            state = self._keys[p.name] = _KeyState(
                TokenBucket(p.rpm) if p.rpm > 0 else None,
                TokenBucket(p.tpm) if p.tpm > 0 else None,
            )
        return state

    def admit(self, p: Principal) -> None:
        """Count one request, or raise 429 with the wait in Retry-After."""
        state = self._state(p)
        if p.max_streams > 0 and state.streams >= p.max_streams:
            raise RateLimited(
                f"key {p.name!r} already has {state.streams} requests running "
                f"(limit {p.max_streams})",
                retry_after=1,
                code="too_many_streams",
            )
        if state.tokens is not None and (wait := state.tokens.wait_for(1)) > 0:
            raise RateLimited(
                f"key {p.name!r} is over its {p.tpm} tokens per minute", retry_after=math.ceil(wait)
            )
        if state.requests is not None:
            if (wait := state.requests.wait_for(1)) > 0:
                raise RateLimited(
                    f"key {p.name!r} is over its {p.rpm} requests per minute",
                    retry_after=math.ceil(wait),
                )
            state.requests.take(1)

    async def hold(
        self, p: Principal, deltas: AsyncIterator[TextDelta]
    ) -> AsyncIterator[TextDelta]:
        """A reply counts as a running stream until it ends; then its tokens are charged."""
        state = self._state(p)
        state.streams += 1
        try:
            async for delta in deltas:
                if delta.finish_reason is not None and state.tokens is not None:
                    state.tokens.take((delta.prompt_tokens or 0) + (delta.completion_tokens or 0))
                yield delta
        finally:
            state.streams -= 1
            await deltas.aclose()


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
            raise RateLimited(
                f"{variant} is busy ({self.limit} requests running); try again shortly",
                retry_after=max(1, math.ceil(self.timeout)),
                code="variant_busy",
            ) from None
        try:
            yield
        finally:
            sem.release()
