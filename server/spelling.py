"""A spelling pass before the corrector turn of a grounded recast.

The 135M corrector misses most misspellings ("brougth", "reaults", "imidiatly"): on the 129
unseen JFLEG sentences with errors it made the gold's first edit in 45, and the same adapter
given the sentence after this pass made it in 51, while 2 of 139 correct sentences were changed
by the pass (docs/TRAINING.md). A word list with edit distances (pyspellchecker: Norvig's
method over a frequency list, pure Python, MIT) is the right tool for a word the dictionary does
not know; grammar stays the corrector's.

Only words that look like a learner's misspelling are touched: three letters or more, not
capitalised after the first word (a name), not all capitals (an acronym), unknown to the list.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spellchecker import SpellChecker

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
# Edit distance 2 on a long unknown word tries ~10^5 candidates (a few hundred ms): distance 1
# beyond this length, where one slip is the likely misspelling anyway.
_LONG = 12


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


def fix_spelling(text: str, language: str) -> str:
    """``text`` with each unknown word replaced by the list's most frequent near word."""
    parts, last = [], 0
    for m in _WORD.finditer(text):
        word = m.group(0)
        if len(word) < 3 or (word.isupper() and len(word) > 1):
            continue
        if word[0].isupper() and m.start() > 0:
            continue  # capitalised after the first word: a name
        fixed = _candidate(word, language)
        if fixed is not None:
            parts += [text[last : m.start()], fixed]
            last = m.end()
    return "".join(parts) + text[last:] if parts else text
