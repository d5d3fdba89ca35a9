"""Synthetic learner errors, references, controls and the template replies built on them."""

from __future__ import annotations

import random

import pytest

from common.metrics import contains_correction, withholds_correction
from common.modes import OVER_CORRECTION_LABELS, classify_mode
from common.records import ErrorRecord
from common.templates import HINTS, focus, tutor_reply
from train.gates import row_failures
from train.synth import (
    EN_LEARNER_RULES,
    EN_RULES,
    ZH_HERITAGE_RULES,
    controls,
    derive,
    inject,
    per_reference,
)


@pytest.mark.parametrize(
    ("category", "clean", "broken"),
    [
        ("verb_tense", "Yesterday I went to the store.", "Yesterday I go to the store."),
        ("agreement", "She doesn't like the cold water.", "She don't like the cold water."),
        ("article", "I bought a new phone.", "I bought new phone."),
        ("preposition", "I lived here for three years.", "I lived here since three years."),
        ("plural", "She bought many apples.", "She bought many apple."),
        ("word_order", "I always drink coffee.", "I drink always coffee."),
    ],
)
def test_each_english_rule_makes_its_error(category: str, clean: str, broken: str) -> None:
    assert EN_RULES[category](clean, random.Random(0)) == broken


def test_english_rules_leave_sentences_they_do_not_fit() -> None:
    rng = random.Random(0)
    assert EN_RULES["verb_tense"]("I have visited Rome.", rng) is None  # perfect, not tense
    assert EN_RULES["plural"]("Hello there.", rng) is None
    assert EN_RULES["word_order"]("Always.", rng) is None


@pytest.mark.parametrize(
    ("category", "clean", "broken"),
    [
        ("word_form", "They take responsibility for it.", "They take responsible for it."),
        ("missing_word", "Teachers are concerned about it.", "Teachers concerned about it."),
        ("missing_word", "People shouldn't be robots.", "People shouldnt be robots."),
        ("determiner", "These limits help.", "This limits help."),
    ],
)
def test_each_learner_rule_makes_its_error(category: str, clean: str, broken: str) -> None:
    assert EN_LEARNER_RULES[category](clean, random.Random(0)) == broken


def test_a_misspelling_is_one_edit_of_one_long_word() -> None:
    """Doubled, dropped, swapped or a vowel confused: the word stays recognisable, the rest of
    the sentence is untouched, and the seed decides which."""
    clean = "I met my neighbour at the station."
    for seed in range(20):
        broken = EN_LEARNER_RULES["spelling"](clean, random.Random(seed))
        assert broken is not None and broken != clean
        diff = [(a, b) for a, b in zip(clean.split(), broken.split(), strict=True) if a != b]
        assert len(diff) == 1 and len(diff[0][0]) >= 5
        assert abs(len(diff[0][0]) - len(diff[0][1])) <= 1
    assert EN_LEARNER_RULES["spelling"]("I am ok.", random.Random(0)) is None


def test_learner_errors_are_a_derivation_of_their_own() -> None:
    rec = ErrorRecord("r1", "jfleg", "en", "l2", "x", ("These limits help us.",), group="g1")
    out = derive([rec], "synthetic:en-learner", seed=3)
    assert out and {r.category for r in out} <= set(EN_LEARNER_RULES)
    assert all(r.corrections == ("These limits help us.",) and r.group == "g1" for r in out)


@pytest.mark.parametrize(
    ("category", "clean", "broken"),
    [
        ("particle", "他跑得很快。", {"他跑的很快。", "他跑地很快。"}),
        ("measure_word", "我买了一本书。", {"我买了一个书。"}),
        ("character", "我已经吃饭了。", {"我以经吃饭了。"}),
        ("code_switching", "我去超市买东西。", {"我去 supermarket 买东西。"}),
    ],
)
def test_each_heritage_rule_makes_its_error(category: str, clean: str, broken: set[str]) -> None:
    assert ZH_HERITAGE_RULES[category](clean, random.Random(1)) in broken


def _jfleg_like() -> list[ErrorRecord]:
    return [
        ErrorRecord(
            id="jfleg-0001",
            source="jfleg",
            language="en",
            learner="l2",
            utterance="Yesterday I go to shop and buy many apple.",
            corrections=(
                "Yesterday I went to the shop and bought many apples.",
                "Yesterday I went to a shop and bought many apples.",
                "Yesterday I go to shop and buy many apple.",
            ),
            group="jfleg-0001",
        )
    ]


def test_references_become_one_record_each_with_their_own_category() -> None:
    recs = per_reference(_jfleg_like())
    assert [r.id for r in recs] == ["jfleg-0001-r0", "jfleg-0001-r1"]
    assert [r.correction for r in recs] == [
        "Yesterday I went to the shop and bought many apples.",
        "Yesterday I went to a shop and bought many apples.",
    ]
    assert all(r.group == "jfleg-0001" and r.category for r in recs)


def test_synthetic_records_are_marked_keep_their_group_and_are_reproducible() -> None:
    a = inject(_jfleg_like(), "en", seed=5)
    b = inject(_jfleg_like(), "en", seed=5)
    assert a == b and a
    assert {r.category for r in a} >= {"verb_tense", "article", "plural"}
    for r in a:
        assert r.meta["synthetic"] and r.source == "synth-jfleg" and r.group == "jfleg-0001"
        assert r.utterance != r.correction and r.correction in _jfleg_like()[0].corrections


def test_controls_are_error_free_and_relabelled_when_asked() -> None:
    recs = controls(_jfleg_like(), learner="heritage")
    assert len(recs) == 3  # every distinct reference, the unchanged one too
    assert all(not r.changed and r.meta["control"] and r.learner == "heritage" for r in recs)
    assert derive(_jfleg_like(), None, seed=0, learner="heritage")[0].learner == "heritage"
    with pytest.raises(ValueError, match="unknown derivation"):
        derive(_jfleg_like(), "paraphrase", seed=0)


@pytest.mark.parametrize(
    ("lang", "utt", "corr", "cat"),
    [
        ("en", "Yesterday I go to the store.", "Yesterday I went to the store.", "verb_tense"),
        ("en", "I bought new phone yesterday.", "I bought a new phone yesterday.", "article"),
        ("es", "Ayer yo voy a la playa.", "Ayer yo fui a la playa.", "verb_tense"),
        ("zh", "我买了一个书。", "我买了一本书。", "measure_word"),
    ],
)
def test_hints_point_at_the_learners_word_and_withhold_the_answer(
    lang: str, utt: str, corr: str, cat: str
) -> None:
    seen = set()
    for k in range(12):
        reply = tutor_reply("metalinguistic", utt, corr, lang, cat, key=f"k{k}")
        assert withholds_correction(reply, utt, corr), reply
        assert "{" not in reply
        seen.add(reply)
    assert len(seen) > 3  # phrasings vary with the row
    where = focus(utt, corr)
    assert where["w"] in utt and where["l"] in utt and where["r"] in utt


def test_every_hint_template_formats() -> None:
    where = {"w": "go", "l": "I", "r": "to"}
    for per_lang in HINTS.values():
        for options in per_lang.values():
            for template in options:
                assert "{" not in template.format(**where)


@pytest.mark.parametrize(
    ("lang", "sentence"),
    [
        ("en", "Yesterday I went to the store with my sister."),
        ("es", "Ayer fui a la playa con mis amigos."),
        ("zh", "我昨天买了三本书。"),
    ],
)
def test_natural_replies_to_correct_sentences_correct_nothing(lang: str, sentence: str) -> None:
    for k in range(10):
        reply = tutor_reply("natural", sentence, sentence, lang, None, key=f"n{k}")
        assert classify_mode(reply, sentence, [sentence], lang) not in OVER_CORRECTION_LABELS
        row = {
            "id": "x",
            "language": lang,
            "variant": {"en": "tutor", "es": "tutor-es-l2", "zh": "tutor-zh-l2"}[lang],
            "mode": "natural",
            "messages": [
                {"role": "system", "content": "p"},
                {"role": "user", "content": sentence},
                {"role": "assistant", "content": reply},
            ],
            "turns": [{"mode": "natural", "utterance": sentence, "correction": sentence}],
        }
        assert row_failures(row) == [], reply


def test_the_over_correction_gate_drops_a_correction_of_a_correct_sentence() -> None:
    sentence = "Yesterday I went to the store."
    row = {
        "id": "x",
        "language": "en",
        "variant": "tutor",
        "mode": "natural",
        "messages": [
            {"role": "system", "content": "p"},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": "Think about the verb tense. Can you try again?"},
        ],
        "turns": [{"mode": "natural", "utterance": sentence, "correction": sentence}],
    }
    assert "over_correction" in row_failures(row)


def test_recasts_of_synthetic_errors_carry_the_correction() -> None:
    for r in inject(_jfleg_like(), "en", seed=3):
        reply = tutor_reply("recast", r.utterance, r.correction, "en", r.category, key=r.id)
        assert contains_correction(reply, r.utterance, r.correction), (r.utterance, reply)


def test_narratives_give_tense_and_agreement_errors() -> None:
    recs = derive([], "narrative:en", seed=1)
    cats = {r.category for r in recs}
    assert cats == {"verb_tense", "agreement"}
    assert sum(r.category == "verb_tense" for r in recs) > 300
    assert all(r.meta["synthetic"] and r.group.startswith("narrative-") for r in recs)
    tense = next(r for r in recs if r.category == "verb_tense")
    assert tense.utterance != tense.correction


def test_per_category_caps_a_crowded_category() -> None:
    from train.generate_plan import GenJob, plan

    recs = inject(per_reference(_jfleg_like()) * 1, "en", seed=5) + derive(
        [], "narrative:en", seed=1
    )
    capped = plan(GenJob(name="x", source="jfleg", variant="tutor", per_category=5), recs)
    counts: dict[str, int] = {}
    for item in capped:
        counts[item.record.category] = counts.get(item.record.category, 0) + 1
    assert counts["verb_tense"] == 5 and max(counts.values()) == 5
