"""Recipes: which dialogues to generate, and how to mix them into the Stage 1 and Stage 2 sets.

A recipe (YAML, see train/recipes/) names generation jobs and, per training set, the share of
each job. ``build_set`` gates every job's rows, samples them by the declared ratios with the
recipe's seed, and writes ``train.jsonl``, ``eval.jsonl`` and ``manifest.json`` atomically. Output
depends only on the recipe, the seed and the input files, so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.corpora import LICENCES
from common.data import split_dir
from common.files import atomic_write_text, dumps_jsonl, read_jsonl, sha256_file
from common.modes import sentences
from common.paths import tutor_home
from train.gates import GateReport
from train.generate_dialogue import variant_language
from train.generate_plan import GenJob

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass
class Component:
    job: str
    ratio: float


@dataclass
class SetSpec:
    name: str
    variant: str
    size: int
    components: list[Component]
    eval_jobs: list[str] = field(default_factory=list)
    eval_size: int | None = None


@dataclass
class Recipe:
    name: str
    seed: int
    jobs: dict[str, GenJob]
    sets: dict[str, SetSpec]
    path: Path | None = None
    # No reply sentence may appear in more than this share of a set's replies: a model trained
    # on a set where one catch-all hint is half the replies learns to say that hint.
    max_sentence_share: float = 0.03

    @classmethod
    def load(cls, path: Path | str) -> Recipe:
        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls.from_dict(raw, path=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | None = None) -> Recipe:
        seed = int(raw.get("seed", 0))
        jobs = {
            name: GenJob(name=name, **{"seed": seed, **spec})
            for name, spec in (raw.get("jobs") or {}).items()
        }
        sets = {}
        for name, spec in (raw.get("sets") or {}).items():
            comps = [Component(c["job"], float(c["ratio"])) for c in spec["components"]]
            s = SetSpec(
                name=name,
                variant=spec["variant"],
                size=int(spec["size"]),
                components=comps,
                eval_jobs=list(spec.get("eval", [])),
                eval_size=spec.get("eval_size"),
            )
            _check_set(s, jobs)
            sets[name] = s
        return cls(
            name=raw.get("name", path.stem if path else "recipe"),
            seed=seed,
            jobs=jobs,
            sets=sets,
            path=path,
            max_sentence_share=float(raw.get("max_sentence_share", 0.03)),
        )

    def generated_path(self, job: str, home: Path | None = None) -> Path:
        return tutor_home(home) / "data" / "generated" / self.name / f"{job}.jsonl"

    def set_dir(self, name: str, home: Path | None = None) -> Path:
        return tutor_home(home) / "data" / "mixes" / self.name / name


def _check_set(s: SetSpec, jobs: dict[str, GenJob]) -> None:
    """The eval split is never trained on: train components use train jobs, eval uses eval."""
    total = sum(c.ratio for c in s.components)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"set {s.name}: ratios sum to {total}, not 1")
    lang = variant_language(s.variant)
    for c in s.components:
        if c.job not in jobs:
            raise ValueError(f"set {s.name}: unknown job {c.job}")
        if jobs[c.job].split != "train":
            raise ValueError(f"set {s.name}: job {c.job} reads the eval split; it cannot train")
    for j in s.eval_jobs:
        if j not in jobs:
            raise ValueError(f"set {s.name}: unknown eval job {j}")
        if jobs[j].split != "eval":
            raise ValueError(f"set {s.name}: eval job {j} must read the eval split")
    if not lang:
        raise ValueError(f"set {s.name}: variant {s.variant} has no language")


def _sample(rows: list[dict[str, Any]], k: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = sorted(rows, key=lambda r: r["id"])
    rng.shuffle(rows)
    return rows[:k]


def _count(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r.get(key))] = out.get(str(r.get(key)), 0) + 1
    return dict(sorted(out.items()))


def sentence_shares(rows: list[dict[str, Any]], top: int = 5) -> list[tuple[str, float]]:
    """The sentences that recur most across the assistant replies, with the share of replies
    that contain each: how "template" a set reads."""

    counts: Counter[str] = Counter()
    replies = 0
    for r in rows:
        for m in r["messages"]:
            if m["role"] == "assistant":
                replies += 1
                counts.update(
                    {s.strip() for s in sentences(m["content"]) if any(c.isalnum() for c in s)}
                )
    return [(s, round(n / max(1, replies), 4)) for s, n in counts.most_common(top)]


def _training_row(row: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "id",
        "source",
        "origin",
        "record_id",
        "language",
        "learner",
        "variant",
        "mode",
        "category",
        "task",
        "grounded",
    )
    return {**{k: row.get(k) for k in keep}, "messages": row["messages"]}


def build_set(recipe: Recipe, name: str, *, home: Path | None = None) -> dict[str, Any]:
    """Gate, sample and write one set; returns its manifest."""
    spec = recipe.sets[name]
    rng = random.Random(f"{recipe.seed}:{name}")
    report = GateReport()
    inputs: dict[str, str] = {}
    train_rows: list[dict[str, Any]] = []
    components = {}
    lang = variant_language(spec.variant)

    def gated(job: str) -> list[dict[str, Any]]:
        path = recipe.generated_path(job, home)
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `tutor data generate` for job {job}")
        inputs[f"generated/{recipe.name}/{job}.jsonl"] = sha256_file(path)
        rows = [r for r in read_jsonl(path)]
        rows.sort(key=lambda r: r.get("idx", 0))
        return [r for r in rows if report.check(r)]  # each row against its own variant

    for comp in spec.components:
        rows = gated(comp.job)
        want = round(comp.ratio * spec.size)
        picked = _sample(rows, want, rng)
        components[comp.job] = {
            "declared_ratio": comp.ratio,
            "wanted": want,
            "available": len(rows),
            "taken": len(picked),
        }
        train_rows.extend(picked)
    train_rows.sort(key=lambda r: r["id"])
    rng.shuffle(train_rows)
    for c in components.values():
        c["achieved_ratio"] = round(c["taken"] / max(1, len(train_rows)), 4)

    eval_rows: list[dict[str, Any]] = []
    for job in spec.eval_jobs:
        eval_rows.extend(gated(job))
    eval_rows.sort(key=lambda r: r["id"])
    if spec.eval_size is not None:
        eval_rows = _sample(eval_rows, int(spec.eval_size), rng)
        eval_rows.sort(key=lambda r: r["id"])
    leaked = {r["record_id"] for r in train_rows} & {r["record_id"] for r in eval_rows}
    if leaked:
        raise RuntimeError(f"records in both train and eval: {sorted(leaked)[:5]}")

    out = recipe.set_dir(name, home)
    split_manifest = split_dir(home) / "manifest.json"
    if split_manifest.exists():
        inputs["splits/manifest.json"] = sha256_file(split_manifest)
    sources = sorted({r["source"].removeprefix("synth-") for r in train_rows + eval_rows})
    dialogues = [r for r in train_rows if r.get("task", "tutor") == "tutor"]
    shares = sentence_shares(dialogues)
    if shares and shares[0][1] > recipe.max_sentence_share:
        raise ValueError(
            f"set {name}: the sentence {shares[0][0]!r} is in {shares[0][1]:.1%} of the replies, "
            f"over the recipe's max_sentence_share {recipe.max_sentence_share:.0%}: add phrasings"
        )
    manifest = {
        "recipe": recipe.name,
        "recipe_sha256": sha256_file(recipe.path) if recipe.path else None,
        "set": name,
        "variant": spec.variant,
        "language": lang,
        "seed": recipe.seed,
        "train": {
            "rows": len(train_rows),
            "by_source": _count(train_rows, "source"),
            "by_mode": _count(train_rows, "mode"),
            "by_task": _count(train_rows, "task"),
            "grounded": sum(1 for r in train_rows if r.get("grounded")),
            "by_learner": _count(train_rows, "learner"),
            "by_origin": _count(train_rows, "origin"),
            "by_category": _count(train_rows, "category"),
            # over the tutor dialogues: corrector turns are not conversation
            "controls_share": round(
                sum(r.get("origin") == "control" for r in dialogues) / max(1, len(dialogues)), 4
            ),
            "top_sentences": [{"sentence": s, "share": v} for s, v in shares],
            "multi_turn": sum(1 for r in train_rows if r.get("multi_turn")),
            "components": components,
        },
        "eval": {
            "rows": len(eval_rows),
            "by_source": _count(eval_rows, "source"),
            "by_mode": _count(eval_rows, "mode"),
        },
        "gates": report.to_dict(),
        "inputs": dict(sorted(inputs.items())),
        "licences": {s: LICENCES[s] for s in sources},
    }
    atomic_write_text(out / "train.jsonl", dumps_jsonl(_training_row(r) for r in train_rows))
    atomic_write_text(out / "eval.jsonl", dumps_jsonl(_training_row(r) for r in eval_rows))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
