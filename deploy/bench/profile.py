"""Profile the gateway with py-spy under the overhead benchmark's load (fake upstream).

Starts the FAKE upstream and a gateway (from this checkout or ``--src``), drives closed-loop load
for ``--seconds`` while ``py-spy record`` samples the gateway, then prints where the samples
fell: by component (the package of the innermost frame) and the top functions. Writes the raw
collapsed stacks under reports/bench/ (open them in speedscope.app or flamegraph.pl).

    .venv/bin/python -m deploy.bench.profile --mode stream --concurrency 8
    .venv/bin/python -m deploy.bench.profile --src /tmp/before --label before

py-spy needs ptrace rights over the gateway (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.net import free_port
from deploy.bench.loadgen import chat_body, encode_request, measure
from deploy.bench.paths import REPORTS
from deploy.bench.processes import install_cleanup, stop_all
from deploy.bench.report import fmt, table, write_report
from deploy.bench.servers import start_fake_upstream, start_gateway

# innermost-frame file patterns -> component, first match wins
COMPONENTS = [
    ("server/engines/", "gateway: engines"),
    ("server/streaming", "gateway: streaming"),
    ("server/", "gateway: other"),
    ("adapters/", "gateway: other"),
    ("httpx/", "httpx/httpcore/h11"),
    ("httpcore/", "httpx/httpcore/h11"),
    ("h11/", "httpx/httpcore/h11"),
    ("anyio/", "anyio"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("pydantic", "pydantic"),
    ("uvicorn/", "uvicorn"),
    ("prometheus_client/", "prometheus_client"),
    ("json/", "json"),
    ("threading.py", "threads (pool hand-offs)"),
    ("queue.py", "threads (pool hand-offs)"),
    ("asyncio/", "asyncio/uvloop"),
]


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return exe


def component(frame: str) -> str:
    for pattern, name in COMPONENTS:
        if pattern in frame:
            return name
    return "other"


def analyse(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Samples of the main thread (the event loop) by component and by function (self time)."""
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()  # on the stack at all
    total = loop = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        if not any("Runner.run" in f or "run_until_complete" in f for f in frames):
            continue  # worker threads of the pool: idle waits mostly
        loop += count
        leaf = frames[-1]
        by_component[component(leaf)] += count
        by_function[leaf] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "loop_samples": loop,
        "components": {k: v / loop for k, v in by_component.most_common()} if loop else {},
        "functions": {k: v / loop for k, v in by_function.most_common(top)} if loop else {},
        # the project's own frames by inclusive share: which step of the route costs what
        "own_inclusive": {
            k: v / loop
            for k, v in inclusive.most_common()
            if any(f"({room}/" in k for room in ("server", "adapters", "common"))
        }
        if loop
        else {},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--src", type=Path, help="run the gateway from this checkout")
    p.add_argument("--label", default="gateway", help="names the output files")
    p.add_argument("--mode", choices=["stream", "nonstream"], default="stream")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--quick", action="store_true", help="6 s instead of --seconds")
    p.add_argument(
        "--token-interval-ms",
        type=float,
        default=0.0,
        help="pace the fake's tokens (20: like a model at 50 tokens/s); 0: all at once",
    )
    a = p.parse_args(argv)
    seconds = 6.0 if a.quick else a.seconds
    install_cleanup()
    out = REPORTS / f"profile-{a.label}-{a.mode}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        up = free_port()
        start_fake_upstream(up, token_interval_ms=a.token_interval_ms)
        port = free_port()
        gateway = start_gateway(
            port,
            src=a.src,
            env={
                "TUTOR_ENGINE": "openai",
                "TUTOR_MODEL": "fake-model",
                "TUTOR_UPSTREAM_URL": f"http://127.0.0.1:{up}/v1",
            },
        )
        stream = a.mode == "stream"
        raw = encode_request(
            "127.0.0.1", port, "/v1/chat/completions", chat_body("fake-model", stream=stream)
        )
        measure(port, lambda i: (raw, stream, ""), concurrency=a.concurrency, total=200)  # warm
        collapsed = out.with_suffix(".txt")
        spy = subprocess.Popen(
            [py_spy(), "record", "-p", str(gateway.pid), "-r", str(a.rate), "-d",
             str(int(seconds) + 1), "-f", "raw", "-o", str(collapsed), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        run = measure(
            port,
            lambda i: (raw, stream, ""),
            concurrency=a.concurrency,
            duration=seconds,
            watch={"gateway": gateway},
        )
        spy.wait(timeout=60)
    finally:
        stop_all()
    result = analyse(collapsed)
    n = len(run.results)
    result.update(
        label=a.label,
        mode=a.mode,
        concurrency=a.concurrency,
        requests=n,
        failed=run.failed,
        rps=n / run.wall,
        gateway_cpu_ms_per_request=run.cpu["gateway"] * 1000 / n if n else None,
        collapsed=str(collapsed),
    )
    print(
        f"\n{a.label}: {n} requests in {seconds:.0f} s ({result['rps']:.0f}/s, failed "
        f"{run.failed}), gateway CPU {fmt(result['gateway_cpu_ms_per_request'], 3)} ms/request "
        "(while sampled)"
    )
    print("\nEvent-loop thread samples by component (innermost frame)")
    print(
        table(
            ["component", "share"],
            [[k, f"{100 * v:.1f}%"] for k, v in result["components"].items()],
        )
    )
    print("\nTop functions (self time, event-loop thread)")
    print(
        table(
            ["function", "share"],
            [[k, f"{100 * v:.1f}%"] for k, v in result["functions"].items()],
        )
    )
    print("\nThe project's own frames, inclusive (on the event loop's stack at all)")
    print(
        table(
            ["function", "share"],
            [[k, f"{100 * v:.1f}%"] for k, v in list(result["own_inclusive"].items())[:20]],
        )
    )
    print(f"\nwrote {write_report(f'profile-{a.label}-{a.mode}', result)} and {collapsed}")
    return result


if __name__ == "__main__":
    main()
