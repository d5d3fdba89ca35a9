"""The trained adapters this repository ships as the default tutor, registered on start.

The catalogue's ``adapter:`` names a PEFT folder committed beside it
(``adapters/shipped/<variant>``, bf16 safetensors, a few MB) with a ``tutor-adapter.json``
manifest: variant, version, parent, data manifest hash, eval summary, sha256. On start the
gateway registers each one as ``<variant>@<n>`` and points the variant's alias at it, so a fresh
clone serves trained tutors with the same registry, lineage and promotion machinery as a user's
own runs.

Registration is idempotent (a version with the same weights' sha256 is reused, never added twice)
and never undoes a user's choice: the alias moves only when it is unset or still points at a
version that was itself registered from the shipped set. A user who promoted ``tutor@7`` keeps
``tutor@7`` across restarts; a later release with new shipped weights moves only aliases that
still follow the shipped line.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.registry import AdapterVersion, Registry, VersionNotFound
from adapters.validation import AdapterValidationError, validate_adapter
from adapters.variants import Catalogue
from common.files import atomic_dir, sha256_file

log = logging.getLogger("tutor.adapters")
MANIFEST = "tutor-adapter.json"


@dataclass(frozen=True)
class Registration:
    variant: str
    version: str | None  # None: skipped (see ``outcome``)
    outcome: str  # "added", "existing", or "skipped: <why>"
    alias: str | None  # the variant's alias after registration
    alias_moved: bool


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def register_shipped(
    registry: Registry,
    catalogue: Catalogue,
    *,
    base_model: str,
    base_aliases: tuple[str, ...] = (),
    max_rank: int,
) -> list[Registration]:
    """Register every variant's shipped adapter and point unclaimed aliases at it.

    Parents first (a Stage 2 manifest names its Stage 1 parent by weights hash), so lineage is
    recorded with the names this registry gave. An adapter trained for another base model (a
    test gateway on the tiny model) is skipped with its reason, never an error.
    """
    variants = [v for v in catalogue.variants.values() if v.shipped is not None]
    variants.sort(key=lambda v: bool(read_manifest(v.shipped).get("parent_sha256")))  # type: ignore[arg-type]
    out = []
    for variant in variants:
        folder = Path(variant.shipped)  # type: ignore[arg-type]
        manifest = read_manifest(folder)
        try:
            info = validate_adapter(
                folder, base_model=base_model, max_rank=max_rank, base_aliases=base_aliases
            )
        except AdapterValidationError as exc:
            log.info("shipped adapter for %s not registered: %s", variant.id, exc)
            out.append(Registration(variant.id, None, f"skipped: {exc}", None, False))
            continue
        version, outcome = _add(
            registry, folder, manifest, variant.id, info.sha256, base_model, max_rank, base_aliases
        )
        alias = registry.alias(variant.id)
        moved = False
        if alias != version.name and (alias is None or _is_shipped(registry, alias)):
            registry.promote(variant.id, version.name)
            alias, moved = version.name, True
        out.append(Registration(variant.id, version.name, outcome, alias, moved))
        log.info(
            "shipped adapter %s: %s (%s), alias %s%s",
            variant.id,
            version.name,
            outcome,
            alias,
            " (moved)" if moved else "",
        )
    return out


def _add(
    registry: Registry,
    folder: Path,
    manifest: dict[str, Any],
    variant: str,
    sha256: str,
    base_model: str,
    max_rank: int,
    base_aliases: tuple[str, ...],
) -> tuple[AdapterVersion, str]:
    """The registered version with these weights, added (with its lineage) if there is none:
    in one transaction, so gateways starting together register each folder once."""
    same = [v for v in registry.list(variant) if v.sha256 == sha256]
    if same:  # the usual restart: no copy, no write
        return same[0], "existing"
    version, added = registry.add_once(
        folder,
        variant=variant,
        base_model=base_model,
        max_rank=max_rank,
        parent=_parent(registry, manifest),
        source={
            "shipped": True,
            "folder": str(folder),
            "shipped_version": manifest.get("version"),
            "data_manifest_sha256": manifest.get("data_manifest_sha256"),
            "run": manifest.get("run"),
        },
        eval_summary=manifest.get("eval"),
        base_aliases=base_aliases,
    )
    return version, "added" if added else "existing"


def register_folder(
    registry: Registry,
    folder: Path,
    *,
    base_model: str,
    base_aliases: tuple[str, ...] = (),
    max_rank: int,
) -> AdapterVersion | None:
    """The registered version of one shipped folder (added if new; no alias moves), or None for
    a folder without a manifest. Stage 2 trained from ``adapters/shipped/tutor`` names this
    version as its parent, so the lineage holds before any gateway has started."""
    manifest = read_manifest(folder)
    if not manifest.get("variant"):
        return None
    info = validate_adapter(
        folder, base_model=base_model, max_rank=max_rank, base_aliases=base_aliases
    )
    version, _ = _add(
        registry,
        Path(folder),
        manifest,
        manifest["variant"],
        info.sha256,
        base_model,
        max_rank,
        base_aliases,
    )
    return version


def _is_shipped(registry: Registry, name: str) -> bool:
    try:
        return bool((registry.get(name).source or {}).get("shipped"))
    except VersionNotFound:  # a dangling alias is not the user's choice either
        return True


def _parent(registry: Registry, manifest: dict[str, Any]) -> str | None:
    """The registered version whose weights are the manifest's parent, if this registry has it."""
    sha, variant = manifest.get("parent_sha256"), manifest.get("parent_variant")
    if not sha or not variant:
        return None
    return next((v.name for v in registry.list(variant) if v.sha256 == sha), None)


def _write_bf16(src: Path, dest: Path) -> None:
    """The adapter's weights in bf16, written the same way every time (same bytes, same sha)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
        str(dest),
        metadata={"format": "pt"},
    )


def ship(
    registry: Registry,
    name: str,
    dest: Path,
    *,
    base_id: str,
    shipped_version: int | None = None,
    max_mb: float = 10.0,
) -> dict[str, Any]:
    """Write registered version ``name`` as a shippable folder: bf16 safetensors (half the
    size of the fp32 checkpoint), ``adapter_config.json`` naming the base by its public id
    (portable: no trainer's path), and the manifest. Written beside ``dest`` and renamed in."""
    version = registry.get(name)
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        _write_bf16(version.path / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
        cfg = json.loads((version.path / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base_id
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        size_mb = (tmp / "adapter_model.safetensors").stat().st_size / 1e6
        if size_mb > max_mb:
            raise ValueError(f"{name} is {size_mb:.1f} MB in bf16, over the {max_mb} MB limit")
        parent = registry.get(version.parent) if version.parent else None
        source = version.source or {}
        lineage = (
            {
                "parent_variant": parent.variant,
                "parent_trained_as": parent.name,
                "parent_sha256": _shipped_sha(parent),
            }
            if parent
            else _shipped_init(source)
        )
        manifest = {
            "variant": version.variant,
            "version": shipped_version,
            "trained_as": version.name,
            "base_model": base_id,
            **lineage,
            "run": source.get("run"),
            "step": source.get("step"),
            "data_manifest_sha256": source.get("data_manifest_sha256"),
            "eval": version.eval_summary,
            "sha256": sha256_file(tmp / "adapter_model.safetensors"),
            "size_mb": round(size_mb, 2),
            "dtype": "bfloat16",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _shipped_init(source: dict[str, Any]) -> dict[str, Any]:
    """Lineage from the run itself when the registry has none: a run that started from a
    shipped folder (its config.json says which) is that folder's child. Runs registered before
    Stage 2 recorded a shipped parent in the registry get their lineage this way."""
    none = {"parent_variant": None, "parent_trained_as": None, "parent_sha256": None}
    config = Path(source.get("run_dir") or "/nonexistent") / "config.json"
    if not config.is_file():
        return none
    init = json.loads(config.read_text(encoding="utf-8")).get("resolved", {}).get("init_adapter")
    if not init:
        return none
    folder = Path(init)
    if not folder.is_absolute() and not folder.is_dir():  # relative to the checkout it ran in
        folder = Path(__file__).resolve().parent.parent / folder
    parent = read_manifest(folder)
    if not parent.get("sha256"):
        return none
    return {
        "parent_variant": parent.get("variant"),
        "parent_trained_as": parent.get("trained_as"),
        "parent_sha256": parent["sha256"],
    }


def _shipped_sha(version: AdapterVersion) -> str:
    """The sha256 the parent's *shipped* (bf16) weights have: what a fresh registry sees."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "adapter_model.safetensors"
        _write_bf16(version.path / "adapter_model.safetensors", out)
        return sha256_file(out)
