"""The offline dialogue generator: deterministic tutor replies from templates, per language.

It is what runs in tests and when no teacher model is reachable. Every choice (which phrasing,
which follow-up question) is a function of the row's id, so the same plan gives the same bytes.
Replies follow the four moves: a recast and an expansion use the corrected form, an elicitation
and a metalinguistic hint withhold it, and every reply ends with a question.
"""

from __future__ import annotations

import hashlib
import re

from eval.metrics import edit_regions, tokenize

FOLLOW_UPS = {
    "en": [
        "What happened next?",
        "How did you feel about that?",
        "Can you tell me a bit more about it?",
        "Why do you think so?",
        "What was the best part?",
        "Who was with you?",
    ],
    "es": [
        "¿Y qué pasó después?",
        "¿Cómo te sentiste?",
        "¿Me cuentas un poco más?",
        "¿Por qué piensas eso?",
        "¿Qué fue lo mejor?",
        "¿Con quién estabas?",
    ],
    "zh": [
        "后来呢？",
        "你觉得怎么样？",
        "能再多说一点吗？",
        "你为什么这么想？",
        "最有意思的是什么？",
        "你是跟谁一起的？",
    ],
}

RECAST_OPENERS = {
    "en": ["Oh, {echo}?", "Really? {echo}!", "I see, {echo}.", "Ah, so {echo}."],
    "es": ["Ah, {echo}.", "Ah, {echo}. ¡Qué interesante!", "Vaya, {echo}.", "Entiendo: {echo}."],
    "zh": ["哦，{echo}", "原来{echo}", "真的吗？{echo}", "我明白了，{echo}"],
}
EXPANSION = {
    "en": [
        "Yes, {echo}, and that sounds like it really mattered to you.",
        "Right, {echo}, which is something many people can relate to.",
        "I see: {echo}, and I imagine there is a whole story behind it.",
    ],
    "es": [
        "Sí, {echo}, y eso parece muy importante para ti.",
        "Claro, {echo}, y seguro que hay toda una historia detrás.",
        "Entiendo: {echo}, algo que le pasa a mucha gente.",
    ],
    "zh": [
        "对，{echo}这件事听起来对你很重要。",
        "是啊，{echo}很多人都有这样的经历。",
        "我明白，{echo}这背后一定有个故事。",
    ],
}
ELICITATION = {
    "en": [
        "Hmm, {prefix}...? How would you say that part another way?",
        "Wait, {prefix}... can you finish that sentence again?",
        "{prefix}...? Can you try saying that once more?",
    ],
    "es": [
        "Mmm, {prefix}...? ¿Cómo lo dirías de otra manera?",
        "A ver, {prefix}... ¿puedes terminar la frase otra vez?",
        "{prefix}...? ¿Lo intentas decir otra vez?",
    ],
    "zh": [
        "嗯，{prefix}……？你能换一种说法吗？",
        "等一下，{prefix}……后面怎么说？",
        "{prefix}……？你再说一遍好吗？",
    ],
}
ELICITATION_NO_PREFIX = {
    "en": "Sorry, could you say that again in another way? I want to be sure I understand.",
    "es": "Perdona, ¿puedes decirlo de otra manera? Quiero entenderte bien.",
    "zh": "不好意思，你能换一种说法再说一遍吗？我想听明白。",
}
HINTS = {
    "en": {
        "verb_tense": "Think about the time: when did this happen?",
        "article": "Think about the little word that goes before the noun.",
        "preposition": "Look at the small word that links the ideas.",
        "agreement": "Check that the words in your sentence agree with each other.",
        "word_order": "Think about the order of the words.",
        "spelling": "Look closely at how one of the words is spelled.",
        "punctuation": "Read it aloud and listen for where the pauses go.",
        "lexical": "One word there could be more natural for this idea.",
        "other": "Read your sentence once more: one part could sound more natural.",
    },
    "es": {
        "verb_tense": "Piensa en el tiempo: ¿cuándo pasó esto?",
        "ser_estar": "Piensa si es una cualidad o un estado del momento.",
        "article": "Fíjate en la palabrita que va antes del sustantivo.",
        "preposition": "Mira la palabra pequeña que une las ideas.",
        "agreement": "Revisa que las palabras concuerden en género y número.",
        "word_order": "Piensa en el orden de las palabras.",
        "accent": "Fíjate en los acentos de una de las palabras.",
        "verb_form": "Fíjate en la forma del verbo.",
        "punctuation": "Léelo en voz alta y escucha dónde van las pausas.",
        "lexical": "Hay una palabra que podría sonar más natural aquí.",
        "other": "Lee tu frase otra vez: una parte podría sonar más natural.",
    },
    "zh": {
        "measure_word": "想一想量词。",
        "particle": "注意一下句子里的小词，比如“了”“的”“地”“得”。",
        "word_order": "想一想词语的顺序，时间和地点放在哪儿？",
        "preposition": "想一想介词放在哪儿。",
        "agreement": "想一想数量和名词怎么搭配。",
        "lexical": "有一个词可以换成更自然的说法。",
        "punctuation": "读一遍，想想标点符号。",
        "other": "再读一遍你的句子，有一个地方可以说得更自然。",
    },
}
HINT_TAILS = {
    "en": ["Can you try again?", "How would you say it now?"],
    "es": ["¿Lo intentas otra vez?", "¿Cómo lo dirías ahora?"],
    "zh": ["你再试一次？", "现在你会怎么说？"],
}
CONFIRM = {
    "en": ["Yes, exactly: {echo}!", "That's it: {echo}.", "Perfect, {echo}."],
    "es": ["¡Eso es! {echo}.", "¡Exacto! {echo}.", "Perfecto: {echo}."],
    "zh": ["对了！{echo}", "没错，{echo}", "很好！{echo}"],
}
SELF_REPAIR = {"en": ["Oh, {c}", "{c}", "Ah, {c}"], "es": ["Ah, {c}", "{c}", "Ah, vale: {c}"]}
SELF_REPAIR["zh"] = ["哦，{c}", "{c}", "啊，{c}"]

MAX_ECHO_TOKENS = {"en": 18, "es": 18, "zh": 28}
WINDOW = {"en": 5, "es": 5, "zh": 8}


def pick(options: list[str], key: str, salt: str = "") -> str:
    """A stable choice: the same key always picks the same option."""
    h = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return options[int.from_bytes(h[:4], "big") % len(options)]


def _strip_end(text: str) -> str:
    return re.sub(r"[\s.!?。！？…]+$", "", text.strip())


def _lower_first(text: str, language: str) -> str:
    if language == "zh" or not text:
        return text
    if len(text) > 1 and text[1].isupper():  # "I", acronyms
        return text
    if text.split(" ")[0] == "I":
        return text
    return text[0].lower() + text[1:]


_EN_SWAPS = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "am": "are",
    "i'm": "you're",
    "we": "you",
    "our": "your",
    "us": "you",
}


def to_second_person(text: str, language: str) -> str:
    """Tutors echo the learner as "you": English pronouns and 我 are swapped; Spanish verbs
    would need conjugating, so Spanish echoes keep the learner's own words."""
    if language == "zh":
        return text.replace("我们", "你们").replace("我", "你")
    if language != "en":
        return text
    text = re.sub(r"\bI was\b", "you were", text)

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        return _EN_SWAPS.get(word.lower(), word)

    return re.sub(r"\b(?:I'm|I|me|my|mine|myself|am|we|our|us)\b", swap, text, flags=re.I)


def echo(utterance: str, correction: str, language: str) -> str:
    return to_second_person(_echo(utterance, correction, language), language)


def _echo(utterance: str, correction: str, language: str) -> str:
    """The corrected sentence, or a window of it around the first edit when it is long."""
    toks = tokenize(correction)
    if len(toks) <= MAX_ECHO_TOKENS[language]:
        return _lower_first(_strip_end(correction), language)
    regions = edit_regions(utterance, correction)
    # Position of the first edit in the correction's tokens.
    src, tgt = [t.norm for t in tokenize(utterance)], [t.norm for t in toks]
    start = 0
    if regions:
        from difflib import SequenceMatcher

        for tag, _i1, _i2, j1, _j2 in SequenceMatcher(None, src, tgt, False).get_opcodes():
            if tag != "equal":
                start = j1
                break
    w = WINDOW[language]
    lo, hi = max(0, start - w), min(len(toks), start + w + 2)
    piece = correction[toks[lo].start : toks[hi - 1].end]
    return _lower_first(piece, language)


def _prefix_before_error(utterance: str, correction: str, language: str) -> str:
    """The learner's words up to the first edit: what an elicitation repeats back."""
    from difflib import SequenceMatcher

    toks = tokenize(utterance)
    src = [t.norm for t in toks]
    tgt = [t.norm for t in tokenize(correction)]
    cut = 0
    for tag, i1, _i2, _j1, _j2 in SequenceMatcher(None, src, tgt, False).get_opcodes():
        if tag != "equal":
            cut = i1
            break
    if cut == 0:
        return ""
    lo = max(0, cut - WINDOW[language] - 1)
    return _lower_first(utterance[toks[lo].start : toks[cut - 1].end], language)


def tutor_reply(
    mode: str, utterance: str, correction: str, language: str, category: str | None, key: str
) -> str:
    """One tutor turn in the given mode."""
    return _capitalise(_reply(mode, utterance, correction, language, category, key), language)


def _capitalise(text: str, language: str) -> str:
    """Sentence starts after "Really? " or "Ah. " take a capital, whatever the echo began with."""
    if language == "zh":
        return text
    text = text[0].upper() + text[1:] if text else text
    return re.sub(r"([?!.]\s+)([a-záéíóúñ])", lambda m: m.group(1) + m.group(2).upper(), text)


def _reply(
    mode: str, utterance: str, correction: str, language: str, category: str | None, key: str
) -> str:
    question = pick(FOLLOW_UPS[language], key, "q")
    sep = "" if language == "zh" else " "
    if mode == "recast":
        opener = pick(RECAST_OPENERS[language], key, "o").format(
            echo=echo(utterance, correction, language)
        )
        if language == "zh" and not opener.endswith(("。", "？", "！")):
            opener += "。"
        return opener + sep + question
    if mode == "expansion":
        return pick(EXPANSION[language], key, "e").format(
            echo=echo(utterance, correction, language)
        ) + (sep + question)
    if mode == "elicitation":
        prefix = _prefix_before_error(utterance, correction, language)
        if not prefix:
            return ELICITATION_NO_PREFIX[language]
        return pick(ELICITATION[language], key, "l").format(prefix=prefix)
    if mode == "metalinguistic":
        hints = HINTS[language]
        hint = hints.get(category or "other", hints["other"])
        return hint + sep + pick(HINT_TAILS[language], key, "t")
    if mode == "confirm":
        said = pick(CONFIRM[language], key, "c").format(echo=echo(utterance, correction, language))
        if language == "zh" and not said.endswith(("。", "！")):
            said += "。"
        return said + sep + question
    raise ValueError(f"unknown mode {mode!r}")


def self_repair(correction: str, language: str, key: str) -> str:
    """The learner's second turn after an elicitation or a hint: the corrected sentence."""
    return pick(SELF_REPAIR[language], key, "r").format(c=correction)
