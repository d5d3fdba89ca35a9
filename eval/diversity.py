"""Diversity across one model's replies: a tutor that says "Oh, really? What happened next?" to
everyone, or only ever recasts, passes many per-reply checks and still teaches badly.

- ``distinct_n``: unique n-grams over all n-grams of all replies (Li et al., 2016), tokens as in
  :func:`common.metrics.tokenize` (words; single characters for Chinese);
- ``repeated_openings``: the share of replies whose opening (first three tokens) another reply
  also starts with, and the share taken by the most common opening;
- ``mode collapse``: the share of the most frequent move label, and the normalised entropy of the
  labels (1 = all moves equally often, 0 = one move only).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from common.metrics import tokens

OPENING_TOKENS = 3
COLLAPSE_SHARE = 0.8  # one move in at least this share of replies: collapsed


def distinct_n(replies: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for r in replies:
        t = tokens(r)
        grams += [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def opening(reply: str, k: int = OPENING_TOKENS) -> tuple[str, ...]:
    return tuple(tokens(reply)[:k])


def repeated_openings(replies: Sequence[str], k: int = OPENING_TOKENS) -> dict[str, float]:
    """Share of replies whose opening is shared with another reply; share of the top opening."""
    opens = [opening(r, k) for r in replies if tokens(r)]
    if not opens:
        return {"repeated_opening_rate": 0.0, "top_opening_share": 0.0, "top_opening": ""}
    counts = Counter(opens)
    top, top_n = counts.most_common(1)[0]
    repeated = sum(c for c in counts.values() if c > 1)
    return {
        "repeated_opening_rate": repeated / len(opens),
        "top_opening_share": top_n / len(opens),
        "top_opening": " ".join(top),
    }


def mode_collapse(labels: Sequence[str]) -> dict[str, float | str | bool]:
    """The most frequent move and its share, the normalised label entropy, and the verdict."""
    if not labels:
        return {"top_mode": "", "top_mode_share": 0.0, "mode_entropy": 0.0, "collapsed": False}
    counts = Counter(labels)
    top, top_n = counts.most_common(1)[0]
    total = len(labels)
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    kinds = len(counts)
    return {
        "top_mode": top,
        "top_mode_share": top_n / total,
        "mode_entropy": entropy / math.log(kinds) if kinds > 1 else 0.0,
        "collapsed": top_n / total >= COLLAPSE_SHARE,
    }


def diversity(replies: Sequence[str], labels: Sequence[str]) -> dict[str, float | str | bool]:
    """All diversity figures for one model's replies (labels from :mod:`common.modes`)."""
    return {
        "distinct_1": distinct_n(replies, 1),
        "distinct_2": distinct_n(replies, 2),
        **repeated_openings(replies),
        **mode_collapse(labels),
    }
