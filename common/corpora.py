"""Per-corpus loaders: JFLEG, COWS-L2H, MuCGEC and the L1 bank, each -> ErrorRecords.

The shared data folder is read-only input. This module knows each corpus's file layout, its
licence and its clean-up (JFLEG's detokenisation, COWS-L2H's course -> learner type), and which
input files a source is hashed from. Separate from the split (common/data.py), which only decides
the side each record falls on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from common.error_categories import categorize
from common.files import read_jsonl
from common.paths import data_dir
from common.records import ErrorRecord

BANK_PATH = Path(__file__).resolve().parent / "l1_bank.yaml"

LICENCES = {
    "jfleg": "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
    "cowsl2h": "Apache-2.0 (derived sentence pairs, see its README)",
    "mucgec": "Apache-2.0 (research/evaluation use; see the caution in its README)",
    "l1bank": "Apache-2.0 (written for this project)",
    "narrative": "Apache-2.0 (sentences composed for this project in train/synth.py)",
}

# -- text clean-up per corpus ------------------------------------------------------------------

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


# -- loaders -----------------------------------------------------------------------------------


def _changed_first(utterance: str, refs: Iterable[str]) -> tuple[str, ...]:
    """A sentence's references once each, in order and without empty ones, those that change
    it first: the first is the edit its category, and every probe, reads."""
    corrections = list(dict.fromkeys(r for r in refs if r))
    return tuple(
        [c for c in corrections if c != utterance] + [c for c in corrections if c == utterance]
    )


def load_jfleg(root: Path) -> list[ErrorRecord]:
    """JFLEG dev: 754 English sentences, four fluency corrections each (CC BY-NC-SA 4.0)."""
    base = root / "jfleg" / "dev"
    src = (base / "dev.src").read_text(encoding="utf-8").splitlines()
    refs = [(base / f"dev.ref{i}").read_text(encoding="utf-8").splitlines() for i in range(4)]
    out = []
    for i, line in enumerate(src):
        utterance = detokenize_en(line)
        ordered = _changed_first(utterance, (detokenize_en(ref[i]) for ref in refs))
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
        rid, source = parts[0], parts[1]
        ordered = _changed_first(source, parts[2:])
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
