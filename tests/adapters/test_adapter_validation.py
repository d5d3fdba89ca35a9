"""Adapters are checked from their files before any engine sees them."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from adapters.validation import AdapterValidationError, validate_adapter
from common.settings import Settings
from server.app import create_app
from server.errors import InvalidAdapter
from tests.support import make_random_adapter


@pytest.fixture(scope="module")
def good(tiny_adapters) -> Path:
    return tiny_adapters["es"]


def _copy_with(good: Path, dest: Path, **cfg_changes) -> Path:
    shutil.copytree(good, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg.update(cfg_changes)
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


def test_a_good_adapter_is_described(good, tiny_path):
    info = validate_adapter(good, base_model=str(tiny_path), max_rank=16)
    assert info.rank == 8 and info.alpha == 16
    assert "q_proj" in info.target_modules
    assert len(info.sha256) == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 32}, "exceeds the engine's max rank 16"),
        ({"base_model_name_or_path": "Qwen/Qwen3-8B-Base"}, "served base model"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
        ({"r": 0}, "positive integer"),
    ],
)
def test_bad_configs_are_refused(good, tiny_path, tmp_path, change, message):
    bad = _copy_with(good, tmp_path / "bad", **change)
    with pytest.raises(AdapterValidationError, match=message):
        validate_adapter(bad, base_model=str(tiny_path), max_rank=16)


def test_missing_files_and_changed_weights_are_refused(good, tiny_path, tmp_path):
    with pytest.raises(AdapterValidationError, match="does not exist"):
        validate_adapter(tmp_path / "nope", base_model=str(tiny_path), max_rank=16)
    no_weights = _copy_with(good, tmp_path / "noweights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterValidationError, match="lacks adapter_model.safetensors"):
        validate_adapter(no_weights, base_model=str(tiny_path), max_rank=16)
    with pytest.raises(AdapterValidationError, match="changed"):
        validate_adapter(good, base_model=str(tiny_path), max_rank=16, expected_sha256="0" * 64)


def test_a_real_high_rank_adapter_stops_start_up(tiny_path, tutor_home, tmp_path):
    big = make_random_adapter(tiny_path, tmp_path / "big@1", seed=5, rank=32)
    settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        max_lora_rank=16,
        adapters={"tutor": str(big)},
    )
    app = create_app(settings)

    async def start_up() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(InvalidAdapter, match="max rank 16"):
        asyncio.run(start_up())
