"""One plan item -> one training row: the system prompt, the learner turns, the hidden note.

It renders the chat as the gateway will send it (the variant's persona and mode hint from the
catalogue, the grounding note, the corrector turn) and asks a generator for each tutor turn.
Separate from the generators (which only write a reply) and from the writer (which only stores
rows); the catalogue is loaded inside the functions, once per file.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from adapters.variants import Catalogue
from common.modes import SCAFFOLDING
from common.records import ErrorRecord
from common.settings import DEFAULT_CATALOGUE
from common.templates import NATURAL_ECHO_SHARE, self_repair, stable_fraction
from train.generate_plan import GenJob, PlanItem
from train.generate_replies import DialogueContext, Turn


def system_prompt_for(variant_id: str, mode: str, key: str, catalogue: Path | None = None) -> str:
    """The persona the gateway will add, with the mode's hint; plain recasts also appear without
    a hint half of the time, because recasting is what a variant does when nobody asks. An
    error-free turn (``natural``) comes half the time with no hint and half with any of the four:
    a learner who asked for recasts and wrote a correct sentence gets no correction."""

    variant = _catalogue(catalogue or DEFAULT_CATALOGUE).variants[variant_id]
    if mode in ("recast", "natural") and stable_fraction(f"hint:{key}") < 0.5:
        return variant.system_prompt()
    if mode == "natural":
        return variant.system_prompt(scaffolding=SCAFFOLDING[int(stable_fraction(f"m:{key}") * 4)])
    return variant.system_prompt(scaffolding=mode)


_CATALOGUES: dict[Path, Any] = {}


def _catalogue(path: Path) -> Any:

    if path not in _CATALOGUES:
        _CATALOGUES[path] = Catalogue.load(path)
    return _CATALOGUES[path]


def variant_language(variant_id: str, catalogue: Path | None = None) -> str:

    return _catalogue(catalogue or DEFAULT_CATALOGUE).variants[variant_id].language


def origin(rec: ErrorRecord) -> str:
    """real (a learner wrote it), synthetic (an error injected by train/synth.py) or control
    (an error-free sentence): the manifest keeps them apart."""
    if rec.meta.get("control"):
        return "control"
    return "synthetic" if rec.meta.get("synthetic") else "real"


def _variant(variant_id: str) -> Any:

    return _catalogue(DEFAULT_CATALOGUE).variants[variant_id]


def _ground(job: GenJob, key: str, messages: list[dict[str, str]], turn: Turn) -> bool:
    """For a `grounded` share of the dialogues, put the gateway's hidden note (what the learner
    meant, or that the sentence is right) after the last learner turn, as serving does."""
    if job.grounded <= 0 or stable_fraction(f"grounded:{key}") >= job.grounded:
        return False
    variant = _variant(job.variant)
    note = variant.grounding_note(turn.utterance, turn.correction)
    # single-turn only: an earlier tutor turn in the history made the move it was asked for, and
    # training it under a prompt without the move would teach moves nobody asked for
    single = sum(m["role"] == "user" for m in messages) == 1
    if job.note_drops_move and single and note == variant.grounding["correct"]:
        messages[:] = variant.without_move_hint(messages)
    messages.append({"role": "system", "content": note})
    return True


async def make_dialogue(job: GenJob, item: PlanItem, generator: Any) -> dict[str, Any]:
    rec = item.record
    key = f"{job.name}:{item.idx}:{rec.id}"
    language = variant_language(job.variant)
    if item.mode == "correct":
        row = _row(job, item, language, correction_messages(job.variant, rec), grounded=False)
        return {**row, "generator": "reference"}  # the gold correction is the answer
    system = system_prompt_for(job.variant, item.mode, key)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": rec.utterance}]
    turns = [Turn(item.mode, rec.utterance, rec.correction, rec.category)]
    echo = NATURAL_ECHO_SHARE if job.natural_echo is None else job.natural_echo
    grounded = False
    if not item.multi:
        grounded = _ground(job, key, messages, turns[0])
    # the prompt as trained: a "correct" note may have taken the move out (note_drops_move)
    ctx = DialogueContext(key, language, messages[0]["content"], _history(messages), turns[0], echo)
    messages.append({"role": "assistant", "content": await generator.reply(ctx)})
    if item.multi:
        if item.follow is not None:  # the learner goes on, with a new error
            nxt = item.follow
            learner = nxt.utterance
            turn = Turn(item.mode, nxt.utterance, nxt.correction, nxt.category)
        else:  # after an elicitation or a hint the learner repairs: the tutor confirms
            learner = self_repair(rec.correction, language, key)
            # the repaired sentence is what the corrector sees: it is right as it stands
            turn = Turn("confirm", rec.utterance, rec.correction, rec.category)
        messages.append({"role": "user", "content": learner})
        turns.append(turn)
        # the note is hidden: the client never sends an earlier one back, so only the last turn
        note_turn = Turn(turn.mode, learner, learner) if item.follow is None else turn
        grounded = _ground(job, key, messages, note_turn)
        ctx = DialogueContext(key + ":2", language, system, _history(messages), turn, echo)
        messages.append({"role": "assistant", "content": await generator.reply(ctx)})
    row = _row(job, item, language, messages, grounded=grounded, turns=turns)
    return {**row, "generator": generator.name}


def _history(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """What the learner and tutor said: no system messages (persona, hidden notes)."""
    return [m for m in messages if m["role"] != "system"]


def correction_messages(variant_id: str, rec: ErrorRecord) -> list[dict[str, str]]:
    """The corrector turn, as the gateway asks it: the corrected sentence, or the sentence as it
    stands when nothing is wrong (controls teach the corrector to leave right sentences alone)."""
    return [
        *_variant(variant_id).corrector_messages(rec.utterance),
        {"role": "assistant", "content": rec.correction},
    ]


def _row(
    job: GenJob,
    item: PlanItem,
    language: str,
    messages: list[dict[str, str]],
    *,
    grounded: bool,
    turns: list[Turn] | None = None,
) -> dict[str, Any]:
    rec = item.record
    if turns is None:
        turns = [Turn(item.mode, rec.utterance, rec.correction, rec.category)]
    return {
        "id": f"{job.name}-{item.idx:06d}",
        "idx": item.idx,
        "job": job.name,
        "record_id": rec.id,
        "source": rec.source,
        "origin": origin(rec),
        "language": language,
        "learner": rec.learner,
        "l1": rec.l1,
        "category": rec.category,
        "variant": job.variant,
        "mode": item.mode,
        "task": job.task,
        "grounded": grounded,
        "multi_turn": item.multi,
        "turns": [asdict(t) for t in turns],
        "messages": messages,
    }
