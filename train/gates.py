"""Quality gates for generated dialogues, built on common/metrics.py so training and evaluation
judge replies the same way. Every dropped row is counted under the first gate it failed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.metrics import (
    contains_correction,
    detect_language,
    explicit_corrections,
    has_question,
    length_ok,
    message_hash,
    withholds_correction,
)
from common.modes import OVER_CORRECTION_LABELS, classify_mode
from train.generate_dialogue import variant_language

GIVES_FORM = ("recast", "expansion", "confirm")
WITHHOLDS_FORM = ("elicitation", "metalinguistic")
ROLES = ("system", "user", "assistant")
# In the order they are checked: a row is reported under the first one it fails.
REASONS = (
    "schema",
    "duplicate",
    "wrong_variant_language",
    "missing_corrected_form",
    "gave_away_answer",
    "explicit_correction",
    "over_correction",
    "no_question",
    "length",
    "wrong_language",
    "not_the_correction",
)


def schema_problem(row: Any) -> str | None:
    """Why a row cannot be used at all, or None."""
    if not isinstance(row, dict):
        return "not an object"
    for key in ("id", "language", "variant", "mode", "messages", "turns"):
        if key not in row:
            return f"missing {key}"
    msgs, turns = row["messages"], row["turns"]
    if not isinstance(msgs, list) or len(msgs) < 3:
        return "messages: need system, user, assistant"
    if any(
        not isinstance(m, dict)
        or m.get("role") not in ROLES
        or not isinstance(m.get("content"), str)
        for m in msgs
    ):
        return "messages: role/content"
    if msgs[0]["role"] != "system" or msgs[-1]["role"] != "assistant":
        return "messages: starts with system, ends with assistant"
    for prev, cur in zip(msgs[1:], msgs[2:], strict=False):
        if prev["role"] == cur["role"]:
            return "messages: roles must alternate"
    assistants = [m for m in msgs if m["role"] == "assistant"]
    if not isinstance(turns, list) or len(turns) != len(assistants):
        return "turns: one per assistant message"
    if any(not m["content"].strip() for m in msgs[1:]):
        return "messages: empty content"
    return None


def _variant_language(variant: str) -> str | None:

    try:
        return variant_language(variant)
    except KeyError:
        return None


def row_failures(row: dict[str, Any], language: str | None = None) -> list[str]:
    """Every gate the row fails (dedup is decided by :class:`GateReport`, not here)."""
    why = schema_problem(row)
    if why:
        return ["schema"]
    lang = row["language"]
    fails: list[str] = []
    if language is None:
        language = _variant_language(row["variant"])
    if language and lang != language:
        fails.append("wrong_variant_language")
    assistants = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    for reply, turn in zip(assistants, row["turns"], strict=True):
        mode, utt, corr = turn["mode"], turn["utterance"], turn["correction"]
        if mode == "correct":  # the corrector turn: the gold correction, nothing else
            if reply.strip() != corr.strip():
                fails.append("not_the_correction")
            continue
        if utt != corr:
            if mode in GIVES_FORM and not contains_correction(reply, utt, corr):
                fails.append("missing_corrected_form")
            if mode in WITHHOLDS_FORM and not withholds_correction(reply, utt, corr):
                fails.append("gave_away_answer")
        if explicit_corrections(reply, lang):
            fails.append("explicit_correction")
        if mode == "natural" and classify_mode(reply, utt, [corr], lang) in OVER_CORRECTION_LABELS:
            fails.append("over_correction")
        if not has_question(reply):
            fails.append("no_question")
        if not length_ok(reply, lang):
            fails.append("length")
        if detect_language(reply) != lang:
            fails.append("wrong_language")
    return sorted(set(fails), key=REASONS.index)


@dataclass
class GateReport:
    """Counts of rows in, kept, and dropped by first failing gate; dedup state across calls."""

    seen: set[str] = field(default_factory=set)
    total: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # every gate failed, not only first
    dropped_by_mode: Counter[str] = field(default_factory=Counter)

    def check(self, row: Any, language: str | None = None) -> bool:
        """True if the row passes every gate (and is not a duplicate); counts it either way."""
        self.total += 1
        fails = row_failures(row, language) if isinstance(row, dict) else ["schema"]
        if "schema" not in fails:
            h = message_hash(row["messages"])
            if h in self.seen:
                fails.insert(0, "duplicate")
            elif not fails:
                self.seen.add(h)
        if fails:
            self.dropped[fails[0]] += 1
            self.failures.update(fails)
            mode = row.get("mode", "?") if isinstance(row, dict) else "?"
            self.dropped_by_mode[str(mode)] += 1
            return False
        self.kept += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": {r: self.dropped[r] for r in REASONS if self.dropped[r]},
            "failures": {r: self.failures[r] for r in REASONS if self.failures[r]},
            "dropped_by_mode": dict(sorted(self.dropped_by_mode.items())),
        }


def gate(
    rows: Iterable[Any], language: str | None = None, report: GateReport | None = None
) -> tuple[list[dict[str, Any]], GateReport]:
    report = report or GateReport()
    kept = [r for r in rows if report.check(r, language)]
    return kept, report
