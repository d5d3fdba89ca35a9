"""A generation job and its plan: which records, in which order, with which mode, single or multi.

The plan is a pure function of the job and the split, so a resumed run regenerates exactly the
rows that are missing (the job's ``plan_hash`` names the plan in the progress index). Separate
from the replies and the writer because it is deterministic bookkeeping with no model, no I/O and
no catalogue: train/mix.py reads jobs without the generation machinery.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from common.modes import SCAFFOLDING
from common.records import ErrorRecord
from common.templates import stable_fraction

TASKS = ("tutor", "correct")


@dataclass
class GenJob:
    """One generation job: a slice of a split turned into dialogues for one variant."""

    name: str
    source: str
    variant: str
    split: str = "train"
    learner: str | None = None  # keep only this learner type ("l2", "heritage")
    language: str | None = None  # keep only records in this language (default: the variant's)
    limit: int | None = None
    modes: str = "interleave"  # "interleave" or "block:N" (rotate the mode every N rows)
    multi_turn: float = 0.3  # share of dialogues with a second exchange
    max_chars: int = 220  # skip learner sentences longer than this (essays' run-ons)
    derive: str | None = None  # references | synthetic:en | synthetic:zh-heritage | narrative:en
    #                            | controls (train/synth.py)
    per_category: int | None = None  # at most this many records of one error category
    as_learner: str | None = None  # relabel the records' learner type (MuCGEC for heritage)
    task: str = "tutor"  # tutor: a dialogue | correct: the corrector turn (sentence -> corrected)
    grounded: float = 0.0  # share of tutor dialogues whose last learner turn has the hidden note
    natural_echo: float | None = None  # share of error-free turns echoed (None: the template's)
    # the note "... is correct" with the move hint taken out of the system prompt, as the gateway
    # sends it (None/False: the hint stays, as in the sets the shipped adapters were trained on)
    note_drops_move: bool | None = None
    seed: int = 0

    def plan_hash(self) -> str:
        fields = asdict(self)
        for later in ("natural_echo", "note_drops_move"):  # added later: unset keeps old hashes
            if fields[later] is None:
                del fields[later]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PlanItem:
    idx: int
    record: ErrorRecord
    mode: str
    follow: ErrorRecord | None = None  # the second learner error (recast/expansion multi-turn)
    multi: bool = False


def assign_modes(n: int, scheme: str, seed: int) -> list[str]:
    """Blocks rotating every N rows, or balanced interleaving (each run of 4 has every mode)."""
    if scheme.startswith("block:"):
        size = int(scheme.split(":", 1)[1])
        if size < 1:
            raise ValueError("block size must be >= 1")
        return [SCAFFOLDING[(i // size) % len(SCAFFOLDING)] for i in range(n)]
    if scheme != "interleave":
        raise ValueError(f"unknown mode assignment {scheme!r}: 'interleave' or 'block:N'")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        block = list(SCAFFOLDING)
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def plan(job: GenJob, records: Sequence[ErrorRecord]) -> list[PlanItem]:
    """Deterministic: the same job and records always give the same items in the same order."""
    controls = job.derive == "controls"
    pool = [
        r
        for r in records
        if (r.changed or controls)
        and (job.learner is None or r.learner == job.learner)
        and (job.language is None or r.language == job.language)
        and len(r.utterance) <= job.max_chars
    ]
    pool.sort(key=lambda r: r.id)
    random.Random(job.seed).shuffle(pool)
    if job.per_category is not None:  # no category crowds out the others
        seen: dict[str | None, int] = {}
        kept = []
        for r in pool:
            seen[r.category] = seen.get(r.category, 0) + 1
            if seen[r.category] <= job.per_category:
                kept.append(r)
        pool = kept
    if job.limit is not None:
        pool = pool[: job.limit]
    if job.task not in TASKS:
        raise ValueError(f"job {job.name}: unknown task {job.task!r}: one of {TASKS}")
    if job.task == "correct":
        modes = ["correct"] * len(pool)
    elif controls:
        modes = ["natural"] * len(pool)
    else:
        modes = assign_modes(len(pool), job.modes, job.seed)
    items = []
    for i, (rec, mode) in enumerate(zip(pool, modes, strict=True)):
        multi = (
            mode != "correct"
            and not controls
            and stable_fraction(f"{job.seed}:multi:{rec.id}") < job.multi_turn
        )
        follow = pool[(i + 1) % len(pool)] if multi and mode in ("recast", "expansion") else None
        if follow is rec:
            multi, follow = False, None
        items.append(PlanItem(idx=i, record=rec, mode=mode, follow=follow, multi=multi))
    return items
