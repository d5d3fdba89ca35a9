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


# -- Corrections and quality gates ---------------------------------------------------------------
# The training quality gates (train/gates.py) and the eval suites score replies with these same
# functions, so "the recast contains the corrected form" means one thing everywhere.


# Phrases that point at the error instead of recasting it. Matched case-folded as substrings
# (word-bounded for en/es). A metalinguistic hint may talk about a rule, never about "a mistake".
EXPLICIT_CORRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "that's wrong",
        "that is wrong",
        "it's wrong",
        "is incorrect",
        "not correct",
        "incorrect",
        "you made a mistake",
        "a mistake",
        "an error",
        "the correct form",
        "the correct way",
        "the right way to say",
        "correct sentence",
        "you should say",
        "you should have said",
        "should be",
        "you mean to say",
        "we don't say",
        "you can't say",
    ),
    "es": (
        "está mal",
        "esta mal",
        "es incorrecto",
        "incorrecta",
        "incorrecto",
        "no es correcto",
        "un error",
        "un fallo",
        "te equivocaste",
        "equivocado",
        "equivocada",
        "la forma correcta",
        "lo correcto es",
        "se dice",
        "no se dice",
        "deberías decir",
        "debes decir",
        "hay que decir",
    ),
    "zh": (
        "错了",
        "说错",
        "写错",
        "不对",
        "错误",
        "不正确",
        "应该说",
        "应该是",
        "正确的说法",
        "正确说法",
        "不能说",
        "不要说",
    ),
}

# Reply length bounds in characters (Chinese packs more meaning per character).
LENGTH_BOUNDS: dict[str, tuple[int, int]] = {"en": (15, 400), "es": (15, 420), "zh": (6, 160)}

_EN_WORDS = frozenset(
    re.findall(
        r"\S+",
        "the a an and is are was were you your i it to of in on at what do did how that this with "
        "for have has had be not can would like about so my me we they he she there when why",
    )
)
_ES_WORDS = frozenset(
    re.findall(
        r"\S+",
        "el la los las un una y es son fue era que de en por para con qué cómo tú tu te yo mi me "
        "muy pero se lo le su sus al del está están hay cuándo dónde también más ayer",
    )
)


@dataclass(frozen=True)
class EditRegion:
    """One changed stretch between a learner utterance and its correction."""

    source: tuple[str, ...]  # learner tokens (case-folded)
    target: tuple[str, ...]  # corrected tokens; empty for a deletion
    left: tuple[str, ...]  # up to two shared tokens before it
    right: tuple[str, ...]  # up to two shared tokens after it
    target_text: str  # the corrected stretch as written in the correction


def tokens(text: str, language: str | None = None) -> list[str]:
    """Case-folded tokens as in :func:`tokenize`; ``language`` is accepted for call symmetry."""
    return [t.norm for t in tokenize(text)]


def edit_regions(source: str, target: str, language: str | None = None) -> list[EditRegion]:
    """Changed stretches, in order, from a token alignment of utterance and correction."""
    a, b = tokenize(source), tokenize(target)
    an, bn = [t.norm for t in a], [t.norm for t in b]
    regions = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, an, bn, False).get_opcodes():
        if tag == "equal":
            continue
        regions.append(
            EditRegion(
                source=tuple(an[i1:i2]),
                target=tuple(bn[j1:j2]),
                left=tuple(bn[max(0, j1 - 2) : j1]),
                right=tuple(bn[j2 : j2 + 2]),
                target_text=_span(target, b[j1:j2]),
            )
        )
    return regions


def _contains(haystack: list[str], needle: tuple[str, ...] | list[str]) -> bool:
    """Contiguous match; the learner's "I/my/我" may come back as the tutor's "you/your/你"."""
    n = len(needle)
    if n == 0:
        return False
    for i in range(len(haystack) - n + 1):
        if all(_token_matches(h, t) for h, t in zip(haystack[i : i + n], needle, strict=True)):
            return True
    return False


def _token_matches(reply_tok: str, form_tok: str) -> bool:
    """Equal, a perspective swap, or the same form conjugated for "you" ("fui" -> "fuiste"):
    a content word of three letters or more may come back with a longer ending."""
    if reply_tok == form_tok or (form_tok, reply_tok) in PERSPECTIVE_SWAPS:
        return True
    return (
        len(form_tok) >= 3
        and not _IS_CJK.match(form_tok)
        and form_tok not in _EN_WORDS
        and form_tok not in _ES_WORDS
        and reply_tok.startswith(form_tok)
        and len(reply_tok) - len(form_tok) <= 3
    )


def target_form(utterance: str, correction: str) -> tuple[str, ...]:
    """The tokens a recast must contain for the first edit (a deletion: its two neighbours)."""
    regions = edit_regions(utterance, correction)
    if not regions:
        return ()
    r = regions[0]
    if r.target:
        return r.target
    return r.left[-1:] + r.right[:1]


def contains_correction(reply: str, utterance: str, correction: str) -> bool:
    """Target-form uptake: the reply uses the corrected form of the first edit."""
    form = target_form(utterance, correction)
    return bool(form) and _contains(tokens(reply), form)


def contains_correction_in_context(reply: str, utterance: str, correction: str) -> bool:
    """Stricter uptake for evaluation: a corrected form of one or two short words ("the", "to
    the", one Chinese character) or that the learner already wrote elsewhere only counts with
    a neighbouring token of the correction beside it, so echoing the learner's own sentence does
    not count as using the correction. :func:`contains_correction` (the gates') is unchanged."""
    regions = edit_regions(utterance, correction)
    form = target_form(utterance, correction)
    if not regions or not form:
        return False
    r, reply_toks = regions[0], tokens(reply)
    if not r.target:  # a deletion: the form is the neighbours of the gap, without the word
        if len(form) == 2:
            return _contains(reply_toks, form)
        wrong = r.source + form if r.right else form + r.source  # at an edge: one neighbour
        return _contains(reply_toks, form) and not _contains(reply_toks, wrong)
    function_words = len(r.target) <= 2 and all(len(t) <= 3 or _IS_CJK.match(t) for t in r.target)
    if not function_words and not _contains(tokens(utterance), r.target):
        return _contains(reply_toks, form)
    contexts = [r.left[-1:] + r.target, r.target + r.right[:1]]
    return any(len(c) > len(r.target) and _contains(reply_toks, c) for c in contexts)


def withholds_correction(reply: str, utterance: str, correction: str) -> bool:
    """The reply does not give away the corrected form of the first edit.

    The corrected stretch in its context (one shared token on either side) must be absent; a
    content form the learner did not write ("went") must be absent even on its own. A lone
    function word ("the", one Chinese character) is too common to forbid outside its context.
    """
    regions = edit_regions(utterance, correction)
    if not regions:
        return True
    r = regions[0]
    reply_toks = tokens(reply)
    contexts = []
    if r.target:
        contexts += [r.left[-1:] + r.target, r.target + r.right[:1]]
    else:
        contexts.append(r.left[-1:] + r.right[:1])
    if any(len(c) > len(r.target) and _contains(reply_toks, c) for c in contexts):
        return False
    lone = "".join(r.target)
    is_function_word = len(r.target) == 1 and (len(lone) <= 3 or _IS_CJK.match(lone))
    learner_toks = tokens(utterance)
    if r.target and not is_function_word and not _contains(learner_toks, r.target):
        return not _contains(reply_toks, r.target)
    return True


def explicit_corrections(reply: str, language: str) -> list[str]:
    """The explicit-correction phrases found in the reply (empty: it corrects implicitly)."""
    text = reply.casefold()
    found = []
    for phrase in EXPLICIT_CORRECTION_PHRASES.get(language, ()):
        if language == "zh":
            hit = phrase in text
        else:
            hit = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None
        if hit:
            found.append(phrase)
    return found


def has_question(reply: str) -> bool:
    """A follow-up question keeps the conversation going: '?', '？' or an opening '¿'."""
    return any(ch in reply for ch in "?？¿")


def length_ok(reply: str, language: str, bounds: dict[str, tuple[int, int]] | None = None) -> bool:
    lo, hi = (bounds or LENGTH_BOUNDS).get(language, (1, 10_000))
    return lo <= len(reply.strip()) <= hi


def detect_language(text: str) -> str | None:
    """en, es or zh from the script and common words; None when there is no evidence."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    cjk = sum(1 for c in letters if _IS_CJK.match(c))
    if cjk / len(letters) > 0.3:
        return "zh"
    words = re.findall(r"[^\W\d_]+", text.casefold())
    en = sum(w in _EN_WORDS for w in words)
    es = sum(w in _ES_WORDS for w in words) + 2 * sum(c in "ñ¿¡áéíóú" for c in text.casefold())
    if en == es == 0:
        return None
    return "es" if es > en else "en"


def message_hash(messages: list[dict[str, str]]) -> str:
    """Dedup key: roles and contents, case-folded, whitespace and punctuation collapsed."""
    import hashlib

    parts = []
    for m in messages:
        words = re.findall(r"\w+", str(m.get("content", "")).casefold())
        parts.append(f"{m.get('role', '')}:{' '.join(words)}")
    norm = "\n".join(parts)
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()
