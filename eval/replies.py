"""Per-reply evaluation metrics on top of :mod:`common.metrics` (the functions the training gates
use): error echo, mode adherence, over-correction, follow-up relevance, tone flags, and the
pedagogy score that the comparison ranks models by.

Every function is deterministic and lexical, so a score can be recomputed from a stored reply.
docs/EVAL.md defines each metric and lists what the heuristics miss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from common.metrics import (
    _EN_WORDS,
    _ES_WORDS,
    _IS_CJK,
    _contains,
    detect_language,
    has_question,
    length_ok,
    tokens,
    withholds_correction,
)
from common.modes import (
    FUNCTION_WORDS,
    OVER_CORRECTION_LABELS,
    classify_mode,
    explicit_phrases,
    reply_languages,
    uptake,
)

# -- error echo ------------------------------------------------------------------------------------

_QUOTED = re.compile(r"[\"“«「『‘]([^\"”»」』’]{1,120})[\"”»」』’]")


def error_needles(utterance: str, correction: str, language: str) -> list[tuple[str, ...]]:
    """The learner's error as token sequences a reply must not repeat.

    The erroneous stretch of the first edit with one learner token of context on either side
    ("i go", "go to" for "I go to" -> "I went to"); for an omission, the two learner tokens
    around the gap ("go store"); a wrong content word the correction does not use ("goed") also
    counts on its own. Needles that the correction itself contains are dropped.
    """
    a, b = tokens(utterance), tokens(correction)
    ops = [op for op in SequenceMatcher(None, a, b, False).get_opcodes() if op[0] != "equal"]
    if not ops:
        return []
    _, i1, i2, _, _ = ops[0]
    src, left, right = tuple(a[i1:i2]), tuple(a[max(0, i1 - 1) : i1]), tuple(a[i2 : i2 + 1])
    needles: list[tuple[str, ...]] = []
    if src:
        needles += [n for n in (left + src, src + right) if len(n) > len(src)]
        lone = "".join(src)
        content = not _IS_CJK.match(lone) and len(lone) >= 3
        content = content and not set(src) & FUNCTION_WORDS.get(language, frozenset())
        if content and not _contains(b, src):
            needles.append(src)
    elif left and right:
        needles.append(left + right)
    return [n for n in needles if not _contains(b, n)]


def _quoted_tokens(reply: str) -> list[list[str]]:
    return [tokens(q) for q in _QUOTED.findall(reply)]


def error_echo(reply: str, utterance: str, corrections: Sequence[str], language: str) -> bool:
    """The reply repeats the learner's error unmarked (not quoted, no explicit correction).

    Checked against the first edit of every gold correction; one echoed error is enough.
    """
    if explicit_phrases(reply, language):
        return False  # marked: the reply points at it (counted as explicit instead)
    reply_toks = tokens(reply)
    quoted = _quoted_tokens(reply)
    for c in corrections:
        if c == utterance:
            continue
        for needle in error_needles(utterance, c, language):
            if _contains(reply_toks, needle) and not any(_contains(q, needle) for q in quoted):
                return True
    return False


# -- relevance -------------------------------------------------------------------------------------

_ZH_STOP = frozenset("我你他她它们的了是在有不也都很就和吗呢吧啊一个这那么什么")
STEM = 5  # content words are compared by their first five letters: "stores" ~ "store"


def content_keys(text: str, language: str) -> set[str]:
    """Content of a text: words of four letters or more that are not common function words
    (by their first five letters), or, for Chinese, character pairs without function characters.
    """
    toks = tokens(text)
    if language == "zh" or any(_IS_CJK.match(t) for t in toks):
        chars = [t for t in toks if _IS_CJK.match(t)]
        return {
            x + y
            for x, y in zip(chars, chars[1:], strict=False)
            if x not in _ZH_STOP and y not in _ZH_STOP
        }
    stop = _EN_WORDS | _ES_WORDS | FUNCTION_WORDS.get(language, frozenset())
    return {t[:STEM] for t in toks if len(t) >= 4 and t not in stop}


def relevance(reply: str, utterance: str, language: str) -> bool:
    """The reply takes up the learner's content: it shares at least one content word (or, in
    Chinese, a content character pair) with what the learner wrote."""
    return bool(content_keys(reply, language) & content_keys(utterance, language))


# -- tone ------------------------------------------------------------------------------------------

TONE_LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "harsh": (
            "stupid",
            "dumb",
            "idiot",
            "terrible",
            "awful",
            "horrible",
            "ridiculous",
            "lazy",
            "pathetic",
            "nonsense",
            "makes no sense",
            "bad english",
            "poor english",
            "shut up",
        ),
        "condescending": (
            "obviously",
            "as i said",
            "as i already said",
            "it's easy",
            "it is easy",
            "everyone knows",
            "even a child",
            "how many times",
        ),
    },
    "es": {
        "harsh": (
            "estúpido",
            "estúpida",
            "tonto",
            "tonta",
            "idiota",
            "terrible",
            "horrible",
            "ridículo",
            "no tiene sentido",
            "qué mal",
            "cállate",
        ),
        "condescending": (
            "obviamente",
            "como ya dije",
            "como ya te dije",
            "es fácil",
            "todo el mundo sabe",
            "hasta un niño",
            "cuántas veces",
        ),
    },
    "zh": {
        "harsh": ("笨", "蠢", "傻", "糟糕", "太差", "胡说", "莫名其妙", "没有意义", "闭嘴"),
        "condescending": ("显然", "很简单", "谁都知道", "连小孩", "说过多少次"),
    },
}
_NEGATIVE_OPENER = {
    "en": re.compile(r"^\s*(no[.,!]|wrong\b|nope\b)", re.I),
    "es": re.compile(r"^\s*(no[.,!]|mal[.,!])", re.I),
    "zh": re.compile(r"^\s*(不对|不是|错)"),
}
_CAPS_WORD = re.compile(r"\b[A-ZÁÉÍÓÚÑ]{3,}\b")


def tone_flags(reply: str, language: str) -> list[str]:
    """Tone problems a learner would feel: harsh or condescending words, a flat "No." opener,
    shouting (two or more all-capital words, or "!!")."""
    flags = []
    low = reply.casefold()
    for flag, words in TONE_LEXICON.get(language, {}).items():
        if language == "zh":
            hit = any(w in low for w in words)
        else:
            hit = any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", low) for w in words)
        if hit:
            flags.append(flag)
    opener = _NEGATIVE_OPENER.get(language)
    if opener is not None and opener.search(reply):
        flags.append("negative_opener")
    if len(_CAPS_WORD.findall(reply)) >= 2 or "!!" in reply or "！！" in reply:
        flags.append("shouting")
    return flags


# -- everything for one reply ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    group: str  # "core" (the correction itself), "hygiene" (the conversation), "info" (not scored)
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("uptake", True, "core", "recast/expansion items: a gold corrected form is used"),
    Metric("withheld", True, "info", "elicitation/metalinguistic items: no corrected form given"),
    Metric("prompted", True, "core", "elicitation/metalinguistic items: withheld and a prompt"),
    Metric("adherence", True, "core", "error items: the classified move is the requested mode"),
    Metric("error_echo", False, "core", "error items: the learner's error repeated unmarked"),
    Metric("explicit", False, "core", "an explicit-correction phrase"),
    Metric("over_correction", False, "core", "error-free controls: treated as an error"),
    Metric("question", True, "hygiene", "a follow-up question"),
    Metric("relevance", True, "hygiene", "recast/expansion, controls: takes up the content"),
    Metric("length_ok", True, "hygiene", "within the language's length bounds, not cut off"),
    Metric("language_ok", True, "hygiene", "in the learner's language"),
    Metric("tone_ok", True, "hygiene", "no tone flag"),
)
CORE_WEIGHT = 2 / 3  # the correction counts twice as much as the conversation around it
YES_NO = tuple(m.name for m in METRICS)
HIGHER_IS_BETTER = {m.name: m.higher_is_better for m in METRICS}


def score_reply(
    reply: str,
    *,
    utterance: str,
    corrections: Sequence[str],
    language: str,
    mode: str,
    control: bool,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """Every per-reply metric; ``None`` where a metric does not apply to the item."""
    changed = [c for c in corrections if c != utterance]
    is_error = bool(changed) and not control
    label = classify_mode(reply, utterance, corrections, language)
    explicit = explicit_phrases(reply, language)
    langs = reply_languages(reply, language)
    flags = sorted({f for lang in langs for f in tone_flags(reply, lang)})
    form_modes = mode in ("recast", "expansion")
    withheld = all(withholds_correction(reply, utterance, c) for c in changed) if is_error else None
    detected = detect_language(reply)
    out: dict[str, Any] = {
        "label": label,
        "uptake": uptake(reply, utterance, changed) if is_error and form_modes else None,
        "withheld": withheld if is_error and not form_modes else None,
        "prompted": (
            bool(withheld) and label in ("elicitation", "metalinguistic")
            if is_error and not form_modes
            else None
        ),
        "adherence": label == mode if is_error else None,
        "error_echo": error_echo(reply, utterance, changed, language) if is_error else None,
        "explicit": bool(explicit),
        "explicit_phrases": explicit,
        "over_correction": label in OVER_CORRECTION_LABELS if not is_error else None,
        "question": has_question(reply),
        "relevance": relevance(reply, utterance, language) if form_modes or not is_error else None,
        "length_ok": length_ok(reply, language) and finish_reason != "length",
        "detected_language": detected,
        "language_ok": detected == language,
        "tone_ok": not flags,
        "tone_flags": flags,
    }
    out["pedagogy"] = pedagogy_score(out)
    return out


def pedagogy_score(m: dict[str, Any]) -> float:
    """Two thirds the share of applicable *core* checks passed (how the error was handled),
    one third the share of *hygiene* checks passed (how the conversation goes on); each check
    turned into good (1) or bad (0) by its direction. One group alone counts whole.

    A reply the learner cannot use, one not in their language (empty, garbled or another
    language), scores 0: it would otherwise collect the "did no harm" checks (no explicit
    correction, no echo, no over-correction, no tone flag) for saying nothing.
    """
    if m.get("language_ok") is False:
        return 0.0
    groups: dict[str, list[float]] = {"core": [], "hygiene": []}
    for metric in METRICS:
        value = m.get(metric.name)
        if metric.group in groups and value is not None:
            groups[metric.group].append(1.0 if bool(value) == metric.higher_is_better else 0.0)
    core, hygiene = groups["core"], groups["hygiene"]
    if not core and not hygiene:
        return 0.0
    if not core or not hygiene:
        vals = core or hygiene
        return sum(vals) / len(vals)
    return CORE_WEIGHT * sum(core) / len(core) + (1 - CORE_WEIGHT) * sum(hygiene) / len(hygiene)


def failed_checks(m: dict[str, Any]) -> list[str]:
    """The scored checks a reply failed, by name: what the report shows beside a bad reply."""
    return [
        metric.name
        for metric in METRICS
        if metric.group != "info"
        and m.get(metric.name) is not None
        and bool(m[metric.name]) != metric.higher_is_better
    ]


__all__ = [
    "METRICS",
    "YES_NO",
    "content_keys",
    "error_echo",
    "error_needles",
    "failed_checks",
    "pedagogy_score",
    "relevance",
    "score_reply",
    "tone_flags",
]
