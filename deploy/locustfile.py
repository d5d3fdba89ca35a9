"""Locust load test: learners holding short conversations, switching variant per request.

Each simulated learner has 2-4 turn conversations; every turn picks the next variant by weight
(smooth weighted round-robin, so one conversation hops between adapters, the worst case for a
LoRA server), streams the reply and records, per variant:

- ``POST <variant>``: the whole turn, from request to the last byte of the stream;
- ``TTFT <variant>``: time to the first content token, in ms;
- ``TPS <variant>``: completion tokens per second after the first token. Locust only knows
  "response times", so this entry's "response time" columns hold tokens/s, not ms.

Configure with environment variables (``make load`` sets them):

- ``LOAD_VARIANTS``: ``variant=weight,...`` (default: every tutor variant, the base English
  tutor weighted most);
- ``LOAD_MAX_TOKENS`` (default 32), ``LOAD_API_KEY`` (a chat key, when the gateway has keys on),
  ``LOAD_SEED`` (seed the learners' random choices), ``LOAD_SUMMARY_CSV`` (where to write the
  per-variant summary at the end, with an ``all`` row over every variant);
- ``LOAD_THINK``: ``min,max`` seconds a learner thinks between turns (default ``0.5,1.5``; the
  capacity run uses a learner's pace: reading a reply and typing the next sentence).

Run it with ``make load`` or ``python -m deploy.load``, which only target 127.0.0.1.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, between, events, task
from locust.stats import StatsEntry

from deploy.load_mix import DEFAULT_VARIANTS, LINES, VariantPicker, language, parse_variants

VARIANTS = parse_variants(os.environ.get("LOAD_VARIANTS", DEFAULT_VARIANTS))
MAX_TOKENS = int(os.environ.get("LOAD_MAX_TOKENS", "32"))
API_KEY = os.environ.get("LOAD_API_KEY", "")
THINK = tuple(float(x) for x in os.environ.get("LOAD_THINK", "0.5,1.5").split(","))
if os.environ.get("LOAD_SEED"):
    random.seed(int(os.environ["LOAD_SEED"]))  # the same choices run to run (timing aside)

COMPLETION_TOKENS: dict[str, int] = {}  # per variant, over the run


_user_numbers = itertools.count()


def record(kind: str, variant: str, value: float) -> None:
    """A custom Locust entry (a metric, not a request of its own)."""
    events.request.fire(
        request_type=kind,
        name=variant,
        response_time=value,
        response_length=0,
        exception=None,
        context={},
    )


class Learner(HttpUser):
    """One learner: short conversations with think time between turns (and between
    conversations: Locust's own wait after each task)."""

    wait_time = between(*THINK)

    def on_start(self) -> None:
        # Each learner starts at another point of the cycle, so they do not move in lockstep.
        self.picker = VariantPicker(VARIANTS, start=next(_user_numbers))
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    @task
    def conversation(self) -> None:
        messages: list[dict[str, str]] = []
        for i in range(random.randint(2, 4)):
            if i:
                self.wait()  # the learner reads the reply and types the next sentence
            variant = self.picker.next()
            messages.append({"role": "user", "content": random.choice(LINES[language(variant)])})
            reply = self.turn(variant, messages)
            if reply is None:
                return  # a failed turn ends the conversation, as a learner would give up
            messages.append({"role": "assistant", "content": reply})

    def turn(self, variant: str, messages: list[dict[str, str]]) -> str | None:
        """Stream one reply; None if it failed (already reported to Locust)."""
        body = {
            "model": variant,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": MAX_TOKENS,
        }
        start = time.perf_counter()
        first = last = None
        text, tokens, size = "", 0, 0
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name=variant
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return None
            if resp.headers.get("x-tutor-variant") != variant:
                resp.failure(f"answered by {resp.headers.get('x-tutor-variant')!r}")
                return None
            for line in resp.iter_lines():
                size += len(line)
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    resp.failure(f"error in stream: {chunk['error'].get('message')}")
                    return None
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        text += piece
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
            # The whole turn, not just the time to the response headers.
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            resp.request_meta["response_length"] = size
            if first is None:
                resp.failure("the stream carried no text")
                return None
            resp.success()
        COMPLETION_TOKENS[variant] = COMPLETION_TOKENS.get(variant, 0) + tokens
        record("TTFT", variant, (first - start) * 1000)
        if tokens > 1 and last > first:
            record("TPS", variant, (tokens - 1) / (last - first))
        return text


SUMMARY_COLUMNS = ("variant", "turns", "failures", "turn_p50_ms", "turn_p95_ms")
SUMMARY_COLUMNS += ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s_p50", "completion_tokens")
ALL = "all"  # the summary row over every variant


def _merged(stats, names: list[str], method: str) -> StatsEntry:
    entry = StatsEntry(stats, ALL, method, use_response_times_cache=False)
    for name in names:
        entry.extend(stats.get(name, method))
    return entry


def write_summary(stats, path: Path) -> None:
    """Per-variant figures from Locust's final stats (its own CSV is rewritten once a second and
    can miss the turns that finish while the run stops), then the same over every variant."""
    variants = sorted({name for name, method in stats.entries if method == "POST"})
    path.parent.mkdir(parents=True, exist_ok=True)

    def pct(entry, q: float) -> int | str:
        return entry.get_response_time_percentile(q) if entry.num_requests else ""

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(SUMMARY_COLUMNS)
        rows = [(v, *(stats.get(v, m) for m in ("POST", "TTFT", "TPS"))) for v in variants]
        rows.append((ALL, *(_merged(stats, variants, m) for m in ("POST", "TTFT", "TPS"))))
        for name, turn, ttft, tps in rows:
            tokens = (
                sum(COMPLETION_TOKENS.values()) if name == ALL else COMPLETION_TOKENS.get(name, 0)
            )
            out.writerow(
                [name, turn.num_requests, turn.num_failures, pct(turn, 0.5), pct(turn, 0.95)]
                + [pct(ttft, 0.5), pct(ttft, 0.95), pct(tps, 0.5), tokens]
            )


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    if os.environ.get("LOAD_SUMMARY_CSV"):
        write_summary(environment.stats, Path(os.environ["LOAD_SUMMARY_CSV"]))
