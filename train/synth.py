"""Synthetic learner errors, injected into clean sentences: more to learn from than the real sets.

English has only 615 JFLEG training sentences, and a 135M model needs many examples of the same
systematic edit ("Yesterday I go" -> "went") before it recasts instead of echoing. Each rule below
breaks one clean sentence in one typical way and names the category, so the manifest can keep
synthetic rows apart from real ones and count them by category. The clean sentences come from
the *train* side of the fixed split only (the JFLEG references, MuCGEC's corrections), and every
synthetic record keeps the group of the sentence it came from, so nothing crosses the split.

Mandarin gets the errors typical of heritage speakers: 的/得/地 confused, 个 for every measure
word, homophone characters (再/在, 以经/已经) and English nouns switched in for Chinese ones.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

from common.error_categories import categorize
from common.records import ErrorRecord

# -- English -----------------------------------------------------------------------------------

IRREGULAR_PAST = {
    "went": "go", "saw": "see", "bought": "buy", "ate": "eat", "made": "make", "took": "take",
    "came": "come", "got": "get", "gave": "give", "found": "find", "thought": "think",
    "told": "tell", "said": "say", "left": "leave", "felt": "feel", "knew": "know", "met": "meet",
    "ran": "run", "wrote": "write", "spent": "spend", "began": "begin", "became": "become",
    "brought": "bring", "taught": "teach", "kept": "keep", "lost": "lose", "paid": "pay",
    "sent": "send", "sat": "sit", "stood": "stand", "understood": "understand", "did": "do",
    "heard": "hear", "chose": "choose", "drove": "drive", "grew": "grow", "spoke": "speak",
    "slept": "sleep", "swam": "swim", "won": "win", "forgot": "forget", "fell": "fall",
}  # fmt: skip
REGULAR_PAST = {
    "visited": "visit", "played": "play", "worked": "work", "studied": "study",
    "decided": "decide", "wanted": "want", "started": "start", "watched": "watch",
    "lived": "live", "liked": "like", "moved": "move", "stayed": "stay", "tried": "try",
    "walked": "walk", "talked": "talk", "helped": "help", "needed": "need", "called": "call",
    "asked": "ask", "finished": "finish", "enjoyed": "enjoy", "learned": "learn",
    "opened": "open", "happened": "happen", "changed": "change", "arrived": "arrive",
    "returned": "return", "cooked": "cook", "listened": "listen", "showed": "show",
    "looked": "look", "missed": "miss", "waited": "wait", "loved": "love", "hoped": "hope",
    "believed": "believe", "agreed": "agree", "graduated": "graduate", "travelled": "travel",
    "traveled": "travel", "received": "receive", "joined": "join", "planned": "plan",
}  # fmt: skip
PAST = {**IRREGULAR_PAST, **REGULAR_PAST}
# Perfect or passive before the verb makes the edit a participle problem, not a tense one.
_AUX = {"have", "has", "had", "having", "be", "been", "being", "is", "are", "was", "were", "am"}
AGREEMENT_SWAPS = {
    "doesn't": "don't", "does": "do", "has": "have", "is": "are", "was": "were",
    "are": "is", "were": "was", "have": "has",
}  # fmt: skip
_THIRD = {"he", "she", "it"}
# Third-person verbs whose -s a learner drops after a singular noun ("My sister work").
THIRD_PERSON_VERBS = {
    "works": "work", "lives": "live", "likes": "like", "plays": "play", "goes": "go",
    "watches": "watch", "speaks": "speak", "drinks": "drink", "teaches": "teach",
    "studies": "study", "takes": "take", "cooks": "cook", "loves": "love", "wants": "want",
    "reads": "read", "walks": "walk", "knows": "know", "makes": "make", "gets": "get",
    "needs": "need", "thinks": "think", "says": "say", "comes": "come", "writes": "write",
    "uses": "use", "helps": "help", "buys": "buy", "eats": "eat", "believes": "believe",
    "seems": "seem", "means": "mean", "gives": "give", "feels": "feel", "becomes": "become",
}  # fmt: skip
_PLURAL_SUBJECTS = {"i", "you", "we", "they", "people", "students", "children", "parents"}
_NOT_VERB_S = {"is", "was", "has", "does", "this", "his", "its", "always", "perhaps", "as", "us"}
PREPOSITION_SWAPS = {
    "in": ("on", "at"), "on": ("in", "at"), "at": ("in", "on"), "during": ("in",),
    "of": ("for",), "about": ("of",), "with": ("by",),
}  # fmt: skip
PLURAL_CUES = {
    "many", "several", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "few", "these", "those", "both", "various", "different", "some", "all", "other",
}  # fmt: skip
ADVERBS = {"always", "usually", "often", "never", "sometimes", "really", "also", "just", "still"}

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def _words(sentence: str) -> list[re.Match[str]]:
    return list(_WORD.finditer(sentence))


def _replace(sentence: str, m: re.Match[str], new: str) -> str:
    old = m.group(0)
    if old[:1].isupper() and new:
        new = new[0].upper() + new[1:]
    return sentence[: m.start()] + new + sentence[m.end() :]


def _delete(sentence: str, m: re.Match[str]) -> str:
    end = m.end() + 1 if sentence[m.end() : m.end() + 1] == " " else m.end()
    return sentence[: m.start()] + sentence[end:]


def en_tense(sentence: str, rng: random.Random) -> str | None:
    """A past verb back in its base form: "Yesterday I went" -> "Yesterday I go"."""
    ws = _words(sentence)
    spots = [
        m
        for i, m in enumerate(ws)
        if m.group(0).lower() in PAST and (i == 0 or ws[i - 1].group(0).lower() not in _AUX)
    ]
    if not spots:
        return None
    m = rng.choice(spots)
    return _replace(sentence, m, PAST[m.group(0).lower()])


def en_agreement(sentence: str, rng: random.Random) -> str | None:
    """Subject-verb agreement: is/are, was/were, has/have swapped, or a third-person -s dropped."""
    ws = _words(sentence)
    spots: list[tuple[re.Match[str], str]] = []
    for i, m in enumerate(ws):
        w = m.group(0).lower()
        prev = ws[i - 1].group(0).lower() if i else ""
        if w in AGREEMENT_SWAPS and not (w == "have" and prev not in _THIRD):
            spots.append((m, AGREEMENT_SWAPS[w]))
        elif w in THIRD_PERSON_VERBS and i and prev not in _PLURAL_SUBJECTS:
            spots.append((m, THIRD_PERSON_VERBS[w]))
        elif prev in _THIRD and w.endswith("s") and w not in _NOT_VERB_S and len(w) > 3:
            base = w[:-2] if w.endswith(("ches", "shes", "sses", "xes", "oes")) else w[:-1]
            if w.endswith("ies"):
                base = w[:-3] + "y"
            spots.append((m, base))
    if not spots:
        return None
    m, new = rng.choice(spots)
    return _replace(sentence, m, new)


def en_article(sentence: str, rng: random.Random) -> str | None:
    """An article left out ("I bought new phone"), or a/an confused."""
    ws = _words(sentence)
    spots = [(i, m) for i, m in enumerate(ws) if m.group(0).lower() in ("a", "an", "the") and i > 0]
    if not spots:
        return None
    i, m = rng.choice(spots)
    w = m.group(0).lower()
    if w in ("a", "an") and rng.random() < 0.3 and i + 1 < len(ws):
        return _replace(sentence, m, "an" if w == "a" else "a")
    return _delete(sentence, m)


def en_preposition(sentence: str, rng: random.Random) -> str | None:
    """A confusable preposition: in/on/at, or "since" for a duration ("for three years")."""
    ws = _words(sentence)
    spots: list[tuple[re.Match[str], str]] = []
    for i, m in enumerate(ws):
        w = m.group(0).lower()
        if i == 0:
            continue
        nxt = ws[i + 1].group(0).lower() if i + 1 < len(ws) else ""
        if w == "for" and nxt in PLURAL_CUES - {"these", "those", "all", "other"}:
            spots.append((m, "since"))
        elif w in PREPOSITION_SWAPS:
            spots.append((m, rng.choice(PREPOSITION_SWAPS[w])))
    if not spots:
        return None
    m, new = rng.choice(spots)
    return _replace(sentence, m, new)


def en_plural(sentence: str, rng: random.Random) -> str | None:
    """A plural noun after a quantity left singular: "many apples" -> "many apple"."""
    ws = _words(sentence)
    spots = []
    for i, m in enumerate(ws[1:], 1):
        w = m.group(0)
        if ws[i - 1].group(0).lower() in PLURAL_CUES and w.islower() and len(w) > 3:
            if w.endswith("ies"):
                spots.append((m, w[:-3] + "y"))
            elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
                spots.append((m, w[:-1]))
    if not spots:
        return None
    m, new = rng.choice(spots)
    return _replace(sentence, m, new)


def en_word_order(sentence: str, rng: random.Random) -> str | None:
    """A frequency adverb after its verb: "I always go" -> "I go always"."""
    ws = _words(sentence)
    spots = [
        (m, ws[i + 1])
        for i, m in enumerate(ws[:-1])
        if m.group(0).lower() in ADVERBS
        and i > 0
        and sentence[m.end() : ws[i + 1].start()] == " "
        and ws[i + 1].group(0).islower()
    ]
    if not spots:
        return None
    adv, verb = rng.choice(spots)
    return sentence[: adv.start()] + verb.group(0) + " " + adv.group(0) + sentence[verb.end() :]


EN_RULES: dict[str, Callable[[str, random.Random], str | None]] = {
    "verb_tense": en_tense,
    "agreement": en_agreement,
    "article": en_article,
    "preposition": en_preposition,
    "plural": en_plural,
    "word_order": en_word_order,
}

# Errors JFLEG's learners make that the six rules above never write: misspellings, a word in
# the wrong form, a dropped "be" or apostrophe, "this" before a plural. The Stage 1 corrector,
# trained on JFLEG's references and the six systematic edits, made the gold's first edit in 45 of
# 129 unseen JFLEG sentences (docs/TRAINING.md); many of its misses are of these kinds.
WORD_FORMS = {
    "responsibility": "responsible", "possibility": "possible", "ability": "able",
    "importance": "important", "difference": "different", "independence": "independent",
    "experience": "experienced", "success": "successful", "knowledge": "know",
    "decision": "decide", "education": "educate", "information": "inform",
    "development": "develop", "improvement": "improve", "government": "govern",
    "happiness": "happy", "easily": "easy", "quickly": "quick", "really": "real",
    "usually": "usual", "probably": "probable", "successful": "success",
    "important": "importance", "different": "difference", "healthy": "health",
    "beautiful": "beauty", "interested": "interesting", "bored": "boring",
    "specialized": "specializing", "concerned": "concern", "hired": "hiring",
}  # fmt: skip
_APOSTROPHES = {"don't", "doesn't", "didn't", "can't", "won't", "isn't", "aren't", "wasn't",
                "shouldn't", "couldn't", "wouldn't", "it's", "i'm", "they're", "people's",
                "children's", "today's", "haven't"}  # fmt: skip
_VOWELS = "aeiou"


def en_spelling(sentence: str, rng: random.Random) -> str | None:
    """A misspelt content word: a letter doubled or dropped, two swapped, a vowel confused."""
    ws = [m for m in _words(sentence) if len(m.group(0)) >= 5 and m.group(0).isalpha()]
    if not ws:
        return None
    m = rng.choice(ws)
    w = m.group(0)
    i = rng.randrange(1, len(w) - 1)
    kind = rng.choice(("double", "drop", "swap", "vowel"))
    if kind == "double":
        new = w[:i] + w[i] + w[i:]
    elif kind == "drop":
        new = w[:i] + w[i + 1 :]
    elif kind == "swap":
        new = w[: i - 1] + w[i] + w[i - 1] + w[i + 1 :]
    else:
        spots = [k for k in range(1, len(w)) if w[k] in _VOWELS]
        if not spots:
            return None
        k = rng.choice(spots)
        new = w[:k] + rng.choice([v for v in _VOWELS if v != w[k]]) + w[k + 1 :]
    return None if new.lower() == w.lower() else _replace(sentence, m, new)


def en_word_form(sentence: str, rng: random.Random) -> str | None:
    """The right word in the wrong form: "take responsibility" -> "take responsible"."""
    spots = [m for m in _words(sentence) if m.group(0).lower() in WORD_FORMS]
    if not spots:
        return None
    m = rng.choice(spots)
    return _replace(sentence, m, WORD_FORMS[m.group(0).lower()])


def en_missing(sentence: str, rng: random.Random) -> str | None:
    """A dropped "be" before an adjective or participle, or a dropped apostrophe."""
    ws = _words(sentence)
    spots: list[tuple[re.Match[str], str | None]] = []
    for i, m in enumerate(ws[:-1]):
        w = m.group(0).lower()
        nxt = ws[i + 1].group(0).lower()
        if w in ("is", "are", "was", "were", "am") and i > 0 and nxt.endswith(("ed", "ing", "ful")):
            spots.append((m, None))
    spots += [(m, m.group(0).replace("'", "")) for m in ws if m.group(0).lower() in _APOSTROPHES]
    if not spots:
        return None
    m, new = rng.choice(spots)
    return _delete(sentence, m) if new is None else _replace(sentence, m, new)


def en_determiner(sentence: str, rng: random.Random) -> str | None:
    """A determiner that does not agree with its noun: "these limits" -> "this limits"."""
    swaps = {"these": "this", "those": "that", "much": "many", "many": "much", "an": "a"}
    spots = [m for m in _words(sentence) if m.group(0).lower() in swaps]
    if not spots:
        return None
    m = rng.choice(spots)
    return _replace(sentence, m, swaps[m.group(0).lower()])


EN_LEARNER_RULES: dict[str, Callable[[str, random.Random], str | None]] = {
    "spelling": en_spelling,
    "word_form": en_word_form,
    "missing_word": en_missing,
    "determiner": en_determiner,
}

# -- Mandarin (heritage-typical) ---------------------------------------------------------------

_DE = "的得地"
ZH_MEASURES = "本张只条件位家辆杯双篇首台把块部间匹棵"
_NUMERAL = "一二两三四五六七八九十几这那每"
ZH_HOMOPHONES = [("再", "在"), ("在", "再"), ("已经", "以经"), ("做", "作"), ("哪", "那"),
                 ("像", "象"), ("戴", "带"), ("得", "的")]  # fmt: skip
ZH_CODE_SWITCH = {
    "超市": "supermarket", "电脑": "computer", "手机": "phone", "学校": "school",
    "老师": "teacher", "电影": "movie", "医生": "doctor", "飞机": "airplane",
    "公司": "company", "咖啡": "coffee", "音乐": "music", "图书馆": "library",
    "餐厅": "restaurant", "周末": "weekend", "作业": "homework", "考试": "exam",
    "生日": "birthday", "假期": "vacation", "运动": "sports", "游戏": "games",
    "朋友": "friends", "医院": "hospital", "城市": "city", "火车": "train",
}  # fmt: skip


def zh_de(sentence: str, rng: random.Random) -> str | None:
    """的, 得 and 地 confused: heritage speakers hear one syllable, de."""
    spots = [i for i, ch in enumerate(sentence) if ch in _DE]
    if not spots:
        return None
    i = rng.choice(spots)
    new = rng.choice([c for c in _DE if c != sentence[i]])
    return sentence[:i] + new + sentence[i + 1 :]


def zh_measure(sentence: str, rng: random.Random) -> str | None:
    """个 for every measure word: 一本书 -> 一个书."""
    spots = [
        i
        for i, ch in enumerate(sentence)
        if ch in ZH_MEASURES and i > 0 and sentence[i - 1] in _NUMERAL
    ]
    if not spots:
        return None
    i = rng.choice(spots)
    return sentence[:i] + "个" + sentence[i + 1 :]


def zh_character(sentence: str, rng: random.Random) -> str | None:
    """A homophone written for the right character: 再/在, 已经 -> 以经, 做/作."""
    spots = [(right, wrong) for right, wrong in ZH_HOMOPHONES if right in sentence]
    if not spots:
        return None
    right, wrong = rng.choice(spots)
    starts = [m.start() for m in re.finditer(re.escape(right), sentence)]
    i = rng.choice(starts)
    return sentence[:i] + wrong + sentence[i + len(right) :]


def zh_code_switch(sentence: str, rng: random.Random) -> str | None:
    """An English noun for a Chinese one, as heritage speakers do when a word does not come."""
    spots = [w for w in ZH_CODE_SWITCH if w in sentence]
    if not spots:
        return None
    word = rng.choice(spots)
    i = sentence.index(word)
    return sentence[:i] + " " + ZH_CODE_SWITCH[word] + " " + sentence[i + len(word) :]


ZH_HERITAGE_RULES: dict[str, Callable[[str, random.Random], str | None]] = {
    "particle": zh_de,
    "measure_word": zh_measure,
    "character": zh_character,
    "code_switching": zh_code_switch,
}

RULES = {"en": EN_RULES, "en-learner": EN_LEARNER_RULES, "zh-heritage": ZH_HERITAGE_RULES}

# -- narrative sentences -----------------------------------------------------------------------
# Learners tell tutors what they did: past-tense narration and third-person habits are where
# "Yesterday I go" and "My sister work" come from, and JFLEG's argumentative essays have few of
# them (94 past verbs in the whole Stage 1 draw). Clean sentences composed from these parts give
# the tense and agreement rules something to break. They are synthetic and marked so.
_WHEN = ["Yesterday", "Last weekend", "Last night", "Two days ago", "On Saturday", "Last summer",
         "Last week", "This morning"]  # fmt: skip
_WHO = ["I", "my sister", "we", "my parents", "my best friend", "our teacher", "my brother",
        "my roommate"]  # fmt: skip
_DID = ["went to the store", "bought a new bike", "watched a movie at home",
        "visited my grandmother", "ate pizza with friends", "played football in the park",
        "cooked dinner for everyone",
        "met an old friend downtown", "took the bus to work", "saw a great concert",
        "walked to the beach", "studied for the exam", "cleaned the whole house",
        "called my cousin in Mexico", "wrote a long email", "lost the keys again",
        "spent all day at the museum", "found a cheap flight", "listened to music all evening",
        "tried a new restaurant", "stayed at home because it rained", "moved to a new apartment",
        "started a painting class", "finished the book", "drove to the mountains",
        "learned a new recipe", "helped a neighbor carry boxes", "waited an hour for the train",
        "forgot my umbrella at school", "won a small prize"]  # fmt: skip
_HABIT_WHO = ["My sister", "My father", "My friend Ana", "Our teacher", "My brother", "She",
              "He", "My neighbor"]  # fmt: skip
_HABIT = ["works in a hospital", "lives near the river", "likes spicy food", "plays the guitar",
          "goes to the gym every morning", "watches the news at night", "speaks three languages",
          "drinks coffee without sugar", "teaches math at a high school", "studies every evening",
          "takes the train to work", "cooks on Sundays", "loves old movies", "wants a new phone",
          "reads before bed", "walks the dog after dinner", "has two cats", "is very tall",
          "does yoga on weekends", "knows a lot about history"]  # fmt: skip


def narratives() -> list[ErrorRecord]:
    """Clean narrative and habit sentences, each its own group (none comes from a corpus)."""
    out = []
    for i, when in enumerate(_WHEN):
        for j, who in enumerate(_WHO):
            for k, did in enumerate(_DID):
                if (i + j + k) % 3:  # a third of the product: variety without near-copies
                    continue
                out.append(f"{when} {who} {did}.")
    for j, who in enumerate(_HABIT_WHO):
        for k, habit in enumerate(_HABIT):
            if (j + k) % 2 == 0:
                out.append(f"{who} {habit}.")
    return [
        ErrorRecord(
            id=f"narrative-{n:04d}",
            source="narrative",
            language="en",
            learner="l2",
            utterance=text[0].upper() + text[1:],
            corrections=(text[0].upper() + text[1:],),
            group=f"narrative-{n:04d}",
            meta={"synthetic": True},
        )
        for n, text in enumerate(out)
    ]


# -- records -----------------------------------------------------------------------------------


def clean_sentences(records: Iterable[ErrorRecord]) -> list[tuple[ErrorRecord, str]]:
    """Every distinct correct sentence a record offers (all its references), with its record."""
    out, seen = [], set()
    for r in records:
        for c in r.corrections:
            c = c.strip()
            if c and c not in seen:
                seen.add(c)
                out.append((r, c))
    return out


def inject(
    records: Iterable[ErrorRecord], rules: str, *, seed: int, learner: str | None = None
) -> list[ErrorRecord]:
    """One synthetic record per (clean sentence, rule that applies), category recorded.

    The randomness is seeded per sentence and rule, so the output depends only on the inputs
    and the seed. ``meta.synthetic`` marks the record; ``meta.from`` names its origin.
    """
    table = RULES[rules]
    out = []
    for rec, sentence in clean_sentences(records):
        for category, rule in table.items():
            rng = random.Random(f"{seed}:{category}:{sentence}")
            broken = rule(sentence, rng)
            if not broken or broken == sentence:
                continue
            broken = re.sub(r"\s+", " ", broken).strip()
            out.append(
                ErrorRecord(
                    id=f"synth-{rec.id}-{category}-{len(out):05d}",
                    source=f"synth-{rec.source}",
                    language=rec.language,
                    learner=learner or rec.learner,
                    utterance=broken,
                    corrections=(sentence,),
                    l1=None,
                    category=category,
                    group=rec.group,
                    meta={"synthetic": True, "from": rec.id, "rule": rules},
                )
            )
    return out


def per_reference(records: Iterable[ErrorRecord]) -> list[ErrorRecord]:
    """One record per distinct changed reference: JFLEG's four fluency corrections each become a
    dialogue target, so 615 sentences give every correction their annotators wrote."""
    out = []
    for r in records:
        changed = [c for c in r.corrections if c != r.utterance]
        for k, c in enumerate(changed):
            rest = tuple(x for x in r.corrections if x != c)
            out.append(
                ErrorRecord(
                    id=f"{r.id}-r{k}",
                    source=r.source,
                    language=r.language,
                    learner=r.learner,
                    utterance=r.utterance,
                    corrections=(c, *rest),
                    l1=r.l1,
                    category=categorize(r.utterance, c, r.language),
                    group=r.group,
                    meta={**r.meta, "reference": k},
                )
            )
    return out


def controls(records: Iterable[ErrorRecord], *, learner: str | None = None) -> list[ErrorRecord]:
    """Error-free learner turns: a gold correction said by the learner, to be answered with no
    correction at all (over-correction of such turns is what the last comparison got worse at)."""
    return [
        ErrorRecord(
            id=f"ctrl-{rec.id}-{k:02d}",
            source=rec.source,
            language=rec.language,
            learner=learner or rec.learner,
            utterance=sentence,
            corrections=(sentence,),
            l1=rec.l1,
            category=None,
            group=rec.group,
            meta={"control": True, "from": rec.id},
        )
        for k, (rec, sentence) in enumerate(clean_sentences(records))
    ]


DERIVATIONS = (
    "references",
    "synthetic:en",
    "synthetic:en-learner",
    "synthetic:zh-heritage",
    "narrative:en",
    "controls",
)


def derive(
    records: list[ErrorRecord], how: str | None, *, seed: int, learner: str | None = None
) -> list[ErrorRecord]:
    """A generation job's records from one side of the split (GenJob.derive): the records as
    they are (None), one per reference, synthetic errors, or error-free controls."""
    if how is None:
        if learner:
            from dataclasses import replace

            return [replace(r, learner=learner) for r in records]
        return records
    if how == "references":
        return per_reference(records)
    if how.startswith("synthetic:"):
        return inject(records, how.split(":", 1)[1], seed=seed, learner=learner)
    if how == "controls":
        return controls(records, learner=learner)
    if how == "narrative:en":  # the job's own records are not used: see narratives()
        return [
            r
            for r in inject(narratives(), "en", seed=seed, learner=learner)
            if r.category in ("verb_tense", "agreement")
        ]
    raise ValueError(f"unknown derivation {how!r}; known: {', '.join(DERIVATIONS)}")
