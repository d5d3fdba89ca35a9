"""The reply cache: a re-run only asks the server for what changed.

SQLite (WAL), one transaction per stored reply, so a run killed at any point keeps every reply
it had finished and never a half one. The key is a hash of the model *version* (the adapter
that served it and the persona it ran under, not the alias a user typed), the item's id and
content, and the generation parameters; change any of them and the reply is asked for again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    reply TEXT NOT NULL,
    finish_reason TEXT,
    adapter TEXT,
    latency_s REAL,
    usage TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_model ON replies (model_key);
"""


def cache_key(kind: str, model_key: str, item_id: str, item_hash: str, params: dict) -> str:
    blob = json.dumps(
        {"kind": kind, "model": model_key, "item": item_id, "hash": item_hash, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        d = dict(row)
        d["usage"] = json.loads(d["usage"]) if d["usage"] else None
        return d

    def put(
        self,
        key: str,
        *,
        model_key: str,
        item_id: str,
        reply: str,
        finish_reason: str | None,
        adapter: str | None,
        latency_s: float | None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        # Autocommit: one statement is one transaction, durable once it returns.
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model_key,
                item_id,
                reply,
                finish_reason,
                adapter,
                latency_s,
                json.dumps(usage) if usage else None,
                time.time(),
            ),
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self._db.close()
