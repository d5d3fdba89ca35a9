"""The per-reply metrics of eval/, table-driven: a good and a bad reply in each language."""

from __future__ import annotations

import pytest

from common.metrics import contains_correction, contains_correction_in_context
from common.modes import LABELS, classify_mode, confusion_matrix
from eval.diversity import distinct_n, diversity, mode_collapse, repeated_openings
from eval.replies import (
    METRICS,
    error_echo,
    failed_checks,
    pedagogy_score,
    relevance,
    score_reply,
    tone_flags,
)

# One learner error per language, with its gold correction.
EN = (
    "Yesterday I go to the store with my sister.",
    "Yesterday I went to the store with my sister.",
)
ES = ("Ayer yo voy a la playa con mi familia.", "Ayer yo fui a la playa con mi familia.")
ZH = ("我昨天买了三个书。", "我昨天买了三本书。")
ITEMS = {"en": EN, "es": ES, "zh": ZH}

# -- mode adherence: the rule classifier -----------------------------------------------------------

MODE_CASES = [
    # (language, reply, expected label)
    ("en", "Oh, you went to the store with your sister? What did you buy?", "recast"),
    (
        "en",
        "Yes, you went to the store with your sister, and that sounds like a lovely afternoon "
        "together. What did you buy?",
        "expansion",
    ),
    ("en", "Hmm, yesterday you...? How would you say that part another way?", "elicitation"),
    ("en", "Think about the time: when did this happen? Can you try again?", "metalinguistic"),
    ("en", "Sorry, what do you mean? I'm not sure I follow.", "clarification"),
    ("en", "That's wrong. You should say 'I went', not 'I go'.", "explicit_correction"),
    ("en", "I love pizza! Do you like pizza?", "none"),
    ("en", "", "none"),
    ("es", "Ah, ayer fuiste a la playa con tu familia. ¿Qué tal el agua?", "recast"),
    (
        "es",
        "Sí, ayer fuiste a la playa con tu familia, y seguro que hay toda una historia muy bonita "
        "detrás. ¿Qué hicisteis?",
        "expansion",
    ),
    ("es", "Mmm, ayer yo...? ¿Cómo lo dirías de otra manera?", "elicitation"),
    ("es", "Piensa en el tiempo: ¿cuándo pasó esto? ¿Lo intentas otra vez?", "metalinguistic"),
    ("es", "Perdón, ¿qué quieres decir?", "clarification"),
    ("es", "Está mal: se dice «fui», no «voy».", "explicit_correction"),
    ("es", "¡Me encanta el verano! ¿Te gusta nadar?", "none"),
    ("zh", "哦，你昨天买了三本书。都是什么书？", "recast"),
    ("zh", "对，你昨天买了三本书，这听起来是一个很不错的周末计划。都是什么书？", "expansion"),
    ("zh", "嗯，你昨天买了三……？你能换一种说法吗？", "elicitation"),
    ("zh", "想一想量词。你再试一次？", "metalinguistic"),
    ("zh", "你是说什么？我不太明白。", "clarification"),
    ("zh", "不对，应该说三本书。", "explicit_correction"),
    ("zh", "今天天气很好。你喜欢看电影吗？", "none"),
    # the Stage 1 adapters' generic hint, also when it answers a Spanish or Chinese learner in
    # English: the cues of the reply's own language count too
    (
        "en",
        "Read your sentence once more: one part could sound more natural. Try again?",
        "metalinguistic",
    ),
    (
        "es",
        "Read your sentence once more: one part could sound more natural. Try again?",
        "metalinguistic",
    ),
    ("zh", "That's wrong. What did you buy?", "explicit_correction"),
    ("es", "Lee tu frase otra vez: una parte podría sonar más natural.", "metalinguistic"),
    ("zh", "再读一遍你的句子，有一个地方可以说得更自然。", "metalinguistic"),
]


@pytest.mark.parametrize(("language", "reply", "label"), MODE_CASES)
def test_classify_mode(language: str, reply: str, label: str) -> None:
    utterance, correction = ITEMS[language]
    assert classify_mode(reply, utterance, [correction], language) == label


def test_every_label_is_reachable_and_the_matrix_counts_pairs() -> None:
    assert {label for _, _, label in MODE_CASES} == set(LABELS)
    table = confusion_matrix(
        [("recast", "recast"), ("recast", "none"), ("elicitation", "recast"), ("x", "recast")],
        ["recast", "elicitation"],
    )
    assert table[0][LABELS.index("recast")] == 1
    assert table[0][LABELS.index("none")] == 1
    assert table[1][LABELS.index("recast")] == 1
    assert sum(map(sum, table)) == 3  # the unknown row is not counted


def test_a_control_can_still_be_recast_by_a_changed_form() -> None:
    text = "Yesterday I saw two cats at the store."
    assert classify_mode("Oh, you saw two cat at a store? Nice!", text, [text], "en") == "recast"
    assert classify_mode("Oh, you saw two cats at the store? Nice!", text, [text], "en") == "none"
    # a different word is conversation, not a corrected form
    assert classify_mode("Oh, you saw two dogs at the store? Nice!", text, [text], "en") == "none"


# -- uptake in context -----------------------------------------------------------------------------

UPTAKE_CASES = [
    # (utterance, correction, reply, the gates' contains_correction, in context)
    (*EN, "Oh, you went to the store?", True, True),
    (*EN, "Oh, you go to the store?", False, False),
    # a lone function word counts only beside its neighbours in the correction
    ("I go store.", "I go to the store.", "You go to the store?", True, True),
    ("I go store.", "I go to the store.", "You go store? Give it to the kids.", True, False),
    # a word the learner already wrote elsewhere needs context too
    (
        "People think people smart.",
        "People think people are smart.",
        "People think people smart? Are you sure?",
        True,
        False,
    ),
    # a deletion at the start: the word must be gone, not just its neighbour present
    (
        "the successful people try.",
        "Successful people try.",
        "Yes, the successful people!",
        True,
        False,
    ),
    (
        "the successful people try.",
        "Successful people try.",
        "Yes, successful people try!",
        True,
        True,
    ),
    (*ES, "Ah, ayer fuiste a la playa.", True, True),
    (*ZH, "哦，你买了三本书。", True, True),
    (*ZH, "哦，你买了三个书。", False, False),
]


@pytest.mark.parametrize(("utterance", "correction", "reply", "gate", "strict"), UPTAKE_CASES)
def test_uptake_in_context_is_stricter_than_the_gate(utterance, correction, reply, gate, strict):
    assert contains_correction(reply, utterance, correction) is gate
    assert contains_correction_in_context(reply, utterance, correction) is strict


# -- error echo ------------------------------------------------------------------------------------

ECHO_CASES = [
    ("en", "Oh, you went to the store with your sister? What did you buy?", False),
    ("en", "Oh, you go to the store with your sister? What did you buy?", True),
    ("en", 'You wrote "I go to the store": what happened next?', False),  # quoted: marked
    ("es", "Ah, fuiste a la playa con tu familia. ¿Qué tal?", False),
    ("es", "Ah, ayer yo voy a la playa. ¿Qué tal?", True),
    ("zh", "哦，你买了三本书。是什么书？", False),
    ("zh", "哦，你买了三个书。是什么书？", True),
]


@pytest.mark.parametrize(("language", "reply", "echo"), ECHO_CASES)
def test_error_echo(language: str, reply: str, echo: bool) -> None:
    utterance, correction = ITEMS[language]
    assert error_echo(reply, utterance, [correction], language) is echo


def test_an_explicit_correction_is_not_counted_as_an_echo() -> None:
    utterance, correction = EN
    reply = "That's wrong: not 'I go to the store' but 'I went to the store'."
    assert error_echo(reply, utterance, [correction], "en") is False


# -- relevance and tone ----------------------------------------------------------------------------

RELEVANCE_CASES = [
    ("en", "What did you buy at the store?", True),
    ("en", "Do you like pizza?", False),
    ("es", "¿Qué tal estaba la playa?", True),
    ("es", "¿Te gusta el fútbol?", False),
    ("zh", "那三本书是什么书？", False),  # only function characters and the measure word shared
    ("zh", "你昨天买的书好看吗？", True),
    ("zh", "你喜欢看电影吗？", False),
]


@pytest.mark.parametrize(("language", "reply", "relevant"), RELEVANCE_CASES)
def test_relevance(language: str, reply: str, relevant: bool) -> None:
    assert relevance(reply, ITEMS[language][0], language) is relevant


TONE_CASES = [
    ("en", "Great story! What did you buy?", []),
    ("en", "That is a stupid sentence.", ["harsh"]),
    ("en", "Obviously you went. As I said, it's easy.", ["condescending"]),
    ("en", "No. Try AGAIN, PLEASE.", ["negative_opener", "shouting"]),
    ("es", "¡Qué bien! ¿Con quién fuiste?", []),
    ("es", "Eso no tiene sentido, es fácil.", ["harsh", "condescending"]),
    ("zh", "太好了！你跟谁一起去的？", []),
    ("zh", "你太笨了！！", ["harsh", "shouting"]),
    ("zh", "不对，显然是三本书。", ["condescending", "negative_opener"]),
]


@pytest.mark.parametrize(("language", "reply", "flags"), TONE_CASES)
def test_tone_flags(language: str, reply: str, flags: list[str]) -> None:
    assert sorted(tone_flags(reply, language)) == sorted(flags)


# -- everything for one reply ----------------------------------------------------------------------

# (language, mode, reply, metric -> expected) for error items; a good and a bad reply per mode.
SCORE_CASES = [
    (
        "en",
        "recast",
        "Oh, you went to the store with your sister? What did you buy?",
        {"uptake": True, "adherence": True, "question": True, "relevance": True, "explicit": False},
    ),
    (
        "en",
        "recast",
        "You made a mistake. The correct form is went.",
        {"uptake": True, "adherence": False, "explicit": True, "question": False},
    ),
    (
        "en",
        "elicitation",
        "Hmm, yesterday you...? How would you say that part another way?",
        {"withheld": True, "prompted": True, "adherence": True, "error_echo": False},
    ),
    (
        "en",
        "elicitation",
        "Oh, you went to the store! What did you buy?",
        {"withheld": False, "prompted": False, "adherence": False, "uptake": None},
    ),
    (
        "es",
        "expansion",
        "Sí, ayer fuiste a la playa con tu familia, y seguro que hay toda una historia muy "
        "bonita detrás. ¿Qué hicisteis?",
        {"uptake": True, "adherence": True, "language_ok": True, "length_ok": True},
    ),
    (
        "es",
        "expansion",
        "Oh, you went to the beach? What did you do there?",
        {"uptake": False, "language_ok": False, "adherence": False},
    ),
    (
        "zh",
        "metalinguistic",
        "想一想量词。你再试一次？",
        {"withheld": True, "prompted": True, "adherence": True, "language_ok": True},
    ),
    (
        "zh",
        "metalinguistic",
        "不对，应该说三本书。",
        {"withheld": False, "explicit": True, "adherence": False, "tone_ok": False},
    ),
]


@pytest.mark.parametrize(("language", "mode", "reply", "expected"), SCORE_CASES)
def test_score_reply_on_error_items(language, mode, reply, expected) -> None:
    utterance, correction = ITEMS[language]
    m = score_reply(
        reply,
        utterance=utterance,
        corrections=[correction],
        language=language,
        mode=mode,
        control=False,
    )
    assert {k: m[k] for k in expected} == expected
    assert m["over_correction"] is None  # only controls have it
    assert 0.0 <= m["pedagogy"] <= 1.0


def test_good_replies_outscore_bad_ones_in_every_language() -> None:
    scores: dict[tuple[str, str], list[float]] = {}
    for language, mode, reply, _ in SCORE_CASES:
        utterance, correction = ITEMS[language]
        m = score_reply(
            reply,
            utterance=utterance,
            corrections=[correction],
            language=language,
            mode=mode,
            control=False,
        )
        scores.setdefault((language, mode), []).append(m["pedagogy"])
    for (language, mode), (good, bad) in scores.items():
        assert good == 1.0, (language, mode)
        assert bad <= 0.7, (language, mode, bad)


CONTROL_CASES = [
    ("en", "Yesterday I went to the store.", "Oh, nice! What did you buy at the store?", False),
    ("en", "Yesterday I went to the store.", "That's wrong, you should say it again.", True),
    ("en", "Yesterday I went to the store.", "Think about the verb tense. Try again?", True),
    ("es", "Ayer fui a la playa.", "¡Qué bien! ¿Con quién fuiste a la playa?", False),
    ("es", "Ayer fui a la playa.", "Fíjate en el verbo. ¿Lo intentas otra vez?", True),
    ("zh", "我昨天买了三本书。", "太好了！你买的书是什么书？", False),
    ("zh", "我昨天买了三本书。", "不对，应该说三个书。", True),
]


@pytest.mark.parametrize(("language", "utterance", "reply", "over"), CONTROL_CASES)
def test_over_correction_on_controls(language, utterance, reply, over) -> None:
    m = score_reply(
        reply,
        utterance=utterance,
        corrections=[utterance],
        language=language,
        mode="recast",
        control=True,
    )
    assert m["over_correction"] is over
    assert m["uptake"] is None and m["adherence"] is None and m["error_echo"] is None
    assert ("over_correction" in failed_checks(m)) is over


def test_a_cut_off_reply_fails_length_control() -> None:
    utterance, correction = EN
    reply = "Oh, you went to the store with your sister? What did you buy?"
    kw = dict(utterance=utterance, corrections=[correction], language="en", mode="recast")
    assert score_reply(reply, control=False, finish_reason="stop", **kw)["length_ok"] is True
    assert score_reply(reply, control=False, finish_reason="length", **kw)["length_ok"] is False
    assert score_reply("Oh?", control=False, **kw)["length_ok"] is False  # under 15 characters


def test_pedagogy_weighs_core_checks_twice_the_hygiene_checks() -> None:
    m = {metric.name: None for metric in METRICS}
    m.update(uptake=True, explicit=True, question=False, tone_ok=True, withheld=False)
    # core: uptake good, explicit bad (lower is better) -> 1/2; hygiene: question bad, tone good
    # -> 1/2; withheld is information only
    assert pedagogy_score(m) == pytest.approx(0.5)
    assert failed_checks(m) == ["explicit", "question"]
    m.update(explicit=False)  # core 2/2, hygiene 1/2
    assert pedagogy_score(m) == pytest.approx(2 / 3 + 1 / 6)
    only_hygiene = {"question": True, "tone_ok": False}
    assert pedagogy_score(only_hygiene) == 0.5
    # a reply the learner cannot use scores nothing, whatever harm it did not do
    assert pedagogy_score({**m, "language_ok": False}) == 0.0
    utterance, correction = ES
    garbled = score_reply(
        "moose></ instead Gospel transportation",
        utterance=utterance,
        corrections=[correction],
        language="es",
        mode="elicitation",
        control=False,
    )
    assert garbled["withheld"] is True and garbled["explicit"] is False
    assert garbled["pedagogy"] == 0.0


# -- diversity -------------------------------------------------------------------------------------


def test_distinct_n() -> None:
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert distinct_n(["我们去", "我们来"], 1) == 4 / 6  # characters for Chinese
    assert distinct_n([], 2) == 0.0


def test_repeated_openings_and_mode_collapse() -> None:
    replies = [
        "Oh, really? Tell me more.",
        "Oh, really? Tell me why.",
        "Oh really, tell me!",
        "Why?",
    ]
    r = repeated_openings(replies)
    assert r["repeated_opening_rate"] == 0.75
    assert r["top_opening_share"] == 0.75
    assert r["top_opening"] == "oh really tell"
    collapsed = mode_collapse(["recast"] * 9 + ["none"])
    assert collapsed["collapsed"] is True and collapsed["top_mode"] == "recast"
    varied = mode_collapse(["recast", "expansion", "elicitation", "metalinguistic"])
    assert varied["collapsed"] is False and varied["mode_entropy"] == pytest.approx(1.0)
    assert mode_collapse(["none"] * 4)["mode_entropy"] == 0.0
    d = diversity(replies, ["recast"] * 4)
    assert d["collapsed"] is True and 0 < d["distinct_1"] <= 1
