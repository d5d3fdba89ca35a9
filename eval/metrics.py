"""Reply metrics shared by evaluation, training quality gates and the UI.

``recast_pairs`` finds the forms a tutor *recast*: where the tutor's reply repeats the learner's
words but changes some of them ("Yesterday I go to the store" -> "Oh, you went to the store?"
gives ``went``). It is deterministic and dependency-free: the learner's text and the reply are
tokenised (words for spaced scripts, single characters for Chinese and Japanese, which have no
spaces), aligned with :class:`difflib.SequenceMatcher`, and every changed stretch that sits next
to words both texts share is reported. New content that the tutor adds at the edges of the echo
is conversation, not a recast, and is left out.

It is a heuristic, and a simple one: it knows no morphology, so it cannot tell "go -> went" from
two unrelated words in the same place; when a changed stretch is anchored on one side only it
reports just the first differing word next to the anchor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

# One CJK ideograph or kana is a token; otherwise a run of letters (with inner apostrophes or
# hyphens), or a run of digits. Punctuation and spaces are not tokens.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+(?:['’\-][^\W\d_{_CJK}]+)*|\d+")
_IS_CJK = re.compile(rf"[{_CJK}]")

# A recast naturally turns the learner's "I" into the tutor's "you": such swaps are not
# corrections. Pairs are (learner form, tutor form), compared case-folded.
PERSPECTIVE_SWAPS: frozenset[tuple[str, str]] = frozenset(
    {
        # English
        ("i", "you"),
        ("me", "you"),
        ("my", "your"),
        ("mine", "yours"),
        ("myself", "yourself"),
        ("am", "are"),
        ("i'm", "you're"),
        ("we", "you"),
        ("our", "your"),
        ("us", "you"),
        ("you", "me"),
        ("your", "my"),
        # Spanish
        ("yo", "tú"),
        ("me", "te"),
        ("mi", "tu"),
        ("mis", "tus"),
        ("mí", "ti"),
        ("tú", "yo"),
        ("te", "me"),
        ("tu", "mi"),
        ("conmigo", "contigo"),
        ("nosotros", "ustedes"),
        ("nosotras", "ustedes"),
        # Chinese (one character each, as tokenised)
        ("我", "你"),
        ("我", "您"),
        ("你", "我"),
    }
)

MAX_SPAN = 4  # a changed stretch longer than this (in tokens) is a rewrite, not a recast


@dataclass(frozen=True)
class Token:
    norm: str  # case-folded, for comparison
    start: int  # span in the original text, so forms come back as written
    end: int


def tokenize(text: str) -> list[Token]:
    """Words, or single characters for CJK scripts; punctuation and spacing dropped."""
    return [Token(m.group().casefold(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _min_anchor(tokens: list[Token]) -> int:
    """How many shared tokens make an anchor: one word, or two characters of CJK text."""
    return 2 if any(_IS_CJK.match(t.norm) for t in tokens) else 1


def _span(text: str, tokens: list[Token]) -> str:
    return text[tokens[0].start : tokens[-1].end] if tokens else ""


def recast_pairs(learner_text: str, tutor_reply: str) -> list[tuple[str, str]]:
    """(what the learner wrote, what the tutor said instead) for each recast stretch.

    The learner side is empty when the tutor inserted a missing word ("I go store" -> "you go to
    the store" gives ``("", "to the")``).
    """
    learner, tutor = tokenize(learner_text), tokenize(tutor_reply)
    if not learner or not tutor:
        return []
    anchor = _min_anchor(learner + tutor)
    matcher = SequenceMatcher(None, [t.norm for t in learner], [t.norm for t in tutor], False)
    ops = matcher.get_opcodes()
    pairs: list[tuple[str, str]] = []

    def shared(k: int) -> int:  # length of the equal stretch at ops[k], 0 if none
        return ops[k][2] - ops[k][1] if 0 <= k < len(ops) and ops[k][0] == "equal" else 0

    for k, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            continue
        before, after = shared(k - 1), shared(k + 1)
        a, b = learner[i1:i2], tutor[j1:j2]
        if before and after and max(before, after) >= anchor:
            # Bounded on both sides: the whole stretch was changed in place (or dropped).
            if len(a) <= MAX_SPAN and len(b) <= MAX_SPAN and not _only_swaps(a, b):
                pairs.append((_span(learner_text, a), _span(tutor_reply, b)))
            continue
        if tag != "replace" or max(before, after) < anchor:
            continue  # words added or dropped at the edge of the echo: the conversation going on
        # Anchored on one side: look next to the anchor for the first real change.
        if before < anchor:
            a, b = a[::-1], b[::-1]
        pair = _one_sided_change(a[:MAX_SPAN], b[:MAX_SPAN])
        if pair is not None:
            pairs.append((_span(learner_text, [pair[0]]), _span(tutor_reply, [pair[1]])))
    return pairs


def _one_sided_change(a: list[Token], b: list[Token]) -> tuple[Token, Token] | None:
    """The changed word pair in stretches that start at the anchor.

    Positions line up when the tutor used no more words than the learner; otherwise only a pair
    sharing a stem (two first letters: "cat" -> "cats") is trusted, since the extra words are
    more likely new conversation than a correction.
    """
    changed = [
        (x, y)
        for x, y in zip(a, b, strict=False)
        if x.norm != y.norm and (x.norm, y.norm) not in PERSPECTIVE_SWAPS
    ]
    stem = [
        (x, y)
        for y in b
        for x in a
        if x.norm != y.norm and len(x.norm) > 1 and x.norm[:2] == y.norm[:2]
    ]
    if stem:
        return stem[0]
    if len(b) <= len(a) and changed:
        return changed[0]
    return None


def _only_swaps(a: list[Token], b: list[Token]) -> bool:
    return len(a) == len(b) and all(
        x.norm == y.norm or (x.norm, y.norm) in PERSPECTIVE_SWAPS for x, y in zip(a, b, strict=True)
    )


def recast_forms(learner_text: str, tutor_reply: str) -> list[str]:
    """The forms the tutor used where the learner wrote something else (drops not listed)."""
    return [form for _, form in recast_pairs(learner_text, tutor_reply) if form]


def conversation_recasts(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Recast pairs over a whole chat: each user turn against the assistant reply after it."""
    found: list[tuple[str, str]] = []
    for prev, cur in zip(messages, messages[1:], strict=False):
        if prev.get("role") == "user" and cur.get("role") == "assistant":
            for pair in recast_pairs(str(prev.get("content", "")), str(cur.get("content", ""))):
                if pair not in found:
                    found.append(pair)
    return found
