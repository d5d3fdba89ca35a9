"""`tutor adapters ...`: the registry from the command line.

These commands write the registry directly. A running gateway notices within
``TUTOR_REGISTRY_POLL_INTERVAL`` seconds and does the zero-downtime part itself: load the new
version, switch the alias, drain, unload the old one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adapters.registry import Registry, RegistryError
from adapters.validation import AdapterValidationError

app = typer.Typer(
    help="Register, promote, roll back and remove adapter versions.", no_args_is_help=True
)


def _registry() -> tuple[Registry, object]:
    from common.settings import Settings

    settings = Settings()
    return Registry.from_settings(settings), settings


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="a PEFT adapter folder under the adapter roots")],
    variant: Annotated[str, typer.Option(help="the variant this version is for")],
    parent: Annotated[
        str | None, typer.Option(help="lineage: the version it was trained from")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help='JSON, e.g. {"run": "r1", "step": 200}')
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="default: the configured base model")
    ] = None,
) -> None:
    """Validate PATH and record it as the next version of VARIANT."""
    from common.model_store import base_identity

    registry, settings = _registry()
    base = base_model or base_identity(settings)[1]
    try:
        version = registry.add(
            path,
            variant=variant,
            base_model=base,
            max_rank=settings.max_lora_rank,
            parent=parent,
            source=json.loads(source) if source else None,
        )
    except (RegistryError, AdapterValidationError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(version.name)


@app.command("list")
def list_(variant: Annotated[str | None, typer.Option()] = None) -> None:
    """Versions, with the one each variant points to marked *."""
    registry, _ = _registry()
    live = set(registry.aliases().values())
    for v in registry.list(variant):
        mark = "*" if v.name in live else " "
        typer.echo(f"{mark} {v.name:28} r={v.rank:<3} parent={v.parent or '-':20} {v.path}")


@app.command("show")
def show(name: str) -> None:
    """One version's record as JSON."""
    registry, _ = _registry()
    try:
        typer.echo(json.dumps(registry.get(name).to_dict(), indent=2))
    except RegistryError as exc:
        raise _fail(exc) from exc


@app.command("promote")
def promote(variant: str, version: str) -> None:
    """Point VARIANT at VERSION."""
    registry, _ = _registry()
    try:
        previous, current = registry.promote(variant, version)
    except RegistryError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{variant}: {previous or 'base'} -> {current}")


@app.command("rollback")
def rollback(variant: str) -> None:
    """Point VARIANT back at the version it had before."""
    registry, _ = _registry()
    try:
        previous, current = registry.rollback(variant)
    except RegistryError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{variant}: {previous} -> {current}")


@app.command("remove")
def remove(name: str) -> None:
    """Delete a version no variant points to."""
    registry, _ = _registry()
    try:
        registry.remove(name)
    except RegistryError as exc:
        raise _fail(exc) from exc
    typer.echo(f"removed {name}")


@app.command("ship")
def ship_(
    name: Annotated[str, typer.Argument(help="a registered version, e.g. tutor@7")],
    version: Annotated[int, typer.Option(help="the shipped set's version number")],
    to: Annotated[
        Path | None, typer.Option(help="default: adapters/shipped/<variant> beside the catalogue")
    ] = None,
) -> None:
    """Write NAME as the variant's shipped default: bf16 safetensors, a portable config, and
    tutor-adapter.json (lineage, data manifest hash, eval summary, sha256). Only when eval says
    the new set wins: see docs/TRAINING.md."""
    from adapters.shipped import ship
    from common.model_store import base_identity

    registry, settings = _registry()
    try:
        variant = registry.get(name).variant
        dest = to or settings.catalogue.parent / "shipped" / variant
        manifest = ship(
            registry, name, dest, base_id=base_identity(settings)[0], shipped_version=version
        )
    except (RegistryError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"{name} -> {dest} ({manifest['size_mb']} MB, sha256 {manifest['sha256'][:12]})")


@app.command("migrate-registry")
def migrate_registry(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="the SQLite registry; default: TUTOR_REGISTRY when it is a file, else "
            "$TUTOR_HOME/registry.sqlite",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="postgresql://...; default: TUTOR_REGISTRY when it is a URL"),
    ] = None,
) -> None:
    """Copy a SQLite registry (versions, aliases, alias history) into PostgreSQL.

    One PostgreSQL transaction: all or nothing. A target that already holds other rows is
    refused; one that holds exactly these is left as it is. Adapter files stay where they are:
    the records keep their paths, so the store must be the same shared path on every gateway.
    Stop writers (gateways, training, the CLI) on the SQLite registry first, then point
    TUTOR_REGISTRY at the URL everywhere.
    """
    from adapters.registry_migrate import migrate
    from adapters.registry_pg import redact
    from common.settings import Settings

    settings = Settings()
    url = to or settings.registry_url
    if url is None:
        raise _fail(RegistryError("give --to postgresql://... (or set TUTOR_REGISTRY to the URL)"))
    src = source or (
        settings.home / "registry.sqlite" if settings.registry_url else settings.registry_path
    )
    try:
        done = migrate(src, url)
    except RegistryError as exc:
        raise _fail(exc) from exc
    counts = f"{done.versions} versions, {done.aliases} aliases, {done.history} history entries"
    if done.already_there:
        typer.echo(f"{redact(url)} already holds exactly {src}'s {counts}: nothing copied")
    else:
        typer.echo(f"copied {counts}: {src} -> {redact(url)}")
    if done.missing_files:
        typer.echo(
            f"warning: {len(done.missing_files)} version folders are not at their recorded paths "
            f"on this machine ({', '.join(done.missing_files[:3])}...): every gateway must see "
            "the adapter store at the same path",
            err=True,
        )
