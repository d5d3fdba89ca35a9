"""Where an SFT run's chats come from: a ``mix:<recipe>/<set>`` or a JSONL path, and its rows.

Separate from the config (what was asked for) and the run (what is done with the rows): this is
the one place that maps a ``data.train`` reference to files on disk.
"""

from __future__ import annotations

from pathlib import Path

from common.files import read_jsonl
from train.sft_config import SFTRunConfig


def resolve_data(cfg: SFTRunConfig) -> tuple[Path, Path | None]:
    ref = cfg.data.train
    if ref.startswith("mix:"):
        recipe, _, name = ref[4:].partition("/")
        folder = cfg.home / "data" / "mixes" / recipe / name
        train = folder / "train.jsonl"
        evalp = Path(cfg.data.eval) if cfg.data.eval else folder / "eval.jsonl"
    else:
        train = Path(ref)
        evalp = Path(cfg.data.eval) if cfg.data.eval else None
    if not train.exists():
        raise FileNotFoundError(f"{train} missing: build it with `tutor data build`")
    return train, evalp if evalp and evalp.exists() else None


def _chats(path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    rows = [r["messages"] for r in read_jsonl(path)]
    return rows[:limit] if limit else rows
