"""Which adapter version each variant uses, and which versions the engine holds.

A variant is an alias that points at one immutable adapter version (``tutor-es-l2@3``). Versions
load into the engine on demand, the first time a request needs them, and at most
``max_resident`` stay loaded (least recently used goes first). A name is never reused inside the
engine, so a stale prefix cache can never serve old weights under a new version.

Promotion never interrupts anyone: the new version loads first, then the alias switches (one
assignment in the event loop), requests already running keep the version they started with, and
the old version unloads when its last request finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress

from adapters.registry import AdapterVersion, Registry, VersionNotFound
from adapters.validation import AdapterValidationError, validate_adapter
from server.engines.base import AdapterRef, Engine
from server.errors import AdapterNotFound, Conflict, InvalidAdapter
from server.metrics import Metrics

log = logging.getLogger(__name__)


class AdapterManager:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        base_model: str,
        max_resident: int,
        metrics: Metrics,
        pinned: Mapping[str, AdapterRef] | None = None,
        poll_interval: float = 1.0,
        base_aliases: tuple[str, ...] = (),
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.base_model = base_model
        # other names of the served base (its public id, the configured model): a version whose
        # adapter declares any of them fits; one trained on another base never reaches the engine
        self.base_aliases = base_aliases
        self.max_resident = max(1, max_resident)
        self.metrics = metrics
        self.poll_interval = poll_interval
        self._pinned = dict(pinned or {})  # variant -> adapter fixed by configuration
        self._alias: dict[str, AdapterRef] = {}  # variant -> live version, from the registry
        self._versions: dict[str, AdapterRef] = {}  # validated registry versions by name
        self._resident: OrderedDict[str, AdapterRef] = OrderedDict()  # LRU order
        self._refs: Counter[str] = Counter()
        self._retired: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: set[str] = set()  # cold loads in flight, counted against the limit
        self._removed: set[str] = set()  # versions deleted by remove(); never loaded again
        self._seen_version: tuple[int, int] | None = None
        self._watcher: asyncio.Task | None = None
        self._refresh_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        if self.poll_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="adapter-registry-watcher")

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self) -> None:
        """Pick up promotions made elsewhere (the CLI, another gateway) within a poll interval."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                # a thread: on PostgreSQL this is a query, which must not stall the event loop
                if await asyncio.to_thread(self.registry.data_version) != self._seen_version:
                    await self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad refresh
                log.exception("adapter registry refresh failed")

    # -- lookups ---------------------------------------------------------------------------
    def current(self, variant: str) -> AdapterRef | None:
        return self._pinned.get(variant) or self._alias.get(variant)

    def aliases(self) -> dict[str, str]:
        names = {v: r.name for v, r in self._alias.items()}
        names.update({v: r.name for v, r in self._pinned.items()})
        return names

    def resident(self) -> list[str]:
        return list(self._resident)

    async def version(self, name: str) -> tuple[AdapterVersion, AdapterRef]:
        """A registered version, checked from its files (exist, hash) before first use."""
        try:
            version = await asyncio.to_thread(self.registry.get, name)
        except VersionNotFound as exc:
            raise AdapterNotFound(str(exc), param="model") from exc
        ref = self._versions.get(name)
        if ref is None:
            try:
                await asyncio.to_thread(
                    validate_adapter,
                    version.path,
                    base_model=self.base_model,
                    max_rank=self.engine.max_lora_rank,
                    base_aliases=self.base_aliases,
                    expected_sha256=version.sha256,
                )
            except AdapterValidationError as exc:
                raise InvalidAdapter(f"{name}: {exc}") from exc
            ref = self._versions[name] = AdapterRef(name=name, path=version.path)
        return version, ref

    # -- use -------------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, ref: AdapterRef) -> AsyncIterator[float | None]:
        """Hold ``ref`` loaded for one request; yields the cold-load time, or None if warm.

        The count goes up before anything is awaited, so an unload that has not started yet
        sees the request and leaves the version alone."""
        self._refs[ref.name] += 1
        try:
            yield await self._ensure_loaded(ref)
        finally:
            self._refs[ref.name] -= 1
            if self._refs[ref.name] <= 0:
                del self._refs[ref.name]
                if ref.name in self._retired:
                    await self._unload(ref.name)

    def _lock(self, name: str) -> asyncio.Lock:
        """One lock per version name: its load and its unload never overlap, so a request for
        a version being unloaded waits, then loads it again."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def _ensure_loaded(self, ref: AdapterRef) -> float | None:
        async with self._lock(ref.name):
            if ref.name in self._removed:  # removed while this request waited for the lock
                raise AdapterNotFound(f"the adapter version {ref.name!r} was removed")
            start = time.perf_counter()
            if ref.name not in self._resident:
                self._loading.add(ref.name)
                try:
                    await self._make_room()
                    loaded = await self.engine.load_adapter(ref)  # False: it was already there
                finally:
                    self._loading.discard(ref.name)
            else:
                loaded = await self.engine.load_adapter(ref)  # idempotent: an engine restarted
            self._resident[ref.name] = ref
            self._resident.move_to_end(ref.name)
            self.metrics.adapter_resident.labels(ref.name).set(1)
            if not loaded:
                return None
            elapsed = time.perf_counter() - start
            self.metrics.adapter_load.observe(elapsed)
            log.info("loaded adapter %s in %.3f s", ref.name, elapsed)
            return elapsed

    async def _make_room(self) -> None:
        """Unload least recently used versions that no request holds, until the resident ones
        and the loads in flight (this one among them) fit the limit."""
        if self.engine.places_adapters:  # the engine keeps each replica's own LRU
            return
        idle = [n for n in self._resident if self._refs[n] == 0]
        # versions no alias points to go before live ones
        idle.sort(key=lambda n: self._is_live(n))
        while len(self._resident) + len(self._loading) > self.max_resident and idle:
            await self._unload(idle.pop(0))  # skips one a request took meanwhile

    def _is_live(self, name: str) -> bool:
        return any(r.name == name for r in (*self._alias.values(), *self._pinned.values()))

    async def _unload(self, name: str) -> bool:
        """Unload ``name`` unless a request holds it (one may have taken it since the caller
        looked); a retired version a request took stays retired, and its last holder unloads
        it. True when it is not in the engine any more."""
        async with self._lock(name):
            return await self._unload_locked(name)

    async def _unload_locked(self, name: str) -> bool:
        if self._refs[name] > 0:
            return False
        self._retired.discard(name)
        if self._resident.pop(name, None) is None:
            return True
        with contextlib.suppress(KeyError):  # a version loaded before metrics existed
            self.metrics.adapter_resident.remove(name)
        try:
            await self.engine.unload_adapter(name)
            log.info("unloaded adapter %s", name)
        except Exception:  # noqa: BLE001 - an engine that restarted has already forgotten it
            log.warning("unloading %s failed", name, exc_info=True)
        return True

    # -- promotion -------------------------------------------------------------------------
    async def promote(self, variant: str, name: str) -> tuple[str | None, str]:
        version, ref = await self.version(name)
        if version.variant != variant:
            raise Conflict(f"{name} belongs to {version.variant}, not {variant}")
        await self._ensure_loaded(ref)  # load first: the switch never waits on a cold load
        result = await asyncio.to_thread(self.registry.promote, variant, name)
        await self.refresh()
        return result

    async def rollback(self, variant: str) -> tuple[str | None, str]:
        history = await asyncio.to_thread(self.registry.history, variant)
        if len(history) >= 2:
            _, ref = await self.version(history[-2])
            await self._ensure_loaded(ref)
        result = await asyncio.to_thread(self.registry.rollback, variant)
        await self.refresh()
        return result

    async def remove(self, name: str) -> None:
        """Unload (if idle) and delete a version; vLLM must never lose files it still holds.
        All under the version's lock: a request that asks for it meanwhile waits, then finds
        it gone, and one that took it first makes the removal a Conflict."""
        if self._is_live(name):
            raise Conflict(f"{name} is live: promote another version first")
        async with self._lock(name):
            if not await self._unload_locked(name):
                raise Conflict(f"{name} is serving {self._refs[name]} request(s); try again later")
            self._versions.pop(name, None)
            self._removed.add(name)  # names are never reused: it stays gone
            await asyncio.to_thread(self.registry.remove, name)

    async def refresh(self) -> None:
        """Apply the registry's aliases: load each new version, switch, retire the old one."""
        async with self._refresh_lock:
            self._seen_version = await asyncio.to_thread(self.registry.data_version)
            aliases = await asyncio.to_thread(self.registry.aliases)
            for variant, name in aliases.items():
                old = self._alias.get(variant)
                if old is not None and old.name == name:
                    continue
                try:
                    _, ref = await self.version(name)
                except (AdapterNotFound, InvalidAdapter):
                    log.exception("cannot switch %s to %s; it keeps %s", variant, name, old)
                    continue
                if variant not in self._pinned:
                    try:
                        await self._ensure_loaded(ref)
                    except Exception:  # noqa: BLE001 - engine down: the first request loads it
                        log.warning("preloading %s failed; it loads on demand", name)
                self._alias[variant] = ref  # the switch: one assignment, nothing awaits here
                self._retired.discard(name)
                log.info("%s now points to %s (was %s)", variant, name, old.name if old else None)
                if old is not None and not self._is_live(old.name):
                    self._retired.add(old.name)
                    if self._refs[old.name] == 0:
                        await self._unload(old.name)
