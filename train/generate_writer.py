"""The resumable JSONL writer: append-only rows plus a progress index, safe across a kill.

Rows go to an append-only JSONL file, one ``write`` per row; a progress index beside it records
the plan's hash and how far the file is known to be good. On start the file is scanned, a torn
last line (a kill mid-write) is cut off, and the row indices already present are skipped: nothing
lost, nothing duplicated. Separate because it knows nothing of dialogues, only rows with an
``idx``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import atomic_write_text


@dataclass
class ResumeState:
    done: set[int] = field(default_factory=set)
    truncated_bytes: int = 0
    duplicates: int = 0


class ResumableJsonl:
    """Append-only JSONL plus a progress index (plan hash, good byte offset, rows done)."""

    def __init__(self, path: Path, plan_hash: str, total: int, *, sync_every: int = 16) -> None:
        self.path = Path(path)
        self.index_path = self.path.with_name(self.path.name + ".progress.json")
        self.plan_hash, self.total, self.sync_every = plan_hash, total, sync_every
        self._fh: Any = None
        self._since_sync = 0
        self.done: set[int] = set()

    def recover(self, *, restart: bool = False) -> ResumeState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if restart:
            self.path.unlink(missing_ok=True)
            self.index_path.unlink(missing_ok=True)
        if self.index_path.exists():
            index = json.loads(self.index_path.read_text())
            if index.get("plan") != self.plan_hash:
                raise RuntimeError(
                    f"{self.path} was written by a different plan ({index.get('plan')} != "
                    f"{self.plan_hash}); pass --restart to start over or choose another --out"
                )
        state = ResumeState()
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                data = f.read()
            pos = 0
            while pos < len(data):
                end = data.find(b"\n", pos)
                if end == -1:
                    break  # a torn last line: never completed, so never counted
                try:
                    idx = json.loads(data[pos:end])["idx"]
                except (ValueError, KeyError):
                    break
                if idx in state.done:
                    state.duplicates += 1
                state.done.add(idx)
                pos = good = end + 1
            state.truncated_bytes = len(data) - good
            if state.truncated_bytes:
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self.done = set(state.done)
        self._write_index()
        return state

    def __enter__(self) -> ResumableJsonl:
        self._fh = open(self.path, "ab")  # noqa: SIM115 (closed in __exit__)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh:
            self._sync()
            self._fh.close()
            self._fh = None

    def append(self, row: dict[str, Any]) -> None:
        if row["idx"] in self.done:
            return
        self._fh.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode())
        self._fh.flush()
        self.done.add(row["idx"])
        self._since_sync += 1
        if self._since_sync >= self.sync_every:
            self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._since_sync = 0
        self._write_index()

    def _write_index(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        index = {"plan": self.plan_hash, "total": self.total, "done": len(self.done), "bytes": size}
        atomic_write_text(self.index_path, json.dumps(index, sort_keys=True) + "\n")
