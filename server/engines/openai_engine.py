"""Engine that forwards to any OpenAI-compatible upstream: Ollama's /v1, a remote vLLM, another
gateway. Each variant maps to an upstream model name; streams pass through chunk by chunk.

The chat call is the gateway's hot path, so it does not go through httpx: it uses a pool of
keep-alive HTTP/1.1 connections parsed by httptools (the parser uvicorn itself uses) and decodes
events with orjson. Profiled under load (docs/PERFORMANCE.md), httpx's request machinery cost more
CPU than the rest of the gateway together. httpx stays for everything else (health, adapter
loads), and carries the chat call too when the upstream is https, sits behind a proxy, or a test
injects a transport.

Deltas parsed from one read of the upstream carry ``extra["more"] = True`` on all but the last:
the next delta is already in hand, so the SSE writer may put them in one write without waiting.

A request whose caller collects the whole reply anyway (``GenerationRequest.stream`` False: a
non-stream client, a corrector turn) asks the upstream for one JSON body, and yields it as one
delta and the final one: the route still collects a stream of deltas (one code path), and the
upstream is spared framing and the gateway parsing a stream event per token (docs/PERFORMANCE.md
section 6: at 8 clients a streamed reply from the fake upstream took 1.3 ms longer than a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httptools
import httpx
import orjson

from server.engines.base import OPTIONAL_PARAMS, Engine, GenerationRequest, TextDelta
from server.errors import EngineError, EngineUnavailable, InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
MAX_IDLE_CONNECTIONS = 64
DRAIN_TIMEOUT = 1.0  # after [DONE], how long to wait for the end of the HTTP body


class OpenAIEngine(Engine):
    name = "openai"
    optional_params = frozenset(OPTIONAL_PARAMS)  # an OpenAI-compatible upstream takes them all
    loads_adapters = False  # the upstream's models are its own: ``model`` is passed through

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "none",
        default_model: str,
        timeout: float = 120.0,
        max_lora_rank: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.default_model = default_model
        self.max_lora_rank = max_lora_rank
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_IDLE_CONNECTIONS
            ),
            transport=transport,
        )
        self._pool = (
            _Pool(self.base_url, api_key=api_key, timeout=timeout, connect_timeout=10.0)
            if transport is None and _direct_http(self.base_url)
            else None
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        await self._client.aclose()

    async def health(self) -> dict[str, Any]:
        try:
            r = await self._client.get("/models", timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"upstream {self.base_url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise EngineUnavailable(f"upstream {self.base_url} answered {r.status_code}")
        return {"engine": self.name, "upstream": self.base_url}

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": request.upstream_model or self.default_model,
            "messages": request.messages,
            "stream": request.stream,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        body.update(p.optional())
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        payload = self._payload(request)
        body = orjson.dumps(payload)
        extra = request.headers
        stream = self._pool.chat(body, extra) if self._pool else self._chat_httpx(body, extra)
        try:
            status, data = await anext(stream)
            if status != 200:
                raise _upstream_error(status, data, payload["model"])
            if not request.stream:
                parts = []
                last = False
                while not last:
                    chunk, last = await anext(stream)
                    parts.append(chunk)
                for delta in _body_deltas(b"".join(parts)):
                    yield delta
                return
            decoder = _SSEDecoder()
            last = False
            while not last:
                chunk, last = await anext(stream)
                deltas = decoder.feed(chunk)
                if decoder.done and not last:
                    last = await _drain(stream)
                # all but the last delta of a read are followed at once by another
                more = len(deltas) if last else len(deltas) - 1
                for i, delta in enumerate(deltas):
                    if i < more:
                        delta.extra["more"] = True
                    yield delta
            yield decoder.final()
        finally:
            await stream.aclose()

    async def _chat_httpx(
        self, body: bytes, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[Any, Any]]:
        """The chat call through httpx: yields (status, error body), then (bytes, last?)."""
        headers = {"Content-Type": "application/json", **(extra or {})}
        try:
            async with self._client.stream(
                "POST", "/chat/completions", content=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    yield resp.status_code, await resp.aread()
                    return
                yield 200, b""
                async for chunk in resp.aiter_bytes():
                    yield chunk, False
                yield b"", True
        except httpx.TimeoutException as exc:
            raise EngineUnavailable(f"upstream timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"upstream {self.base_url} unreachable: {exc}") from exc


async def _drain(stream: AsyncIterator[tuple[Any, Any]]) -> bool:
    """After [DONE], read to the end of the HTTP body (so the connection can be reused)."""
    with contextlib.suppress(TimeoutError, StopAsyncIteration, EngineUnavailable):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for _, last in stream:
                if last:
                    break
    return True


class _SSEDecoder:
    """Upstream SSE bytes to deltas; the finish reason waits for the usage chunk."""

    __slots__ = ("_tail", "done", "finish", "usage")

    def __init__(self) -> None:
        self._tail = b""
        self.done = False
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[TextDelta]:
        buf = self._tail + data if self._tail else data
        if b"\r" in buf:  # SSE lines may end in \r\n or \r as well as \n
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._tail = lines.pop()  # an incomplete line waits for the next read
        out: list[TextDelta] = []
        for line in lines:
            if self.done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            chunk = orjson.loads(data)
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message", err) if isinstance(err, dict) else err
                raise EngineError(f"upstream error: {message}")
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                logprobs = (choice.get("logprobs") or {}).get("content")
                calls = delta.get("tool_calls")
                if text or logprobs or calls:
                    out.append(TextDelta(text=text, logprobs=logprobs, tool_calls=calls))
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]
        return out

    def final(self) -> TextDelta:
        return _final_delta(self.finish, self.usage)


def _final_delta(finish: str | None, usage: dict[str, Any] | None) -> TextDelta:
    """The last delta of a reply, streamed or in one body: OpenAI's finish reason (anything but
    ``length`` and ``tool_calls`` reads as ``stop``) and the usage."""
    usage = usage or {}
    return TextDelta(
        finish_reason=finish if finish in ("length", "tool_calls") else "stop",
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def _body_deltas(body: bytes) -> list[TextDelta]:
    """A non-stream chat completion as the deltas a stream of it would have given: the text (with
    its logprobs and tool calls, indexed as streamed calls are), then the finish and usage."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EngineError(f"upstream sent a body that is not JSON: {body[:200]!r}") from exc
    if "error" in reply:
        err = reply["error"]
        raise EngineError(
            f"upstream error: {err.get('message', err) if isinstance(err, dict) else err}"
        )
    choice = (reply.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    logprobs = (choice.get("logprobs") or {}).get("content")
    calls = [{**c, "index": i} for i, c in enumerate(message.get("tool_calls") or ())]
    out = (
        [TextDelta(text=text, logprobs=logprobs, tool_calls=calls or None)]
        if (text or logprobs or calls)
        else []
    )
    out.append(_final_delta(choice.get("finish_reason"), reply.get("usage")))
    return out


def _direct_http(base_url: str) -> bool:
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


class _Pool:
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


def _upstream_error(status: int, content: bytes, model: str) -> Exception:
    try:
        message = orjson.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content[:500].decode(errors="replace")
    if status == 404:
        return ModelNotFound(f"upstream has no model {model!r}: {message}", param="model")
    if status == 400:  # e.g. prompt + max_tokens beyond vLLM's --max-model-len: the client's fault
        return InvalidRequest(
            f"the engine refused the request: {message}",
            param="max_tokens" if "max_tokens" in message or "context" in message else None,
        )
    if status in (429, 502, 503, 504):
        return EngineUnavailable(f"upstream busy or down ({status}): {message}")
    return EngineError(f"upstream answered {status}: {message}")
