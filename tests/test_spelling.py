"""The spelling pass before the English corrector turn: the real word list (pyspellchecker)."""

from __future__ import annotations

import pytest

from server.spelling import fix_spelling


@pytest.mark.parametrize(
    ("learner", "fixed"),
    [
        ("therefore I brougth a car.", "therefore I brought a car."),
        ("This is very possitive for him.", "This is very positive for him."),
        ("People are not and shouldnt be robots.", "People are not and shouldn't be robots."),
        ("Experince is what older people have.", "Experience is what older people have."),
    ],
)
def test_a_misspelt_word_is_replaced_by_its_nearest_frequent_word(learner, fixed) -> None:
    assert fix_spelling(learner, "en") == fixed


@pytest.mark.parametrize(
    "sentence",
    [
        "Yesterday I go to the store and buy many apple.",  # grammar is the corrector's
        "I visited Juju island with Kwame last summer.",  # names are left alone
        "SOME LUCE POINTS INWALL.",  # so is text in capitals
        "It is ok to be me.",  # short words
        "",
    ],
)
def test_known_words_names_and_capitals_are_left_as_they_are(sentence) -> None:
    assert fix_spelling(sentence, "en") == sentence


def test_the_pass_keeps_everything_around_the_words() -> None:
    assert fix_spelling("  the importnat, (very importnat) thing!  ", "en") == (
        "  the important, (very important) thing!  "
    )
