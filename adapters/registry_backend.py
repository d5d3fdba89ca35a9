"""Where the registry's rows live: the tiny connection interface the registry's operations are
written against (``execute`` with ``?`` placeholders, rows readable by column name), and the
backend that supplies transactions and ``data_version``: embedded SQLite here, PostgreSQL in
adapters/registry_pg.py. The operations themselves are adapters/registry.py's, written once.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

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
