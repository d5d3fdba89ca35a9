"""``make load``: a bounded Locust run against a gateway on this machine, then a summary.

    python -m deploy.load --users 4 --run-time 30s            # starts a gateway if none answers

It refuses any host but the loopback, caps users and run time, starts ``tutor serve`` (default:
what ``make serve`` runs, a managed vLLM with the default model and the shipped adapters; the
in-process transformers engine with ``--engine transformers``) only when nothing answers at
``--host``, stops
it afterwards, writes Locust's HTML and CSV reports under ``--out`` and prints one line per
variant: turns, failures, turn latency, time to first token and tokens/s.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS = 50
MAX_SECONDS = 600


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def seconds(spec: str) -> int:
    """Locust's time strings: ``90``, ``30s``, ``2m``, ``1h30m``."""
    if spec.isdigit():
        return int(spec)
    parts = re.findall(r"(\d+)([hms])", spec)
    if not parts or "".join(n + u for n, u in parts) != spec:
        raise ValueError(f"not a run time: {spec!r}")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def answers(host: str) -> bool:
    try:
        return httpx.get(f"{host}/v1/models", timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def start_gateway(host: str, engine: str, model: str, timeout: float) -> subprocess.Popen:
    """``tutor serve`` on the host's port, without the UI; waits until /health is 200."""
    port = urlparse(host).port or 80
    tutor = Path(sys.executable).with_name("tutor")
    env = {**os.environ, "TUTOR_UI": "false"}
    proc = subprocess.Popen(
        [str(tutor), "serve", "--engine", engine, "--model", model, "--port", str(port)],
        env=env,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{host}/health", timeout=3).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the gateway did not become healthy in {timeout:.0f} s")


def locust_command(
    host: str,
    *,
    users: int,
    spawn_rate: float,
    run_time: str,
    html: Path,
    csv_prefix: Path | None = None,
) -> list[str]:
    """A headless, bounded Locust run of deploy/locustfile.py (the LOAD_* variables configure
    the learners); ``--stop-timeout`` lets turns in flight finish when the time is up."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host]
    cmd += ["--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time]
    cmd += ["--stop-timeout", "30", "--html", str(html), "--only-summary"]
    if csv_prefix is not None:
        cmd += ["--csv", str(csv_prefix)]
    return cmd


def summary(summary_csv: Path) -> str:
    """The per-variant table, from the CSV the locustfile writes when the run ends."""
    with summary_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = (
        f"{'variant':20} {'turns':>6} {'fail':>5} {'turn p50':>9} {'turn p95':>9} "
        f"{'TTFT p50':>9} {'TTFT p95':>9} {'tok/s p50':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['variant']:20} {r['turns']:>6} {r['failures']:>5} {r['turn_p50_ms'] or '-':>9} "
            f"{r['turn_p95_ms'] or '-':>9} {r['ttft_p50_ms'] or '-':>9} "
            f"{r['ttft_p95_ms'] or '-':>9} {r['tokens_per_s_p50'] or '-':>10}"
        )
    lines.append("times in ms; tok/s: completion tokens per second after the first token")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="http://127.0.0.1:8000")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--spawn-rate", type=float, default=2)
    p.add_argument("--run-time", default="30s")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--variants", help="variant=weight,... (LOAD_VARIANTS)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, help="seed the learners' choices")
    p.add_argument(
        "--engine", default="vllm", help="for a gateway started here: vllm or transformers"
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="for a gateway started here")
    p.add_argument("--no-start", action="store_true", help="never start a gateway")
    p.add_argument("--start-timeout", type=float, default=300)
    args = p.parse_args(argv)

    host = args.host.rstrip("/")
    if not is_loopback(host):
        p.error(f"load tests run against this machine only (127.0.0.1), not {host}")
    if not 1 <= args.users <= MAX_USERS:
        p.error(f"--users must be between 1 and {MAX_USERS}")
    if not 1 <= seconds(args.run_time) <= MAX_SECONDS:
        p.error(f"--run-time must be between 1 s and {MAX_SECONDS} s")

    gateway = None
    if not answers(host):
        if args.no_start:
            p.error(f"no gateway answers at {host}")
        print(f"starting a gateway at {host} ({args.engine}, {args.model})", flush=True)
        gateway = start_gateway(host, args.engine, args.model, args.start_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_csv = args.out / "load_variants.csv"
    summary_csv.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOAD_MAX_TOKENS": str(args.max_tokens),
        "LOAD_SUMMARY_CSV": str(summary_csv),
    }
    if args.variants:
        env["LOAD_VARIANTS"] = args.variants
    if args.seed is not None:
        env["LOAD_SEED"] = str(args.seed)
    cmd = locust_command(
        host,
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        html=args.out / "load.html",
        csv_prefix=args.out / "load",
    )
    try:
        code = subprocess.run(cmd, env=env).returncode
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=60)
    print()
    print(summary(summary_csv))
    print(f"\nreports: {args.out / 'load.html'}, {args.out}/load_*.csv")
    return code


if __name__ == "__main__":
    sys.exit(main())
