"""The rooms' one-way doors, read from the source: the bottom room (`common/`) imports nothing of
the project's, so every other room may use it without a cycle (the developers' guide)."""

from __future__ import annotations

import ast

from common.paths import REPO

ROOMS = {"common", "server", "adapters", "train", "eval", "ui", "deploy", "tests"}


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
