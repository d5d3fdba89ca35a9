"""A spelling pass before the corrector turn of a grounded recast.

The 135M corrector misses most misspellings ("brougth", "reaults", "imidiatly"): on the 129
unseen JFLEG sentences with errors it made the gold's first edit in 45, and the same adapter
given the sentence after this pass made it in 51, while 2 of 139 correct sentences were changed
by the pass (docs/TRAINING.md). A word list with edit distances (pyspellchecker: Norvig's
method over a frequency list, pure Python, MIT) is the right tool for a word the dictionary does
not know; grammar stays the corrector's.

Only words that look like a learner's misspelling are touched: three letters or more, not
capitalised after the first word (a name), not all capitals (an acronym), unknown to the list.

Which near word, though, is a question of context the frequency list cannot answer: "In today's
world whe have..." becomes "the have" by frequency alone. Where the engine ranks next tokens
(``Engine.ranks_next_tokens``: vLLM's completion logprobs, the transformers engine's forward
pass), :func:`fix_spelling_in_context` lets the base model choose among a word's likeliest
spellings, weighed with a noisy-channel prior (the word's frequency, less the cost of the slip:
a doubled letter is cheap, a consonant swapped for a far one is dear). On the JFLEG *train*
split, which this pass never learns from, the replacement is a word of the gold correction for
273 of 350 unknown words in context and 257 by frequency alone (docs/TRAINING.md).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spellchecker import SpellChecker

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
# Edit distance 2 on a long unknown word tries ~10^5 candidates (a few hundred ms): distance 1
# beyond this length, where one slip is the likely misspelling anyway.
_LONG = 12
CANDIDATES = 6  # spellings the model weighs per unknown word, the likeliest by the prior
PRIOR_WEIGHT = 1.0  # the prior's weight against the model's log-probabilities (a plateau 1-2)
TOP_TOKENS = 20  # next tokens ranked per prompt: vLLM's default most (--max-logprobs)
UNRANKED_COST = 1.0  # a token the engine did not rank: this far below the last it did
# What a slip costs in the prior, in natural-log units of word frequency (Kernighan, Church and
# Gale's noisy channel, by hand): learners double and undouble letters and swap vowels; a
# consonant for a far one ("whe" for "the") is rare.
SLIP_COST = {
    "double": 0.0,
    "swap": 0.5,
    "extra": 1.0,
    "missing": 1.0,
    "vowel": 1.0,
    "near_key": 1.5,
    "other": 3.0,
}
FAR_COST = 4.0  # two edits
_VOWELS = frozenset("aeiouy")
_KEYS = {
    c: (r, i)
    for r, row in enumerate(("qwertyuiop", "asdfghjkl", "zxcvbnm"))
    for i, c in enumerate(row)
}
_SCORE_PREFIX = "\n"  # a sentence's first word is ranked after a line break
# prompts, top -> each prompt's likeliest next tokens and their log-probabilities
NextTokens = Callable[[list[str], int], Awaitable[list[dict[str, float]]]]


@lru_cache(maxsize=8)
def _checker(language: str, distance: int) -> SpellChecker:
    from spellchecker import SpellChecker

    return SpellChecker(language=language, distance=distance)


def _candidate(word: str, language: str) -> str | None:
    lower = word.casefold()
    near = _checker(language, 2)
    if lower in near:  # known: the word list and its frequencies are shared by both checkers
        return None
    checker = near if len(lower) <= _LONG else _checker(language, 1)
    best = checker.correction(lower)
    if not best or best == lower:
        return None
    return best[0].upper() + best[1:] if word[0].isupper() else best


def _unknown(text: str, language: str) -> list[re.Match[str]]:
    """The words that look like a learner's misspelling (see the module's docstring)."""
    near = _checker(language, 2)
    out = []
    for m in _WORD.finditer(text):
        word = m.group(0)
        if len(word) < 3 or (word.isupper() and len(word) > 1):
            continue
        if word[0].isupper() and m.start() > 0:
            continue  # capitalised after the first word: a name
        if word.casefold() not in near:
            out.append(m)
    return out


def _cased(best: str, word: str) -> str:
    return best[0].upper() + best[1:] if word[0].isupper() else best


def fix_spelling(text: str, language: str) -> str:
    """``text`` with each unknown word replaced by the list's most frequent near word."""
    parts, last = [], 0
    for m in _unknown(text, language):
        fixed = _candidate(m.group(0), language)
        if fixed is not None:
            parts += [text[last : m.start()], fixed]
            last = m.end()
    return "".join(parts) + text[last:] if parts else text


def slip_cost(written: str, meant: str) -> float:
    """What writing ``written`` for ``meant`` costs in the prior (:data:`SLIP_COST`)."""
    if len(written) == len(meant):
        diff = [i for i, (a, b) in enumerate(zip(written, meant, strict=True)) if a != b]
        if not diff:
            return 0.0
        crossed = (written[diff[0]], written[diff[-1]]) == (meant[diff[-1]], meant[diff[0]])
        if len(diff) == 2 and diff[1] == diff[0] + 1 and crossed:
            return SLIP_COST["swap"]
        if len(diff) == 1:
            a, b = written[diff[0]], meant[diff[0]]
            if a in _VOWELS and b in _VOWELS:
                return SLIP_COST["vowel"]
            (ra, ia), (rb, ib) = _KEYS.get(a, (9, 99)), _KEYS.get(b, (-9, -99))
            return SLIP_COST["near_key" if abs(ra - rb) <= 1 and abs(ia - ib) <= 1 else "other"]
        return FAR_COST
    longer, shorter = (written, meant) if len(written) > len(meant) else (meant, written)
    if len(longer) != len(shorter) + 1:
        return FAR_COST
    for i in range(len(longer)):
        if longer[:i] + longer[i + 1 :] == shorter:
            doubled = (i > 0 and longer[i - 1] == longer[i]) or longer[i + 1 : i + 2] == longer[i]
            if doubled:
                return SLIP_COST["double"]
            return SLIP_COST["extra" if len(written) > len(meant) else "missing"]
    return FAR_COST


def candidates(word: str, language: str) -> list[tuple[str, float]]:
    """The likeliest spellings of an unknown ``word`` with their priors, best first: known
    words one edit away (two if none is, for a word of :data:`_LONG` letters or fewer)."""
    lower = word.casefold()
    near = _checker(language, 2)
    pool = near.known(near.edit_distance_1(lower))
    if not pool and len(lower) <= _LONG:
        pool = near.known(near.edit_distance_2(lower))
    scored = [
        (math.log(near.word_usage_frequency(c) + 1e-12) - slip_cost(lower, c), c) for c in pool
    ]
    scored.sort(reverse=True)
    return [(_cased(c, word), prior) for prior, c in scored[:CANDIDATES]]


@dataclass(frozen=True)
class _Choice:
    start: int
    end: int
    options: list[tuple[str, float]]  # (spelling, prior)


async def fix_spelling_in_context(text: str, language: str, next_tokens: NextTokens) -> str:
    """``text`` with each unknown word replaced by the spelling :func:`spellings_in_context`
    picks for it."""
    parts, last = [], 0
    for start, end, spelling in await spellings_in_context(text, language, next_tokens):
        parts += [text[last:start], spelling]
        last = end
    return "".join(parts) + text[last:]


async def spellings_in_context(
    text: str, language: str, next_tokens: NextTokens
) -> list[tuple[int, int, str]]:
    """Each unknown word's span and the spelling the model finds likeliest where it stands,
    weighed with its prior: the option's own first token after the words before it, plus the
    first token of what follows after the option (a window of two tokens; what an engine that
    ranks only next tokens can give, docs/TRAINING.md). One engine call for all the words; none
    for a word with a single option."""
    choices = await asyncio.to_thread(_choices, text, language)
    ambiguous = [c for c in choices if len(c.options) > 1]
    prompts = []
    for c in ambiguous:
        prompts.append(_SCORE_PREFIX + text[: c.start].rstrip())
        prompts += [_SCORE_PREFIX + text[: c.start] + option for option, _ in c.options]
    ranked = iter(await next_tokens(prompts, TOP_TOKENS) if prompts else [])
    picked = {}
    for c in ambiguous:
        before, gap, after = next(ranked), _gap(text, c.start), text[c.end :]
        weighed = []
        for option, prior in c.options:
            then = next(ranked)
            fits = _logprob(before, gap + option) + (_logprob(then, after) if after else 0.0)
            weighed.append((fits + PRIOR_WEIGHT * prior, option))
        picked[c.start] = max(weighed)[1]
    return [(c.start, c.end, picked.get(c.start, c.options[0][0])) for c in choices]


def _gap(text: str, start: int) -> str:
    """The spaces between the word and the one before it (the option's first token has them)."""
    return text[len(text[:start].rstrip()) : start]


def _logprob(ranked: dict[str, float], text: str) -> float:
    """The log-probability of ``text``'s first token: the longest ranked token it starts with;
    one below the last ranked when none is (it is less likely than any of them)."""
    best = max((t for t in ranked if t and text.startswith(t)), key=len, default=None)
    return ranked[best] if best is not None else min(ranked.values()) - UNRANKED_COST


def _choices(text: str, language: str) -> list[_Choice]:
    out = []
    for m in _unknown(text, language):
        options = candidates(m.group(0), language)
        if options:
            out.append(_Choice(m.start(), m.end(), options))
    return out
