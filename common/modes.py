"""A rule classifier for the tutoring move a reply makes, for mode adherence.

Labels (Lyster and Ranta's corrective-feedback moves, plus "none"):

- ``explicit_correction``: the reply points at the error ("that's wrong", "se dice", "应该说");
- ``recast``: it uses a gold corrected form (or changes a learner form: "go" -> "went") inside
  an otherwise short echo;
- ``expansion``: it uses a gold corrected form and adds new language in the same sentence;
- ``metalinguistic``: a clue about the rule ("think about the time", "fíjate en el verbo",
  "想一想量词") without the form;
- ``elicitation``: it repeats the learner's words up to the error and trails off ("You go...?"),
  or asks the learner to reformulate ("how would you say that another way?");
- ``clarification``: it asks what the learner meant ("sorry, what do you mean?");
- ``none``: conversation with no corrective move.

The rules are checked in that order of precedence (explicit, then the form given, then the
clues), so one reply gets one label. They are deterministic and lexical: the cue lists below are
the whole model, and docs/EVAL.md shows what they miss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from common.metrics import (
    _IS_CJK,
    PERSPECTIVE_SWAPS,
    _token_matches,
    contains_correction_in_context,
    detect_language,
    explicit_corrections,
    tokens,
)

# The four scaffolding moves and the learner levels: the catalogue's personas, the request's
# `scaffolding` and `level`, training's plan and the UI all take them from here. SCAFFOLDING is
# the order the personas and the API name them in (and training's plan assigns them by);
# MODES the order eval's tables and recipes list them in.
SCAFFOLDING = ("recast", "elicitation", "expansion", "metalinguistic")
LEVELS = ("beginner", "intermediate", "advanced")
MODES = ("recast", "expansion", "elicitation", "metalinguistic")
# What a reply to a correct sentence must not be: a move on an error that is not there
# (train/gates.py drops such natural turns; eval counts them as over-correction).
OVER_CORRECTION_LABELS = frozenset(
    {"explicit_correction", "metalinguistic", "elicitation", "recast"}
)
LABELS = (
    "recast",
    "expansion",
    "elicitation",
    "metalinguistic",
    "clarification",
    "explicit_correction",
    "none",
)

# New tokens (words; characters for Chinese) in the sentence that carries the corrected form:
# at or above this, the tutor built on the learner's sentence (expansion), below it echoed it.
EXPANSION_MIN_NEW = {"en": 4, "es": 4, "zh": 5}
OPENERS = frozenset(
    [
        "oh",
        "ah",
        "ahh",
        "yes",
        "yeah",
        "right",
        "really",
        "so",
        "i",
        "see",
        "wow",
        "well",
        "okay",
        "ok",
        "great",
        "nice",
        "cool",
        "sí",
        "si",
        "vaya",
        "claro",
        "entiendo",
        "vale",
        "bueno",
        "mmm",
        "hmm",
        "哦",
        "啊",
        "嗯",
        "对",
        "是",
        "好",
    ]
)

METALINGUISTIC_CUES: dict[str, tuple[str, ...]] = {
    "en": (
        "tense",
        "verb",
        "noun",
        "adjective",
        "article",
        "preposition",
        "plural",
        "singular",
        "subject",
        "spelled",
        "spelling",
        "word order",
        "order of the words",
        "grammar",
        "the little word",
        "the small word",
        "agree with each other",
        "think about the time",
        "look closely",
        "read it aloud",
        "read your sentence",
        "could sound more natural",
        "could be more natural",
    ),
    "es": (
        "tiempo verbal",
        "piensa en el tiempo",
        "verbo",
        "sustantivo",
        "artículo",
        "preposición",
        "plural",
        "singular",
        "concuerd",
        "género",
        "acento",
        "orden de las palabras",
        "gramática",
        "regla",
        "palabrita",
        "palabra pequeña",
        "cualidad o un estado",
        "fíjate",
        "léelo en voz alta",
        "lee tu frase",
        "podría sonar más natural",
        "hay una palabra que",
    ),
    "zh": (
        "想一想",
        "想想",
        "注意",
        "量词",
        "时态",
        "动词",
        "名词",
        "介词",
        "语法",
        "顺序",
        "搭配",
        "标点",
        "小词",
        "再读一遍",
        "说得更自然",
        "更自然的说法",
    ),
}
# An imperative "think about ..." at a sentence start is a hint; "what do you think about" is not.
_THINK = {
    "en": re.compile(r"(?:^|[.!?:]\s+)think about\b", re.I),
    "es": re.compile(r"(?:^|[.!?:¿¡]\s*)piensa (?:en|si)\b", re.I),
}

ELICITATION_CUES: dict[str, tuple[str, ...]] = {
    "en": (
        "how would you say",
        "how do you say",
        "how should you say",
        "can you say that",
        "could you say that",
        "say it again",
        "say that again",
        "try again",
        "try saying",
        "finish the sentence",
        "finish that sentence",
        "another way",
        "once more",
        "can you correct",
    ),
    "es": (
        "cómo lo dirías",
        "cómo dirías",
        "puedes decirlo",
        "dilo otra vez",
        "de otra manera",
        "de otra forma",
        "termina la frase",
        "terminar la frase",
        "inténtalo",
        "lo intentas",
        "decirlo otra vez",
    ),
    "zh": ("换一种说法", "再说一遍", "再试一次", "怎么说", "说完"),
}
CLARIFICATION_CUES: dict[str, tuple[str, ...]] = {
    "en": (
        "what do you mean",
        "what did you mean",
        "can you repeat",
        "could you repeat",
        "pardon",
        "sorry?",
        "i don't understand",
        "i didn't understand",
        "not sure what you mean",
        "i didn't catch",
    ),
    "es": (
        "qué quieres decir",
        "a qué te refieres",
        "perdón?",
        "no entiendo",
        "no te entiendo",
        "no te entendí",
        "puedes repetir",
        "cómo?",
    ),
    "zh": ("什么意思", "你是说", "我不明白", "没听懂", "不太明白", "没明白"),
}
_ELLIPSIS = re.compile(r"(\.\.\.|…|___)")

# Learner forms that are grammatical variants of each other are recasts; other word swaps
# are more likely the conversation moving on. Function words (articles, prepositions, particles)
# count as forms.
FUNCTION_WORDS = {
    "en": frozenset(
        [
            "a",
            "an",
            "the",
            "in",
            "on",
            "at",
            "to",
            "for",
            "of",
            "with",
            "from",
            "by",
            "about",
            "into",
            "since",
            "is",
            "are",
            "was",
            "were",
            "be",
            "been",
            "has",
            "have",
            "had",
            "do",
            "does",
            "did",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "la",
            "los",
            "las",
            "un",
            "una",
            "unos",
            "unas",
            "lo",
            "al",
            "del",
            "a",
            "de",
            "en",
            "por",
            "para",
            "con",
            "sin",
            "sobre",
            "desde",
            "hasta",
            "entre",
            "es",
            "son",
            "está",
            "están",
            "era",
            "fue",
            "ser",
            "estar",
        ]
    ),
    "zh": frozenset("了的地得过着个本张只条件位家辆杯次种把台双块篇首在给跟和对"),
}


def _has_cue(text: str, cues: Sequence[str], language: str) -> bool:
    low = text.casefold()
    if language == "zh":
        return any(c in low for c in cues)
    # Word-bounded at the start; a cue may end inside a word ("concuerd" -> "concuerden").
    return any(re.search(rf"(?<!\w){re.escape(c)}", low) for c in cues)


def sentences(text: str) -> list[str]:
    """Split after . ! ? and their CJK forms (keeping the mark), dropping empty pieces."""
    return [s for s in re.split(r"(?<=[.!?。！？])\s*", text.strip()) if s.strip()]


def changed_corrections(utterance: str, corrections: Sequence[str]) -> list[str]:
    return [c for c in corrections if c != utterance]


def uptake(reply: str, utterance: str, corrections: Sequence[str]) -> bool:
    """The reply uses the corrected form of the first edit of any gold correction (in context
    when the form is a function word or the learner already wrote it elsewhere)."""
    return any(
        contains_correction_in_context(reply, utterance, c) for c in corrections if c != utterance
    )


def form_changes(utterance: str, reply: str, language: str) -> list[tuple[str, str]]:
    """Where the reply repeats the learner's words but changes a *form* (go -> went, a -> the,
    cats -> cat, 了 -> 过): the over-correction signal on error-free sentences.

    The changed stretch is one or two tokens with a shared token on both sides (a real echo, not
    the tutor's own sentence), and the two forms share a stem (two first letters) or are all
    function words. Lexical swaps ("shop" -> "store"), perspective swaps (I -> you) and the
    learner's verb conjugated for "you" (fui -> fuiste) are not changes of form.
    """
    fw = FUNCTION_WORDS.get(language, frozenset())
    a, b = tokens(utterance), tokens(reply)
    ops = SequenceMatcher(None, a, b, False).get_opcodes()
    out = []
    for k, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag != "replace" or not (0 < k < len(ops) - 1):
            continue
        if ops[k - 1][0] != "equal" or ops[k + 1][0] != "equal":
            continue
        x, y = a[i1:i2], b[j1:j2]
        if len(x) > 2 or len(y) > 2:
            continue
        pairs = list(zip(x, y, strict=False))
        if len(x) == len(y) and all(
            p == q or (p, q) in PERSPECTIVE_SWAPS or _token_matches(q, p) for p, q in pairs
        ):
            continue
        stem = any(
            len(p) > 1 and p != q and p[:2] == q[:2] and not _IS_CJK.match(p) for p in x for q in y
        )
        if stem or all(t in fw for t in x + y):
            out.append((" ".join(x), " ".join(y)))
    return out


def _is_expansion(reply: str, utterance: str, corrections: Sequence[str], language: str) -> bool:
    known = set(tokens(utterance))
    for c in corrections:
        known.update(tokens(c))
    known |= {y for x, y in PERSPECTIVE_SWAPS if x in known}
    for sentence in sentences(reply):
        if not uptake(sentence, utterance, corrections):
            continue
        new = [t for t in tokens(sentence) if t not in known and t not in OPENERS]
        if len(new) >= EXPANSION_MIN_NEW.get(language, 4):
            return True
    return False


def reply_languages(reply: str, language: str) -> list[str]:
    """The item's language, and the reply's own when it is another one: a tutor that answers a
    Spanish learner in English ("Read your sentence once more...") still makes an English move,
    and its cues are English."""
    detected = detect_language(reply)
    return [language] + ([detected] if detected and detected != language else [])


def explicit_phrases(reply: str, language: str) -> list[str]:
    """Explicit-correction phrases in the item's language or the reply's."""
    return [
        p for lang in reply_languages(reply, language) for p in explicit_corrections(reply, lang)
    ]


def _cue(reply: str, table: dict[str, tuple[str, ...]], langs: Sequence[str]) -> bool:
    return any(_has_cue(reply, table.get(lang, ()), lang) for lang in langs)


def _elicits(reply: str, utterance: str, language: str, langs: Sequence[str]) -> bool:
    if _cue(reply, ELICITATION_CUES, langs):
        return True
    m = _ELLIPSIS.search(reply)
    if not m:
        return False
    before = set(tokens(reply[: m.start()]))
    learner = set(tokens(utterance))
    learner |= {y for x, y in PERSPECTIVE_SWAPS if x in learner}
    shared = before & learner
    return len(shared) >= (2 if language == "zh" else 1)


def classify_mode(reply: str, utterance: str, corrections: Sequence[str], language: str) -> str:
    """One of :data:`LABELS` for the reply to a learner utterance with its gold corrections.

    An error-free utterance (every correction equal to it) can still get ``recast`` when the
    tutor changes one of its forms, which is how over-correction shows up. Cues are looked for
    in the item's language and, when it differs, the reply's.
    """
    if not reply.strip():
        return "none"
    langs = reply_languages(reply, language)
    if explicit_phrases(reply, language):
        return "explicit_correction"
    changed = changed_corrections(utterance, corrections)
    if changed and uptake(reply, utterance, changed):
        return "expansion" if _is_expansion(reply, utterance, changed, language) else "recast"
    if _cue(reply, METALINGUISTIC_CUES, langs) or any(
        _THINK[lang].search(reply) for lang in langs if lang in _THINK
    ):
        return "metalinguistic"
    if _elicits(reply, utterance, language, langs):
        return "elicitation"
    if _cue(reply, CLARIFICATION_CUES, langs):
        return "clarification"
    if form_changes(utterance, reply, language):
        return "recast"
    return "none"


def confusion_matrix(
    pairs: Sequence[tuple[str, str]], rows: Sequence[str], cols: Sequence[str] = LABELS
) -> list[list[int]]:
    """Counts of (requested, classified) pairs, rows by requested mode, columns by label."""
    index_r = {r: i for i, r in enumerate(rows)}
    index_c = {c: j for j, c in enumerate(cols)}
    table = [[0] * len(cols) for _ in rows]
    for requested, label in pairs:
        if requested in index_r and label in index_c:
            table[index_r[requested]][index_c[label]] += 1
    return table
