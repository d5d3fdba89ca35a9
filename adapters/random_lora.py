"""Random LoRA adapters for the tests and the benchmarks: real PEFT folders whose B matrices are
not the usual zeros, so each one changes the base model's outputs (and two differ from each
other). Torch and PEFT are imported only when one is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_random_adapter(
    base_path: Path, out: Path, *, seed: int, rank: int = 8, **extra: Any
) -> Path:
    """A LoRA adapter with random A and B (not the usual zero B), so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=PROJECTIONS,
        init_lora_weights=False,
        **extra,
    )
    model = get_peft_model(base, config)
    model.save_pretrained(out)
    return out
