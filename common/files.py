"""Files written whole or not at all, their hashes, and JSON lines.

A registry, a suite, a key file or a report is read by another process at any moment: it must
see the old file or the new one, never half of one (the developers' guide: writes are atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write a whole file or nothing: a temp file beside it, fsync, then os.replace. The file
    is created private (0o600, as ``mkstemp`` makes it) unless ``mode`` says otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(dest: Path, *, replace: bool = True, mode: int | None = None) -> Iterator[Path]:
    """A folder written whole or not at all: yields a temp sibling to fill; when the block ends
    its files are fsynced and it is renamed to ``dest``. A reader (or a process killed
    half-way) sees the old folder, the new one or none, never a half one; a failed block leaves
    only its temp folder, removed.

    ``replace``: an existing ``dest`` is moved aside, the new one renamed in, the old removed.
    Without it an existing ``dest`` (another writer's, made meanwhile) raises FileExistsError
    and is left alone. ``mode``: the folder's permissions (``mkdtemp`` makes it private).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    if mode is not None:
        tmp.chmod(mode)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if dest.exists() and replace:
            old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        elif dest.exists():
            raise FileExistsError(dest)
        else:
            try:
                os.rename(tmp, dest)
            except OSError as exc:  # another writer's folder appeared meanwhile
                raise FileExistsError(dest) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dumps_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
