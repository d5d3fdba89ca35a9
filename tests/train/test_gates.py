"""Quality gates, table-driven: a good and a bad reply per language and mode, with the reason."""

from __future__ import annotations

import pytest

from common.metrics import (
    contains_correction,
    detect_language,
    explicit_corrections,
    target_form,
    withholds_correction,
)
from train.gates import REASONS, GateReport, gate, row_failures

VARIANT = {"en": "tutor", "es": "tutor-es-l2", "zh": "tutor-zh-l2"}
ERRORS = {
    "en": (
        "Yesterday I go to the store with my sister.",
        "Yesterday I went to the store with my sister.",
    ),
    "es": ("Ayer yo voy a la playa con mis amigos.", "Ayer yo fui a la playa con mis amigos."),
    "zh": ("我昨天买了三书。", "我昨天买了三本书。"),
}


def row(lang: str, mode: str, reply: str, **extra) -> dict:
    utt, corr = ERRORS[lang]
    return {
        "id": f"{lang}-{mode}",
        "language": lang,
        "variant": VARIANT[lang],
        "mode": mode,
        "messages": [
            {"role": "system", "content": "persona"},
            {"role": "user", "content": utt},
            {"role": "assistant", "content": reply},
        ],
        "turns": [{"mode": mode, "utterance": utt, "correction": corr, "category": None}],
        **extra,
    }


CASES = [
    # English
    ("en", "recast", "Oh, you went to the store with your sister? What did you buy?", []),
    (
        "en",
        "recast",
        "Oh, you go to the store with your sister? What did you buy?",
        ["missing_corrected_form"],
    ),
    (
        "en",
        "expansion",
        "You went to the store with your sister, a lovely outing. What did you get?",
        [],
    ),
    (
        "en",
        "expansion",
        "That's wrong: you went to the store. What did you buy?",
        ["explicit_correction"],
    ),
    ("en", "elicitation", "Yesterday you...? How would you say that part another way?", []),
    ("en", "elicitation", "Yesterday you went...? Can you say it again?", ["gave_away_answer"]),
    ("en", "metalinguistic", "Think about the time: when did this happen? Can you try again?", []),
    ("en", "metalinguistic", "Think about the time. Try again.", ["no_question"]),
    (
        "en",
        "recast",
        "¿Fuiste a la tienda con tu hermana? ¿Qué compraste?",
        ["missing_corrected_form", "wrong_language"],
    ),
    # Spanish
    ("es", "recast", "¡Qué bien que fuiste a la playa! ¿Con quién fuiste?", []),
    ("es", "recast", "¡Qué bien! ¿Con quién estabas en la playa?", ["missing_corrected_form"]),
    ("es", "expansion", "Ah, fuiste a la playa con tus amigos, un plan estupendo. ¿Nadaron?", []),
    ("es", "expansion", "Se dice fui, no voy. ¿Con quién fuiste?", ["explicit_correction"]),
    ("es", "elicitation", "Ayer tú...? ¿Cómo lo dirías de otra manera?", []),
    ("es", "elicitation", "Ayer tú fui...? ¿Puedes repetirlo?", ["gave_away_answer"]),
    ("es", "metalinguistic", "Piensa en el tiempo: ¿cuándo pasó esto? ¿Lo intentas otra vez?", []),
    (
        "es",
        "metalinguistic",
        "Eso está mal. Piensa en el tiempo: ¿cuándo pasó?",
        ["explicit_correction"],
    ),
    (
        "es",
        "recast",
        "¡Qué bien que fuiste a la playa!" + " ¡Qué divertido!" * 30 + " ¿Y luego?",
        ["length"],
    ),
    # Mandarin
    ("zh", "recast", "哦，你买了三本书？是什么书？", []),
    ("zh", "recast", "哦，你买了书？是什么书？", ["missing_corrected_form"]),
    ("zh", "expansion", "你买了三本书，真不少！都是小说吗？", []),
    ("zh", "expansion", "你说错了，应该说三本书。是什么书？", ["explicit_correction"]),
    ("zh", "elicitation", "你昨天买了三……？三什么书？", []),
    ("zh", "elicitation", "你昨天买了三本书……？再说一遍？", ["gave_away_answer"]),
    ("zh", "metalinguistic", "想一想量词。你再试一次？", []),
    (
        "zh",
        "metalinguistic",
        "Think about the measure word. Can you try again?",
        ["wrong_language"],
    ),
]


@pytest.mark.parametrize(
    "lang,mode,reply,expected",
    [pytest.param(*c, id=f"{c[0]}-{c[1]}-{'good' if not c[3] else '+'.join(c[3])}") for c in CASES],
)
def test_gate_table(lang: str, mode: str, reply: str, expected: list[str]) -> None:
    assert row_failures(row(lang, mode, reply)) == expected


def test_every_reason_is_reachable_and_counted() -> None:
    good = row("en", "recast", "Oh, you went to the store with your sister? What did you buy?")
    rows = [
        good,
        dict(good),  # same messages: a duplicate
        {**good, "messages": good["messages"][:2]},  # schema
        row("en", "recast", "You go to the store. Nice."),  # missing form (first) + no question
        {**row("es", "recast", "¡Qué bien que fuiste a la playa! ¿Con quién?"), "variant": "tutor"},
    ]
    kept, report = gate(rows)
    assert kept == [good]
    d = report.to_dict()
    assert d["total"] == 5 and d["kept"] == 1
    assert d["dropped"] == {
        "schema": 1,
        "duplicate": 1,
        "wrong_variant_language": 1,
        "missing_corrected_form": 1,
    }
    assert d["failures"]["no_question"] == 1  # every failed gate is also tallied
    assert set(d["dropped"]) <= set(REASONS)


def test_multi_turn_checks_each_assistant_turn_against_its_own_mode() -> None:
    utt, corr = ERRORS["en"]
    r = row("en", "elicitation", "Yesterday you...? How would you say that another way?")
    r["messages"] += [
        {"role": "user", "content": corr},
        {"role": "assistant", "content": "Yes, exactly! What did you buy?"},
    ]
    r["turns"].append({"mode": "confirm", "utterance": utt, "correction": corr, "category": None})
    assert row_failures(r) == ["missing_corrected_form"]  # the confirm turn must use "went"
    r["messages"][-1]["content"] = "Yes, you went to the store! What did you buy?"
    assert row_failures(r) == []
    assert GateReport().check(r)


@pytest.mark.parametrize(
    "text,lang",
    [
        ("Oh, you went to the store? What did you buy?", "en"),
        ("¿Con quién fuiste a la playa?", "es"),
        ("你买了什么书？", "zh"),
        ("12345 !!!", None),
    ],
)
def test_detect_language(text: str, lang: str | None) -> None:
    assert detect_language(text) == lang


def test_metric_building_blocks() -> None:
    assert target_form("I go to store", "I go to the store") == ("the",)
    assert target_form("I very like it", "I like it") == ("i", "like")  # deletion: neighbours
    assert contains_correction("So you like it?", "I very like it", "I like it")  # I -> you
    # A lone function word elsewhere in the reply does not give the answer away ...
    assert withholds_correction(
        "Is the shop open? You go to...?", "I go to store", "I go to the store"
    )
    # ... but the corrected stretch in its context does.
    assert not withholds_correction("You go to the store?", "I go to store", "I go to the store")
    assert explicit_corrections("Casi: no se dice así.", "es") == ["se dice", "no se dice"]
    assert explicit_corrections("This is correct English, well done!", "en") == []
