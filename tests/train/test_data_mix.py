"""Mixing by a recipe: declared ratios, a manifest, the eval split kept out, identical bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from common.data import write_splits
from common.paths import data_dir
from train.generate import generate_dialogues
from train.mix import RECIPES, Recipe, build_set

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")

RECIPE = {
    "name": "mini",
    "seed": 11,
    "jobs": {
        "en": {"source": "jfleg", "variant": "tutor", "limit": 120, "multi_turn": 0.3},
        "bank-en": {"source": "l1bank", "variant": "tutor"},
        "zh": {"source": "mucgec", "variant": "tutor-zh-l2", "limit": 60, "modes": "block:5"},
        "en-eval": {"source": "jfleg", "variant": "tutor", "split": "eval", "limit": 20},
    },
    "sets": {
        "stage1": {
            "variant": "tutor",
            "size": 100,
            "components": [
                {"job": "en", "ratio": 0.7},
                {"job": "bank-en", "ratio": 0.05},
                {"job": "zh", "ratio": 0.25},
            ],
            "eval": ["en-eval"],
            "eval_size": 12,
        }
    },
}


def _generate(recipe: Recipe, home: Path) -> None:
    for name, job in recipe.jobs.items():
        generate_dialogues(job, recipe.generated_path(name, home), home=home, progress=False)


def test_same_recipe_and_seed_give_identical_bytes(tmp_path: Path) -> None:
    recipe_file = tmp_path / "mini.yaml"
    recipe_file.write_text(yaml.safe_dump(RECIPE))
    outputs = []
    for run in ("a", "b"):
        home = tmp_path / run
        write_splits(["jfleg", "mucgec", "l1bank"], home=home)
        recipe = Recipe.load(recipe_file)
        _generate(recipe, home)
        manifest = build_set(recipe, "stage1", home=home)
        folder = recipe.set_dir("stage1", home)
        outputs.append(
            {f: (folder / f).read_bytes() for f in ("train.jsonl", "eval.jsonl", "manifest.json")}
        )
    assert outputs[0] == outputs[1]

    train = [json.loads(line) for line in outputs[0]["train.jsonl"].splitlines()]
    comps = manifest["train"]["components"]
    assert comps["en"]["taken"] == 70 and comps["zh"]["taken"] == 25
    assert comps["bank-en"]["taken"] == min(5, comps["bank-en"]["available"])
    assert manifest["train"]["rows"] == len(train) == sum(c["taken"] for c in comps.values())
    assert manifest["train"]["by_source"] == {
        s: sum(r["source"] == s for r in train) for s in {r["source"] for r in train}
    }
    assert abs(comps["en"]["achieved_ratio"] - 70 / len(train)) < 1e-3
    assert set(manifest["train"]["by_mode"]) == {
        "recast",
        "elicitation",
        "expansion",
        "metalinguistic",
    }
    assert manifest["seed"] == 11 and manifest["eval"]["rows"] == 12
    assert set(manifest["inputs"]) >= {"generated/mini/en.jsonl", "splits/manifest.json"}
    assert manifest["licences"]["jfleg"].startswith("CC BY-NC-SA 4.0")
    assert manifest["gates"]["total"] >= manifest["train"]["rows"]
    assert all(set(r) >= {"messages", "mode", "source"} for r in train)

    # A different seed gives a different sample.
    other = json.loads(json.dumps(RECIPE))
    other["seed"] = 12
    recipe = Recipe.from_dict(other, path=recipe_file)
    build_set(recipe, "stage1", home=tmp_path / "a")
    assert (recipe.set_dir("stage1", tmp_path / "a") / "train.jsonl").read_bytes() != outputs[0][
        "train.jsonl"
    ]
    shutil.rmtree(tmp_path / "b")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"components": [{"job": "en-eval", "ratio": 1.0}]}, "eval split; it cannot train"),
        ({"eval": ["en"]}, "must read the eval split"),
        ({"components": [{"job": "en", "ratio": 0.5}]}, "ratios sum to 0.5"),
    ],
)
def test_a_recipe_cannot_train_on_the_eval_split_or_misstate_ratios(
    change: dict, message: str
) -> None:
    raw = json.loads(json.dumps(RECIPE))
    raw["sets"]["stage1"].update(change)
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(raw)


def test_the_committed_recipe_is_valid() -> None:
    recipe = Recipe.load(RECIPES / "tutor.yaml")
    assert {"stage1", "tutor-es-l2"} <= set(recipe.sets)
    assert recipe.sets["tutor-es-l2"].variant == "tutor-es-l2"
