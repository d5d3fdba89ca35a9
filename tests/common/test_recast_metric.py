"""The recast detector behind the UI's "what did I get wrong?" panel, table-tested."""

from __future__ import annotations

import pytest

from common.metrics import conversation_recasts, recast_forms, recast_pairs, tokenize

CASES = [
    # (learner, tutor reply, expected (learner form, tutor form) pairs)
    pytest.param(
        "Yesterday I go to the store",
        "Oh, you went to the store? What did you buy?",
        [("go", "went")],
        id="en-past-tense-one-sided",
    ),
    pytest.param(
        "She have two cat",
        "She has two cats! What are their names?",
        [("have", "has"), ("cat", "cats")],
        id="en-agreement-and-plural",
    ),
    pytest.param(
        "The weather is very good today.",
        "Yes, the weather is lovely today.",
        [("very good", "lovely")],
        id="en-bounded-multiword",
    ),
    pytest.param(
        "Ayer yo voy a la playa con mi amigos.",
        "¡Qué bien! ¿Fuiste a la playa con tus amigos?",
        [("voy", "Fuiste"), ("mi", "tus")],
        id="es-preterite-and-possessive",
    ),
    pytest.param(
        "Me gusta los perros",
        "¿Te gustan los perros? ¡A mí también!",
        [("gusta", "gustan")],
        id="es-agreement-me-te-swap-ignored",
    ),
    pytest.param(
        "Yo soy cansado hoy", "¿Estás cansado hoy? ¿Por qué?", [("soy", "Estás")], id="es-ser-estar"
    ),
    pytest.param("我有三个书", "你有三本书？真好！", [("个", "本")], id="zh-measure-word-chars"),
    pytest.param(
        "我昨天去商店买了一个书",
        "你昨天去商店买了一本书吗？",
        [("个", "本")],
        id="zh-long-echo-question-particle-ignored",
    ),
    pytest.param("他是很高", "他很高啊！", [("是", "")], id="zh-dropped-word"),
    pytest.param("I like pizza", "I like pizza too!", [], id="pure-echo-plus-new-words"),
    pytest.param("Hello", "Hi! How are you today?", [], id="no-echo-no-recast"),
    pytest.param("", "Hi", [], id="empty-learner"),
    pytest.param("Hola", "", [], id="empty-reply"),
    pytest.param(
        "I go store yesterday",
        "You went to the store yesterday?",
        [],
        id="limit-unequal-stretch-without-stem-not-guessed",
    ),
]


@pytest.mark.parametrize(("learner", "reply", "expected"), CASES)
def test_recast_pairs(learner: str, reply: str, expected: list[tuple[str, str]]) -> None:
    assert recast_pairs(learner, reply) == expected


def test_recast_forms_lists_the_tutor_side_and_skips_drops() -> None:
    assert recast_forms("She have two cat", "She has two cats!") == ["has", "cats"]
    assert recast_forms("他是很高", "他很高啊！") == []


def test_forms_come_back_as_written() -> None:
    # Comparison is case-folded, but the form is sliced from the reply with its own case.
    assert recast_forms("i go to the Park", "You GO to the park!") == []
    assert recast_forms("we was at home", "Oh, you WERE at home?") == ["WERE"]


def test_tokenize_words_and_cjk_characters() -> None:
    assert [t.norm for t in tokenize("¿Dónde está? I'm here, 中文好!")] == [
        "dónde",
        "está",
        "i'm",
        "here",
        "中",
        "文",
        "好",
    ]


def test_conversation_recasts_pairs_each_user_turn_with_the_next_reply() -> None:
    messages = [
        {"role": "user", "content": "She have two cat"},
        {"role": "assistant", "content": "She has two cats! What are their names?"},
        {"role": "user", "content": "Their names is Tom and Kit"},
        {"role": "assistant", "content": "Their names are Tom and Kit? Lovely."},
        {"role": "user", "content": "She have two cat"},  # repeated: listed once
        {"role": "assistant", "content": "Yes, she has two cats."},
    ]
    assert conversation_recasts(messages) == [("have", "has"), ("cat", "cats"), ("is", "are")]
