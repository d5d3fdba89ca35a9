"""The adapter manager (server/adapter_manager.py) on its own: LRU, refcounts, drain, races.

The manager is the gateway's most stateful class: which version each variant points at, which
versions the engine holds, and who is using them. The end-to-end tests (tests/server/test_vllm.py,
the API tests) only see its effects through whole requests, where a version unloaded one request
too early or loaded twice looks like a slow or a flaky reply. Here every load and unload the
engine sees is recorded and checked, and the races are made to happen on purpose: an engine
double holds a load or an unload on an ``asyncio.Event`` while the next request arrives.

The registry is a real SQLite ``Registry`` in ``tmp_path`` with real PEFT folders for the tiny
model, so the manager's validation (files, hash, base model, rank) runs as it does in
production; one test puts the same manager in front of the real transformers engine.

The tests under "races" were written first as strict xfails: they showed three races (an
eviction pass unloading a version a request took meanwhile, unloads outside the version's lock,
overlapping cold loads over the limit), since fixed in server/adapter_manager.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from adapters.registry import Registry, RegistryError, VersionNotFound
from common.settings import Settings
from server.adapter_manager import AdapterManager
from server.app import base_identity
from server.engines.base import AdapterRef, Engine, GenerationRequest
from server.errors import AdapterNotFound, Conflict, EngineUnavailable, InvalidAdapter
from server.metrics import Metrics

T = TypeVar("T")

VARIANT = "tutor-es-l2"  # a catalogue variant: @1 (live), @2 and @3 are registered
POOL = "pool"  # versions no alias points at, asked for by name: LRU order alone decides
MAX_RANK = 16  # the settings' default max_lora_rank
TIMEOUT = 20.0  # a scenario that hangs (a lock never released) fails instead of stalling
WATCHER = "adapter-registry-watcher"  # the name of the manager's polling task


def v(n: int) -> str:
    return f"{VARIANT}@{n}"


def p(n: int) -> str:
    return f"{POOL}@{n}"


# -- the engine double ---------------------------------------------------------------------------
class RecordingEngine(Engine):
    """Test double: records the adapter loads and unloads the manager asks for, in order, and
    generates nothing (these tests are about routing, not text).

    Like the real engines, ``load_adapter`` is idempotent (False when already loaded), and an
    unload forgets the name only when it completes, as the transformers engine does (its worker
    thread drops the adapter when the queued unload runs). ``block_load``/``block_unload`` hold
    one name's load or unload on an event, so a test can send the next request while it is in
    flight.
    """

    name = "recording"
    max_lora_rank = MAX_RANK

    def __init__(self, *, places_adapters: bool = False) -> None:
        self.places_adapters = places_adapters
        self.loaded: set[str] = set()
        self.events: list[tuple[str, str]] = []  # ("load" | "unload", name), in order
        self.fail_load: set[str] = set()
        self._load_gates: dict[str, asyncio.Event] = {}
        self._unload_gates: dict[str, asyncio.Event] = {}
        self.load_started: dict[str, asyncio.Event] = {}
        self.unload_started: dict[str, asyncio.Event] = {}

    def block_load(self, name: str) -> asyncio.Event:
        """The next load of ``name`` waits until the returned event is set."""
        self.load_started[name] = asyncio.Event()
        gate = self._load_gates[name] = asyncio.Event()
        return gate

    def block_unload(self, name: str) -> asyncio.Event:
        """The next unload of ``name`` waits until the returned event is set."""
        self.unload_started[name] = asyncio.Event()
        gate = self._unload_gates[name] = asyncio.Event()
        return gate

    def loads(self, name: str) -> int:
        return self.events.count(("load", name))

    def unloads(self, name: str) -> int:
        return self.events.count(("unload", name))

    async def load_adapter(self, adapter: AdapterRef) -> bool:
        if adapter.name in self.loaded:
            return False
        if adapter.name in self.fail_load:
            raise EngineUnavailable(f"the engine refused to load {adapter.name}")
        self.events.append(("load", adapter.name))
        if adapter.name in self._load_gates:
            self.load_started[adapter.name].set()
            await self._load_gates.pop(adapter.name).wait()
        self.loaded.add(adapter.name)
        return True

    async def unload_adapter(self, name: str) -> None:
        self.events.append(("unload", name))
        if name in self._unload_gates:
            self.unload_started[name].set()
            await self._unload_gates.pop(name).wait()
        self.loaded.discard(name)

    def generate(self, request: GenerationRequest) -> Any:
        raise NotImplementedError("a routing double generates nothing")

    async def health(self) -> dict[str, Any]:
        return {"engine": self.name, "adapters": sorted(self.loaded)}


# -- the registry and the manager ----------------------------------------------------------------
@dataclass
class World:
    registry: Registry
    base_model: str  # the served base's source, as ChatService passes it
    base_aliases: tuple[str, ...]
    runs: Path  # a folder inside the registry's roots, for adapters a test makes


@pytest.fixture
def world(
    tmp_path: Path, tiny_adapters: dict[str, Path], tiny_settings: Settings
) -> Iterator[World]:
    """A fresh SQLite registry: tutor-es-l2@1..3 (alias on @1) and pool@1..4 (no alias), all
    real random adapters for the tiny model (es and zh weights, alternating)."""
    public_id, source = base_identity(tiny_settings)
    aliases = (public_id, tiny_settings.model)
    runs = tmp_path / "runs"
    runs.mkdir()
    registry = Registry(
        tmp_path / "registry.sqlite",
        store=tmp_path / "store",
        roots=[runs, tiny_adapters["es"].parent],
    )
    for variant, keys in ((VARIANT, ["es", "zh", "es"]), (POOL, ["es", "zh", "es", "zh"])):
        for key in keys:
            registry.add(
                tiny_adapters[key],
                variant=variant,
                base_model=source,
                max_rank=MAX_RANK,
                base_aliases=aliases,
            )
    registry.promote(VARIANT, v(1))
    yield World(registry, source, aliases, runs)
    registry.close()


def make_manager(
    engine: Engine,
    world: World,
    *,
    max_resident: int,
    pinned: dict[str, AdapterRef] | None = None,
    poll_interval: float = 0.0,
) -> AdapterManager:
    """Built as ChatService.start builds it (server/serving.py); no watcher unless asked."""
    return AdapterManager(
        engine,
        world.registry,
        base_model=world.base_model,
        base_aliases=world.base_aliases,
        max_resident=max_resident,
        metrics=Metrics(),
        pinned=pinned,
        poll_interval=poll_interval,
    )


def other_gateway(world: World) -> Registry:
    """The same registry opened again: another gateway, or the `tutor adapters` CLI."""
    r = world.registry
    return Registry(r.location, store=r.store, roots=r.roots)


# -- helpers -------------------------------------------------------------------------------------
def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def ref(manager: AdapterManager, name: str) -> AdapterRef:
    """A validated version, as ChatService.resolve gets one for a model named ``x@n``."""
    return (await manager.version(name))[1]


async def use_once(manager: AdapterManager, adapter: AdapterRef) -> float | None:
    """One request through ``adapter``: its cold-load time, or None when it was warm."""
    async with manager.use(adapter) as cold:
        return cold


async def hold(
    manager: AdapterManager, adapter: AdapterRef
) -> tuple[contextlib.AsyncExitStack, float | None]:
    """A request that has started and keeps ``adapter`` until the stack is closed."""
    stack = contextlib.AsyncExitStack()
    cold = await stack.enter_async_context(manager.use(adapter))
    return stack, cold


async def settle() -> None:
    """Let every task run until it blocks (on a lock or a gate; not on a thread)."""
    for _ in range(20):
        await asyncio.sleep(0)


def gauge_series(manager: AdapterManager) -> set[str]:
    """The versions /metrics reports as resident (tutor_adapter_resident)."""
    return {
        s.labels["adapter"]
        for m in manager.metrics.registry.collect()
        if m.name == "tutor_adapter_resident"
        for s in m.samples
        if s.value == 1
    }


def assert_in_step(engine: RecordingEngine, manager: AdapterManager) -> None:
    """The manager's view, the engine's and /metrics agree: every later request relies on it."""
    assert set(manager.resident()) == engine.loaded
    assert gauge_series(manager) == engine.loaded


# -- 1. LRU --------------------------------------------------------------------------------------
def test_lru_unloads_exactly_the_least_recently_used_version(world: World) -> None:
    """With room for two, a third version unloads the first one used, and only it, before it
    loads (the engine never holds more than the limit)."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager, list[float | None]]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        colds = [await use_once(manager, await ref(manager, p(n))) for n in (1, 2, 3)]
        return engine, manager, colds

    engine, manager, colds = run(scenario())
    assert all(c is not None for c in colds)  # each one a cold load, timed
    assert engine.events == [
        ("load", p(1)),
        ("load", p(2)),
        ("unload", p(1)),
        ("load", p(3)),
    ]
    assert manager.resident() == [p(2), p(3)]
    assert_in_step(engine, manager)


def test_using_a_resident_version_refreshes_its_place(world: World) -> None:
    """A warm use moves the version to the back of the queue: the next eviction takes the other
    one, though it was loaded later; the warm use itself costs no engine load."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager, float | None]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        a, b, c = [await ref(manager, p(n)) for n in (1, 2, 3)]
        await use_once(manager, a)
        await use_once(manager, b)
        warm = await use_once(manager, a)
        await use_once(manager, c)
        return engine, manager, warm

    engine, manager, warm = run(scenario())
    assert warm is None
    assert engine.events == [
        ("load", p(1)),
        ("load", p(2)),
        ("unload", p(2)),
        ("load", p(3)),
    ]
    assert manager.resident() == [p(1), p(3)]
    assert_in_step(engine, manager)


def test_idle_versions_no_alias_points_to_go_before_live_ones(world: World) -> None:
    """A live version (a registry alias, or pinned by configuration) is what the next learner of
    that variant needs, so an idle version nobody points at is evicted first, even when the live
    one is older in the LRU order."""
    pinned = AdapterRef("tutor-es-pinned", world.registry.get(p(1)).path)

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=3, pinned={"tutor": pinned})
        await manager.start()  # loads the alias's version, tutor-es-l2@1
        await use_once(manager, pinned)
        await use_once(manager, await ref(manager, p(2)))
        # LRU order now: tutor-es-l2@1, tutor-es-pinned, pool@2; pure LRU would evict the first
        await use_once(manager, await ref(manager, p(3)))
        await use_once(manager, await ref(manager, p(4)))
        return engine, manager

    engine, manager = run(scenario())
    assert [e for e in engine.events if e[0] == "unload"] == [("unload", p(2)), ("unload", p(3))]
    assert manager.resident() == [v(1), "tutor-es-pinned", p(4)]
    assert_in_step(engine, manager)


def test_an_engine_that_places_adapters_itself_is_never_asked_to_make_room(world: World) -> None:
    """With several replicas the engine keeps each one's LRU (``places_adapters``): the manager
    must not evict on its behalf, but a version retired by a promotion is still unloaded."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine(places_adapters=True)
        manager = make_manager(engine, world, max_resident=1)
        await manager.start()
        for n in (1, 2, 3):
            await use_once(manager, await ref(manager, p(n)))
        assert engine.unloads(v(1)) == 0 and len(engine.loaded) == 4
        await manager.promote(VARIANT, v(2))
        return engine, manager

    engine, manager = run(scenario())
    assert [e for e in engine.events if e[0] == "unload"] == [("unload", v(1))]
    assert set(manager.resident()) == {p(1), p(2), p(3), v(2)}
    assert_in_step(engine, manager)


# -- 2. refcounts --------------------------------------------------------------------------------
def test_a_version_in_use_is_never_unloaded_to_make_room(world: World) -> None:
    """pool@1 is the least recently used but a request holds it: the next version in LRU order
    goes instead; once the request ends, pool@1 is the first to go."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        a, b, c, d = [await ref(manager, p(n)) for n in (1, 2, 3, 4)]
        request, _ = await hold(manager, a)
        await use_once(manager, b)
        await use_once(manager, c)
        assert engine.unloads(p(1)) == 0 and p(1) in engine.loaded
        await request.aclose()
        assert p(1) in engine.loaded  # ending a request does not unload a version by itself
        await use_once(manager, d)
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [
        ("load", p(1)),
        ("load", p(2)),
        ("unload", p(2)),
        ("load", p(3)),
        ("unload", p(1)),
        ("load", p(4)),
    ]
    assert manager.resident() == [p(3), p(4)]
    assert_in_step(engine, manager)


def test_when_every_resident_version_is_busy_the_limit_is_exceeded_then_restored(
    world: World,
) -> None:
    """All resident versions are in use and a request needs another: the manager loads it at
    once, one over the limit, and trims back at the next cold load.

    Right because the limit is a memory budget, not a hard engine limit (vLLM is started with
    ``--max-cpu-loras`` of at least ``max_resident_adapters``, and evicts from that cache on its
    own): waiting instead would stall a learner behind other learners' whole generations (and
    forever if those requests wait on this one), and raising would fail a request the engine can
    serve. The test would hang (and time out) if ``use`` waited for room.
    """

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        a, b, c, d = [await ref(manager, p(n)) for n in (1, 2, 3, 4)]
        held = [await hold(manager, r) for r in (a, b)]
        third, cold = await asyncio.wait_for(hold(manager, c), 5)
        assert cold is not None
        assert manager.resident() == [p(1), p(2), p(3)] and engine.unloads(p(1)) == 0
        for stack, _ in held:
            await stack.aclose()
        await third.aclose()
        assert len(engine.loaded) == 3  # nothing trims on release: only a cold load makes room
        await use_once(manager, d)
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events[3:] == [("unload", p(1)), ("unload", p(2)), ("load", p(4))]
    assert manager.resident() == [p(3), p(4)]
    assert_in_step(engine, manager)


def test_a_failed_load_releases_its_reference(world: World) -> None:
    """An engine that refuses a load must not leave the version counted as in use, or it could
    never be evicted nor removed again."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        engine.fail_load.add(p(1))
        with pytest.raises(EngineUnavailable):
            await use_once(manager, await ref(manager, p(1)))
        await manager.remove(p(1))  # a Conflict ("serving 1 request") here is the bug
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [] and manager.resident() == []
    with pytest.raises(VersionNotFound):
        world.registry.get(p(1))


# -- 3. drain on promotion -----------------------------------------------------------------------
def test_promotion_switches_at_once_and_drains_the_old_version(world: World) -> None:
    """Two requests hold tutor-es-l2@1 while @2 is promoted: the alias moves at once, new
    requests get @2 already loaded, and @1 stays loaded until the second holder leaves; then it
    is unloaded exactly once, and never again."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        old = manager.current(VARIANT)
        assert old is not None and old.name == v(1)
        first, _ = await hold(manager, old)
        second, _ = await hold(manager, old)

        assert await manager.promote(VARIANT, v(2)) == (v(1), v(2))
        new = manager.current(VARIANT)
        assert new is not None and new.name == v(2)
        assert manager.aliases()[VARIANT] == v(2) == world.registry.alias(VARIANT)
        assert await use_once(manager, new) is None  # loaded before the switch: warm
        assert v(1) in engine.loaded and engine.unloads(v(1)) == 0

        await first.aclose()
        assert v(1) in engine.loaded and engine.unloads(v(1)) == 0
        await second.aclose()
        assert v(1) not in engine.loaded and engine.unloads(v(1)) == 1
        assert_in_step(engine, manager)

        for n in (1, 2, 3, 4):  # later evictions do not touch it again
            await use_once(manager, await ref(manager, p(n)))
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events[:3] == [("load", v(1)), ("load", v(2)), ("unload", v(1))]
    assert engine.unloads(v(1)) == 1 and engine.loads(v(1)) == 1
    assert_in_step(engine, manager)


# -- 4. races, rollback, remove ------------------------------------------------------------------
def test_two_first_requests_for_one_version_load_it_once(world: World) -> None:
    """Two requests for a version nobody has loaded yet: the second waits on the name's lock for
    the first one's load instead of loading it again, and finds it warm."""

    async def scenario() -> tuple[RecordingEngine, list[float | None]]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        target = await ref(manager, p(1))
        gate = engine.block_load(p(1))
        first = asyncio.create_task(use_once(manager, target))
        await engine.load_started[p(1)].wait()
        second = asyncio.create_task(use_once(manager, target))
        await settle()
        assert engine.loads(p(1)) == 1
        gate.set()
        colds = list(await asyncio.gather(first, second))
        assert_in_step(engine, manager)
        return engine, colds

    engine, colds = run(scenario())
    assert engine.events == [("load", p(1))]
    assert colds[0] is not None and colds[1] is None


def test_requests_during_a_promotions_load_keep_the_old_version_and_share_the_load(
    world: World,
) -> None:
    """While a promotion's cold load is in flight the alias has not moved (the switch never
    waits on a load), and a request naming the new version waits for that load rather than
    starting a second one."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager, float | None]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        gate = engine.block_load(v(2))
        promotion = asyncio.create_task(manager.promote(VARIANT, v(2)))
        await engine.load_started[v(2)].wait()

        current = manager.current(VARIANT)
        assert current is not None and current.name == v(1)
        assert await use_once(manager, current) is None
        assert world.registry.alias(VARIANT) == v(1)

        by_name = asyncio.create_task(use_once(manager, await ref(manager, v(2))))
        await settle()
        assert engine.loads(v(2)) == 1 and not by_name.done()
        gate.set()
        assert await promotion == (v(1), v(2))
        cold = await by_name
        return engine, manager, cold

    engine, manager, cold = run(scenario())
    assert cold is None
    assert engine.events == [("load", v(1)), ("load", v(2)), ("unload", v(1))]
    current = manager.current(VARIANT)
    assert current is not None and current.name == v(2)
    assert_in_step(engine, manager)


def test_promotions_that_overlap_end_where_the_registry_ends(world: World) -> None:
    """promote(@2) and promote(@3) overlap; @3's load finishes first, so @3 is promoted first
    and @2 last. The manager ends on the registry's alias, and each retired version is unloaded
    exactly once."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        gate2, gate3 = engine.block_load(v(2)), engine.block_load(v(3))
        to2 = asyncio.create_task(manager.promote(VARIANT, v(2)))
        to3 = asyncio.create_task(manager.promote(VARIANT, v(3)))
        await engine.load_started[v(2)].wait()
        await engine.load_started[v(3)].wait()
        gate3.set()
        assert await to3 == (v(1), v(3))
        current = manager.current(VARIANT)
        assert current is not None and current.name == v(3)
        gate2.set()
        assert await to2 == (v(3), v(2))
        return engine, manager

    engine, manager = run(scenario())
    current = manager.current(VARIANT)
    assert current is not None and current.name == v(2) == world.registry.alias(VARIANT)
    assert world.registry.history(VARIANT) == [v(1), v(3), v(2)]
    assert {n: engine.loads(n) for n in (v(1), v(2), v(3))} == {v(1): 1, v(2): 1, v(3): 1}
    assert {n: engine.unloads(n) for n in (v(1), v(2), v(3))} == {v(1): 1, v(2): 0, v(3): 1}
    assert manager.resident() == [v(2)]
    assert_in_step(engine, manager)


def test_promotions_at_once_agree_with_the_registry(world: World) -> None:
    """Two promotions started together, with nothing held back: whichever wins, the manager's
    alias is the registry's, the winner is loaded, @1 is unloaded once and no version is loaded
    or unloaded twice. (The loser may stay resident, idle and first in line for eviction.)"""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        await asyncio.gather(manager.promote(VARIANT, v(2)), manager.promote(VARIANT, v(3)))
        return engine, manager

    engine, manager = run(scenario())
    winner = world.registry.alias(VARIANT)
    assert winner in (v(2), v(3))
    assert manager.aliases()[VARIANT] == winner and winner in engine.loaded
    assert engine.unloads(v(1)) == 1
    assert all(engine.events.count(e) == 1 for e in engine.events)
    assert_in_step(engine, manager)


def test_rollback_reloads_the_previous_version_before_switching_and_drains(world: World) -> None:
    """Rollback is a promotion backwards: @1 (unloaded when @2 went live) is loaded again before
    the alias moves back, and @2 drains from its last request."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        await manager.promote(VARIANT, v(2))
        assert engine.unloads(v(1)) == 1
        current = manager.current(VARIANT)
        assert current is not None
        request, _ = await hold(manager, current)

        assert await manager.rollback(VARIANT) == (v(2), v(1))
        back = manager.current(VARIANT)
        assert back is not None and back.name == v(1) == world.registry.alias(VARIANT)
        assert await use_once(manager, back) is None  # reloaded before the switch
        assert v(2) in engine.loaded
        await request.aclose()
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [
        ("load", v(1)),
        ("load", v(2)),
        ("unload", v(1)),
        ("load", v(1)),
        ("unload", v(2)),
    ]
    assert world.registry.history(VARIANT) == [v(1)]
    assert_in_step(engine, manager)


def test_a_promotion_or_rollback_the_engine_cannot_load_leaves_the_registry_alone(
    world: World,
) -> None:
    """Both load before they write: when the engine refuses the version, the caller gets the
    error and the registry (which every other gateway follows) still points where it did."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        engine.fail_load.add(v(3))
        with pytest.raises(EngineUnavailable):
            await manager.promote(VARIANT, v(3))
        assert world.registry.alias(VARIANT) == v(1)

        await manager.promote(VARIANT, v(2))  # @1 drains and unloads
        engine.fail_load.add(v(1))
        with pytest.raises(EngineUnavailable):
            await manager.rollback(VARIANT)
        return engine, manager

    engine, manager = run(scenario())
    assert world.registry.alias(VARIANT) == v(2)
    assert world.registry.history(VARIANT) == [v(1), v(2)]
    assert manager.aliases() == {VARIANT: v(2)}
    assert_in_step(engine, manager)


def test_rollback_without_history_changes_nothing(world: World) -> None:
    """Nothing to roll back to: the registry's error (the admin route's 409), and no load."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        with pytest.raises(RegistryError, match="no earlier version"):
            await manager.rollback(VARIANT)
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [("load", v(1))]
    assert manager.aliases() == {VARIANT: v(1)}


def test_remove_and_promote_refuse_what_would_break_a_request(world: World) -> None:
    """Removing the live version or one a request holds is a Conflict that leaves the engine and
    the registry as they were; promoting another variant's version too. An idle version is
    unloaded, then its record and files go."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager, Path]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        with pytest.raises(Conflict, match="is live"):
            await manager.remove(v(1))
        busy, idle = await ref(manager, p(1)), await ref(manager, p(2))
        request, _ = await hold(manager, busy)
        with pytest.raises(Conflict, match="serving 1 request"):
            await manager.remove(p(1))
        with pytest.raises(Conflict, match="belongs to pool"):
            await manager.promote(VARIANT, p(3))
        assert engine.unloads(v(1)) == engine.unloads(p(1)) == 0
        await request.aclose()

        await use_once(manager, idle)
        await manager.remove(p(2))
        with pytest.raises(AdapterNotFound):
            await manager.version(p(2))
        return engine, manager, idle.path

    engine, manager, removed_path = run(scenario())
    world.registry.get(v(1))
    world.registry.get(p(1))
    assert p(3) not in {name for _, name in engine.events}
    assert engine.events[-1] == ("unload", p(2))
    assert not removed_path.exists()
    assert manager.aliases() == {VARIANT: v(1)}
    assert_in_step(engine, manager)


# -- 5. promotions made elsewhere ----------------------------------------------------------------
def test_refresh_applies_a_promotion_made_in_the_registry_and_drains(world: World) -> None:
    """Another gateway (or the CLI) promotes @2 in the shared registry: refresh loads it,
    switches, and the retired @1 unloads when the request holding it ends."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        old = manager.current(VARIANT)
        assert old is not None
        request, _ = await hold(manager, old)
        with other_gateway(world) as cli:
            cli.promote(VARIANT, v(2))
        current = manager.current(VARIANT)
        assert current is not None and current.name == v(1)  # nothing moves until refresh

        await manager.refresh()
        current = manager.current(VARIANT)
        assert current is not None and current.name == v(2)
        assert v(2) in engine.loaded and v(1) in engine.loaded
        await request.aclose()
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [("load", v(1)), ("load", v(2)), ("unload", v(1))]
    assert_in_step(engine, manager)


def test_the_watcher_picks_up_a_promotion_made_elsewhere(world: World) -> None:
    """With a poll interval, nobody needs to call refresh: the watcher sees the registry change
    (its data_version) and applies it; aclose stops it."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4, poll_interval=0.02)
        await manager.start()
        assert WATCHER in {t.get_name() for t in asyncio.all_tasks()}
        with other_gateway(world) as cli:
            cli.promote(VARIANT, v(3))
        deadline = time.monotonic() + 10
        while manager.aliases()[VARIANT] != v(3) or engine.unloads(v(1)) == 0:
            assert time.monotonic() < deadline, "the watcher did not apply the promotion"
            await asyncio.sleep(0.02)
        await manager.aclose()
        assert WATCHER not in {t.get_name() for t in asyncio.all_tasks()}
        return engine, manager

    engine, manager = run(scenario())
    assert engine.events == [("load", v(1)), ("load", v(3)), ("unload", v(1))]
    assert_in_step(engine, manager)


# -- 6. validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("base_model_name_or_path", "HuggingFaceTB/SmolLM2-135M-Instruct", "trained on"),
        ("r", 32, "exceeds the engine's max rank"),
    ],
)
def test_a_version_the_engine_cannot_serve_never_reaches_it(
    world: World, field: str, value: Any, message: str
) -> None:
    """A registry shared by gateways can hold versions for another base (or of a rank above this
    engine's): promoting one is refused with InvalidAdapter, and when another gateway promotes it
    anyway, refresh keeps the variant on its old version. The engine never sees it."""
    folder = Path(shutil.copytree(world.registry.get(p(1)).path, world.runs / "foreign"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    foreign = world.registry.add(
        folder, variant=VARIANT, base_model=config["base_model_name_or_path"], max_rank=64
    ).name

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        await manager.start()
        with pytest.raises(InvalidAdapter, match=message):
            await manager.promote(VARIANT, foreign)
        assert world.registry.alias(VARIANT) == v(1)
        with pytest.raises(InvalidAdapter, match=message):
            await manager.version(foreign)
        with other_gateway(world) as cli:
            cli.promote(VARIANT, foreign)
        await manager.refresh()
        return engine, manager

    engine, manager = run(scenario())
    assert manager.aliases() == {VARIANT: v(1)}
    assert engine.events == [("load", v(1))]
    assert_in_step(engine, manager)


def test_weights_changed_after_registration_are_refused(world: World) -> None:
    """Names are immutable: files that no longer match the recorded hash are never loaded."""
    weights = world.registry.get(p(1)).path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")

    async def scenario() -> RecordingEngine:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        with pytest.raises(InvalidAdapter, match="changed: sha256"):
            await manager.version(p(1))
        with pytest.raises(AdapterNotFound):
            await manager.version(p(99))
        return engine

    assert run(scenario()).events == []


# -- the real engine -----------------------------------------------------------------------------
def test_lru_eviction_happens_in_the_transformers_engine(world: World, tiny_path: Path) -> None:
    """The same manager in front of the real in-process engine with the tiny model: the evicted
    version leaves the engine's PeftModel, not only the manager's bookkeeping."""
    from server.engines.transformers_engine import TransformersEngine

    async def scenario() -> tuple[list[str], list[str], set[str]]:
        engine = TransformersEngine(str(tiny_path), max_lora_rank=MAX_RANK)
        await engine.start()
        try:
            manager = make_manager(engine, world, max_resident=2)
            es, zh, es_again = [await ref(manager, p(n)) for n in (1, 2, 3)]
            assert await use_once(manager, es) is not None
            assert await use_once(manager, zh) is not None
            assert (await engine.health())["adapters"] == [p(1), p(2)]
            assert await use_once(manager, es) is None  # warm, and now the most recent
            assert await use_once(manager, es_again) is not None  # evicts pool@2
            held = (await engine.health())["adapters"]
            return manager.resident(), held, set(engine._model.peft_config)
        finally:
            await engine.aclose()

    resident, held, in_model = run(scenario())
    assert resident == [p(1), p(3)]
    assert held == [p(1), p(3)]
    assert in_model == {p(1), p(3)}


# -- races ---------------------------------------------------------------------------------------
def test_make_room_never_unloads_a_version_a_request_took_meanwhile(world: World) -> None:
    """Three versions resident over a limit of two (every one was busy), now idle. A cold load
    of a fourth unloads pool@1; while that unload is in flight a request takes pool@2 (warm).
    The same eviction pass then unloads pool@2 under that request."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        a, b, c, d = [await ref(manager, p(n)) for n in (1, 2, 3, 4)]
        held = [await hold(manager, r) for r in (a, b, c)]
        for stack, _ in held:
            await stack.aclose()
        gate = engine.block_unload(p(1))
        cold = asyncio.create_task(use_once(manager, d))
        await engine.unload_started[p(1)].wait()
        request, warm = await hold(manager, b)
        assert warm is None
        gate.set()
        await cold
        assert p(2) in engine.loaded, "pool@2 was unloaded while a request held it"
        await request.aclose()
        return engine, manager

    run(scenario())


def test_a_version_asked_for_while_it_is_being_evicted_stays_loaded(world: World) -> None:
    """pool@1 is being evicted to make room for pool@2 when a request for pool@1 arrives. The
    request must end up served by a loaded pool@1 (waiting for the unload and loading again),
    not by a version the engine has just dropped."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=1)
        a, b = await ref(manager, p(1)), await ref(manager, p(2))
        await use_once(manager, a)
        gate = engine.block_unload(p(1))
        cold = asyncio.create_task(use_once(manager, b))
        await engine.unload_started[p(1)].wait()
        asking = asyncio.create_task(hold(manager, a))
        await settle()
        assert not asking.done(), "the request did not wait for pool@1's unload"
        gate.set()
        await cold
        request, reloaded = await asking
        assert reloaded is not None, "pool@1 was not loaded again after its unload"
        assert p(1) in engine.loaded, "a request holds pool@1, which the engine has dropped"
        await request.aclose()
        return engine, manager

    run(scenario())


def test_remove_never_deletes_files_of_a_version_a_request_took_meanwhile(world: World) -> None:
    """remove(pool@1) is unloading it when a request naming pool@1 arrives (the record still
    exists). Whatever the outcome, the manager must not end with a version it calls resident
    whose files are gone (vLLM re-reads evicted adapters from disk)."""

    async def scenario() -> tuple[RecordingEngine, AdapterManager, AdapterRef]:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=4)
        target = await ref(manager, p(1))
        await use_once(manager, target)
        gate = engine.block_unload(p(1))
        removal = asyncio.create_task(manager.remove(p(1)))
        await engine.unload_started[p(1)].wait()
        asking = asyncio.create_task(hold(manager, await ref(manager, p(1))))
        await settle()
        gate.set()
        with contextlib.suppress(Conflict):  # refusing the removal would be a fine outcome
            await removal
        # the request waited for the removal, then finds the version gone: a 404, not a
        # version called resident whose files are deleted
        with pytest.raises(AdapterNotFound):
            await asking
        return engine, manager, target

    engine, manager, target = run(scenario())
    resident = p(1) in manager.resident() or p(1) in engine.loaded
    assert not (resident and not target.path.exists()), "resident, with its files deleted"


def test_concurrent_cold_loads_stay_within_the_limit(world: World) -> None:
    """The module promises at most ``max_resident`` loaded versions (beyond the case where
    every one is busy). Two cold loads overlap while pool@2 is idle: it should be evicted, but
    the second load sees the first one's room and both end up loaded, three over a limit of two.
    Only the next cold load trims it."""

    async def scenario() -> AdapterManager:
        engine = RecordingEngine()
        manager = make_manager(engine, world, max_resident=2)
        a, b, c, d = [await ref(manager, p(n)) for n in (1, 2, 3, 4)]
        await use_once(manager, a)
        await use_once(manager, b)
        gate = engine.block_load(p(3))
        third = asyncio.create_task(use_once(manager, c))
        await engine.load_started[p(3)].wait()
        await use_once(manager, d)
        gate.set()
        await third
        return manager

    manager = run(scenario())
    assert len(manager.resident()) <= 2, manager.resident()
