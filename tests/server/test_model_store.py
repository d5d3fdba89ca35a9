"""Model presets: resolution, and conversions that are idempotent and atomic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.model_store import (
    COMPLETE_MARKER,
    ModelUnavailable,
    build_atomically,
    is_complete,
    resolve_model,
)
from common.paths import REPO

KILLED_BUILD = """
import sys, time
from pathlib import Path
from common.model_store import build_atomically

def build(tmp):
    (tmp / "model.safetensors").write_bytes(b"half")
    Path(sys.argv[2]).write_text("started")
    time.sleep(60)

build_atomically(Path(sys.argv[1]), build)
"""


def test_a_killed_build_leaves_no_half_folder_and_a_rerun_completes(tmp_path: Path):
    target = tmp_path / "models" / "m"
    flag = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(target), str(flag)], cwd=REPO)
    deadline = time.monotonic() + 30
    while not flag.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    assert list(target.parent.glob(".tmp-m-*")), "the kill should have left only a temp folder"

    assert build_atomically(target, lambda tmp: (tmp / "w").write_text("full")) is True
    assert (target / "w").read_text() == "full"
    assert is_complete(target)
    assert not list(target.parent.glob(".tmp-m-*")), "stale temp folders are cleaned up"
    # idempotent: a second call does nothing
    assert build_atomically(target, lambda tmp: (tmp / "w").write_text("other")) is False
    assert (target / "w").read_text() == "full"


def test_a_failing_build_cleans_up(tmp_path: Path):
    def boom(tmp: Path) -> None:
        (tmp / "x").write_text("partial")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        build_atomically(tmp_path / "m", boom)
    assert list(tmp_path.iterdir()) == []


def test_resolve_presets_folders_and_hub_ids(tmp_path: Path, tiny_path: Path, tutor_home: Path):
    tiny = resolve_model("tiny-qwen3", tutor_home)
    assert tiny.local and tiny.public_id == "tiny-qwen3" and Path(tiny.source) == tiny_path
    folder = resolve_model(str(tiny_path), tutor_home, served_name="tiny")
    assert folder.public_id == "tiny" and folder.local
    hub = resolve_model("Qwen/Qwen3-8B-Base", tutor_home)
    assert hub == type(hub)("Qwen/Qwen3-8B-Base", "Qwen/Qwen3-8B-Base", False)
    with pytest.raises(ModelUnavailable, match="make-tiny"):
        resolve_model("tiny-qwen3", tmp_path)  # an empty cache
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ModelUnavailable, match="config.json"):
        resolve_model(str(tmp_path / "notamodel"), tmp_path)
    with pytest.raises(ModelUnavailable):
        resolve_model("no such thing", tmp_path)


def test_prepared_models_are_complete_safetensors_folders(smollm2_path: Path, tiny_path: Path):
    import json

    for folder in (smollm2_path, tiny_path):
        assert (folder / COMPLETE_MARKER).is_file()
        assert (folder / "model.safetensors").stat().st_size > 1_000_000
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
        assert "im_start" in (folder / "chat_template.jinja").read_text()
    tiny_cfg = json.loads((tiny_path / "config.json").read_text())
    assert tiny_cfg["head_dim"] == 32 and tiny_cfg["num_hidden_layers"] == 2
    assert tiny_cfg["hidden_size"] == 128
