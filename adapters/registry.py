"""The adapter registry: immutable adapter versions and the variant aliases that point at them.

Two backends behind one class, chosen by where the registry lives:

* a file path (the default, ``$TUTOR_HOME/registry.sqlite``): embedded SQLite in WAL mode, for
  one machine;
* a ``postgresql://`` URL: PostgreSQL through a small connection pool (``adapters/registry_pg.py``,
  the ``postgres`` extra), for several gateways on several machines sharing one registry.

The operations are written once, here, against a tiny connection interface (``execute`` with ``?``
placeholders, rows readable by column name; adapters/registry_backend.py); a backend only supplies
transactions and ``data_version``. Moving a SQLite registry into PostgreSQL is
adapters/registry_migrate.py. Every write is one transaction that first takes the backend's writer
lock (SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so writers queue instead of
failing half-way, and a process killed at any point leaves either the old state or the new one.
Adapter files are copied into the registry's own store before the record is written; a copy
interrupted by a kill leaves an orphan folder that no record names.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from adapters.registry_backend import Connection, Row, SqliteBackend, open_backend
from adapters.validation import AdapterValidationError, validate_adapter
from common.files import atomic_dir
from common.paths import is_database_url

VERSION_COLUMNS = (
    "name",
    "variant",
    "seq",
    "base_model",
    "path",
    "rank",
    "alpha",
    "target_modules",
    "sha256",
    "parent",
    "source",
    "created",
    "eval_summary",
)
ALIAS_COLUMNS = ("variant", "current", "updated")
HISTORY_COLUMNS = ("variant", "name", "at")  # without id: a copy renumbers, keeping the order


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says why."""


class VersionNotFound(RegistryError):
    pass


class PathNotAllowed(RegistryError):
    """Registration reads only from configured roots."""


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    variant: str
    base_model: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    sha256: str
    parent: str | None
    source: dict[str, Any] | None
    created: float
    eval_summary: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["target_modules"] = list(self.target_modules)
        return d


def _row_to_version(row: Row) -> AdapterVersion:
    return AdapterVersion(
        name=row["name"],
        variant=row["variant"],
        base_model=row["base_model"],
        path=Path(row["path"]),
        rank=row["rank"],
        alpha=row["alpha"],
        target_modules=tuple(json.loads(row["target_modules"])),
        sha256=row["sha256"],
        parent=row["parent"],
        source=json.loads(row["source"]) if row["source"] else None,
        created=row["created"],
        eval_summary=json.loads(row["eval_summary"]) if row["eval_summary"] else None,
    )


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True if ``path`` (symlinks resolved) lies inside one of ``roots``: no ``..`` escapes."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(r)) for r in roots)


class Registry:
    """The registry's operations, the same on both backends.

    ``location`` is a SQLite file path or a ``postgresql://`` URL (``open_backend``).
    """

    def __init__(
        self, location: str | os.PathLike[str], *, store: Path, roots: Sequence[Path]
    ) -> None:
        self.location: str | Path = (
            str(location).strip() if is_database_url(location) else Path(location)
        )
        self.store = Path(store)
        self.roots = [Path(r) for r in roots]
        self.store.mkdir(parents=True, exist_ok=True)
        self._db = open_backend(location)

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        return cls(
            settings.registry_location, store=settings.adapter_store, roots=settings.adapter_roots
        )

    @property
    def db_path(self) -> Path:
        """The SQLite file; a PostgreSQL registry has none."""
        if isinstance(self._db, SqliteBackend):
            return self._db.db_path
        raise RegistryError("this registry is in PostgreSQL: it has no database file")

    def close(self) -> None:
        """Release the backend's connections (PostgreSQL's pool); SQLite holds none."""
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Connection]:
        return self._db.tx(write=write)

    # -- reads -----------------------------------------------------------------------------
    def get(self, name: str) -> AdapterVersion:
        with self._tx(write=False) as db:
            row = db.execute("SELECT * FROM versions WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise VersionNotFound(f"no adapter version named {name!r}")
        return _row_to_version(row)

    def list(self, variant: str | None = None) -> list[AdapterVersion]:
        with self._tx(write=False) as db:
            if variant is None:
                rows = db.execute("SELECT * FROM versions ORDER BY variant, seq").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM versions WHERE variant = ? ORDER BY seq", (variant,)
                ).fetchall()
        return [_row_to_version(r) for r in rows]

    def aliases(self) -> dict[str, str]:
        """variant -> the version name it points to."""
        with self._tx(write=False) as db:
            return {
                r["variant"]: r["current"]
                for r in db.execute("SELECT variant, current FROM aliases")
            }

    def alias(self, variant: str) -> str | None:
        return self.aliases().get(variant)

    def history(self, variant: str) -> list[str]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT name FROM alias_history WHERE variant = ? ORDER BY id", (variant,)
            ).fetchall()
        return [r["name"] for r in rows]

    def data_version(self) -> tuple[int, int]:
        """Changes whenever anything is committed; cheap enough to poll.

        On PostgreSQL it is a query (one round trip): call it off the event loop.
        """
        return self._db.data_version()

    # -- writes ----------------------------------------------------------------------------
    def add(
        self,
        path: Path,
        *,
        variant: str,
        base_model: str,
        max_rank: int,
        parent: str | None = None,
        source: dict[str, Any] | None = None,
        eval_summary: dict[str, Any] | None = None,
        base_aliases: tuple[str, ...] = (),
    ) -> AdapterVersion:
        """Validate a PEFT folder, copy it into the store and record it as ``variant@n``."""
        return self._add(
            path,
            variant=variant,
            base_model=base_model,
            max_rank=max_rank,
            parent=parent,
            source=source,
            eval_summary=eval_summary,
            base_aliases=base_aliases,
            once=False,
        )[0]

    def add_once(self, path: Path, **fields: Any) -> tuple[AdapterVersion, bool]:
        """As ``add`` (the same keywords), unless the variant already has a version with these
        weights: then that version, and False. The check is inside the write transaction, so
        gateways that start together (and each register the shipped adapters) record each
        folder once."""
        return self._add(path, once=True, **fields)

    def _add(
        self,
        path: Path,
        *,
        variant: str,
        base_model: str,
        max_rank: int,
        parent: str | None = None,
        source: dict[str, Any] | None = None,
        eval_summary: dict[str, Any] | None = None,
        base_aliases: tuple[str, ...] = (),
        once: bool,
    ) -> tuple[AdapterVersion, bool]:
        path = Path(path)
        if not is_within(path, self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise PathNotAllowed(f"{path} is outside the adapter roots ({roots})")
        if not variant or "@" in variant or "/" in variant:
            raise RegistryError(f"invalid variant name {variant!r}")
        info = validate_adapter(
            path, base_model=base_model, max_rank=max_rank, base_aliases=base_aliases
        )
        if parent is not None:
            self.get(parent)
        with self._tx() as db:
            if once:
                row = db.execute(
                    "SELECT * FROM versions WHERE variant = ? AND sha256 = ? ORDER BY seq",
                    (variant, info.sha256),
                ).fetchone()
                if row is not None:
                    return _row_to_version(row), False
            # under the writer lock: two processes adding to one variant get n and n+1
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM versions WHERE variant = ?",
                (variant,),
            ).fetchone()["seq"]
            name = f"{variant}@{seq}"
            dest = self._copy_in(info.path, name)
            copied = validate_adapter(
                dest,
                base_model=base_model,
                max_rank=max_rank,
                base_aliases=base_aliases,
                expected_sha256=info.sha256,
            )
            version = AdapterVersion(
                name=name,
                variant=variant,
                base_model=info.base_model,
                path=dest,
                rank=copied.rank,
                alpha=copied.alpha,
                target_modules=copied.target_modules,
                sha256=copied.sha256,
                parent=parent,
                source=source,
                created=time.time(),
                eval_summary=eval_summary,
            )
            db.execute(
                f"INSERT INTO versions ({', '.join(VERSION_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in VERSION_COLUMNS)})",
                (
                    name,
                    variant,
                    seq,
                    version.base_model,
                    str(dest),
                    version.rank,
                    version.alpha,
                    json.dumps(list(version.target_modules)),
                    version.sha256,
                    parent,
                    json.dumps(source) if source else None,
                    version.created,
                    json.dumps(eval_summary) if eval_summary else None,
                ),
            )
        return version, True

    def _copy_in(self, src: Path, name: str) -> Path:
        """Copy the two adapter files into ``store/name``, whole or not at all (an orphan of a
        killed add, which no record names, is replaced)."""
        dest = self.store / name
        with atomic_dir(dest) as tmp:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return dest

    def set_eval_summary(self, name: str, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE versions SET eval_summary = ? WHERE name = ?", (json.dumps(summary), name)
            )
            if cur.rowcount == 0:
                raise VersionNotFound(f"no adapter version named {name!r}")

    def promote(self, variant: str, name: str) -> tuple[str | None, str]:
        """Point ``variant`` at ``name``; returns (previous, new)."""
        with self._tx() as db:
            row = db.execute("SELECT variant FROM versions WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise VersionNotFound(f"no adapter version named {name!r}")
            if row["variant"] != variant:
                raise RegistryError(f"{name} belongs to {row['variant']}, not {variant}")
            return self._point(db, variant, name)

    def rollback(self, variant: str) -> tuple[str | None, str]:
        """Point ``variant`` back at the version it pointed to before the current one.

        The alias history is a stack of promotions: rollback pops the top.
        """
        with self._tx() as db:
            top = db.execute(
                "SELECT id, name FROM alias_history WHERE variant = ? ORDER BY id DESC LIMIT 2",
                (variant,),
            ).fetchall()
            if len(top) < 2:
                raise RegistryError(f"{variant} has no earlier version to roll back to")
            db.execute("DELETE FROM alias_history WHERE id = ?", (top[0]["id"],))
            db.execute(
                "UPDATE aliases SET current = ?, updated = ? WHERE variant = ?",
                (top[1]["name"], time.time(), variant),
            )
            return top[0]["name"], top[1]["name"]

    @staticmethod
    def _point(db: Connection, variant: str, name: str) -> tuple[str | None, str]:
        row = db.execute("SELECT current FROM aliases WHERE variant = ?", (variant,)).fetchone()
        previous = row["current"] if row else None
        if previous == name:
            return previous, name  # already live: nothing to record
        now = time.time()
        db.execute(
            "INSERT INTO aliases (variant, current, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (variant) DO UPDATE SET "
            "current = excluded.current, updated = excluded.updated",
            (variant, name, now),
        )
        db.execute(
            "INSERT INTO alias_history (variant, name, at) VALUES (?, ?, ?)", (variant, name, now)
        )
        return previous, name

    def remove(self, name: str) -> None:
        """Delete a version that no alias points to; its files go with it."""
        with self._tx() as db:
            row = db.execute("SELECT path FROM versions WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise VersionNotFound(f"no adapter version named {name!r}")
            users = [
                r["variant"]
                for r in db.execute("SELECT variant FROM aliases WHERE current = ?", (name,))
            ]
            if users:
                raise RegistryError(f"{name} is live for {users}: promote another version first")
            child = db.execute("SELECT name FROM versions WHERE parent = ?", (name,)).fetchone()
            if child is not None:
                raise RegistryError(f"{name} is the parent of {child['name']}: remove that first")
            db.execute("DELETE FROM versions WHERE name = ?", (name,))
            db.execute("DELETE FROM alias_history WHERE name = ?", (name,))
        shutil.rmtree(row["path"], ignore_errors=True)


__all__ = [
    "AdapterValidationError",
    "AdapterVersion",
    "PathNotAllowed",
    "Registry",
    "RegistryError",
    "VersionNotFound",
    "is_within",
]
