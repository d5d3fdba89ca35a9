"""Ollama export: a Modelfile that layers a PEFT adapter on Ollama's base, or merged weights.

Ollama's ``ADAPTER`` needs the adapter trained on the same base as ``FROM`` (for the production
recipe: Qwen3-8B-Base with ``FROM qwen3:8b``'s base weights). ``--merged`` folds the LoRA into a
full safetensors model instead, which Ollama imports with ``FROM <folder>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from adapters.registry import Registry
from common.files import atomic_dir, atomic_write_text
from common.paths import tutor_home
from common.settings import Settings

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def _adapter_path(ref: str, home: Path | None) -> Path:
    if Path(ref).expanduser().is_dir():
        return Path(ref).expanduser().resolve()

    return Registry.from_settings(Settings(home=tutor_home(home))).get(ref).path


def modelfile(from_: str, adapter: str | None, *, temperature: float = 0.7) -> str:
    lines = [
        "# Written by `tutor train export-ollama`. The gateway adds each variant's persona,",
        "# so no SYSTEM line is needed.",
        f"FROM {from_}",
    ]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines += [
        f'TEMPLATE """{CHATML_TEMPLATE}"""',
        'PARAMETER stop "<|im_end|>"',
        f"PARAMETER temperature {temperature}",
    ]
    return "\n".join(lines) + "\n"


def export_ollama(
    adapter: str,
    out: Path,
    *,
    base: str = "qwen3:8b",
    merged: bool = False,
    base_model: str | None = None,
    home: Path | None = None,
) -> Path:
    """Write ``out/Modelfile`` (+ ``out/adapter`` or ``out/merged``); returns the Modelfile."""
    src = _adapter_path(adapter, home)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not merged:
        dest = out / "adapter"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(src / name, dest / name)
        text = modelfile(base, "./adapter")
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from common.model_store import resolve_model

        if base_model is None:
            import json

            base_model = json.loads((src / "adapter_config.json").read_text())[
                "base_model_name_or_path"
            ]
        source = resolve_model(base_model, tutor_home(home)).source
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        model = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
        with atomic_dir(out / "merged", mode=0o755) as tmp:
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        text = modelfile("./merged", None)
    path = out / "Modelfile"
    atomic_write_text(path, text)
    return path
