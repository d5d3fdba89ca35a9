"""The spelling pass before the English corrector turn: the real word list (pyspellchecker), and
the real SmolLM2 choosing a spelling in context through the transformers engine (the vLLM
engine gives the same ranking: tests/server/test_vllm.py)."""

from __future__ import annotations

import asyncio

import pytest

from server.engines.transformers_engine import TransformersEngine
from server.spelling import (
    CANDIDATES,
    SLIP_COST,
    UNRANKED_COST,
    _logprob,
    candidates,
    fix_spelling,
    fix_spelling_in_context,
    slip_cost,
)


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


@pytest.mark.parametrize(
    ("written", "meant", "slip"),
    [
        ("possitive", "positive", "double"),
        ("palce", "place", "swap"),
        ("whe", "we", "extra"),
        ("youg", "young", "missing"),
        ("warker", "worker", "vowel"),
        ("wotk", "work", "near_key"),
        ("whe", "the", "other"),
    ],
)
def test_a_slip_costs_what_its_kind_does(written, meant, slip) -> None:
    assert slip_cost(written, meant) == SLIP_COST[slip]


def test_a_word_s_options_come_best_first_with_its_case() -> None:
    options = candidates("Whe", "en")
    assert [o for o, _ in options][:3] == ["We", "He", "The"]  # "The": a far consonant
    assert [p for _, p in options] == sorted((p for _, p in options), reverse=True)
    assert len(options) == CANDIDATES


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_path):
    """The real base model behind the transformers engine: what the pass asks."""
    engine = TransformersEngine(str(smollm2_path))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.aclose())


@pytest.mark.parametrize(
    ("learner", "by_frequency", "in_context", "words"),
    [
        (
            "In today's world whe have just developed the first aspect.",
            "In today's world the have just developed the first aspect.",
            "In today's world we have just developed the first aspect.",
            1,
        ),
        (
            "I donnt know wich one is better.",
            "I don't know with one is better.",
            "I don't know which one is better.",
            2,
        ),
    ],
)
def test_in_context_the_base_model_picks_the_spelling(
    smollm2_engine, learner, by_frequency, in_context, words
) -> None:
    """Frequency alone picks the commonest near word; the model, ranking each option after the
    words before it and what follows after the option, picks the one that fits. One engine
    call: per unknown word, a prompt for the words before it and one for each option."""
    calls = []

    async def next_tokens(prompts: list[str], top: int) -> list[dict[str, float]]:
        calls.append(prompts)
        return await smollm2_engine.next_tokens(prompts, top)

    assert fix_spelling(learner, "en") == by_frequency
    assert asyncio.run(fix_spelling_in_context(learner, "en", next_tokens)) == in_context
    assert len(calls) == 1 and len(calls[0]) == words * (1 + CANDIDATES)


def test_in_context_a_sentence_without_doubt_costs_no_call() -> None:
    """No unknown word, or unknown words with one option each: nothing for the model."""

    async def next_tokens(prompts: list[str], top: int) -> list[dict[str, float]]:
        raise AssertionError("asked the model with nothing to choose")

    for sentence, spelt in [
        ("Yesterday I go to the store and buy many apple.", None),
        ("This is very possitive for him.", "This is very positive for him."),
    ]:
        got = asyncio.run(fix_spelling_in_context(sentence, "en", next_tokens))
        assert got == (spelt or sentence)


def test_a_token_s_log_probability_is_its_longest_ranked_start() -> None:
    ranked = {" w": -3.0, " we": -1.0, " the": -0.5, ",": -2.0}
    assert _logprob(ranked, " went home") == -1.0  # " we", not " w"
    assert _logprob(ranked, ", then") == -2.0
    assert _logprob(ranked, " she") == -3.0 - UNRANKED_COST  # below every ranked one


def test_the_spelling_bench_counts_every_word_the_pass_touches(smollm2_path) -> None:
    """`python -m deploy.bench.spelling` on a few train-split sentences: each way judged on the
    same words, frequency's count the word list's own."""
    from common.data import load_split
    from deploy.bench.spelling import _words, measure
    from server.spelling import _candidate, _choices

    records = load_split("jfleg", "train")[:12]
    words = [
        (r, r.utterance[c.start : c.end]) for r in records for c in _choices(r.utterance, "en")
    ]
    counts = asyncio.run(measure("train", str(smollm2_path), limit=12))
    assert words and {sum(v) for v in counts.values()} == {len(words)}

    def golds(r) -> list[str]:
        return [c for c in r.corrections if c != r.utterance] or [r.utterance]

    right = sum(
        any((_candidate(w, "en") or w).casefold() in _words(g) for g in golds(r)) for r, w in words
    )
    assert counts["frequency"][0] == right
