"""A coarse error category (article, preposition, agreement, verb tense, ...) from the first edit.

Separate from the loaders because train/synth.py labels the errors it injects with it too; it is
pure text comparison (difflib and common.metrics' tokenizer, imported inside categorize).
"""

from __future__ import annotations

import re

from common.metrics import tokens

ARTICLES = {
    "en": {"a", "an", "the"},
    "es": {"el", "la", "los", "las", "un", "una", "unos", "unas", "lo", "al", "del"},
}
PREPOSITIONS = {
    "en": {"in", "on", "at", "to", "for", "of", "with", "from", "by", "about", "into", "since"},
    "es": {"a", "de", "en", "por", "para", "con", "sin", "sobre", "desde", "hasta", "entre"},
}
ZH_PARTICLES = set("了的地得过着")
ZH_MEASURE = set("个本张只条件位家辆杯次种把台双块篇首")
EN_TENSE_CUES = re.compile(
    r"\b(yesterday|ago|last|tomorrow|will|was|were|did|has|have|had)\b|ed\b", re.I
)


def _strip_accents(s: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFD", s.lower()).encode("ascii", "ignore").decode()


def categorize(source: str, target: str, language: str) -> str | None:
    """A coarse error category from the first edit; None when the pair is unchanged."""
    from difflib import SequenceMatcher

    if source == target:
        return None
    if language != "zh" and _strip_accents(source) == _strip_accents(target):
        return "accent" if language == "es" else "spelling"
    src, tgt = tokens(source, language), tokens(target, language)
    if sorted(src) == sorted(tgt):
        return "word_order" if src != tgt else "punctuation"
    first = next(
        (op for op in SequenceMatcher(None, src, tgt, False).get_opcodes() if op[0] != "equal"),
        None,
    )
    if first is None:
        return "punctuation"
    _, i1, i2, j1, j2 = first
    removed, added = src[i1:i2], tgt[j1:j2]
    changed = set(removed) | set(added)
    if all(not any(ch.isalnum() for ch in t) for t in changed):
        return "punctuation"
    if language == "zh":
        if changed and changed <= ZH_PARTICLES:
            return "particle"
        if changed & ZH_MEASURE and len(changed) <= 2:
            return "measure_word"
        return "lexical" if len(removed) == len(added) else "other"
    if changed and changed <= ARTICLES[language]:
        return "article"
    if changed and changed <= PREPOSITIONS[language]:
        return "preposition"
    if len(removed) == 1 and len(added) == 1:
        a, b = removed[0], added[0]
        if language == "es" and a[:-1] and a[:-1] == b[:-1] and {a[-1], b[-1]} <= set("oaes"):
            return "agreement"
        if language == "es" and {a, b} & {"es", "está", "son", "están", "ser", "estar"}:
            return "ser_estar"
        if language == "en" and {a.rstrip("s"), b.rstrip("s")} and a.rstrip("s") == b.rstrip("s"):
            return "agreement"
        if language == "en" and (EN_TENSE_CUES.search(b) or EN_TENSE_CUES.search(a)):
            return "verb_tense"
        if _edit_distance(a, b) <= 2:
            return "spelling" if language == "en" else "verb_form"
    return "other"


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
