"""A short measured sweep before a long run: tokens/s per batch size, held-out loss per rate.

The machine decides the batch size (throughput on 2 CPU cores is not what a GPU would suggest),
and a few dozen steps at each learning rate show which one learns fastest without diverging.
Every point is a real short run of :func:`train.sft.run_sft` with overrides, written under
``$TUTOR_HOME/sweeps/<name>``, nothing registered. The table goes to stdout and ``sweep.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import atomic_write_text, read_jsonl
from train.sft import run_sft
from train.sft_config import load_config


@dataclass
class SweepPoint:
    batch: int
    lr: float
    steps: int
    tokens_per_s: float
    examples_per_s: float
    train_loss: float | None
    heldout_ppl: float | None
    seconds: float


def run_point(
    config: Path | str | None,
    overrides: list[str],
    *,
    batch: int,
    lr: float,
    steps: int,
    out: Path,
) -> SweepPoint:
    run_dir = out / f"b{batch}-lr{lr:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(
        config,
        [
            *overrides,
            f"run.output_dir={run_dir}",
            "run.register=false",
            "run.resume=false",
            f"training.per_device_train_batch_size={batch}",
            f"training.learning_rate={lr}",
            f"training.max_steps={steps}",
            f"training.save_steps={steps}",
            "training.warmup_steps=0",
            f"training.logging_steps={max(1, steps // 4)}",
        ],
    )
    result = run_sft(cfg)
    progress = list(read_jsonl(run_dir / "progress.jsonl"))
    # The first log interval includes the model's warm-up; rate from the later ones.
    later = progress[1:] or progress
    rate = sum(p["tokens_per_s"] for p in later) / max(1, len(later))
    tokens = progress[-1]["tokens"] if progress else 0.0
    examples_rate = rate * batch * steps / tokens if tokens else 0.0
    final = [m for m in result.metrics if m.get("step") == steps]
    ppl = final[-1].get("eval_ppl_adapter") if final else None
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return SweepPoint(
        batch=batch,
        lr=lr,
        steps=steps,
        tokens_per_s=round(rate, 1),
        examples_per_s=round(examples_rate, 3),
        train_loss=progress[-1]["loss"] if progress else None,
        heldout_ppl=None if ppl is None or math.isnan(ppl) else round(ppl, 3),
        seconds=round(result.seconds, 1),
    )


def sweep(
    config: Path | str | None,
    overrides: list[str],
    *,
    batches: list[int],
    lrs: list[float],
    speed_steps: int,
    lr_steps: int,
    out: Path,
) -> dict[str, Any]:
    """Phase 1: each batch size at the config's rate for ``speed_steps`` (tokens/s). Phase 2:
    each rate at the fastest batch size for ``lr_steps`` (held-out perplexity). With
    ``speed_steps=0`` phase 1 is skipped and the first batch size is used."""
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config, overrides)
    lr0 = float(base.training.get("learning_rate", 2e-4))
    speed = [
        run_point(config, overrides, batch=b, lr=lr0, steps=speed_steps, out=out)
        for b in (batches if speed_steps > 0 else [])
    ]
    best_batch = max(speed, key=lambda p: p.tokens_per_s).batch if speed else batches[0]
    rates = [
        run_point(config, overrides, batch=best_batch, lr=lr, steps=lr_steps, out=out) for lr in lrs
    ]
    scored = [p for p in rates if p.heldout_ppl is not None]
    best_lr = min(scored, key=lambda p: p.heldout_ppl).lr if scored else lr0
    result = {
        "config": str(config),
        "overrides": overrides,
        "speed": [p.__dict__ for p in speed],
        "rates": [p.__dict__ for p in rates],
        "chosen": {"batch": best_batch, "learning_rate": best_lr},
    }
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    head = "| phase | batch | lr | steps | tokens/s | examples/s | train loss | held-out ppl | s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for phase in ("speed", "rates"):
        for p in result[phase]:
            loss = "-" if p["train_loss"] is None else f"{p['train_loss']:.3f}"
            ppl = "-" if p["heldout_ppl"] is None else f"{p['heldout_ppl']:.2f}"
            lines.append(
                f"| {phase} | {p['batch']} | {p['lr']:g} | {p['steps']} | {p['tokens_per_s']:.0f} "
                f"| {p['examples_per_s']:.2f} | {loss} | {ppl} | {p['seconds']:.0f} |"
            )
    c = result["chosen"]
    lines.append(f"\nchosen: batch {c['batch']}, learning rate {c['learning_rate']:g}")
    return "\n".join(lines)
