"""`tutor adapters ...` as a user runs it: a real subprocess on the (test) registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import make_random_adapter

TUTOR = shutil.which("tutor", path=str(Path(sys.executable).parent)) or "tutor"


@pytest.fixture
def run(tmp_path, tutor_home, tiny_path):
    env = {
        **os.environ,
        "TUTOR_HOME": str(tutor_home),
        "TUTOR_MODEL": "tiny-qwen3",
        "TUTOR_REGISTRY": str(tmp_path / "registry.sqlite"),
        "TUTOR_ADAPTER_DIR": str(tmp_path / "store"),
        "TUTOR_EXTRA_ADAPTER_ROOTS": json.dumps([str(tmp_path / "runs")]),
    }

    def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([TUTOR, "adapters", *args], env=env, capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc

    return _run


def test_add_list_promote_rollback_remove(run, tmp_path, tiny_path):
    a = make_random_adapter(tiny_path, tmp_path / "runs" / "a", seed=31)
    b = make_random_adapter(tiny_path, tmp_path / "runs" / "b", seed=32)
    assert run("add", str(a), "--variant", "tutor").stdout.strip() == "tutor@1"
    assert (
        run(
            "add",
            str(b),
            "--variant",
            "tutor",
            "--parent",
            "tutor@1",
            "--source",
            '{"run": "r", "step": 5}',
        ).stdout.strip()
        == "tutor@2"
    )
    shown = json.loads(run("show", "tutor@2").stdout)
    assert shown["parent"] == "tutor@1" and shown["source"] == {"run": "r", "step": 5}
    assert run("promote", "tutor", "tutor@1").stdout.strip() == "tutor: base -> tutor@1"
    assert run("promote", "tutor", "tutor@2").stdout.strip() == "tutor: tutor@1 -> tutor@2"
    listing = run("list").stdout.splitlines()
    assert [line.split()[:2] for line in listing] == [["tutor@1", "r=8"], ["*", "tutor@2"]]
    assert run("rollback", "tutor").stdout.strip() == "tutor: tutor@2 -> tutor@1"
    assert "is live" in run("remove", "tutor@1", ok=False).stderr
    assert run("remove", "tutor@2").stdout.strip() == "removed tutor@2"
    assert "no adapter version" in run("show", "tutor@2", ok=False).stderr


def test_bad_adds_are_refused_with_a_clear_error(run, tmp_path, tiny_path):
    big = make_random_adapter(tiny_path, tmp_path / "runs" / "big", seed=33, rank=32)
    assert "max rank 16" in run("add", str(big), "--variant", "tutor", ok=False).stderr
    outside = make_random_adapter(tiny_path, tmp_path / "elsewhere", seed=34)
    err = run("add", str(outside), "--variant", "tutor", ok=False).stderr
    assert "outside the adapter roots" in err
    assert run("list").stdout == ""
