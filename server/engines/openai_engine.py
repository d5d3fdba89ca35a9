"""Engine that forwards to any OpenAI-compatible upstream: Ollama's /v1, a remote vLLM, another
gateway. Each variant maps to an upstream model name; streams pass through chunk by chunk."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from server.engines.base import Engine, GenerationRequest, TextDelta
from server.errors import EngineError, EngineUnavailable, ModelNotFound

log = logging.getLogger(__name__)


class OpenAIEngine(Engine):
    name = "openai"

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
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=transport,
        )

    async def aclose(self) -> None:
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
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        payload = self._payload(request)
        try:
            async with self._client.stream("POST", "/chat/completions", json=payload) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise _upstream_error(resp, payload["model"])
                async for delta in _parse_sse(resp):
                    yield delta
        except httpx.TimeoutException as exc:
            raise EngineUnavailable(f"upstream timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"upstream {self.base_url} unreachable: {exc}") from exc


async def _parse_sse(resp: httpx.Response) -> AsyncIterator[TextDelta]:
    """Turn upstream chunks into deltas; the finish reason waits for the usage chunk."""
    finish: str | None = None
    usage: dict[str, Any] | None = None
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            err = chunk["error"]
            raise EngineError(f"upstream error: {err.get('message', err)}")
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                yield TextDelta(text=text)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    usage = usage or {}
    yield TextDelta(
        finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def _upstream_error(resp: httpx.Response, model: str) -> Exception:
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    if resp.status_code == 404:
        return ModelNotFound(f"upstream has no model {model!r}: {message}", param="model")
    if resp.status_code in (429, 502, 503, 504):
        return EngineUnavailable(f"upstream busy or down ({resp.status_code}): {message}")
    return EngineError(f"upstream answered {resp.status_code}: {message}")
