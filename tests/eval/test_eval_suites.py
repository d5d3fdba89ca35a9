"""Suites from the held-out split: composition, determinism, versioning, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from common.data import is_eval, load_split
from common.metrics import target_form
from common.paths import data_dir
from eval.suites import SuiteError, build_suite, built_versions, load_suite

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")

RECIPE = {
    "name": "unit",
    "version": 1,
    "seed": 7,
    "controls": 0.2,
    "multi_turn": 0.3,
    "modes": ["recast", "elicitation", "expansion", "metalinguistic"],
    "exclude_categories": ["punctuation"],
    "generation": {"temperature": 0.5, "top_p": 0.9, "max_tokens": 20},
    "languages": {
        "en": {"items": 10, "sources": ["jfleg", "l1bank"], "max_chars": 140},
        "es": {"items": 10, "sources": ["cowsl2h"], "learner": "l2", "max_chars": 140},
        "zh": {"items": 10, "sources": ["mucgec"], "max_chars": 45},
    },
}


def _recipe(tmp: Path, **changes) -> Path:
    path = tmp / f"recipe-{len(list(tmp.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return path


def test_suite_is_held_out_balanced_and_complete(tmp_path: Path, tutor_home: Path) -> None:
    suite = build_suite(_recipe(tmp_path), home=tmp_path / "h", split_home=tutor_home)
    assert suite.ref == "unit@1"
    assert suite.path == tmp_path / "h" / "eval" / "suites" / "unit@1"
    items = suite.items
    assert len(items) == 30
    for lang in ("en", "es", "zh"):
        mine = [it for it in items if it.language == lang]
        assert len(mine) == 10
        assert sum(it.control for it in mine) == 2  # 20% error-free controls
    assert sum(bool(it.context) for it in items) == 9  # 30% multi-turn
    held_out: dict[str, list] = {}
    for source in ("jfleg", "cowsl2h", "mucgec", "l1bank"):
        for r in load_split(source, "eval"):
            held_out.setdefault(r.id, []).append(r)  # COWS-L2H ids repeat across drafts
    assert len({it.id for it in items}) == 30
    for it in items:
        # every item comes from the eval side of the split
        text = it.corrections[0] if it.control else it.utterance
        rec = next(r for r in held_out[it.record_id] if text in (r.utterance, *r.corrections))
        assert is_eval(rec.group, rec.source)
        assert it.mode in RECIPE["modes"]
        assert it.utterance and it.corrections and it.category
        if it.control:
            assert it.corrections == (it.utterance,) and it.category == "none"
            assert it.utterance in rec.corrections  # a gold correction: error-free
        else:
            assert it.utterance == rec.utterance and it.correction != it.utterance
            assert target_form(it.utterance, it.correction)
            assert it.category != "punctuation"
        if it.context:
            user, tutor = it.context
            assert user["role"] == "user" and tutor["role"] == "assistant"
            assert it.messages()[-1] == {"role": "user", "content": it.utterance}
    # every mode is asked about, among errors and among controls
    assert {it.mode for it in items if not it.control} == set(RECIPE["modes"])
    assert len({it.mode for it in items if it.control}) >= 3
    m = suite.manifest
    assert m["counts"]["items"] == 30 and m["counts"]["controls"] == 6
    assert m["generation"] == RECIPE["generation"]
    assert m["split"]["manifest_sha256"]


def test_builds_are_deterministic_and_versions_immutable(tmp_path: Path, tutor_home: Path) -> None:
    recipe = _recipe(tmp_path)
    a = build_suite(recipe, home=tmp_path / "a", split_home=tutor_home)
    b = build_suite(recipe, home=tmp_path / "b", split_home=tutor_home)
    for name in ("items.jsonl", "manifest.json"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    # building the same recipe again is a no-op; other items under the same version are refused
    again = build_suite(recipe, home=tmp_path / "a", split_home=tutor_home)
    assert again.manifest["items_sha256"] == a.manifest["items_sha256"]
    with pytest.raises(SuiteError, match="bump"):
        build_suite(_recipe(tmp_path, seed=8), home=tmp_path / "a", split_home=tutor_home)
    v2 = build_suite(
        _recipe(tmp_path, seed=8, version=2), home=tmp_path / "a", split_home=tutor_home
    )
    assert v2.ref == "unit@2" and v2.items != a.items
    assert built_versions("unit", tmp_path / "a") == [1, 2]
    assert load_suite("unit", home=tmp_path / "a").ref == "unit@2"  # the latest
    assert load_suite("unit@1", home=tmp_path / "a").items == a.items
    # no temporary folders are left beside the versions
    assert sorted(p.name for p in (tmp_path / "a" / "eval" / "suites").iterdir()) == [
        "unit@1",
        "unit@2",
    ]


def test_a_tampered_suite_is_refused(tmp_path: Path, tutor_home: Path) -> None:
    suite = build_suite(_recipe(tmp_path), home=tmp_path, split_home=tutor_home)
    items = suite.path / "items.jsonl"
    items.write_text(items.read_text().replace('"mode": "recast"', '"mode": "expansion"', 1))
    with pytest.raises(SuiteError, match="manifest"):
        load_suite("unit@1", home=tmp_path)


def test_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="modes"):
        build_suite(_recipe(tmp_path, modes=["lecture"]), home=tmp_path)
    with pytest.raises(SuiteError, match="no suite recipe"):
        build_suite(tmp_path / "missing.yaml", home=tmp_path)
    bad = dict(RECIPE)
    del bad["seed"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SuiteError, match="seed"):
        build_suite(path, home=tmp_path)


def test_the_committed_recipes_load(tmp_path: Path, tutor_home: Path) -> None:
    suite = build_suite("smoke", home=tmp_path, split_home=tutor_home)
    counts = json.loads((suite.path / "manifest.json").read_text())["counts"]
    assert counts["by_language"] == {"en": 4, "es": 4, "zh": 4}
    assert suite.generation["max_tokens"] == 12


def test_a_check_suite_leaves_out_every_record_of_the_suites_it_excludes(
    tmp_path: Path, tutor_home: Path
) -> None:
    home = tmp_path / "h"
    chosen = build_suite(_recipe(tmp_path), home=home, split_home=tutor_home)
    check = build_suite(
        _recipe(tmp_path, name="unit-check", exclude_suites=["unit@1"]),
        home=home,
        split_home=tutor_home,
    )
    assert len(check.items) == 30
    assert not {it.record_id for it in check.items} & {it.record_id for it in chosen.items}
    assert check.manifest["excluded_suites"] == {"unit@1": chosen.manifest["items_sha256"]}
    with pytest.raises(SuiteError, match="name@version"):
        build_suite(
            _recipe(tmp_path, name="c2", exclude_suites=["unit"]), home=home, split_home=tutor_home
        )
    with pytest.raises(SuiteError, match="unit@9"):
        build_suite(
            _recipe(tmp_path, name="c3", exclude_suites=["unit@9"]),
            home=home,
            split_home=tutor_home,
        )


@pytest.mark.parametrize(
    ("check", "chose"),
    [
        ("en-check", ["en@1"]),
        ("es-l2-check", ["es-l2@1", "core@1"]),
        ("es-heritage-check", ["es-heritage@1"]),
        ("zh-check", ["zh-l2@1", "zh-heritage@1", "core@1"]),
    ],
)
def test_the_committed_check_suites_share_no_sentence_with_the_choosing_suites(
    check: str, chose: list[str], tmp_path: Path, tutor_home: Path
) -> None:
    """Built from the committed recipes (the excluded suites too, from theirs), each check suite
    asks only learner sentences that none of the suites that chose a shipped version asked."""
    suite = build_suite(check, home=tmp_path, split_home=tutor_home)
    assert sorted(suite.manifest["excluded_suites"]) == sorted(chose)
    mine = {it.record_id for it in suite.items}
    texts = {it.utterance for it in suite.items}
    for ref in chose:
        other = load_suite(ref, home=tmp_path)
        assert not mine & {it.record_id for it in other.items}, ref
        assert not texts & {it.utterance for it in other.items}, ref
    assert {it.source for it in suite.items} <= {"jfleg", "cowsl2h", "mucgec"}  # no L1 bank


def test_extra_controls_grow_a_suite_and_leave_the_earlier_version_as_it_was(
    tmp_path: Path, tutor_home: Path
) -> None:
    """Version 2 = version 1 plus single-turn controls made from its own error items' gold
    corrections; version 1 still builds from the same file, byte for byte as before."""
    home = tmp_path / "h"
    v1 = build_suite(_recipe(tmp_path), home=home, split_home=tutor_home)
    languages = {lang: {**spec, "extra_controls": 4} for lang, spec in RECIPE["languages"].items()}
    grown = _recipe(tmp_path, version=2, extends=1, languages=languages)
    v2 = build_suite(grown, home=home, split_home=tutor_home)
    assert v2.ref == "unit@2" and len(v2.items) == 30 + 3 * 4
    assert [it for it in v2.items if it in v1.items] == v1.items  # all there, in their order
    # the earlier version rebuilt from the grown recipe is the one built before
    again = build_suite(grown, home=tmp_path / "fresh", split_home=tutor_home, version=1)
    assert again.manifest["items_sha256"] == v1.manifest["items_sha256"]
    errors = {it.id: it for it in v1.items if not it.control}
    extras = [it for it in v2.items if it not in v1.items]
    for lang in ("en", "es", "zh"):
        mine = [it for it in extras if it.language == lang]
        assert len(mine) == 4
        assert sorted(it.mode for it in mine) == sorted(RECIPE["modes"])  # one of each
        assert sum(it.control for it in v2.items if it.language == lang) == 2 + 4
    for it in extras:
        twin = errors[it.id.removesuffix(":ctl")]  # the error item it is the correction of
        assert it.control and it.category == "none" and not it.context
        assert it.utterance == twin.correction != twin.utterance
        assert it.corrections == (twin.correction,)
        assert it.record_id == twin.record_id
    assert len({it.id for it in v2.items}) == len(v2.items)
    # versions the file cannot build, and more extras than error items, are refused
    with pytest.raises(SuiteError, match="version 2 and 1 only"):
        build_suite(grown, home=home, split_home=tutor_home, version=3)
    with pytest.raises(SuiteError, match="extends"):
        build_suite(_recipe(tmp_path, version=2, extends=2), home=home)
    too_many = {lang: {**spec, "extra_controls": 9} for lang, spec in languages.items()}
    with pytest.raises(SuiteError, match="9 wanted, 8 error items"):
        build_suite(
            _recipe(tmp_path, name="u3", version=2, extends=1, languages=too_many),
            home=home,
            split_home=tutor_home,
        )


@pytest.mark.parametrize(
    ("name", "items", "controls"),
    [
        ("en", 84, 36),
        ("es-l2", 48, 24),
        ("es-heritage", 48, 24),
        ("zh-l2", 48, 24),
        ("zh-heritage", 48, 24),
        ("en-check", 56, 24),
        ("es-l2-check", 48, 24),
        ("es-heritage-check", 48, 24),
        ("zh-check", 38, 19),
    ],
)
def test_the_committed_suites_are_version_2_and_keep_version_1_inside(
    name: str, items: int, controls: int, tmp_path: Path, tutor_home: Path
) -> None:
    """A bare name is the committed recipe's version, built on a fresh home; version 1 (what
    the shipped manifests were chosen on) is still there, item for item, inside it."""
    v2 = build_suite(name, home=tmp_path, split_home=tutor_home)
    assert load_suite(name, home=tmp_path).ref == f"{name}@2"
    assert len(v2.items) == items and sum(it.control for it in v2.items) == controls
    v1 = build_suite(name, home=tmp_path, split_home=tutor_home, version=1)
    assert v1.ref == f"{name}@1"
    assert v2.items[: len(v1.items)] == v1.items
