"""The benchmarks' child processes: start, watch (RSS, CPU time), stop, clean up on the way out.

Every server a benchmark starts (fake upstream, gateway, vLLM) runs in its own session, so its
whole process group is signalled on the way out (vLLM is three processes). They are stopped in
``finally`` blocks, at exit and on SIGTERM/SIGINT. It is separate from what is started
(deploy/bench/servers.py): this module knows process groups, not gateways or vLLM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from deploy.bench.paths import REPO

_LIVE: list[Group] = []


class Group:
    """A server in its own session (process group); ``stop`` signals the whole group."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str],
        log: Path,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.cmd = [str(c) for c in cmd]
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            self.cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session: the leader's pid is the group id
        _LIVE.append(self)

    def alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def members(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(p.pid) == self.pgid:
                    found.append(p)
        return found

    def rss(self) -> dict[str, float]:
        """RSS summed over the group (shared pages counted per process) and PSS (shared split)."""
        rss = pss = 0
        n = 0
        for p in self.members():
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                n += 1
        return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": n}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the group's processes so far."""
        total = 0.0
        for p in self.members():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def stop(self, grace: float = 20.0) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=0.2)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._fh.close()

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def stop_all() -> None:
    for g in list(reversed(_LIVE)):
        with contextlib.suppress(Exception):
            g.stop()


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every child at exit, on Ctrl-C and on SIGTERM."""
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def wait_ready(url: str, group: Group | None, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if group is not None and group.popen.poll() is not None:
            raise RuntimeError(f"{group.name} exited during start-up:\n{group.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def running(*groups: Group) -> Iterator[None]:
    try:
        yield
    finally:
        for g in reversed(groups):
            g.stop()
