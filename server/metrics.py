"""Prometheus metrics, one registry per app so several apps can share a process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The phases of the first token run from the gateway's own ~1 ms to a corrector turn's seconds.
_PHASE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class _Memo:
    """``labels()`` remembered per label values: each request looks up several labelled series,
    and prometheus_client checks, converts and locks on every call. ``remove`` forgets the
    remembered child with the series, so a remembered child is always the registered one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memo: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: Any, **kw: Any) -> Any:
        if kw:
            return super().labels(*values, **kw)
        try:
            return self._memo[values]
        except KeyError:
            child = self._memo[values] = super().labels(*values)
            return child

    def remove(self, *values: Any) -> None:
        self._memo.pop(values, None)
        super().remove(*values)


class Counter(_Memo, prometheus_client.Counter):
    pass


class Gauge(_Memo, prometheus_client.Gauge):
    pass


class Histogram(_Memo, prometheus_client.Histogram):
    pass


class Metrics:
    def __init__(self, build: dict[str, str] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._replicas_watched = False
        r = self.registry
        # the process (CPU, memory, open files) and the interpreter, as every Prometheus client
        prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        prometheus_client.GCCollector(registry=r)
        self.build_info = Gauge(
            "tutor_build_info",
            "1, labelled with what is running: version, engine, base model",
            list(build or {}),
            registry=r,
        )
        if build:
            self.build_info.labels(*build.values()).set(1)
        self.http_requests = Counter(
            "tutor_http_requests",
            "HTTP requests by route template, method and status (errors included)",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "tutor_http_request_duration_seconds",
            "From the request's arrival to the end of its response (a stream's last byte)",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "tutor_requests",
            "Chat requests by variant and outcome",
            ["variant", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tutor_request_latency_seconds",
            "Time to the last token, from the request's arrival",
            ["variant"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tutor_time_to_first_token_seconds",
            "Time to the first token, from the request's arrival: what the learner waits for",
            ["variant"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_phase = Histogram(
            "tutor_ttft_phase_seconds",
            "The time to first token by phase (gw, queue, adapter, ground, upstream; they add up "
            "to tutor_time_to_first_token_seconds): server/timing.py",
            ["variant", "phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tutor_tokens",
            "Tokens by variant and kind (prompt/completion)",
            ["variant", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tutor_requests_in_flight", "Chat requests being generated", ["variant"], registry=r
        )

        self.adapter_resident = Gauge(
            "tutor_adapter_resident",
            "1 while an adapter version is loaded in the engine (the series goes on unload, so "
            "there are at most as many as resident versions)",
            ["adapter"],
            registry=r,
        )
        self.adapter_load = Histogram(
            "tutor_adapter_load_seconds",
            "Cold loads of adapter versions into the engine",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.tools_ignored = Counter(
            "tutor_tools_ignored",
            "Chat requests whose tools were dropped (TUTOR_TOOLS=ignore), by variant",
            ["variant"],
            registry=r,
        )
        self.grounding = Histogram(
            "tutor_grounding_seconds",
            "The corrector turn of a grounded recast, by outcome (changed/unchanged/rejected)",
            ["variant", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch_replicas(self, source: Callable[[], Sequence[Any]]) -> None:
        """Report an engine's replicas (``Engine.replica_stats``) on every scrape."""
        if not self._replicas_watched:
            self.registry.register(_ReplicaCollector(source))
            self._replicas_watched = True

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReplicaCollector:
    """Per-replica series read from the engine when scraped: the router's own counters, so
    nothing on the request path touches prometheus_client for them."""

    def __init__(self, source: Callable[[], Sequence[Any]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the replicas are only known when scraped

    def collect(self) -> Iterator[Metric]:
        stats = self.source()
        if not stats:
            return
        up = GaugeMetricFamily(
            "tutor_replica_up", "1 while a vLLM replica takes requests", labels=["replica"]
        )
        running = GaugeMetricFamily(
            "tutor_replica_in_flight", "Requests running on a vLLM replica", labels=["replica"]
        )
        held = GaugeMetricFamily(
            "tutor_replica_adapters", "Adapter versions a vLLM replica holds", labels=["replica"]
        )
        routed = CounterMetricFamily(
            "tutor_replica_routed",
            "Requests routed to a replica, by placement: hit (it held the version), spread (the "
            "holders were over the load bound), miss (nobody held it), base (no adapter)",
            labels=["replica", "placement"],
        )
        loads = CounterMetricFamily(
            "tutor_replica_adapter_loads", "Cold adapter loads on a replica", labels=["replica"]
        )
        retries = CounterMetricFamily(
            "tutor_replica_retries",
            "Requests that failed on a replica before their first token and moved to another",
            labels=["replica"],
        )
        hits = tried = 0
        for s in stats:
            up.add_metric([s.url], 1.0 if s.up else 0.0)
            running.add_metric([s.url], s.in_flight)
            held.add_metric([s.url], len(s.adapters))
            for placement in ("hit", "spread", "miss", "base"):
                routed.add_metric([s.url, placement], s.routed.get(placement, 0))
            loads.add_metric([s.url], s.loads)
            retries.add_metric([s.url], s.retries)
            hits += s.routed.get("hit", 0)
            tried += sum(n for p, n in s.routed.items() if p != "base")
        ratio = GaugeMetricFamily(
            "tutor_router_affinity_hit_ratio",
            "Adapter requests routed to a replica that already held their version",
            value=hits / tried if tried else 0.0,
        )
        yield from (up, running, held, routed, loads, retries, ratio)
