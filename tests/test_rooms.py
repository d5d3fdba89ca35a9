"""The rooms' one-way doors, read from the source, so they stay one-way.

From the bottom up: `common` (settings, paths, files, languages, pedagogy metrics), `adapters`
(the registry and the shipped adapters), `server` (the gateway and its engines), then `train`
and `eval` side by side, then `ui` and `deploy` side by side, and `cli` (the umbrella `tutor`
command) at the top. A room imports only rooms below it; rooms on one floor share the floor
below instead of importing each other (the developers' guide). docs/ARCHITECTURE.md draws it."""

from __future__ import annotations

import ast

from common.paths import REPO

FLOORS = (("common",), ("adapters",), ("server",), ("train", "eval"), ("ui", "deploy"), ("cli",))
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
ROOMS = {*FLOOR, "tests"}


def imported_rooms(path) -> set[str]:
    """The project rooms a module imports, at any depth (function-local imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & ROOMS


def test_the_bottom_room_imports_no_other_room() -> None:
    modules = sorted((REPO / "common").glob("*.py"))
    assert len(modules) >= 6  # __init__, files, paths, net, metrics, modes
    for path in modules:
        assert imported_rooms(path) <= {"common"}, path


def test_train_and_eval_take_their_files_and_folders_from_the_bottom_room() -> None:
    """No eval module reaches into train for a file helper or a folder any more."""
    moved = {"atomic_write_text", "sha256_file", "read_jsonl", "dumps_jsonl", "tutor_home"}
    for path in sorted((REPO / "eval").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "common.data":
                assert not moved & {a.name for a in node.names}, path


def test_train_and_ui_use_the_pedagogy_metrics_from_the_bottom_room() -> None:
    """The recast and move checks that train's gates and eval both apply live in common/
    (metrics, modes): neither train nor the UI imports eval."""
    for room in ("train", "ui"):
        for path in sorted((REPO / room).rglob("*.py")):
            assert "eval" not in imported_rooms(path), path


def test_eval_reads_the_learner_data_from_the_bottom_room() -> None:
    """The split eval's suites are built from (common/data.py) is the one train learns from;
    eval takes it from common, not from train."""
    for path in sorted((REPO / "eval").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "train.data", path


def test_train_and_eval_do_not_import_each_other() -> None:
    """They share the bottom room instead (the developers' guide)."""
    for room, other in (("train", "eval"), ("eval", "train")):
        for path in sorted((REPO / room).rglob("*.py")):
            assert other not in imported_rooms(path), path


def test_no_room_imports_the_tests() -> None:
    """What the tests share with the benchmarks (random LoRA adapters) lives in a room both
    may use (adapters/random_lora.py); the tests package is not installed."""
    for room in sorted(ROOMS - {"tests"}):
        for path in sorted((REPO / room).rglob("*.py")):
            assert "tests" not in imported_rooms(path), path


def test_every_room_imports_only_rooms_below_it() -> None:
    """Any import (function-local ones too) from a room to its own floor or above fails here,
    naming the module and the rooms it reached."""
    wrong = {}
    for room, level in FLOOR.items():
        for path in sorted((REPO / room).rglob("*.py")):
            up = {r for r in imported_rooms(path) - {room, "tests"} if FLOOR[r] >= level}
            if up:
                wrong[str(path.relative_to(REPO))] = sorted(up)
    assert wrong == {}


def test_the_floors_name_every_package_of_the_distribution() -> None:
    """A new top-level package must be given a floor (and is then checked above)."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == ROOMS


def test_the_tests_are_laid_out_by_room() -> None:
    """tests/<room>/ for each room's tests; only the house-wide rules sit at the top."""
    top = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert top == ["test_rooms.py"]
    assert {p.name for p in (REPO / "tests").iterdir() if (p / "__init__.py").exists()} == set(
        FLOOR
    )
