"""Check a PEFT adapter folder before any engine sees it.

vLLM answers a bad adapter with a 500 and some bad adapters can take the engine down, so every
check that can be made from the files is made here, with a message a person can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import sha256_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


class AdapterValidationError(ValueError):
    """The folder is not an adapter this service can serve; the message says why."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    sha256: str


def same_base(declared: str, served: str, aliases: tuple[str, ...] = ()) -> bool:
    """A local folder matches itself by resolved path; hub ids match exactly."""
    if not declared:
        return False
    candidates = {served, *aliases}
    if declared in candidates:
        return True
    try:
        resolved = Path(declared).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    return any(
        Path(c).expanduser().resolve() == resolved
        for c in candidates
        if c.startswith(("/", "~", "."))
    )


def validate_adapter(
    path: Path,
    *,
    base_model: str,
    max_rank: int,
    base_aliases: tuple[str, ...] = (),
    expected_sha256: str | None = None,
) -> AdapterInfo:
    path = Path(path)
    if not path.is_dir():
        raise AdapterValidationError(f"adapter folder {path} does not exist")
    cfg_file, weights = path / CONFIG, path / WEIGHTS
    for f in (cfg_file, weights):
        if not f.is_file():
            raise AdapterValidationError(f"adapter folder {path} lacks {f.name}")
    try:
        cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterValidationError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterValidationError(f"only LoRA adapters are served, not {cfg.get('peft_type')}")
    declared = cfg.get("base_model_name_or_path") or ""
    if not same_base(declared, base_model, base_aliases):
        raise AdapterValidationError(
            f"adapter was trained on {declared!r}, but the served base model is {base_model!r}"
        )
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterValidationError(f"adapter rank r={rank!r} is not a positive integer")
    if rank > max_rank:
        raise AdapterValidationError(
            f"adapter rank r={rank} exceeds the engine's max rank {max_rank}"
        )
    if cfg.get("modules_to_save"):
        raise AdapterValidationError("adapters with modules_to_save are not supported")
    if cfg.get("use_dora"):
        raise AdapterValidationError("DoRA adapters are not supported")
    digest = sha256_file(weights)
    if expected_sha256 and digest != expected_sha256:
        raise AdapterValidationError(f"{weights} changed: sha256 {digest} != {expected_sha256}")
    targets = cfg.get("target_modules") or ()
    return AdapterInfo(
        path=path.resolve(),
        base_model=declared,
        rank=rank,
        alpha=float(cfg.get("lora_alpha", rank)),
        target_modules=tuple(sorted([targets] if isinstance(targets, str) else targets)),
        sha256=digest,
    )
