"""Where a request goes when several vLLM replicas serve the same base model.

A LoRA request is cheap on a replica that holds its adapter and pays a cold load (read the
weights, take a slot, maybe push another version out) everywhere else, so the policy is adapter
affinity:

1. a healthy replica that already holds the version and is under the load bound takes it;
2. a version nobody holds goes to its home on a consistent-hash ring (the first replica
   clockwise from the version's hash that is under the bound and has a free slot), so every
   gateway that sees the same replicas puts the same version in the same place without talking
   to the others, and versions fill the replicas' slots instead of crowding one;
3. the bound is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
   2018; HAProxy's ``hash-balance-factor``): a replica takes a request only while its running
   requests stay below ``load_factor`` times the mean. When every holder is over it, a hot
   version spills onto the next replica on its ring that has a free slot, which then holds it
   too. It never spills onto a full replica: pushing a version out there to make room would
   only move the cold load to the next request for that version (with 4 adapters on 2
   replicas of 2 slots, a router that did so made 18 cold loads in 48 requests where this one
   makes none: docs/PERFORMANCE.md, section 8), so the holder queues the request instead.

Base-model requests (no adapter) go to the least loaded replica. ``round_robin`` exists to
measure what affinity buys (deploy/bench/routing.py).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

Policy = Literal["affinity", "round_robin"]
# How a request was placed, the label of tutor_replica_routed_total:
#   hit    a replica that held the version took it
#   spread the holders were over the bound: the version is loaded on one more replica
#   miss   no healthy replica held it: it is loaded where the ring puts it
#   base   no adapter
Placement = Literal["hit", "spread", "miss", "base"]


class Candidate(Protocol):
    """What the router reads of a replica."""

    @property
    def url(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    def holds(self, adapter: str) -> bool: ...
    def has_room(self) -> bool: ...  # a version can be loaded without unloading another


C = TypeVar("C", bound=Candidate)


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Router:
    """Chooses a replica; it keeps no state of its own but the ring and a round-robin cursor."""

    def __init__(
        self, policy: Policy = "affinity", *, load_factor: float = 1.25, vnodes: int = 64
    ) -> None:
        self.policy = policy
        self.load_factor = max(1.0, load_factor)
        self.vnodes = vnodes
        self._cursor = 0
        self._ring: list[tuple[int, str]] = []
        self._members: tuple[str, ...] = ()

    def _build(self, urls: Sequence[str]) -> None:
        # virtual nodes: with one point per replica, two replicas split the keys very unevenly
        self._ring = sorted((_point(f"{u}#{i}"), u) for u in urls for i in range(self.vnodes))
        self._members = tuple(urls)

    def ring_order(self, key: str, urls: Sequence[str]) -> list[str]:
        """The replicas in the order the ring offers them to ``key``: the first is its home."""
        if tuple(urls) != self._members:
            self._build(urls)
        order: list[str] = []
        start = bisect.bisect(self._ring, (_point(key), ""))
        for i in range(len(self._ring)):
            url = self._ring[(start + i) % len(self._ring)][1]
            if url not in order:
                order.append(url)
                if len(order) == len(self._members):
                    break
        return order

    def bound(self, replicas: Sequence[Candidate]) -> int:
        """Most running requests a replica may have before it takes one more."""
        total = sum(r.in_flight for r in replicas) + 1  # the request being placed counts
        return math.ceil(self.load_factor * total / len(replicas))

    def choose(self, replicas: Sequence[C], adapter: str | None) -> tuple[C, Placement]:
        """The replica for one request among ``replicas`` (healthy ones; at least one)."""
        if not replicas:
            raise ValueError("no replica to choose from")
        if self.policy == "round_robin":
            pick = replicas[self._cursor % len(replicas)]
            self._cursor += 1
            if adapter is None:
                return pick, "base"
            return pick, "hit" if pick.holds(adapter) else "miss"
        if adapter is None:
            return min(replicas, key=lambda r: r.in_flight), "base"
        by_url = {r.url: r for r in replicas}
        order = [by_url[u] for u in self.ring_order(adapter, sorted(by_url))]
        cap = self.bound(replicas)
        holders = [r for r in order if r.holds(adapter)]
        for r in holders:
            if r.in_flight < cap:
                return r, "hit"
        for r in order:  # a free slot under the bound: its home, or the next one with room
            if r.in_flight < cap and r.has_room() and not r.holds(adapter):
                return r, "spread" if holders else "miss"
        if holders:  # every holder busy, no room elsewhere: queue on the least busy holder
            return min(holders, key=lambda r: r.in_flight), "hit"
        # nobody holds it and no replica has room: its home (or the next one under the bound)
        # makes room by unloading its least recently used idle version
        return next((r for r in order if r.in_flight < cap), order[0]), "miss"
