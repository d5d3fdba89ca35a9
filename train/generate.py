"""Error records -> tutoring dialogues, resumable after a crash or a kill.

A job is planned first: which records, in which order, with which scaffolding mode and whether the
dialogue has a second exchange. The plan is a pure function of the job and the split, so a resumed
run regenerates exactly the rows that are missing. Rows go to an append-only JSONL file, one
``write`` per row; a progress index beside it records the plan's hash and how far the file is known
to be good. On start the file is scanned, a torn last line (a kill mid-write) is cut off, and the
row indices already present are skipped: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data import ErrorRecord, load_split
from common.files import atomic_write_text
from common.templates import NATURAL_ECHO_SHARE, self_repair, stable_fraction, tutor_reply
from train.synth import derive

MODES = ("recast", "elicitation", "expansion", "metalinguistic")
TASKS = ("tutor", "correct")
LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "zh": "Mandarin Chinese"}


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
class Turn:
    """What one assistant turn has to do: the gates check each against its own target."""

    mode: str  # one of MODES, or "confirm" (praise a self-repair, using the corrected form)
    utterance: str
    correction: str
    category: str | None = None


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
        return [MODES[(i // size) % len(MODES)] for i in range(n)]
    if scheme != "interleave":
        raise ValueError(f"unknown mode assignment {scheme!r}: 'interleave' or 'block:N'")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        block = list(MODES)
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


# -- generators --------------------------------------------------------------------------------


@dataclass
class DialogueContext:
    """Everything a generator needs to write the next assistant turn."""

    key: str
    language: str
    system: str
    history: list[dict[str, str]]  # the conversation so far, ending with the learner's turn
    turn: Turn
    natural_echo: float = NATURAL_ECHO_SHARE  # share of error-free turns answered with an echo


class TemplateGenerator:
    """Offline and deterministic."""

    name = "template"

    async def reply(self, ctx: DialogueContext) -> str:
        t = ctx.turn
        return tutor_reply(
            t.mode,
            t.utterance,
            t.correction,
            ctx.language,
            t.category,
            ctx.key,
            natural_echo=ctx.natural_echo,
        )


MODE_INSTRUCTIONS = {
    "recast": "Recast: answer naturally, using the corrected form inside your reply, without "
    "pointing at the error.",
    "expansion": "Expansion: use the corrected form and add a little more language around it "
    "(a richer word, a longer phrase) the learner can borrow.",
    "elicitation": "Elicitation: do NOT give the correct form. Repeat the learner's sentence up "
    "to the error and let them finish it, or ask how they would say it another way.",
    "metalinguistic": "Metalinguistic hint: give a short clue about the rule (for example 'think "
    "about the time') WITHOUT giving the corrected form.",
    "natural": "The learner's sentence is correct: answer its content naturally, change none of "
    "their words, and do not correct or comment on the language.",
    "confirm": "The learner corrected themselves: confirm warmly using the corrected sentence, "
    "then continue the conversation.",
}


class TeacherGenerator:
    """A teacher model behind any OpenAI-compatible endpoint, with bounded concurrency and
    retries with exponential backoff and jitter."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "none",
        concurrency: int = 4,
        retries: int = 4,
        backoff: float = 0.5,
        timeout: float = 120.0,
        temperature: float = 0.7,
        max_tokens: int = 160,
    ) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout
        )
        self.model = model
        self.name = f"teacher:{model}"
        self.semaphore = asyncio.Semaphore(concurrency)
        self.retries, self.backoff = retries, backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.calls = 0
        self.failures = 0

    def messages(self, ctx: DialogueContext) -> list[dict[str, str]]:
        t = ctx.turn
        lang = LANGUAGE_NAMES[ctx.language]
        brief = (
            f"You write the tutor's next reply in a {lang} conversation with a language learner."
            f"\nThe tutor's persona:\n{ctx.system}\n\nMove for this reply: "
            f"{MODE_INSTRUCTIONS[t.mode]}\nNever say that something is wrong or a mistake. "
            f"Write only the tutor's words, in {lang}, at most three short sentences, and end "
            "with a short question that keeps the conversation going."
        )
        convo = "\n".join(f"{m['role']}: {m['content']}" for m in ctx.history)
        ask = (
            f"Conversation so far:\n{convo}\n\nThe learner's last sentence: {t.utterance}\n"
            f"A corrected version (for you only): {t.correction}\n\nThe tutor's reply:"
        )
        return [{"role": "system", "content": brief}, {"role": "user", "content": ask}]

    async def reply(self, ctx: DialogueContext) -> str:
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        delay = self.backoff
        async with self.semaphore:
            for attempt in range(self.retries + 1):
                self.calls += 1
                try:
                    out = await self.client.chat.completions.create(
                        model=self.model,
                        messages=self.messages(ctx),
                        temperature=self.temperature,
                        max_tokens=self.max_tokens,
                        seed=int(hashlib.sha256(ctx.key.encode()).hexdigest()[:6], 16),
                    )
                    return (out.choices[0].message.content or "").strip()
                except (APIConnectionError, APITimeoutError, APIStatusError) as exc:
                    retryable = not isinstance(exc, APIStatusError) or exc.status_code in (
                        408,
                        409,
                        429,
                        500,
                        502,
                        503,
                        504,
                    )
                    self.failures += 1
                    if not retryable or attempt == self.retries:
                        raise
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay *= 2
        raise AssertionError("unreachable")


# -- one dialogue ------------------------------------------------------------------------------


def system_prompt_for(variant_id: str, mode: str, key: str, catalogue: Path | None = None) -> str:
    """The persona the gateway will add, with the mode's hint; plain recasts also appear without
    a hint half of the time, because recasting is what a variant does when nobody asks. An
    error-free turn (``natural``) comes half the time with no hint and half with any of the four:
    a learner who asked for recasts and wrote a correct sentence gets no correction."""
    from common.settings import DEFAULT_CATALOGUE

    variant = _catalogue(catalogue or DEFAULT_CATALOGUE).variants[variant_id]
    if mode in ("recast", "natural") and stable_fraction(f"hint:{key}") < 0.5:
        return variant.system_prompt()
    if mode == "natural":
        return variant.system_prompt(scaffolding=MODES[int(stable_fraction(f"m:{key}") * 4)])
    return variant.system_prompt(scaffolding=mode)


_CATALOGUES: dict[Path, Any] = {}


def _catalogue(path: Path) -> Any:
    from adapters.variants import Catalogue

    if path not in _CATALOGUES:
        _CATALOGUES[path] = Catalogue.load(path)
    return _CATALOGUES[path]


def variant_language(variant_id: str, catalogue: Path | None = None) -> str:
    from common.settings import DEFAULT_CATALOGUE

    return _catalogue(catalogue or DEFAULT_CATALOGUE).variants[variant_id].language


def origin(rec: ErrorRecord) -> str:
    """real (a learner wrote it), synthetic (an error injected by train/synth.py) or control
    (an error-free sentence): the manifest keeps them apart."""
    if rec.meta.get("control"):
        return "control"
    return "synthetic" if rec.meta.get("synthetic") else "real"


def _variant(variant_id: str) -> Any:
    from common.settings import DEFAULT_CATALOGUE

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


# -- the resumable writer ----------------------------------------------------------------------


@dataclass
class ResumeState:
    done: set[int] = field(default_factory=set)
    truncated_bytes: int = 0
    duplicates: int = 0


class ResumableJsonl:
    """Append-only JSONL plus a progress index (plan hash, good byte offset, rows done)."""

    def __init__(self, path: Path, plan_hash: str, total: int, *, sync_every: int = 16) -> None:
        self.path = Path(path)
        self.index_path = self.path.with_name(self.path.name + ".progress.json")
        self.plan_hash, self.total, self.sync_every = plan_hash, total, sync_every
        self._fh: Any = None
        self._since_sync = 0
        self.done: set[int] = set()

    def recover(self, *, restart: bool = False) -> ResumeState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if restart:
            self.path.unlink(missing_ok=True)
            self.index_path.unlink(missing_ok=True)
        if self.index_path.exists():
            index = json.loads(self.index_path.read_text())
            if index.get("plan") != self.plan_hash:
                raise RuntimeError(
                    f"{self.path} was written by a different plan ({index.get('plan')} != "
                    f"{self.plan_hash}); pass --restart to start over or choose another --out"
                )
        state = ResumeState()
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                data = f.read()
            pos = 0
            while pos < len(data):
                end = data.find(b"\n", pos)
                if end == -1:
                    break  # a torn last line: never completed, so never counted
                try:
                    idx = json.loads(data[pos:end])["idx"]
                except (ValueError, KeyError):
                    break
                if idx in state.done:
                    state.duplicates += 1
                state.done.add(idx)
                pos = good = end + 1
            state.truncated_bytes = len(data) - good
            if state.truncated_bytes:
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self.done = set(state.done)
        self._write_index()
        return state

    def __enter__(self) -> ResumableJsonl:
        self._fh = open(self.path, "ab")  # noqa: SIM115 (closed in __exit__)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh:
            self._sync()
            self._fh.close()
            self._fh = None

    def append(self, row: dict[str, Any]) -> None:
        if row["idx"] in self.done:
            return
        self._fh.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode())
        self._fh.flush()
        self.done.add(row["idx"])
        self._since_sync += 1
        if self._since_sync >= self.sync_every:
            self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._since_sync = 0
        self._write_index()

    def _write_index(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        index = {"plan": self.plan_hash, "total": self.total, "done": len(self.done), "bytes": size}
        atomic_write_text(self.index_path, json.dumps(index, sort_keys=True) + "\n")


# -- the run -----------------------------------------------------------------------------------


@dataclass
class GenerateResult:
    path: Path
    total: int
    written: int
    skipped: int
    truncated_bytes: int
    seconds: float


def generate_dialogues(
    job: GenJob,
    out: Path,
    *,
    generator: Any | None = None,
    records: Sequence[ErrorRecord] | None = None,
    home: Path | None = None,
    data_root: Path | None = None,
    restart: bool = False,
    max_rate: float | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> GenerateResult:
    """Run (or resume) one job into ``out``; returns what this call wrote."""
    generator = generator or TemplateGenerator()
    if job.language is None:
        job.language = variant_language(job.variant)
    if records is None:
        records = load_split(job.source, job.split, root=data_root, home=home)
    records = derive(list(records), job.derive, seed=job.seed, learner=job.as_learner)
    items = plan(job, records)
    writer = ResumableJsonl(out, job.plan_hash(), len(items))
    state = writer.recover(restart=restart)
    todo = [it for it in items if it.idx not in state.done]
    t0 = time.monotonic()
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        desc=job.name,
        unit="dlg",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )

    async def run() -> int:
        written = 0
        semaphore = getattr(generator, "semaphore", None)
        # A concurrent generator keeps 2x its concurrency in flight and writes rows as they
        # finish; a sequential one writes in plan order, so its file is byte-reproducible.
        window = semaphore._value * 2 if semaphore is not None else 1
        with writer:
            pending: set[asyncio.Task[dict[str, Any]]] = set()
            queue = iter(todo)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                        break
                    pending.add(asyncio.ensure_future(make_dialogue(job, nxt, generator)))
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(finished, key=lambda t: t.result()["idx"]):
                    row = task.result()
                    writer.append(row)
                    written += 1
                    bar.update(1)
                    if on_row:
                        on_row(row)
                    if max_rate:
                        await asyncio.sleep(1.0 / max_rate)
        return written

    try:
        written = asyncio.run(run())
    finally:
        bar.close()
    return GenerateResult(
        path=Path(out),
        total=len(items),
        written=written,
        skipped=len(items) - len(todo),
        truncated_bytes=state.truncated_bytes,
        seconds=time.monotonic() - t0,
    )
