"""The replica router's policy (server/engines/routing.py): pure decisions, no servers; and
how a replica set finds its replicas by DNS (one real HTTP server).

The real replicas are in tests/deploy/test_cluster.py; here each rule is checked on its own, with
loads and residency set by hand, so a rule that breaks names itself.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI

from server.engines.replicas import VLLMReplicaSet
from server.engines.routing import Router
from server.errors import EngineUnavailable
from tests.support import running_server


@dataclass
class Fake:
    url: str
    in_flight: int = 0
    held: set[str] = field(default_factory=set)
    slots: int = 8

    def holds(self, adapter: str) -> bool:
        return adapter in self.held

    def has_room(self) -> bool:
        return len(self.held) < self.slots


def _three() -> list[Fake]:
    return [Fake("http://a:8000/v1"), Fake("http://b:8000/v1"), Fake("http://c:8000/v1")]


def test_a_version_has_one_home_on_every_gateway():
    replicas = _three()
    # two routers (two gateways) that never talked agree on every version's home
    for n in range(50):
        a, placement = Router().choose(replicas, f"tutor-es-l2@{n}")
        b, _ = Router().choose(list(reversed(replicas)), f"tutor-es-l2@{n}")
        assert a.url == b.url and placement == "miss"


def test_versions_spread_over_the_replicas():
    replicas = _three()
    router = Router()
    homes = Counter(router.choose(replicas, f"v@{n}")[0].url for n in range(300))
    assert set(homes) == {r.url for r in replicas}
    assert min(homes.values()) >= 60, homes  # 100 each if even; virtual nodes keep it near


def test_a_holder_wins_over_the_ring_home():
    replicas = _three()
    router = Router()
    home, _ = router.choose(replicas, "tutor@3")
    other = next(r for r in replicas if r is not home)
    other.held.add("tutor@3")
    chosen, placement = router.choose(replicas, "tutor@3")
    assert chosen is other and placement == "hit"


def test_a_hot_version_spreads_past_the_load_bound():
    replicas = _three()
    router = Router(load_factor=1.25)
    home, _ = router.choose(replicas, "tutor@1")
    home.held.add("tutor@1")
    home.in_flight = 3  # total 3 (+1 placed): bound ceil(1.25 * 4 / 3) = 2
    chosen, placement = router.choose(replicas, "tutor@1")
    assert chosen is not home and placement == "spread"
    # once the others are as busy, the holder takes it again
    for r in replicas:
        r.in_flight = 3
    chosen, placement = router.choose(replicas, "tutor@1")
    assert chosen is home and placement == "hit"


def test_a_hot_version_never_spills_onto_a_full_replica():
    """Spilling into a full replica would unload one of its versions, whose next request then
    pays the cold load: the holder queues the request instead."""
    replicas = _three()
    for r in replicas:
        r.slots, r.held = 1, {f"other-{r.url}"}
    home, _ = Router().choose([Fake(r.url) for r in replicas], "tutor@1")
    home = next(r for r in replicas if r.url == home.url)
    home.held = {"tutor@1"}
    home.in_flight = 5
    chosen, placement = Router().choose(replicas, "tutor@1")
    assert chosen is home and placement == "hit"
    # a replica with a free slot does take the spill
    spare = next(r for r in replicas if r is not home)
    spare.held = set()
    chosen, placement = Router().choose(replicas, "tutor@1")
    assert chosen is spare and placement == "spread"


def test_new_versions_fill_free_slots_before_crowding_their_home():
    replicas = [Fake("http://a:8000/v1", slots=2), Fake("http://b:8000/v1", slots=2)]
    router = Router()
    for n in range(4):
        chosen, placement = router.choose(replicas, f"v@{n}")
        assert placement == "miss"
        chosen.held.add(f"v@{n}")
    assert [len(r.held) for r in replicas] == [2, 2]  # whatever the ring's homes were


def test_removing_a_replica_moves_only_its_versions():
    replicas = _three()
    router = Router()
    before = {n: router.choose(replicas, f"v@{n}")[0].url for n in range(200)}
    gone = replicas[1].url
    after = {n: router.choose([replicas[0], replicas[2]], f"v@{n}")[0].url for n in range(200)}
    moved = [n for n in before if before[n] != after[n]]
    assert moved and all(before[n] == gone for n in moved)


def test_base_requests_go_to_the_least_loaded():
    replicas = _three()
    replicas[0].in_flight, replicas[1].in_flight, replicas[2].in_flight = 4, 1, 2
    chosen, placement = Router().choose(replicas, None)
    assert chosen is replicas[1] and placement == "base"


def test_round_robin_ignores_residency():
    replicas = _three()
    replicas[0].held.add("tutor@1")
    router = Router("round_robin")
    picks = [router.choose(replicas, "tutor@1") for _ in range(6)]
    assert [p[0].url for p in picks] == [r.url for r in replicas] * 2
    assert [p[1] for p in picks[:3]] == ["hit", "miss", "miss"]


def test_no_replica_is_an_error():
    with pytest.raises(ValueError):
        Router().choose([], "tutor@1")


def test_a_dns_name_stands_for_every_address_it_resolves_to():
    """``dns+http://name:port/v1`` (a headless Service) becomes one replica per address, checked
    by a real health probe; a name that does not resolve gives no replica and a clear 503."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    async def look(spec: str) -> tuple[dict, list]:
        replicas = VLLMReplicaSet([spec], served_model="m", health_interval=60)
        try:
            await replicas.start()
            try:
                return await replicas.health(), replicas.replica_stats()
            except EngineUnavailable as exc:
                return {"error": str(exc), "status": exc.status}, replicas.replica_stats()
        finally:
            await replicas.aclose()

    with running_server(app) as url:
        port = url.rsplit(":", 1)[1]
        health, stats = asyncio.run(look(f"dns+http://localhost:{port}/v1"))
    ours = f"http://127.0.0.1:{port}/v1"
    assert ours in [s.url for s in stats] and all(
        s.url in (ours, f"http://[::1]:{port}/v1") for s in stats
    )
    assert [s.up for s in stats if s.url == ours] == [True]
    assert health["engine"] == "vllm" and ours in [r["url"] for r in health["replicas"]]
    health, stats = asyncio.run(look("dns+http://no-such-replica.invalid:8000/v1"))
    assert stats == [] and health == {"error": "no vLLM replica is up", "status": 503}
