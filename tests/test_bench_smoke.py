"""The benchmarks run: the overhead bench end to end against the fake upstream, tiny counts.

Speed is measured by the benchmarks themselves (docs/PERFORMANCE.md), never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server.settings import REPO

BENCHES = ["overhead", "multilora", "promotion", "engines", "memory", "chart", "profile"]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_overhead_quick_against_the_fake_upstream_prints_every_row(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--upstreams", "fake", "--quick", "--scale", "0.05", "--rounds", "1", "--out", str(out)]
    done = _run("deploy.bench.overhead", *args, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    for column in ("+p50 ms", "+p99 ms", "+TTFT p50", "rps gw/direct", "failed"):
        assert column in header
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert sorted((c[2], int(c[3])) for c in cells) == sorted(
        (mode, conc) for mode in ("nonstream", "stream") for conc in (1, 8, 32)
    )
    assert all(c[0] == "fake" and c[-1] == "0" for c in cells)  # no failed request
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 6
    for row in report["rows"]:
        assert row["failed"] == 0 and row["direct"]["n"] > 0 and row["through"]["n"] > 0
        assert row["through"]["gateway_cpu_ms_per_request"] is not None


@pytest.mark.parametrize("bench", BENCHES)
def test_every_bench_explains_itself(bench):
    done = _run(f"deploy.bench.{bench}", "--help", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--quick" in done.stdout or bench == "chart"
