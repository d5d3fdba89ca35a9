"""The one folder-level atomic write (common/files.py ``atomic_dir``) that the registry's store,
the shipped adapters, the model store, eval's suites, training's exported adapters and merged
models all use: a reader sees the old folder, the new one or none, never half of one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.files import atomic_dir
from tests.support import kill_9_after


def test_a_new_folder_appears_whole(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "suite@1"
    with atomic_dir(dest) as tmp:
        assert tmp.parent == dest.parent and not dest.exists()
        (tmp / "items.jsonl").write_text("x\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("y")
    assert (dest / "items.jsonl").read_text() == "x\n" and (dest / "sub" / "f").read_text() == "y"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["suite@1"]  # no temp left


def test_an_existing_folder_is_replaced_and_nothing_else_is_left(tmp_path: Path) -> None:
    dest = tmp_path / "tutor@3"
    dest.mkdir()
    (dest / "old").write_text("old")
    with atomic_dir(dest) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["tutor@3"]


def test_without_replace_an_existing_folder_is_kept_and_named(tmp_path: Path) -> None:
    dest = tmp_path / "suite@1"
    dest.mkdir()
    (dest / "theirs").write_text("theirs")
    with pytest.raises(FileExistsError), atomic_dir(dest, replace=False) as tmp:
        (tmp / "ours").write_text("ours")
    assert [p.name for p in dest.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["suite@1"]


def test_a_failed_block_leaves_the_old_folder_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "merged"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("the build failed half-way")
    assert [p.name for p in dest.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_mode_makes_the_folder_shared(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "private"):
        pass
    with atomic_dir(tmp_path / "shared", mode=0o755):
        pass
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700  # mkdtemp's own
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


KILLED = """
import sys, time
from pathlib import Path
from common.files import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "part").write_text("half")
    print("ready", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_leaves_no_half_folder(tmp_path: Path) -> None:
    dest = tmp_path / "store" / "tutor@9"
    kill_9_after(KILLED, str(dest), after=0.1)
    assert not dest.exists()
    assert all(p.name.startswith(".tmp-tutor@9-") for p in dest.parent.iterdir())
