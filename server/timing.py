"""Where a learner's wait for the first token goes: one clock per chat request.

Learners wait on the first token, not on the last, and on this stack that wait has parts of very
different sizes: a grounded variant's corrector turn is seconds, a cold adapter load a few hundred
milliseconds, the gateway's own work about a millisecond. One figure (the time to first token from
the request's arrival) is split into phases that add up to it:

- ``queue``: waiting for a variant slot (``TUTOR_VARIANT_CONCURRENCY``);
- ``adapter``: making the adapter version resident (a cold load, or a wait for an LRU slot);
- ``ground``: the corrector turn of a grounded recast (server/grounding.py);
- ``upstream``: the engine, from the tutor turn's request to its first token (its own queue,
  the prefill and the first decode step; vLLM's ``vllm:request_prefill_time_seconds`` splits it
  further);
- ``gw``: the rest, the gateway's own work (parsing, auth, the prompt, framing).

The same phases go to ``/metrics`` (``tutor_ttft_phase_seconds``) and, per response, to a
``Server-Timing`` header, so an operator can see the gateway's cost in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PHASES = ("gw", "queue", "adapter", "ground", "upstream")
ARRIVAL = "tutor.arrival"  # the ASGI scope key server.app.ArrivalClock stamps


def arrival(scope: dict) -> float:
    """When the request arrived (ArrivalClock), or now for an app built without the clock."""
    return scope.get(ARRIVAL) or time.perf_counter()


@dataclass
class Timing:
    """Filled in by the chat service as the request goes; read once its first token exists
    (Server-Timing, metrics) and when the response is complete (the request's log line)."""

    start: float = field(default_factory=time.perf_counter)  # the request's arrival
    queue: float = 0.0
    adapter: float = 0.0
    ground: float = 0.0
    upstream: float = 0.0
    first: float | None = None  # perf_counter() at the first token
    last: float | None = None  # perf_counter() at the last token (non-stream replies report it)
    prompt_tokens: int | None = None  # the engine's usage, once the reply is complete
    completion_tokens: int | None = None
    outcome: str | None = None  # ok | cancelled | error, once the generation has ended

    @property
    def ttft(self) -> float:
        return (self.first or time.perf_counter()) - self.start

    @property
    def gw(self) -> float:
        """The gateway's own share of the wait: what is not a queue, a load or the engine."""
        return max(0.0, self.ttft - self.queue - self.adapter - self.ground - self.upstream)

    def phases(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PHASES}

    def server_timing(self) -> str:
        """``Server-Timing`` (W3C) in milliseconds: the phases of the first token, then
        ``decode`` (first to last token) once the reply is complete."""
        parts = [f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.phases().items()]
        if self.first is not None and self.last is not None:
            parts.append(f"decode;dur={(self.last - self.first) * 1000:.1f}")
        return ", ".join(parts)
