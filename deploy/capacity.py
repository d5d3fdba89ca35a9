"""``make capacity``: how many learners can this box serve while the first token comes within 2 s?

    python -m deploy.capacity          # starts `tutor serve` (a managed vLLM) if none answers
    python -m deploy.capacity --steps 1,2,4,8,16 --step-time 60s --threshold 2

Locust's simulated learners (deploy/locustfile.py: short conversations, every variant in the mix,
a variant switch on every turn) are stepped up, 1, 2, 4, 8, ... users, each step a fresh bounded
Locust run at a learner's pace (``--think``: seconds to read a reply and type the next sentence).
After each step the run stops if the time to first token p95 over all variants passed
``--threshold`` or any turn failed. Per step: users, turns per second, TTFT p50/p95, turn
p50/p95, tokens/s per stream (p50) and in total, failures, and the CPU the gateway and its vLLM
used (seconds of CPU per second of the step: 2.0 is both cores). Written under ``--out``:
``capacity.md`` (the table and the answer), ``capacity.json``, ``capacity.png`` (users against
TTFT p50/p95 and total tokens/s) and Locust's HTML report per step. The answer is one line:
"N concurrent learners at TTFT p95 <= 2 s on this machine".

Only 127.0.0.1 is ever targeted; users, step time and the number of steps are capped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

from deploy.bench.report import fmt
from deploy.load import answers, is_loopback, locust_command, seconds, start_gateway
from deploy.load_mix import DEFAULT_VARIANTS

MAX_USERS = 128
MAX_STEP_SECONDS = 300
MAX_STEPS = 10


@dataclass
class Step:
    users: int
    seconds: float
    turns: int
    failures: int
    turns_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    turn_p50_ms: float | None
    turn_p95_ms: float | None
    tokens_per_s_per_stream: float | None
    tokens_per_s_total: float
    gateway_cpu: float | None  # CPU seconds per second of the step
    vllm_cpu: float | None
    variants: dict[str, int]  # turns per variant

    def passed(self, threshold_ms: float) -> bool:
        return (
            self.failures == 0
            and self.turns > 0
            and self.ttft_p95_ms is not None
            and self.ttft_p95_ms <= threshold_ms
        )


def _num(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def listener(port: int) -> psutil.Process | None:
    """The process listening on ``port`` here (the gateway), when this run did not start it."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def cpu_seconds(gateway: psutil.Process | None) -> tuple[float, float] | None:
    """(gateway, everything it started: the managed vLLM's processes) CPU seconds so far."""
    if gateway is None:
        return None
    try:
        t = gateway.cpu_times()
        own = t.user + t.system
        kids = 0.0
        for child in gateway.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                kids += c.user + c.system
        return own, kids
    except psutil.Error:
        return None


def run_step(
    users: int, args: argparse.Namespace, gateway: psutil.Process | None, log: Any = print
) -> Step:
    out: Path = args.out
    summary = out / f"step-{users:03d}_variants.csv"
    summary.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOAD_MAX_TOKENS": str(args.max_tokens),
        "LOAD_SUMMARY_CSV": str(summary),
        "LOAD_THINK": args.think,
        "LOAD_VARIANTS": args.variants,
    }
    if args.seed is not None:
        env["LOAD_SEED"] = str(args.seed + users)
    cmd = locust_command(
        args.host,
        users=users,
        spawn_rate=users,  # all at once: the step measures N learners, not a ramp
        run_time=f"{args.step_seconds}s",
        html=out / f"step-{users:03d}.html",
    )
    before, t0 = cpu_seconds(gateway), time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = cpu_seconds(gateway)
    if not summary.exists():
        tail = done.stderr[-2000:]
        raise SystemExit(f"Locust wrote no summary (exit {done.returncode}):\n{tail}")
    with summary.open(newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    total = rows.pop("all")
    turns = int(total["turns"])
    step_s = float(args.step_seconds)
    cpu = [(b - a) / wall for a, b in zip(before, after, strict=True)] if before and after else None
    step = Step(
        users=users,
        seconds=step_s,
        turns=turns,
        failures=int(total["failures"]),
        turns_per_s=turns / step_s,
        ttft_p50_ms=_num(total["ttft_p50_ms"]),
        ttft_p95_ms=_num(total["ttft_p95_ms"]),
        turn_p50_ms=_num(total["turn_p50_ms"]),
        turn_p95_ms=_num(total["turn_p95_ms"]),
        tokens_per_s_per_stream=_num(total["tokens_per_s_p50"]),
        tokens_per_s_total=int(total["completion_tokens"]) / step_s,
        gateway_cpu=cpu[0] if cpu else None,
        vllm_cpu=cpu[1] if cpu else None,
        variants={v: int(r["turns"]) for v, r in rows.items()},
    )
    log(
        f"{users:4d} learners: {turns} turns, TTFT p50/p95 {_f(step.ttft_p50_ms)}/"
        f"{_f(step.ttft_p95_ms)} ms, {step.tokens_per_s_total:.1f} tok/s, "
        f"failures {step.failures}"
    )
    return step


def _f(x: float | None, digits: int = 0) -> str:
    return fmt(x, digits)


def answer(steps: list[Step], threshold_ms: float) -> str:
    ok = [s.users for s in steps if s.passed(threshold_ms)]
    limit = f"{threshold_ms / 1000:g} s"
    if not ok:
        first = steps[0]
        return (
            f"No step met TTFT p95 <= {limit} on this machine (1 learner: p95 "
            f"{_f(first.ttft_p95_ms)} ms, {first.failures} failures)."
        )
    best = max(ok)
    beyond = [s for s in steps if s.users > best]
    tail = ""
    if beyond:
        s = beyond[0]
        why = f"{s.failures} failures" if s.failures else f"TTFT p95 {_f(s.ttft_p95_ms)} ms"
        tail = f" ({s.users} learners: {why})"
    elif best == steps[-1].users:
        tail = " (the last step tried: the limit is higher)"
    return f"{best} concurrent learners at TTFT p95 <= {limit} on this machine{tail}."


def table(steps: list[Step]) -> str:
    head = (
        "| learners | turns/s | TTFT p50 ms | TTFT p95 ms | turn p50 ms | turn p95 ms "
        "| tok/s per stream | tok/s total | failures | gateway CPU | vLLM CPU |"
    )
    lines = [head, "|" + "---:|" * 11]
    for s in steps:
        lines.append(
            f"| {s.users} | {s.turns_per_s:.2f} | {_f(s.ttft_p50_ms)} | {_f(s.ttft_p95_ms)} "
            f"| {_f(s.turn_p50_ms)} | {_f(s.turn_p95_ms)} | {_f(s.tokens_per_s_per_stream, 1)} "
            f"| {s.tokens_per_s_total:.1f} | {s.failures} | {_f(s.gateway_cpu, 2)} "
            f"| {_f(s.vllm_cpu, 2)} |"
        )
    return "\n".join(lines)


def chart(steps: list[Step], threshold_ms: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s.users for s in steps]
    fig, left = plt.subplots(figsize=(7, 4.2), dpi=120)
    left.plot(users, [s.ttft_p50_ms or math.nan for s in steps], "o-", label="TTFT p50")
    left.plot(users, [s.ttft_p95_ms or math.nan for s in steps], "s-", label="TTFT p95")
    left.axhline(threshold_ms, color="grey", linestyle="--", label=f"{threshold_ms:g} ms")
    left.set_xscale("log", base=2)
    left.set_xticks(users, [str(u) for u in users])
    left.set_xlabel("concurrent learners")
    left.set_ylabel("time to first token (ms)")
    right = left.twinx()
    right.plot(users, [s.tokens_per_s_total for s in steps], "^:", color="tab:green")
    right.set_ylabel("tokens/s in total", color="tab:green")
    left.legend(loc="upper left")
    left.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="http://127.0.0.1:8000")
    p.add_argument("--steps", default="1,2,4,8,16,32,64", help="learners per step, ascending")
    p.add_argument("--step-time", default="60s", help="each step's Locust run time")
    p.add_argument("--threshold", type=float, default=2.0, help="TTFT p95 limit, seconds")
    p.add_argument("--think", default="4,10", help="min,max seconds between a learner's turns")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="variant=weight,...")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("reports/capacity"))
    p.add_argument("--engine", default="vllm", help="for a gateway started here")
    p.add_argument("--model", default="smollm2-135m-instruct", help="for a gateway started here")
    p.add_argument("--no-start", action="store_true", help="never start a gateway")
    p.add_argument("--start-timeout", type=float, default=300)
    p.add_argument("--label", default="", help="a note for the report and the chart's title")
    args = p.parse_args(argv)
    # a SIGTERM ends the run through the finally blocks: the gateway started here is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    args.host = args.host.rstrip("/")
    if not is_loopback(args.host):
        p.error(f"load tests run against this machine only (127.0.0.1), not {args.host}")
    steps = [int(x) for x in args.steps.split(",") if x.strip()]
    if not steps or steps != sorted(set(steps)) or not 1 <= steps[0] <= steps[-1] <= MAX_USERS:
        p.error(f"--steps must be ascending learner counts between 1 and {MAX_USERS}")
    if len(steps) > MAX_STEPS:
        p.error(f"at most {MAX_STEPS} steps")
    args.step_seconds = seconds(args.step_time)
    if not 1 <= args.step_seconds <= MAX_STEP_SECONDS:
        p.error(f"--step-time must be between 1 s and {MAX_STEP_SECONDS} s")
    think = [float(x) for x in args.think.split(",")]
    if len(think) != 2 or not 0 <= think[0] <= think[1]:
        p.error("--think is min,max seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    threshold_ms = args.threshold * 1000

    started = None
    if not answers(args.host):
        if args.no_start:
            p.error(f"no gateway answers at {args.host}")
        print(f"starting a gateway at {args.host} ({args.engine}, {args.model})", flush=True)
        started = start_gateway(args.host, args.engine, args.model, args.start_timeout)
    port = urlparse(args.host).port or 80
    gateway = psutil.Process(started.pid) if started else listener(port)
    done: list[Step] = []
    try:
        for users in steps:
            step = run_step(users, args, gateway)
            done.append(step)
            if not step.passed(threshold_ms):
                break
    finally:
        if started is not None:
            started.terminate()
            started.wait(timeout=120)
    line = answer(done, threshold_ms)
    title = f"{args.label or args.host} - think {args.think} s, {args.max_tokens} tokens"
    chart(done, threshold_ms, args.out / "capacity.png", title)
    text = "\n".join(
        [
            f"# Capacity: {args.label or args.host}",
            "",
            f"`{shlex.join(['python', '-m', 'deploy.capacity', *(argv or sys.argv[1:])])}`",
            "",
            table(done),
            "",
            f"**{line}**",
            "",
            "CPU: seconds of CPU per second of the step (2.0 is both cores of this machine).",
            "",
        ]
    )
    (args.out / "capacity.md").write_text(text, encoding="utf-8")
    report = {
        "answer": line,
        "threshold_ms": threshold_ms,
        "args": {k: str(v) for k, v in vars(args).items()},
        "steps": [asdict(s) for s in done],
        "cpu": {"count": psutil.cpu_count(), "load": os.getloadavg()},
    }
    (args.out / "capacity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(table(done))
    print()
    print(line)
    print(f"\nreports: {args.out}/capacity.md, capacity.json, capacity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
