"""Engines behind one interface; ``build_engine`` picks one from the settings."""

from __future__ import annotations

from server.engines.base import AdapterRef, Engine, GenerationRequest, SamplingParams, TextDelta
from server.settings import Settings

__all__ = [
    "AdapterRef",
    "Engine",
    "GenerationRequest",
    "SamplingParams",
    "TextDelta",
    "build_engine",
]


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``settings.engine``, configured but not started."""
    if settings.engine == "openai":
        from server.engines.openai_engine import OpenAIEngine

        if not settings.upstream_url:
            raise ValueError("the openai engine needs TUTOR_UPSTREAM_URL (--upstream-url)")
        return OpenAIEngine(
            settings.upstream_url,
            api_key=settings.upstream_api_key,
            default_model=settings.model,
            timeout=settings.upstream_timeout,
            max_lora_rank=settings.max_lora_rank,
        )
    from server.engines.transformers_engine import TransformersEngine
    from server.model_store import resolve_model

    resolved = resolve_model(settings.model, settings.home, settings.served_model_name)
    return TransformersEngine(
        resolved.source, dtype=settings.dtype, max_lora_rank=settings.max_lora_rank
    )
