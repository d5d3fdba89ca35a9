"""The chat call's HTTP client: keep-alive HTTP/1.1 connections to one upstream, on httptools.

It owns the sockets (connect, TCP_NODELAY, idle list, the one retry of a request sent on a
connection the upstream closed while it sat idle), the parsing of the response (httptools, the
parser uvicorn itself uses) and the read timeouts, and turns every failure of the transport into
``EngineUnavailable``. It knows nothing of OpenAI's JSON or SSE: it hands back the status and the
body bytes as they arrive.

It is separate from the engine (server/engines/openai_engine.py) because it is a transport, used
as such by the floor benchmark too (deploy/bench/floor.py), and because it is the part of the
hot path that profiling is about (docs/PERFORMANCE.md): httpx's request machinery cost more CPU
than the rest of the gateway together. httpx stays for everything else (health, adapter loads),
and carries the chat call too when the upstream is https, sits behind a proxy (``direct_http``
says when this pool applies), or a test injects a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httptools

from server.errors import EngineUnavailable

MAX_CONNECTIONS = 256
MAX_IDLE_CONNECTIONS = 64


def direct_http(base_url: str) -> bool:
    """Plain http with no proxy configured for the host: the pooled fast path applies."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not ({"http", "all"} & proxies.keys()):
        return True
    return bool(urllib.request.proxy_bypass(url.hostname))


class _Response:
    """httptools callbacks for the responses on one connection."""

    __slots__ = ("parser", "status", "chunks", "complete", "headers_done", "keep_alive")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.chunks: list[bytes] = []
        self.complete = False
        self.headers_done = False
        self.keep_alive = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())  # known here, reset at the end
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def take(self) -> bytes:
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Connection:
    __slots__ = ("reader", "writer", "response", "timed_out", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.response = _Response()
        self.timed_out = False
        self.used = False  # reused connections may have been closed by the upstream meanwhile

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()

    def _expire(self) -> None:
        self.timed_out = True
        self.writer.transport.abort()

    async def feed(self, timeout: float) -> bool:
        """Read once and parse; False when the upstream closed the connection."""
        timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            data = await self.reader.read(65536)
        finally:
            timer.cancel()
        if not data:
            return False
        self.response.parser.feed_data(data)
        return True


class Pool:
    """Keep-alive HTTP/1.1 connections to one upstream, for the streaming chat call."""

    def __init__(
        self, base_url: str, *, api_key: str, timeout: float, connect_timeout: float
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._first = f"POST {url.path.rstrip('/')}/chat/completions HTTP/1.1\r\n".encode()
        self._head = (
            f"Host: {url.netloc}\r\n"
            f"Authorization: Bearer {api_key}\r\n"
            "Accept: */*\r\n"
            "User-Agent: tutor-gateway\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.opened = 0  # connections opened so far: with keep-alive, far fewer than requests

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise EngineUnavailable(
                f"upstream {self.base_url} unreachable: {exc or type(exc).__name__}"
            ) from exc
        self.opened += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    def _checkout(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def chat(
        self, body: bytes, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[Any, Any]]:
        """POST the chat request: yields (status, error body), then (bytes, last?) per read.
        ``extra`` headers go along (X-Request-Id, checked in server/observe.py; traceparent)."""
        head = self._head
        if extra:
            lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items() if "\n" not in k + v)
            head = lines.encode("latin-1") + head
        request = self._first + head + str(len(body)).encode() + b"\r\n\r\n" + body
        async with self._slots:
            conn, reusable = None, False
            try:
                for attempt in (0, 1):
                    conn = (None if attempt else self._checkout()) or await self._connect()
                    reused, conn.used = conn.used, True
                    conn.writer.write(request)
                    if await self._headers(conn):
                        break
                    conn.close()
                    # A reused connection the upstream closed while it sat idle: nothing was
                    # answered, so the request was never taken. Once more on a fresh one.
                    if not reused or attempt:
                        raise EngineUnavailable(
                            f"upstream {self.base_url} closed the connection without answering"
                        )
                res = conn.response
                if res.status != 200:
                    while not res.complete and await conn.feed(self.timeout):
                        pass
                    yield res.status, res.take()
                    return
                yield 200, b""
                while True:
                    if res.complete:
                        reusable = res.keep_alive
                        yield res.take(), True
                        return
                    if res.chunks:
                        yield res.take(), False
                    if not await conn.feed(self.timeout):
                        raise self._cut(conn)
            except (OSError, httptools.HttpParserError) as exc:
                raise EngineUnavailable(f"upstream {self.base_url} unreachable: {exc}") from exc
            finally:
                if conn is not None:
                    self._release(conn, reusable)

    async def _headers(self, conn: _Connection) -> bool:
        """Read until the status line and headers are in; False if the connection was closed."""
        conn.response.reset()
        try:
            while not conn.response.headers_done:
                if not await conn.feed(self.timeout):
                    if conn.timed_out:
                        raise self._cut(conn)
                    return False
        except ConnectionResetError:
            return False
        return True

    def _cut(self, conn: _Connection) -> EngineUnavailable:
        if conn.timed_out:
            return EngineUnavailable(f"upstream timed out after {self.timeout:.0f} s")
        return EngineUnavailable(f"upstream {self.base_url} closed the connection mid-response")

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and conn.usable() and len(self._idle) < MAX_IDLE_CONNECTIONS:
            conn.response.reset()
            self._idle.append(conn)
        else:
            conn.close()
