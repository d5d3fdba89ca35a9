"""The adapter registry: immutable adapter versions and the variant aliases that point at them.

Embedded SQLite. Every write is one transaction, so a process killed at any point leaves either
the old state or the new one. Adapter files are copied into the registry's own store before the
record is written; a copy interrupted by a kill leaves an orphan folder that no record names.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.validation import AdapterValidationError, validate_adapter

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY,
    variant TEXT NOT NULL,
    seq INTEGER NOT NULL,
    base_model TEXT NOT NULL,
    path TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha REAL NOT NULL,
    target_modules TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    parent TEXT,
    source TEXT,
    created REAL NOT NULL,
    eval_summary TEXT,
    UNIQUE (variant, seq)
);
CREATE TABLE IF NOT EXISTS aliases (
    variant TEXT PRIMARY KEY,
    current TEXT NOT NULL REFERENCES versions(name),
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    variant TEXT NOT NULL,
    name TEXT NOT NULL,
    at REAL NOT NULL
);
"""


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


def _row_to_version(row: sqlite3.Row) -> AdapterVersion:
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
    def __init__(self, db_path: Path, *, store: Path, roots: Sequence[Path]) -> None:
        self.db_path = Path(db_path)
        self.store = Path(store)
        self.roots = [Path(r) for r in roots]
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(SCHEMA)
        finally:
            db.close()

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        return cls(
            settings.registry_path, store=settings.adapter_store, roots=settings.adapter_roots
        )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: writers queue up instead of failing half-way."""
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- reads -----------------------------------------------------------------------------
    def get(self, name: str) -> AdapterVersion:
        with self._tx() as db:
            row = db.execute("SELECT * FROM versions WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise VersionNotFound(f"no adapter version named {name!r}")
        return _row_to_version(row)

    def list(self, variant: str | None = None) -> list[AdapterVersion]:
        with self._tx() as db:
            if variant is None:
                rows = db.execute("SELECT * FROM versions ORDER BY variant, seq").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM versions WHERE variant = ? ORDER BY seq", (variant,)
                ).fetchall()
        return [_row_to_version(r) for r in rows]

    def aliases(self) -> dict[str, str]:
        """variant -> the version name it points to."""
        with self._tx() as db:
            return {r["variant"]: r["current"] for r in db.execute("SELECT * FROM aliases")}

    def alias(self, variant: str) -> str | None:
        return self.aliases().get(variant)

    def history(self, variant: str) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT name FROM alias_history WHERE variant = ? ORDER BY id", (variant,)
            ).fetchall()
        return [r["name"] for r in rows]

    def data_version(self) -> tuple[int, int]:
        """Changes whenever anything is committed; cheap enough to poll."""
        st = os.stat(self.db_path)
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        return (st.st_mtime_ns, wal.stat().st_mtime_ns if wal.exists() else 0)

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
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE variant = ?", (variant,)
            ).fetchone()[0]
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
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        return version

    def _copy_in(self, src: Path, name: str) -> Path:
        """Copy the two adapter files into ``store/name`` via a temp folder and a rename."""
        dest = self.store / name
        if dest.exists():  # an orphan from a killed add: no record names it
            shutil.rmtree(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.store))
        try:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
    def _point(db: sqlite3.Connection, variant: str, name: str) -> tuple[str | None, str]:
        row = db.execute("SELECT current FROM aliases WHERE variant = ?", (variant,)).fetchone()
        previous = row["current"] if row else None
        if previous == name:
            return previous, name  # already live: nothing to record
        now = time.time()
        db.execute(
            "INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT(variant) DO UPDATE SET "
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
