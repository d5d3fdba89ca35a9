"""The load generator: a closed loop of clients on keep-alive connections, and its results.

A closed loop of ``concurrency`` workers, each on one keep-alive HTTP/1.1 connection, sending
pre-encoded requests and parsing responses with httptools. The client must cost far less than
the thing measured, on the same two cores: no httpx, no JSON on the hot path. It is separate
from the processes it measures (deploy/bench/processes.py) and from how the numbers are summed
up and printed (deploy/bench/stats.py, deploy/bench/report.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from deploy.bench.processes import Group

LEARNER = [{"role": "user", "content": "Yesterday I go to the store and buy apple."}]

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
