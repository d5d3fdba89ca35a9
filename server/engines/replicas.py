"""Several remote vLLM replicas behind one engine, with adapter-aware routing.

Each replica is a ``VLLMEngine`` of its own (its connection pool, its runtime-LoRA calls); this
engine keeps, per replica, whether it is up, how many requests run on it and which adapter
versions it holds, and asks ``routing.Router`` where each request goes.

- Residency is per replica: a version is loaded on the replica a request is routed to, and each
  replica keeps at most ``max_resident`` versions (least recently used, idle ones go first).
- Unloading a version (a retired one after its drain) removes it from every replica that is up,
  whether or not this gateway loaded it there: another gateway may have. vLLM's unload only
  drops the name, so a stream another gateway still runs on it finishes.
- A replica that fails before a request's first token is marked down and the request moves to
  another one; nothing was sent to the learner yet, so the retry is invisible. A request that
  had started streaming fails as it would with one vLLM. The health loop brings a replica back
  when its ``/health`` answers, with an empty adapter set: a restarted vLLM holds none.
- ``dns+http://name:port/v1`` stands for every address ``name`` resolves to (a headless
  Service); the set is resolved again on each health round, so replicas come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from server.engines.base import AdapterRef, Engine, GenerationRequest, ReplicaStats, TextDelta
from server.engines.routing import Policy, Router
from server.engines.vllm_engine import VLLMEngine
from server.errors import EngineError, EngineUnavailable

log = logging.getLogger(__name__)

DNS_PREFIX = "dns+"


@dataclass
class Replica:
    """One vLLM server as the gateway sees it."""

    url: str
    engine: VLLMEngine
    capacity: int  # versions it keeps loaded (TUTOR_MAX_RESIDENT_ADAPTERS)
    up: bool = True
    in_flight: int = 0
    resident: OrderedDict[str, AdapterRef] = field(default_factory=OrderedDict)  # LRU first
    using: Counter[str] = field(default_factory=Counter)  # version -> requests running here
    routed: Counter[str] = field(default_factory=Counter)
    loads: int = 0
    retries: int = 0
    gone: bool = False  # no longer in DNS: closed once idle
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def holds(self, adapter: str) -> bool:
        return adapter in self.resident

    def has_room(self) -> bool:
        return len(self.resident) < self.capacity

    def forget(self) -> None:
        """A replica that was down may have restarted: assume it holds nothing."""
        self.resident.clear()
        self.engine.forget_adapters()


class VLLMReplicaSet(Engine):
    """The ``vllm`` engine over several replicas (``TUTOR_VLLM_URLS``)."""

    name = "vllm"
    optional_params = VLLMEngine.optional_params
    places_adapters = True

    def __init__(
        self,
        urls: Sequence[str],
        *,
        served_model: str,
        max_lora_rank: int = 16,
        max_resident: int = 8,
        timeout: float = 120.0,
        api_key: str = "none",
        routing: Policy = "affinity",
        load_factor: float = 1.25,
        health_interval: float = 1.0,
    ) -> None:
        if not urls:
            raise ValueError("no vLLM replica URLs")
        self.specs = [u.strip() for u in urls if u.strip()]
        self.served_model = served_model
        self.max_lora_rank = max_lora_rank
        self.max_resident = max(1, max_resident)
        self.timeout = timeout
        self.api_key = api_key
        self.router = Router(routing, load_factor=load_factor)
        self.health_interval = health_interval
        self.replicas: dict[str, Replica] = {}
        self._health: asyncio.Task | None = None

    # -- membership ------------------------------------------------------------------------
    def _replica(self, url: str) -> Replica:
        engine = VLLMEngine(
            url,
            served_model=self.served_model,
            max_lora_rank=self.max_lora_rank,
            timeout=self.timeout,
            api_key=self.api_key,
        )
        return Replica(url=url, engine=engine, capacity=self.max_resident)

    async def _endpoints(self) -> list[str]:
        """The replica URLs the specs stand for now (DNS names resolved)."""
        urls: list[str] = []
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            if not spec.startswith(DNS_PREFIX):
                urls.append(spec.rstrip("/"))
                continue
            parts = urlsplit(spec.removeprefix(DNS_PREFIX))
            host, port = parts.hostname or "", parts.port or 80
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve %s: %s", host, exc)
                continue
            for addr in sorted({info[4][0] for info in infos}):
                netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                urls.append(urlunsplit(parts._replace(netloc=netloc)).rstrip("/"))
        return urls

    async def _sync_members(self) -> None:
        urls = await self._endpoints()
        if not urls and self.replicas:
            return  # a failed lookup keeps the replicas we have
        for url in urls:
            if url not in self.replicas:
                self.replicas[url] = self._replica(url)
                log.info("vLLM replica %s joined", url)
            self.replicas[url].gone = False
        for url, r in list(self.replicas.items()):
            if url not in urls:
                r.gone, r.up = True, False
                if r.in_flight == 0:
                    await self._drop(url)

    async def _drop(self, url: str) -> None:
        r = self.replicas.pop(url)
        log.info("vLLM replica %s left", url)
        await r.engine.aclose()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self._sync_members()
        await self._check_all()
        self._health = asyncio.create_task(self._watch(), name="vllm-replica-health")

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for r in self.replicas.values():
            await r.engine.aclose()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self._sync_members()
                await self._check_all()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("vLLM replica health round failed")

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in list(self.replicas.values())))

    async def _check(self, r: Replica) -> None:
        if r.gone:
            return
        try:
            await r.engine.health()
            ok = True
        except (EngineUnavailable, httpx.HTTPError):
            ok = False
        if ok and not r.up:
            r.forget()
            log.info("vLLM replica %s is back", r.url)
        elif not ok and r.up:
            log.warning("vLLM replica %s is down", r.url)
        r.up = ok

    def _mark_down(self, r: Replica, exc: BaseException) -> None:
        if r.up:
            log.warning(
                "vLLM replica %s failed (%s); it takes no requests until healthy", r.url, exc
            )
        r.up = False

    def _up(self, exclude: Collection[str] = ()) -> list[Replica]:
        return [r for r in self.replicas.values() if r.up and r.url not in exclude]

    # -- adapters --------------------------------------------------------------------------
    async def _place(self, r: Replica, ref: AdapterRef) -> bool:
        """Make ``ref`` resident on ``r``; True if this call loaded it."""
        if ref.name in r.resident:
            r.resident.move_to_end(ref.name)
            return False
        lock = r.locks.setdefault(ref.name, asyncio.Lock())
        async with lock:
            if ref.name in r.resident:
                return False
            await self._make_room(r)
            start = time.perf_counter()
            loaded = await r.engine.load_adapter(ref)
            r.resident[ref.name] = ref
            if loaded:
                r.loads += 1
                log.info("loaded %s on %s in %.3f s", ref.name, r.url, time.perf_counter() - start)
            return loaded

    async def _make_room(self, r: Replica) -> None:
        while len(r.resident) >= self.max_resident:
            idle = next((n for n in r.resident if r.using[n] == 0), None)
            if idle is None:
                return  # every slot serves a request: vLLM's own CPU cache takes the extra one
            r.resident.pop(idle)
            await r.engine.unload_adapter(idle)

    async def load_adapter(self, adapter: AdapterRef) -> bool:
        """Place a version before its first request (a promotion preloads): where the router
        would send it. A version some healthy replica holds is left where it is."""
        up = self._up()
        if not up:
            raise EngineUnavailable("no vLLM replica is up", retry_after=5)
        if any(r.holds(adapter.name) for r in up):
            return False
        r, _ = self.router.choose(up, adapter.name)
        return await self._place(r, adapter)

    async def unload_adapter(self, name: str) -> None:
        for r in list(self.replicas.values()):
            r.resident.pop(name, None)
            if not r.up:
                r.engine.forget_adapter(name)
                continue
            try:
                await r.engine.unload_adapter(name)  # a replica that never had it answers 404
            except EngineError:  # one replica's refusal must not keep it on the others
                log.warning("unloading %s from %s failed", name, r.url, exc_info=True)

    # -- requests --------------------------------------------------------------------------
    ranks_next_tokens = True

    async def next_tokens(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        """On the least busy replica (the base model is on all); another if it is down."""
        tried: set[str] = set()
        while up := self._up(tried):
            r = min(up, key=lambda x: x.in_flight)
            r.in_flight += 1
            try:
                return await r.engine.next_tokens(prompts, top)
            except EngineUnavailable as exc:
                self._mark_down(r, exc)
                tried.add(r.url)
            finally:
                r.in_flight -= 1
        raise EngineUnavailable("no vLLM replica is up", retry_after=5)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        name = request.adapter.name if request.adapter else None
        tried: set[str] = set()
        while True:
            up = self._up(tried)
            if not up:
                raise EngineUnavailable(
                    "no vLLM replica is up" if not tried else "every vLLM replica failed",
                    retry_after=5,
                )
            r, placement = self.router.choose(up, name)
            r.routed[placement] += 1
            r.in_flight += 1
            if name:
                r.using[name] += 1
            started = False
            try:
                if request.adapter is not None:
                    await self._place(r, request.adapter)
                async for delta in r.engine.generate(request):
                    started = True
                    yield delta
                return
            except EngineUnavailable as exc:
                self._mark_down(r, exc)
                if started:
                    raise  # the learner has part of the reply: it fails as with one vLLM
                r.retries += 1
                tried.add(r.url)
            finally:
                r.in_flight -= 1
                if name:
                    r.using[name] -= 1
                    if r.using[name] <= 0:
                        del r.using[name]
                if r.gone and r.in_flight == 0 and r.url in self.replicas:
                    await self._drop(r.url)

    # -- reports ---------------------------------------------------------------------------
    def replica_stats(self) -> list[ReplicaStats]:
        return [
            ReplicaStats(
                url=r.url,
                up=r.up,
                in_flight=r.in_flight,
                adapters=tuple(r.resident),
                routed=dict(r.routed),
                loads=r.loads,
                retries=r.retries,
            )
            for r in self.replicas.values()
        ]

    async def health(self) -> dict[str, Any]:
        up = self._up()
        replicas = [
            {"url": s.url, "up": s.up, "in_flight": s.in_flight, "adapters": list(s.adapters)}
            for s in self.replica_stats()
        ]
        if not up:
            raise EngineUnavailable("no vLLM replica is up", retry_after=5)
        return {
            "engine": self.name,
            "routing": self.router.policy,
            "replicas": replicas,
            "adapters": sorted({a for r in up for a in r.resident}),
        }
