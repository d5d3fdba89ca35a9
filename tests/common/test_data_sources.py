"""Loaders over the real learner data in ../shared/data, and the fixed train/eval split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.corpora import course_learner, detokenize_en, load_cowsl2h, load_l1_bank, load_source
from common.data import is_eval, load_split, write_splits
from common.files import sha256_file
from common.paths import data_dir
from common.records import ErrorRecord

ROOT = data_dir()
pytestmark = pytest.mark.skipif(not (ROOT / "jfleg").is_dir(), reason=f"no learner data at {ROOT}")


def test_jfleg_dev_has_every_sentence_with_its_references() -> None:
    recs = load_source("jfleg")
    assert len(recs) == 754
    assert all(
        r.language == "en" and r.source == "jfleg" and 1 <= len(r.corrections) <= 4 for r in recs
    )
    # The source README counts 719 sentences with a reference that differs (tokenised); ours are
    # detokenised, which can only merge differences, never invent them.
    assert 700 <= sum(r.changed for r in recs) <= 719
    first = recs[0]
    assert first.utterance.startswith("So I think we can not live")
    assert not first.utterance.endswith(" .")  # detokenised
    assert first.correction != first.utterance and first.category is not None


def test_detokenize_en() -> None:
    assert detokenize_en("I do n't know , he said .") == "I don't know, he said."
    assert detokenize_en('He said " hi " to me .') == 'He said "hi" to me.'


@pytest.mark.parametrize(
    "course,learner",
    [
        ("SPA 1", "l2"),
        ("SPA 1Y", "l2"),
        ("SPA 24", "l2"),
        ("SPA 31", "heritage"),
        ("SPA 33", "heritage"),
        ("SPA 100", "general"),
        ("", "general"),
    ],
)
def test_cowsl2h_learner_type_from_course_number(course: str, learner: str) -> None:
    assert course_learner(course) == learner


def test_cowsl2h_records_keep_course_l1_and_essay_group() -> None:
    recs = load_cowsl2h(ROOT, limit=4000)
    assert len(recs) == 4000
    assert {r.learner for r in recs} >= {"l2", "heritage"}
    r = recs[2]
    assert r.meta["course"] == "SPA 1Y" and r.learner == "l2" and r.l1 == "English,Other"
    assert r.group == "cowsl2h-224249" and r.corrections == (
        "Tiene el pelo castaño largo y tiene los ojos grandes y marrones.",
    )
    assert {r.category for r in recs if r.changed} & {"article", "agreement", "accent"}
    assert all(r.category is None for r in recs if not r.changed)


def test_mucgec_multi_reference() -> None:
    recs = load_source("mucgec")
    assert len(recs) == 800
    assert all(r.language == "zh" and r.learner == "l2" for r in recs)
    assert max(len(r.corrections) for r in recs) >= 3
    assert recs[4].utterance == "学生大概做飞机去北京。" and "坐飞机" in recs[4].correction


def test_l1_bank_entries_are_complete_and_correct_something() -> None:
    bank = load_l1_bank()
    assert {r.language for r in bank} == {"en", "es", "zh"}
    cats = {r.category for r in bank}
    assert {"verb_tense", "article", "preposition", "agreement", "word_order"} <= cats
    for r in bank:
        assert r.l1 and r.correction != r.utterance, r.id
    assert len({r.id for r in bank}) == len(bank)


def test_split_is_fixed_disjoint_recorded_and_read_back(tmp_path: Path) -> None:
    sources = ["jfleg", "mucgec", "l1bank"]
    manifest = write_splits(sources, home=tmp_path)
    for source in sources:
        train, ev = (
            load_split(source, "train", home=tmp_path),
            load_split(source, "eval", home=tmp_path),
        )
        assert train and ev
        assert not {r.group for r in train} & {r.group for r in ev}
        assert len(train) + len(ev) == len(load_source(source))
        assert all(is_eval(r.group, source) for r in ev)
        counts = manifest["sources"][source]["counts"]
        assert counts["eval"]["rows"] == len(ev) and counts["train"]["rows"] == len(train)
        assert isinstance(ev[0], ErrorRecord)
    on_disk = json.loads((tmp_path / "data/splits/v1/manifest.json").read_text())
    assert on_disk["seed"] == manifest["seed"]
    assert on_disk["sources"]["jfleg"]["licence"].startswith("CC BY-NC-SA 4.0")
    assert on_disk["sources"]["mucgec"]["inputs"] == {
        "mucgec/MuCGEC_dev_part.txt": sha256_file(ROOT / "mucgec/MuCGEC_dev_part.txt")
    }
    # Writing again is byte-identical: the split depends only on the seed and the data.
    before = (tmp_path / "data/splits/v1/jfleg/eval.jsonl").read_bytes()
    write_splits(["jfleg"], home=tmp_path)
    assert (tmp_path / "data/splits/v1/jfleg/eval.jsonl").read_bytes() == before


def test_load_split_writes_a_missing_split(tmp_path: Path) -> None:
    ev = load_split("l1bank", "eval", home=tmp_path)
    assert ev and (tmp_path / "data/splits/v1/l1bank/eval.jsonl").is_file()
    with pytest.raises(ValueError):
        load_split("l1bank", "test", home=tmp_path)
