"""Promotion under load: latency before, during and after a hot swap, and failed requests.

A vLLM-CPU with the tiny model, a gateway in front (engine=vllm, remote URL, admin API on) and a
registry with two versions of ``tutor-es-l2``; @1 is live. Closed-loop load on ``tutor-es-l2``
(half the workers stream) runs for the whole window; a third of the way in, the admin API
promotes @2. The new version loads, the alias switches, requests running on @1 finish on it,
then @1 is unloaded. Target: 0 failed requests.

Windows: before = finished before the promote call; during = overlapping the promote call or
started within --settle seconds after it (the old version drains then); after = the rest.

    .venv/bin/python -m deploy.bench.promotion --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx

from common.net import free_port
from deploy.bench.loadgen import Result, chat_body, closed_loop, encode_request, run_loop
from deploy.bench.multilora import make_adapters
from deploy.bench.paths import scratch_dir
from deploy.bench.processes import install_cleanup, stop_all, wait_ready
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import scratch_registry, start_gateway, start_vllm
from deploy.bench.stats import ms, pct

ADMIN_KEY = "bench-admin-key"
VARIANT = "tutor-es-l2"


def setup_registry(root: Path) -> Path:
    """Two versions of the variant, @1 live; returns the registry's database path."""
    registry, base = scratch_registry(root)
    made = make_adapters(root / "runs", ["v1", "v2"])
    v1 = registry.add(made["v1"], variant=VARIANT, base_model=base, max_rank=16)
    registry.promote(VARIANT, v1.name)
    registry.add(made["v2"], variant=VARIANT, base_model=base, max_rank=16, parent=v1.name)
    return registry.db_path


async def load_with_promotion(
    port: int, *, workers: int, duration: float, promote_at: float, max_tokens: int
) -> tuple[list[Result], dict[str, float], dict[str, Any]]:
    raws = [
        encode_request(
            "127.0.0.1",
            port,
            "/v1/chat/completions",
            chat_body(VARIANT, stream=stream, max_tokens=max_tokens),
        )
        for stream in (False, True)
    ]
    promo: dict[str, float] = {}
    answer: dict[str, Any] = {}
    t0 = time.perf_counter()

    async def promoter() -> None:
        await asyncio.sleep(promote_at)
        async with httpx.AsyncClient(timeout=120) as client:
            promo["start"] = time.perf_counter() - t0
            r = await client.post(
                f"http://127.0.0.1:{port}/admin/variants/{VARIANT}/promote",
                json={"version": f"{VARIANT}@2"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            promo["end"] = time.perf_counter() - t0
            answer.update(status=r.status_code, body=r.json())

    load = closed_loop(
        port,
        lambda i: (raws[i % 2], bool(i % 2), "stream" if i % 2 else "whole"),
        concurrency=workers,
        duration=duration,
        warmup=1,
        origin=t0,
    )
    run, _ = await asyncio.gather(load, promoter())
    return run.results, promo, answer


def windows(results: list[Result], promo: dict[str, float], settle: float) -> dict[str, list]:
    start, end = promo["start"], promo["end"] + settle
    out: dict[str, list[Result]] = {"before": [], "during": [], "after": []}
    for r in results:
        finish = r.start + r.latency
        if finish < start:
            out["before"].append(r)
        elif r.start <= end:
            out["during"].append(r)
        else:
            out["after"].append(r)
    return out


def summarise(rs: list[Result]) -> dict[str, Any]:
    ok = [r for r in rs if r.ok]
    lat = [ms(r.latency) for r in ok]
    versions: dict[str, int] = {}
    for r in ok:
        versions[r.adapter] = versions.get(r.adapter, 0) + 1
    return {
        "n": len(rs),
        "failed": len(rs) - len(ok),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else math.nan,
        "ttft_p50_ms": pct([ms(r.ttft) for r in ok if r.ttft is not None], 50),
        # the two versions are different random adapters: replies may differ in length
        "completion_tokens_mean": (
            sum(r.completion_tokens or 0 for r in ok) / len(ok) if ok else math.nan
        ),
        "versions": versions,
        "errors": sorted({r.error[:200] for r in rs if not r.ok})[:5],
    }


def bench(
    *,
    quick: bool = False,
    workers: int = 4,
    max_tokens: int = 16,
    settle: float = 2.0,
    vllm_url: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    started = machine()  # the load average before the run
    duration = 30.0 if quick else 60.0
    root = scratch_dir("promotion")
    log("registry: two random versions of tutor-es-l2, @1 live")
    db = setup_registry(root)
    groups = []
    try:
        if vllm_url:
            up_port = int(vllm_url.rstrip("/").removesuffix("/v1").rsplit(":", 1)[1])
            wait_ready(f"http://127.0.0.1:{up_port}/health", None, 30)
        else:
            up_port = free_port()
            log(f"starting vLLM-CPU on :{up_port} (about 40-100 s)")
            groups.append(start_vllm(up_port, max_loras=2, max_resident=2))
        gw_port = free_port()
        env = {
            "TUTOR_ENGINE": "vllm",
            "TUTOR_MODEL": "tiny-qwen3",
            "TUTOR_VLLM_URL": f"http://127.0.0.1:{up_port}/v1",
            "TUTOR_REGISTRY": str(db),
            "TUTOR_ADAPTER_DIR": str(root / "store"),
            "TUTOR_EXTRA_ADAPTER_ROOTS": json.dumps([str(root)]),
            "TUTOR_ADMIN_KEY": ADMIN_KEY,
            "TUTOR_MAX_RESIDENT_ADAPTERS": "2",
        }
        groups.append(start_gateway(gw_port, env=env, scratch=root))
        log(f"gateway :{gw_port}; {workers} workers for {duration:.0f} s, promotion at 1/3")
        results, promo, answer = run_loop(
            load_with_promotion(
                gw_port,
                workers=workers,
                duration=duration,
                promote_at=duration / 3,
                max_tokens=max_tokens,
            )
        )
    finally:
        for g in reversed(groups):
            g.stop()
    parts = windows(results, promo, settle)
    summary = {name: summarise(rs) for name, rs in parts.items()}
    return {
        "bench": "promotion",
        "machine": started,
        "settings": {
            "quick": quick,
            "workers": workers,
            "duration_s": duration,
            "max_tokens": max_tokens,
            "settle_s": settle,
        },
        "promotion": {
            "call_ms": ms(promo["end"] - promo["start"]),
            "at_s": promo["start"],
            "answer": answer,
        },
        "windows": summary,
        "total": summarise(results),
    }


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for name in ("before", "during", "after"):
        w = report["windows"][name]
        out.append(
            [
                name,
                str(w["n"]),
                str(w["failed"]),
                fmt(w["p50_ms"], 1),
                fmt(w["p90_ms"], 1),
                fmt(w["p99_ms"], 1),
                fmt(w["max_ms"], 1),
                fmt(w["completion_tokens_mean"], 1),
                ", ".join(f"{k}: {v}" for k, v in sorted(w["versions"].items())),
            ]
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.promotion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="30 s of load instead of 60")
    p.add_argument("--workers", type=int, default=4, help="concurrent clients")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the call in 'during'")
    p.add_argument("--vllm-url", help="use a running vLLM (http://127.0.0.1:PORT/v1)")
    p.add_argument("--out", type=Path, help="JSON report (default reports/bench/promotion.json)")
    a = p.parse_args(argv)
    install_cleanup()
    try:
        report = bench(
            quick=a.quick,
            workers=a.workers,
            max_tokens=a.max_tokens,
            settle=a.settle,
            vllm_url=a.vllm_url,
        )
    finally:
        stop_all()
    pr = report["promotion"]
    print(
        f"\nPromotion of {VARIANT} @1 -> @2 under load: the admin call took "
        f"{fmt(pr['call_ms'], 1)} ms (answer {pr['answer'].get('status')})"
    )
    print(
        table(
            [
                "window",
                "requests",
                "failed",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "tokens/reply",
                "versions",
            ],
            rows(report),
        )
    )
    print(f"\nwrote {write_report('promotion', report, a.out)}")
    return report


if __name__ == "__main__":
    main()
