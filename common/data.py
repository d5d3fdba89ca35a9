"""Learner-error sources -> one record type, and the fixed train/eval split that eval/ reads too.

The shared data folder is read-only input. Everything derived (splits, manifests) is written under
``$TUTOR_HOME/data`` with a manifest naming the input files' hashes, the seed and the licences, so
a split can be checked against the files it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text, dumps_jsonl, read_jsonl, sha256_file
from common.paths import data_dir, tutor_home

BANK_PATH = Path(__file__).resolve().parent / "l1_bank.yaml"
SPLIT_SEED = 20250601
SPLIT_VERSION = 1

LICENCES = {
    "jfleg": "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
    "cowsl2h": "Apache-2.0 (derived sentence pairs, see its README)",
    "mucgec": "Apache-2.0 (research/evaluation use; see the caution in its README)",
    "l1bank": "Apache-2.0 (written for this project)",
    "narrative": "Apache-2.0 (sentences composed for this project in train/synth.py)",
}
# Fraction of each source's groups held out for evaluation; never trained on.
EVAL_FRACTION = {"jfleg": 0.2, "cowsl2h": 0.1, "mucgec": 0.2, "l1bank": 0.25}


@dataclass(frozen=True)
class ErrorRecord:
    """One learner utterance with its gold corrections: what dialogues and eval items start from."""

    id: str
    source: str
    language: str
    learner: str  # "l2", "heritage" or "general"
    utterance: str
    corrections: tuple[str, ...]
    l1: str | None = None
    category: str | None = None
    group: str = ""  # records of one group (an essay) stay on one side of the split
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(c != self.utterance for c in self.corrections)

    @property
    def correction(self) -> str:
        """The first correction that differs from the utterance (the one dialogues target)."""
        return next((c for c in self.corrections if c != self.utterance), self.corrections[0])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrections"] = list(self.corrections)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ErrorRecord:
        return cls(**{**d, "corrections": tuple(d["corrections"])})


# -- locating and hashing inputs ----------------------------------------------------------------


# -- text helpers ------------------------------------------------------------------------------

_DETOK = [
    (re.compile(r" ([.,!?;:%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", re.I), r"\1"),
    (re.compile(r"\s+"), " "),
]


def detokenize_en(text: str) -> str:
    """JFLEG is space-tokenised ("do n't ."): make it read like what a learner types."""
    out = text.strip()
    for pattern, repl in _DETOK:
        out = pattern.sub(repl, out)
    out = re.sub(r'" (.*?) "', r'"\1"', out)
    return out.strip()


def course_learner(course: str) -> str:
    """COWS-L2H: SPA 1-24 are L2 courses, SPA 31-33 are heritage courses."""
    m = re.search(r"(\d+)", course or "")
    if not m:
        return "general"
    n = int(m.group(1))
    if 31 <= n <= 33:
        return "heritage"
    return "l2" if n <= 24 else "general"


# -- error categories --------------------------------------------------------------------------

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

    from common.metrics import tokens

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


# -- loaders -----------------------------------------------------------------------------------


def load_jfleg(root: Path) -> list[ErrorRecord]:
    """JFLEG dev: 754 English sentences, four fluency corrections each (CC BY-NC-SA 4.0)."""
    base = root / "jfleg" / "dev"
    src = (base / "dev.src").read_text(encoding="utf-8").splitlines()
    refs = [(base / f"dev.ref{i}").read_text(encoding="utf-8").splitlines() for i in range(4)]
    out = []
    for i, line in enumerate(src):
        utterance = detokenize_en(line)
        corrections: list[str] = []
        for ref in refs:
            c = detokenize_en(ref[i])
            if c and c not in corrections:
                corrections.append(c)
        changed = [c for c in corrections if c != utterance]
        ordered = tuple(changed + [c for c in corrections if c == utterance])
        out.append(
            ErrorRecord(
                id=f"jfleg-{i:04d}",
                source="jfleg",
                language="en",
                learner="l2",
                utterance=utterance,
                corrections=ordered,
                l1=None,
                category=categorize(utterance, ordered[0], "en"),
                group=f"jfleg-{i:04d}",
            )
        )
    return out


def load_cowsl2h(root: Path, limit: int | None = None) -> list[ErrorRecord]:
    """COWS-L2H sentence pairs; L2 vs heritage from the course number; grouped by essay."""
    out = []
    for n, row in enumerate(read_jsonl(root / "cowsl2h" / "cowsl2h_sentence_pairs.jsonl")):
        if limit is not None and n >= limit:
            break
        source, target = row["source"].strip(), row["target"].strip()
        if not source or not target:
            continue
        out.append(
            ErrorRecord(
                id=f"cowsl2h-{row['essay_id']}-{row['sent_idx']}",
                source="cowsl2h",
                language="es",
                learner=course_learner(row.get("course", "")),
                utterance=source,
                corrections=(target,),
                l1=row.get("l1") or None,
                category=categorize(source, target, "es"),
                group=f"cowsl2h-{row['essay_id']}",
                meta={"course": row.get("course"), "prompt": row.get("prompt")},
            )
        )
    return out


def load_mucgec(root: Path) -> list[ErrorRecord]:
    """MuCGEC dev part: Mandarin learner sentences with 1-7 references."""
    out = []
    path = root / "mucgec" / "MuCGEC_dev_part.txt"
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 3 or not parts[1]:
            continue
        rid, source, refs = parts[0], parts[1], [p for p in parts[2:] if p]
        corrections: list[str] = []
        for r in refs:
            if r not in corrections:
                corrections.append(r)
        changed = [c for c in corrections if c != source]
        ordered = tuple(changed + [c for c in corrections if c == source])
        out.append(
            ErrorRecord(
                id=f"mucgec-{rid}",
                source="mucgec",
                language="zh",
                learner="l2",
                utterance=source,
                corrections=ordered,
                l1=None,
                category=categorize(source, ordered[0], "zh"),
                group=f"mucgec-{rid}",
            )
        )
    return out


def load_l1_bank(path: Path = BANK_PATH) -> list[ErrorRecord]:
    """The editable YAML bank of typical L1-interference errors, each with a gold correction."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for e in raw["errors"]:
        out.append(
            ErrorRecord(
                id=f"l1bank-{e['id']}",
                source="l1bank",
                language=e["language"],
                learner=e.get("learner", "l2"),
                utterance=e["utterance"],
                corrections=tuple([e["correction"], *e.get("alternatives", [])]),
                l1=e.get("l1"),
                category=e["category"],
                group=f"l1bank-{e['id']}",
                meta={"note": e.get("note", "")},
            )
        )
    return out


LOADERS: dict[str, Callable[[Path], list[ErrorRecord]]] = {
    "jfleg": load_jfleg,
    "cowsl2h": load_cowsl2h,
    "mucgec": load_mucgec,
}
SOURCES = ("jfleg", "cowsl2h", "mucgec", "l1bank")


def input_files(source: str, root: Path) -> list[Path]:
    return {
        "jfleg": [
            root / "jfleg" / "dev" / f for f in ["dev.src"] + [f"dev.ref{i}" for i in range(4)]
        ],
        "cowsl2h": [root / "cowsl2h" / "cowsl2h_sentence_pairs.jsonl"],
        "mucgec": [root / "mucgec" / "MuCGEC_dev_part.txt"],
        "l1bank": [BANK_PATH],
    }[source]


def load_source(source: str, root: Path | None = None) -> list[ErrorRecord]:
    if source == "l1bank":
        return load_l1_bank()
    if source not in LOADERS:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return LOADERS[source](data_dir(root))


# -- the fixed split ---------------------------------------------------------------------------


def is_eval(group: str, source: str, seed: int = SPLIT_SEED) -> bool:
    """A group's side of the split depends only on (seed, group): stable as files grow."""
    h = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < EVAL_FRACTION[source]


def split_dir(home: Path | None = None) -> Path:
    return tutor_home(home) / "data" / "splits" / f"v{SPLIT_VERSION}"


def write_splits(
    sources: Iterable[str] = SOURCES,
    *,
    root: Path | None = None,
    home: Path | None = None,
    seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """Write ``<source>/{train,eval}.jsonl`` and one manifest.json; atomic, idempotent."""
    root = data_dir(root)
    out = split_dir(home)
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = {"version": SPLIT_VERSION, "seed": seed, "sources": {}}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    for source in sources:
        records = load_source(source, root)
        parts: dict[str, list[ErrorRecord]] = {"train": [], "eval": []}
        for r in records:
            parts["eval" if is_eval(r.group, source, seed) else "train"].append(r)
        for name, rows in parts.items():
            atomic_write_text(
                out / source / f"{name}.jsonl", dumps_jsonl(r.to_json() for r in rows)
            )
        manifest["sources"][source] = {
            "language": records[0].language if records else None,
            "licence": LICENCES[source],
            "inputs": {
                str(p.relative_to(root) if p.is_relative_to(root) else p.name): sha256_file(p)
                for p in input_files(source, root)
            },
            "eval_fraction": EVAL_FRACTION[source],
            "split_by": "essay" if source == "cowsl2h" else "sentence",
            "counts": {
                name: {
                    "rows": len(rows),
                    "changed": sum(r.changed for r in rows),
                    "by_learner": _count(r.learner for r in rows),
                }
                for name, rows in parts.items()
            },
        }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _count(values: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return dict(sorted(counts.items()))


def load_split(
    source: str,
    split: str,
    *,
    root: Path | None = None,
    home: Path | None = None,
) -> list[ErrorRecord]:
    """The records of one side of the fixed split (eval/ calls this); writes the split if absent."""
    if split not in ("train", "eval"):
        raise ValueError("split is 'train' or 'eval'")
    path = split_dir(home) / source / f"{split}.jsonl"
    if not path.exists():
        write_splits([source], root=root, home=home)
    return [ErrorRecord.from_json(d) for d in read_jsonl(path)]
