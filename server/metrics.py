"""Prometheus metrics, one registry per app so several apps can share a process (tests)."""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The phases of the first token run from the gateway's own ~1 ms to a corrector turn's seconds.
_PHASE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class _Memo:
    """``labels()`` remembered per label values: each request looks up several labelled series,
    and prometheus_client checks, converts and locks on every call. Series are never removed
    here, so a remembered child stays the registered one."""

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


class Counter(_Memo, prometheus_client.Counter):
    pass


class Gauge(_Memo, prometheus_client.Gauge):
    pass


class Histogram(_Memo, prometheus_client.Histogram):
    pass


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            "1 while an adapter version is loaded in the engine",
            ["adapter"],
            registry=r,
        )
        self.adapter_load = Histogram(
            "tutor_adapter_load_seconds",
            "Cold loads of adapter versions into the engine",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.grounding = Histogram(
            "tutor_grounding_seconds",
            "The corrector turn of a grounded recast, by outcome (changed/unchanged/rejected)",
            ["variant", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
