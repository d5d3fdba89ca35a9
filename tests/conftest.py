"""Shared fixtures: the model cache, the tiny model, random adapters, live servers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.model_store import make_tiny, prepare_smollm2
from server.settings import Settings
from tests.support import make_random_adapter


@pytest.fixture(scope="session", autouse=True)
def isolated_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never touch the real adapter registry; servers and CLI children inherit this."""
    scratch = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUTOR_REGISTRY", str(scratch / "registry.sqlite"))
        mp.setenv("TUTOR_ADAPTER_DIR", str(scratch / "adapters"))
        mp.setenv("TUTOR_EXTRA_ADAPTER_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
        yield scratch


@pytest.fixture(scope="session")
def tutor_home() -> Path:
    """The real model cache (TUTOR_HOME), shared with `make serve` so models convert once."""
    return Path(os.environ.get("TUTOR_HOME", "~/.cache/tutor")).expanduser()


@pytest.fixture(scope="session")
def smollm2_path(tutor_home: Path) -> Path:
    return prepare_smollm2(tutor_home)


@pytest.fixture(scope="session")
def tiny_path(tutor_home: Path) -> Path:
    return make_tiny(tutor_home)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRA adapters for the tiny model, in folders named like adapter versions."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "es": make_random_adapter(tiny_path, root / "tutor-es-l2@1", seed=1),
        "zh": make_random_adapter(tiny_path, root / "tutor-zh-l2@1", seed=2),
    }


@pytest.fixture
def tiny_settings(tutor_home: Path, tiny_path: Path) -> Settings:
    return Settings(home=tutor_home, model="tiny-qwen3", engine="transformers")
