"""Engine that forwards to any OpenAI-compatible upstream: Ollama's /v1, a remote vLLM, another
gateway. Each variant maps to an upstream model name; streams pass through chunk by chunk.

The chat call is the gateway's hot path, so it does not go through httpx: it uses a pool of
keep-alive HTTP/1.1 connections parsed by httptools (server/engines/http_pool.py) and decodes
events with orjson (server/engines/openai_wire.py). Profiled under load (docs/PERFORMANCE.md),
httpx's request machinery cost more CPU than the rest of the gateway together. httpx stays for
everything else (health, adapter loads), and carries the chat call too when the upstream is
https, sits behind a proxy, or a test injects a transport. This module builds the request,
picks the transport and drives the call.
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
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from server.engines.base import OPTIONAL_PARAMS, Engine, GenerationRequest, TextDelta
from server.engines.http_pool import MAX_CONNECTIONS, MAX_IDLE_CONNECTIONS, Pool, direct_http
from server.engines.openai_wire import SSEDecoder, body_deltas, upstream_error
from server.errors import EngineUnavailable

log = logging.getLogger(__name__)

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
            Pool(self.base_url, api_key=api_key, timeout=timeout, connect_timeout=10.0)
            if transport is None and direct_http(self.base_url)
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
                raise upstream_error(status, data, payload["model"])
            if not request.stream:
                parts = []
                last = False
                while not last:
                    chunk, last = await anext(stream)
                    parts.append(chunk)
                for delta in body_deltas(b"".join(parts)):
                    yield delta
                return
            decoder = SSEDecoder()
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
