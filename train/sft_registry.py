"""The adapter registry as an SFT run sees it: where Stage 2 starts, and the registry to add to.

Separate from the trainer because it is the run's only door to adapters/ (the registry, shipped
folders) and common.settings; both are imported inside the functions, so importing this module
stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.registry import Registry
from common.settings import Settings
from train.sft_config import SFTRunConfig


def _registry(cfg: SFTRunConfig) -> Any:

    settings = Settings(home=cfg.home)
    return Registry.from_settings(settings), settings


def resolve_init_adapter(
    cfg: SFTRunConfig, base_model: str | None = None
) -> tuple[Path | None, str | None]:
    """(folder, registered parent name) of the adapter Stage 2 starts from. A shipped folder
    (with its manifest) is registered first if this registry lacks it, so it is the parent."""
    ref = cfg.lora.init_adapter
    if not ref:
        return None, None
    folder = Path(ref).expanduser().resolve()
    if folder.is_dir():
        if base_model is None or not cfg.run.register:
            return folder, None
        from adapters.shipped import register_folder

        reg, settings = _registry(cfg)
        version = register_folder(
            reg,
            folder,
            base_model=base_model,
            base_aliases=(cfg.model.name,),
            max_rank=settings.max_lora_rank,
        )
        return folder, version.name if version else None
    if "@" not in ref:
        raise ValueError(f"init_adapter {ref!r} is neither a folder nor a registry name")
    reg, _ = _registry(cfg)
    variant, _, which = ref.partition("@")
    if which == "latest":
        versions = reg.list(variant)
        if not versions:
            raise ValueError(f"no registered versions of {variant}")
        v = versions[-1]
    else:
        v = reg.get(ref)
    return v.path, v.name
