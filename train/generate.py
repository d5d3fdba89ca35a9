"""Error records -> tutoring dialogues, resumable after a crash or a kill.

This module owns the run: load and derive the records, plan the job, skip the rows the output
file already holds, and drive the generator with a bounded window of dialogues in flight. Its
pieces live beside it, one concern each: the job and its plan (train/generate_plan.py), the reply
generators (train/generate_replies.py), one dialogue's assembly (train/generate_dialogue.py) and
the resumable writer (train/generate_writer.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data import load_split
from common.records import ErrorRecord
from train.generate_dialogue import make_dialogue, variant_language
from train.generate_plan import GenJob, plan
from train.generate_replies import TemplateGenerator
from train.generate_writer import ResumableJsonl
from train.synth import derive


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
