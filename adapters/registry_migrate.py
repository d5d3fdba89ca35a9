"""Moving a SQLite registry into PostgreSQL (``tutor adapters migrate-registry``): one
transaction on the target, everything or nothing, refused when the target already holds other
rows. Kept apart from the registry's day-to-day operations, which never need it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.registry import ALIAS_COLUMNS, HISTORY_COLUMNS, VERSION_COLUMNS, RegistryError
from adapters.registry_backend import Connection, open_backend
from common.paths import is_database_url


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
