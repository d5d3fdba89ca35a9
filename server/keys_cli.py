"""`tutor keys ...`: create and revoke API keys. Only hashes are written to the key file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.settings import ApiKey
from server.auth import hash_key, load_key_file, new_key, save_key_file

app = typer.Typer(help="Create, list and revoke API keys (stored as sha256).", no_args_is_help=True)
FileOpt = Annotated[
    Path,
    typer.Option("--file", envvar="TUTOR_API_KEYS_FILE", help="the key file the gateway reads"),
]


def _load(path: Path) -> list[ApiKey]:
    return load_key_file(path) if path.exists() else []


@app.command("create")
def create(
    name: str,
    file: FileOpt,
    scopes: Annotated[str, typer.Option(help="comma-separated: chat, admin")] = "chat",
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    max_streams: Annotated[int | None, typer.Option(help="concurrent requests")] = None,
    models: Annotated[
        str | None,
        typer.Option(help="comma-separated model ids it may use, shell patterns (tutor-es-*)"),
    ] = None,
) -> None:
    """Make a key for NAME; it is printed once and only its hash is stored."""
    keys = _load(file)
    if any(k.name == name for k in keys):
        typer.echo(f"error: a key named {name!r} exists; revoke it first", err=True)
        raise typer.Exit(2)
    key = new_key()
    entry = ApiKey(
        name=name,
        sha256=hash_key(key),
        scopes=[s.strip() for s in scopes.split(",")],
        rpm=rpm,
        tpm=tpm,
        max_streams=max_streams,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
    )
    save_key_file(file, [*keys, entry])
    typer.echo(key)


@app.command("list")
def list_(file: FileOpt) -> None:
    for k in _load(file):
        typer.echo(
            f"{k.name:24} {','.join(k.scopes):12} rpm={k.rpm} tpm={k.tpm} "
            f"streams={k.max_streams} models={','.join(k.models or ['*'])} "
            f"sha256={k.sha256[:12]}..."
        )


@app.command("revoke")
def revoke(name: str, file: FileOpt) -> None:
    keys = _load(file)
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        typer.echo(f"error: no key named {name!r}", err=True)
        raise typer.Exit(2)
    save_key_file(file, kept)
    typer.echo(f"revoked {name} (a running gateway reads the file again within a second)")
