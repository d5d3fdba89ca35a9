"""The fixed train/eval split that train/ learns from and eval/ reads too (``load_split``).

The shared data folder is read-only input. Everything derived (splits, manifests) is written under
``$TUTOR_HOME/data`` with a manifest naming the input files' hashes, the seed and the licences, so
a split can be checked against the files it came from. The record type is in common/records.py,
the per-corpus loaders in common/corpora.py and the error categories in
common/error_categories.py; the split keeps this module's name, which eval/ and the docs use
(``common.data.load_split``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.corpora import LICENCES, SOURCES, input_files, load_source
from common.files import atomic_write_text, dumps_jsonl, read_jsonl, sha256_file
from common.paths import data_dir, tutor_home
from common.records import ErrorRecord

SPLIT_SEED = 20250601
SPLIT_VERSION = 1

# Fraction of each source's groups held out for evaluation; never trained on.
EVAL_FRACTION = {"jfleg": 0.2, "cowsl2h": 0.1, "mucgec": 0.2, "l1bank": 0.25}


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
