"""Soak: steady concurrent chat traffic on 127.0.0.1 over mixed variants, with adapter
promotions happening during it. Prints requests served, errors, p50/p99 latency and the
gateway's memory at the start and the end.

    .venv/bin/python deploy/soak.py --duration 180 --concurrency 8     # the benchmark
    .venv/bin/python deploy/soak.py --quick                            # CI: 10 s

It builds its own scratch registry with two random adapter versions per variant for the tiny
test model, starts `tutor serve` as a child process (so its RSS is the gateway's own), and stops
it at the end. Traffic is bounded in time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from adapters.registry import Registry
from common.net import free_port as _free_port
from common.paths import tutor_home

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"tutor": 3, "tutor-es-l2": 2, "tutor-zh-l2": 1}  # name -> traffic weight
ADMIN = "soak-admin-key"
PROMPTS = ["Yesterday I go to the store.", "Ayer yo voy a la playa.", "我昨天去商店了买东西。"]


def make_adapters(base: Path, root: Path) -> dict[str, list[Path]]:
    """Two random LoRA versions per variant (random A and B, so each changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out: dict[str, list[Path]] = {}
    seed = 100
    for variant in VARIANTS:
        for n in (1, 2):
            torch.manual_seed(seed := seed + 1)
            model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                LoraConfig(
                    r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
                ),
            )
            path = root / "runs" / f"{variant}-{n}"
            model.save_pretrained(path)
            out.setdefault(variant, []).append(path)
    return out


def register(settings_env: dict[str, str], base: Path, adapters: dict[str, list[Path]]) -> None:

    reg = Registry(
        Path(settings_env["TUTOR_REGISTRY"]),
        store=Path(settings_env["TUTOR_ADAPTER_DIR"]),
        roots=json.loads(settings_env["TUTOR_EXTRA_ADAPTER_ROOTS"]),
    )
    for variant, paths in adapters.items():
        first = None
        for p in paths:
            v = reg.add(p, variant=variant, base_model=str(base), max_rank=16)
            first = first or v.name
        reg.promote(variant, first)


async def soak(
    url: str, duration: float, concurrency: int, promote_every: float, max_tokens: int
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    promotions = 0
    stop_at = time.monotonic() + duration
    rng = random.Random(0)
    names, weights = list(VARIANTS), list(VARIANTS.values())
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                variant = rng.choices(names, weights)[0]
                body = {
                    "model": variant,
                    "max_tokens": max_tokens,
                    "stream": rng.random() < 0.5,
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                }
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and (
                        not body["stream"]
                        or r.text.rstrip().endswith("data: [DONE]")
                        and '"error"' not in r.text
                    )
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - start)

        async def promoter() -> None:
            nonlocal promotions
            version = {v: 1 for v in VARIANTS}
            while time.monotonic() + promote_every < stop_at:
                await asyncio.sleep(promote_every)
                variant = rng.choice(names)
                version[variant] = 3 - version[variant]
                r = await client.post(
                    f"/admin/variants/{variant}/promote",
                    json={"version": f"{variant}@{version[variant]}"},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )
                if r.status_code != 200:
                    errors.append(f"promotion failed: {r.status_code} {r.text[:200]}")
                promotions += 1

        await asyncio.gather(promoter(), *(worker() for _ in range(concurrency)))
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "promotions": promotions,
        "rps": len(lat) / duration,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--promote-every", type=float, default=5.0, help="seconds between promotions")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--quick", action="store_true", help="10 s at concurrency 4 (CI)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.concurrency, args.promote_every = 10.0, 4, 2.0

    home = tutor_home()
    base = home / "models" / "tiny-qwen3"
    with tempfile.TemporaryDirectory(prefix="tutor-soak-") as tmp:
        root = Path(tmp)
        port = _free_port()
        env = {
            **os.environ,
            "TUTOR_HOME": str(home),
            "TUTOR_MODEL": "tiny-qwen3",
            "TUTOR_ENGINE": args.engine,
            "TUTOR_PORT": str(port),
            "TUTOR_UI": "false",
            "TUTOR_ADMIN_KEY": ADMIN,
            "TUTOR_REGISTRY": str(root / "registry.sqlite"),
            "TUTOR_ADAPTER_DIR": str(root / "store"),
            "TUTOR_EXTRA_ADAPTER_ROOTS": json.dumps([str(root)]),
            "TUTOR_VLLM_PORT": str(_free_port()),
            "TUTOR_VLLM_DTYPE": "float32",
            "TUTOR_MAX_RESIDENT_ADAPTERS": "4",
        }
        register(env, base, make_adapters(base, root))
        tutor = Path(sys.executable).parent / "tutor"
        log = open(root / "serve.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [str(tutor), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 400
            while True:
                if proc.poll() is not None:
                    print((root / "serve.log").read_text()[-3000:], file=sys.stderr)
                    return 2
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    return 2
                time.sleep(0.5)
            gateway = psutil.Process(proc.pid)
            # warm every version once so the start figure is a serving gateway, not a cold one
            asyncio.run(soak(url, 2.0, 2, 1e9, args.max_tokens))
            rss_start = gateway.memory_info().rss
            result = asyncio.run(
                soak(url, args.duration, args.concurrency, args.promote_every, args.max_tokens)
            )
            rss_end = gateway.memory_info().rss
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
    result.update(
        engine=args.engine,
        duration_s=args.duration,
        concurrency=args.concurrency,
        rss_start_mb=rss_start / 2**20,
        rss_end_mb=rss_end / 2**20,
        rss_growth_mb=(rss_end - rss_start) / 2**20,
    )
    rows = [
        ("engine", result["engine"]),
        ("duration (s)", f"{args.duration:.0f}"),
        ("concurrency", args.concurrency),
        ("requests served", result["requests"]),
        ("requests/s", f"{result['rps']:.1f}"),
        ("errors", result["errors"]),
        ("promotions during the run", result["promotions"]),
        ("p50 latency (ms)", f"{result['p50_ms']:.0f}"),
        ("p99 latency (ms)", f"{result['p99_ms']:.0f}"),
        ("gateway RSS at start (MiB)", f"{result['rss_start_mb']:.0f}"),
        ("gateway RSS at end (MiB)", f"{result['rss_end_mb']:.0f}"),
        ("RSS growth (MiB)", f"{result['rss_growth_mb']:+.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric':{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:{width}} | {v} |")
    for sample in result["error_samples"]:
        print("error:", sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
