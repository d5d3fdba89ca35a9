"""``tutor eval select``: the eval-and-registration step after training, one variant at a time.

For each variant: its newest trained version (not one registered from the shipped set), or one
named, is asked on the variant's own suite twice, as the single adapter (``~plain``) and as a
grounded recast (``~grounded``), next to the base model under the same persona
(``<variant>@base``), all through one gateway. Each way is put through the ship gate
(eval/gate.py) against the base; of the ways that pass, the best pedagogy score wins, and within
the comparison's tolerance the plain way (no corrector turn, so a first token several times
sooner). The winning version is promoted in the registry, and the summary says which way to
serve (the catalogue's ``grounded:``). Nothing is promoted when no way passes. Committing a
version as the shipped default stays a person's step (``tutor adapters ship``), taken only when
this says it wins.

The gateway is the one at ``base_url``, or one started here (``tutor serve`` as a child process
on a free port, vLLM in float32) and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from common.files import atomic_write_text
from common.net import free_port as _free_port
from common.paths import tutor_home
from eval.cache import ReplyCache
from eval.compare import DEFAULT_TOLERANCE, compare_run, load_run
from eval.gate import gates_against
from eval.report import write_report
from eval.runner import default_run_name, run_suite, runs_dir, write_run
from eval.suites import load_suite

SUITE_OF = {
    "tutor": "en",
    "tutor-es-l2": "es-l2",
    "tutor-es-heritage": "es-heritage",
    "tutor-zh-l2": "zh-l2",
    "tutor-zh-heritage": "zh-heritage",
}
WAYS = ("plain", "grounded")


@dataclass
class Selection:
    variant: str
    suite: str
    candidate: str  # the version asked
    base: str  # <variant>@base
    run: str  # the run folder (report under <run>/report)
    gates: dict[str, dict[str, Any]]  # way -> ship gate
    pedagogy: dict[str, float]  # model -> mean pedagogy score
    chosen: str | None  # the winning way's model id, or None
    grounded: bool | None  # serve it grounded? (None: nothing chosen)
    promotion: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def choose(
    pedagogy: dict[str, float],
    gates: dict[str, dict[str, Any]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> str | None:
    """Of the ways that pass their gate, the best pedagogy; a way within ``tolerance`` of the
    best that is plain wins the tie (the same teaching, no corrector turn)."""
    passing = [m for m, g in gates.items() if g["passed"]]
    if not passing:
        return None
    best = max(pedagogy[m] for m in passing)
    tied = [m for m in passing if best - pedagogy[m] <= tolerance + 1e-12]
    plain = [m for m in tied if m.endswith("~plain")]
    return (plain or sorted(tied, key=lambda m: -pedagogy[m]))[0]


SUMMARY_METRICS = (
    "pedagogy", "uptake", "over_correction", "error_echo", "explicit", "question", "language_ok"
)  # fmt: skip


def eval_summary(
    result: dict[str, Any],
    base: str,
    version: str,
    chosen: str | None,
    gates: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The figures a shipped manifest carries for one suite: each model's means, time to the
    first token, which way won, and each way's gate."""

    def means(model: str) -> dict[str, float]:
        m = result["metrics"][model]
        return {k: round(m[k]["mean"], 3) for k in SUMMARY_METRICS if k in m}

    out: dict[str, Any] = {"run": Path(result["run"]).name, "base": means(base)}
    for model in gates:
        out[model.removeprefix(f"{version}~")] = means(model)
    out["ttft_p50_s"] = {m: result["timing"][m]["ttft_p50_s"] for m in [base, *gates]}
    out["gate"] = {m.removeprefix(f"{version}~"): g["passed"] for m, g in gates.items()}
    out["served"] = chosen.removeprefix(f"{version}~") if chosen else None
    return out


def candidate_of(registry: Any, variant: str) -> str:
    """The variant's newest trained version: the one ``tutor train all`` just registered.

    A gateway registers the repository's shipped adapters when it starts, and ``select``
    starts one after training, so on a fresh home the shipped set would otherwise be the newest
    versions and be asked in place of what was trained. It is asked only when nothing else is
    registered (or when named with ``--candidate``).
    """
    versions = registry.list(variant)
    if not versions:
        raise ValueError(f"{variant} has no registered version to evaluate")
    trained = [v for v in versions if not (v.source or {}).get("shipped")]
    return (trained or versions)[-1].name


def select_variant(
    variant: str,
    base_url: str,
    *,
    registry: Any,
    candidate: str | None = None,
    suite: str | None = None,
    home: Path | str | None = None,
    concurrency: int = 4,
    tolerance: float = DEFAULT_TOLERANCE,
    promote: bool = True,
    progress: bool = True,
    ways: Sequence[str] = WAYS,
) -> Selection:
    """Ask, compare, gate, choose and (when a way wins) promote, for one variant."""

    version = candidate or candidate_of(registry, variant)
    base = f"{variant}@base"
    if not ways or set(ways) - set(WAYS):
        raise ValueError(f"ways must be some of {WAYS}, not {list(ways)}")
    models = [base, *(f"{version}~{w}" for w in WAYS if w in ways)]
    s = load_suite(suite or SUITE_OF[variant], home=home)
    store = ReplyCache(tutor_home(home) / "eval" / "cache.sqlite")
    try:
        infos, records = asyncio.run(
            run_suite(s, models, base_url, cache=store, concurrency=concurrency, progress=progress)
        )
    finally:
        store.close()
    folder = runs_dir(home) / default_run_name(s, models)
    write_run(folder, suite=s, base_url=base_url, infos=infos, records=records)
    result = compare_run(load_run(folder), tolerance=tolerance, registry=registry)
    gates = gates_against(result, base)
    result["gates"] = list(gates.values())
    pedagogy = {m: result["metrics"][m]["pedagogy"]["mean"] for m in models}
    chosen = choose(pedagogy, gates, tolerance)
    if chosen is None:
        promotion = f"not promoted: no way of {version} passes the ship gate"
    elif not promote:
        promotion = f"{version} wins ({chosen}); not promoted (--no-promote)"
    elif registry.alias(variant) == version:
        promotion = f"{version} is already live for {variant}"
    else:
        previous, now = registry.promote(variant, version)
        promotion = f"promoted {variant}: {previous or 'base'} -> {now}"
    result["decision"]["promotion"] = promotion
    summary = dict(registry.get(version).eval_summary or {})
    summary[s.ref] = eval_summary(result, base, version, chosen, gates)
    registry.set_eval_summary(version, summary)  # what `tutor adapters ship` writes out
    write_report(result, folder / "report")
    sel = Selection(
        variant=variant,
        suite=s.ref,
        candidate=version,
        base=base,
        run=str(folder),
        gates=gates,
        pedagogy=pedagogy,
        chosen=chosen,
        grounded=None if chosen is None else chosen.endswith("~grounded"),
        promotion=promotion,
    )
    out = tutor_home(home) / "eval" / "select" / f"{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(sel.to_json(), indent=2, ensure_ascii=False) + "\n")
    return sel


@contextmanager
def started_gateway(
    env: dict[str, str] | None = None, *, timeout: float = 900.0, log: Path | None = None
) -> Iterator[str]:
    """``tutor serve`` in its own process group on a free port (vLLM in float32 unless ``env``
    says otherwise); yields its URL once /health answers, and stops the whole group after."""
    port = _free_port()
    exe = shutil.which("tutor", path=str(Path(sys.executable).parent)) or "tutor"
    child_env = {
        **os.environ,
        "TUTOR_PORT": str(port),
        "TUTOR_UI": "false",
        "TUTOR_VLLM_DTYPE": "float32",  # the trained fp32 weights' own numerics (no bf16 here)
        "TUTOR_VLLM_PORT": str(_free_port()),
        **(env or {}),
    }
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [exe, "serve"], env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode} during start-up")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway was not healthy after {timeout:.0f} s")
            time.sleep(2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log:
            out.close()


def summary_lines(selections: Sequence[Selection]) -> list[str]:
    """One markdown table over the variants: the three models' pedagogy and the outcome."""
    lines = [
        "| variant | version | base | plain | grounded | gate plain / grounded | chosen |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for s in selections:
        asked = [f"{s.candidate}~{w}" for w in WAYS]
        score = [f"{s.pedagogy[m]:.2f}" if m in s.pedagogy else "-" for m in asked]
        marks = " / ".join(
            ("pass" if s.gates[m]["passed"] else "fail") if m in s.gates else "-" for m in asked
        )
        lines.append(
            f"| {s.variant} | {s.candidate} | {s.pedagogy[s.base]:.2f} | {score[0]} | "
            f"{score[1]} | {marks} | {s.chosen or '-'} |"
        )
    return lines
