"""The adapter registry: immutable adapter versions and the variant aliases that point at them.

Two backends behind one class, chosen by where the registry lives:

* a file path (the default, ``$TUTOR_HOME/registry.sqlite``): embedded SQLite in WAL mode, for
  one machine;
* a ``postgresql://`` URL: PostgreSQL through a small connection pool (``adapters/registry_pg.py``,
  the ``postgres`` extra), for several gateways on several machines sharing one registry.

The operations are written once, here, against a tiny connection interface (``execute`` with
``?`` placeholders, rows readable by column name); a backend only supplies transactions and
``data_version``. Every write is one transaction that first takes the backend's writer lock
(SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so writers queue instead of failing
half-way, and a process killed at any point leaves either the old state or the new one. Adapter
files are copied into the registry's own store before the record is written; a copy interrupted
by a kill leaves an orphan folder that no record names.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from adapters.validation import AdapterValidationError, validate_adapter
from common.files import atomic_dir
from common.paths import is_database_url

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

# Column order of the tables (both backends): the migration copies and compares by these.
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


# -- what a backend provides ---------------------------------------------------------------------
class Row(Protocol):
    """A result row read by column name (``sqlite3.Row``, or psycopg's ``dict_row``)."""

    def __getitem__(self, key: str) -> Any: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection inside one transaction; SQL uses ``?`` placeholders on every backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Backend(Protocol):
    """Where the tables live: transactions, a cheap change counter, and clean-up."""

    def tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        """One transaction; ``write`` ones are serialised against every other writer."""
        ...

    def data_version(self) -> tuple[int, int]: ...

    def close(self) -> None: ...


class SqliteBackend:
    """Embedded SQLite in WAL mode: readers never block the writer."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(SCHEMA)
        finally:
            db.close()

    @contextmanager
    def tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: writers queue up instead of failing half-way.

        Reads take one too (``write`` is not looked at), as they always have here.
        """
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

    def data_version(self) -> tuple[int, int]:
        """The file's and the WAL's mtimes: a commit touches one of them; no query needed."""
        st = os.stat(self.db_path)
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        return (st.st_mtime_ns, wal.stat().st_mtime_ns if wal.exists() else 0)

    def close(self) -> None:
        """Nothing to do: every transaction opens and closes its own connection."""


def open_backend(location: str | os.PathLike[str]) -> Backend:
    """SQLite for a path, PostgreSQL for a URL (psycopg is imported only then)."""
    if is_database_url(location):
        from adapters.registry_pg import PostgresBackend

        return PostgresBackend(str(location).strip())
    return SqliteBackend(Path(location))


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


# -- SQLite -> PostgreSQL ------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """What ``migrate`` did: row counts, and whether the target already held exactly this."""

    versions: int
    aliases: int
    history: int
    already_there: bool
    missing_files: list[str] = field(default_factory=list)


def _snapshot(db: Connection) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """All rows in a fixed order, as plain tuples comparable across backends."""

    def rows(table: str, columns: Sequence[str], order: str) -> list[tuple]:
        sql = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
        return [tuple(r[c] for c in columns) for r in db.execute(sql)]

    def by_key(rows: list[tuple]) -> list[tuple]:  # the first column is unique, never NULL
        return sorted(rows, key=lambda r: r[0])  # not ORDER BY: collations may differ

    return (
        by_key(rows("versions", VERSION_COLUMNS, "name")),
        by_key(rows("aliases", ALIAS_COLUMNS, "variant")),
        rows("alias_history", HISTORY_COLUMNS, "id"),
    )


def migrate(sqlite_path: str | os.PathLike[str], pg_url: str) -> Migration:
    """Copy a SQLite registry's versions, aliases and alias history into PostgreSQL.

    One PostgreSQL transaction, under the writer lock: the target gets everything or nothing,
    and the history keeps its order (rollback pops it). A target that already holds rows is
    left alone: if they are exactly the source's (a migration run twice) that is success,
    otherwise an error, since merging two registries could give one name two meanings. The
    adapter files are not touched: the records keep their paths, so the store must be storage
    every gateway sees at the same path.
    """
    src_path = Path(sqlite_path)
    if not src_path.is_file():
        raise RegistryError(f"no SQLite registry at {src_path}")
    if not is_database_url(pg_url):
        raise RegistryError(f"{pg_url!r} is not a postgresql:// URL")
    src = sqlite3.connect(src_path, timeout=30, isolation_level=None)
    src.row_factory = sqlite3.Row
    try:
        src.execute("BEGIN")  # one read snapshot, however many rows
        try:
            versions, aliases, history = _snapshot(src)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{src_path} is not an adapter registry: {exc}") from exc
        finally:
            src.execute("COMMIT")
    finally:
        src.close()

    from adapters.registry_pg import redact

    target = open_backend(pg_url)
    try:
        with target.tx(write=True) as db:
            there = _snapshot(db)
            if any(there):
                if there == (versions, aliases, history):
                    return Migration(len(versions), len(aliases), len(history), True)
                raise RegistryError(
                    f"the PostgreSQL registry already holds {len(there[0])} versions, "
                    f"{len(there[1])} aliases and {len(there[2])} history entries that differ "
                    f"from {src_path}; migrate into an empty database"
                )
            # versions first: aliases reference them
            for table, columns, rows in (
                ("versions", VERSION_COLUMNS, versions),
                ("aliases", ALIAS_COLUMNS, aliases),
                ("alias_history", HISTORY_COLUMNS, history),  # in id order: keeps the order
            ):
                sql = (
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})"
                )
                for row in rows:
                    db.execute(sql, row)
    except RegistryError:
        raise
    except Exception as exc:  # the database refused a row: say so, as the CLI's errors do
        raise RegistryError(
            f"copying {src_path} into {redact(pg_url)} failed and was rolled back: {exc}"
        ) from exc
    finally:
        target.close()
    path_at = VERSION_COLUMNS.index("path")
    missing = [v[0] for v in versions if not Path(v[path_at]).exists()]
    return Migration(len(versions), len(aliases), len(history), False, missing)


__all__ = [
    "AdapterValidationError",
    "AdapterVersion",
    "Migration",
    "PathNotAllowed",
    "Registry",
    "RegistryError",
    "VersionNotFound",
    "is_within",
    "migrate",
]
