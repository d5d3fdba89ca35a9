"""Engines behind one interface; ``build_engine`` picks one from the settings."""

from __future__ import annotations

from common.settings import Settings
from server.engines.base import AdapterRef, Engine, GenerationRequest, SamplingParams, TextDelta
from server.hardware import choose_block_size, choose_speculation, has_gpu, machine_dtype

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
    from common.model_store import resolve_model

    resolved = resolve_model(settings.model, settings.home, settings.served_model_name)
    if settings.engine == "vllm":
        return build_vllm_engine(settings, resolved.source, resolved.public_id)
    from server.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        resolved.source, dtype=settings.dtype, max_lora_rank=settings.max_lora_rank
    )


def vllm_dtype(requested: str) -> str:
    """``auto`` is chosen from the hardware (server/hardware.py), not left to vLLM, whose own
    ``auto`` serves bf16 checkpoints in bf16 even on a CPU that can only emulate it."""
    return machine_dtype() if requested == "auto" else requested


def vllm_args(settings: Settings, source: str, public_id: str) -> list[str]:
    """vLLM server flags; the same on CPU and GPU but for the environment (see README)."""
    n = max(settings.vllm_max_loras, 1)
    return [
        "--model",
        source,
        "--served-model-name",
        public_id,
        "--dtype",
        vllm_dtype(settings.vllm_dtype),
        "--max-model-len",
        str(settings.vllm_max_model_len),
        "--enable-lora",
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-loras",
        str(n),
        # adapters pushed out of vLLM's CPU cache are re-read from disk; keep ours in memory
        "--max-cpu-loras",
        str(max(n, settings.max_resident_adapters)),
        "--disable-uvicorn-access-log",
        # JSON mode without free whitespace: a small model otherwise pads a constrained reply
        # with blank lines up to max_tokens and the client gets JSON that never closes
        # (tests/server/test_vllm.py::test_json_mode_and_logprobs_reach_vllm)
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
        *block_size_args(settings.vllm_block_size),
        *speculation_args(settings.vllm_speculation),
        *tool_args(settings),
        *settings.vllm_extra_args,
    ]


def tool_args(settings: Settings) -> list[str]:
    """With tools forwarded (TUTOR_TOOLS=forward), vLLM may choose a tool itself."""
    if settings.tools != "forward":
        return []
    return ["--enable-auto-tool-choice", "--tool-call-parser", settings.vllm_tool_parser]


def speculation_args(requested: str) -> list[str]:
    """N-gram speculation for the corrector's copy of the sentence (server/hardware.py)."""
    config = choose_speculation(requested, gpu=has_gpu())
    return [] if config is None else ["--speculative-config", config]


def block_size_args(requested: int | None) -> list[str]:
    """A KV block small enough for the persona to be cached (server/hardware.py)."""
    size = choose_block_size(requested, gpu=has_gpu())
    return [] if size is None else ["--block-size", str(size)]


def build_vllm_engine(settings: Settings, source: str, public_id: str) -> Engine:
    from server.engines.vllm_engine import VLLMEngine
    from server.engines.vllm_process import VLLMProcess

    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    if settings.vllm_urls:
        from server.engines.replicas import VLLMReplicaSet

        return VLLMReplicaSet(
            settings.vllm_urls.split(","),
            served_model=public_id,
            max_lora_rank=settings.max_lora_rank,
            max_resident=settings.max_resident_adapters,
            timeout=settings.upstream_timeout,
            api_key=key or "none",
            routing=settings.vllm_routing,
            load_factor=settings.vllm_load_factor,
            health_interval=settings.vllm_health_interval,
        )
    if settings.vllm_url:
        return VLLMEngine(
            settings.vllm_url,
            served_model=public_id,
            max_lora_rank=settings.max_lora_rank,
            timeout=settings.upstream_timeout,
            api_key=key or "none",
        )
    args = vllm_args(settings, source, public_id)
    process = VLLMProcess(
        settings.vllm_python,
        args,
        port=settings.vllm_port,
        start_timeout=settings.vllm_start_timeout,
        log_file=settings.home / "logs" / f"vllm-{settings.vllm_port}.log",
        # by environment, not --api-key: a command line is visible to every user of the host
        env={"VLLM_API_KEY": key} if key else None,
    )
    return VLLMEngine(
        process.url,
        served_model=public_id,
        max_lora_rank=settings.max_lora_rank,
        process=process,
        timeout=settings.upstream_timeout,
        api_key=key or "none",
        speculative="--speculative-config" in args,  # ours (auto) or the operator's own
        dtype=args[args.index("--dtype") + 1],
    )
