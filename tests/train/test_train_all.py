"""`tutor train all` on the tiny model: every phase in order, the corrector and Stage 2 from
Stage 1's last version, and a second run that redoes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adapters.registry import Registry
from common.paths import data_dir
from common.settings import Settings
from train.pipeline import Plan, run_all

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")

RECIPE = {
    "name": "mini",
    "seed": 5,
    "jobs": {
        "en": {"source": "l1bank", "variant": "tutor"},
        "en-ctrl": {"source": "l1bank", "variant": "tutor", "derive": "controls"},
        "en-corr": {"source": "l1bank", "variant": "tutor", "task": "correct"},
        "zh": {"source": "l1bank", "variant": "tutor-zh-heritage", "learner": "heritage"},
        "en-eval": {"source": "l1bank", "variant": "tutor", "split": "eval"},
    },
    "sets": {
        "stage1": {
            "variant": "tutor",
            "size": 8,
            "components": [{"job": "en", "ratio": 0.75}, {"job": "en-ctrl", "ratio": 0.25}],
            "eval": ["en-eval"],
        },
        "corrector-en": {
            "variant": "tutor",
            "size": 4,
            "components": [{"job": "en-corr", "ratio": 1.0}],
        },
        "tutor-zh-heritage": {
            "variant": "tutor-zh-heritage",
            "size": 4,
            "components": [{"job": "zh", "ratio": 1.0}],
        },
    },
    "max_sentence_share": 1.0,  # eight rows cannot be varied enough for 3%
}


def test_train_all_runs_every_phase_then_resumes_with_nothing_to_do(
    tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TUTOR_REGISTRY", str(home / "registry.sqlite"))  # this test's own
    monkeypatch.setenv("TUTOR_ADAPTER_DIR", str(home / "adapters"))
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-qwen3").symlink_to(tiny_path, target_is_directory=True)
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    plan = Plan(
        recipe=recipe,
        variants=("tutor-zh-heritage",),
        home=home,
        overrides=[
            "model.name=tiny-qwen3",
            "data.max_eval_rows=2",
            "lora.r=8",
            "training.max_steps=2",
            "training.save_steps=1",
            "training.per_device_train_batch_size=2",
            "training.max_length=256",
        ],
    )
    first = run_all(plan)
    assert [r.name for r in first] == [
        "split",
        "generate",
        "build",
        "stage1",
        "corrector:tutor-corrector",
        "stage2:tutor-zh-heritage",
    ]
    reg = Registry.from_settings(Settings(home=home, model="tiny-qwen3"))
    assert [v.name for v in reg.list("tutor")] == ["tutor@1", "tutor@2"]
    zh = reg.list("tutor-zh-heritage")
    assert zh and all(v.parent == "tutor@2" for v in zh)  # Stage 2 from Stage 1's last version
    corr = reg.list("tutor-corrector")
    assert corr and all(v.parent == "tutor@2" for v in corr)  # so is the corrector

    again = run_all(plan)
    assert again[1].detail == "5 jobs, 0 new rows"
    assert all("finished earlier" in r.detail for r in again[3:])
    assert len(reg.list()) == 2 + len(zh) + len(corr)  # nothing trained or registered twice
    log = [
        json.loads(line) for line in (home / "logs" / "train-all.jsonl").read_text().splitlines()
    ]
    assert len(log) == 12 and all(row["seconds"] >= 0 for row in log)
