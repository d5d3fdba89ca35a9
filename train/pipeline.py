"""``tutor train all``: learner data to trained adapters in one command, resumable phase by phase.

Phases: the fixed split, dialogue generation, gated mixes, Stage 1, the English corrector of the
grounded recast from Stage 1 (when the recipe has its set), then Stage 2 for each of the four
variants from the chosen Stage 1 version. Every phase is idempotent or resumes (generation
skips rows already written, SFT continues from its last checkpoint, a finished run is skipped),
so after a kill or a session's end the same command carries on where it stopped. Evaluation and
shipping are separate steps on purpose: they need the serving stack (docs/EVAL.md), and a set is
shipped only when eval says it wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.data import write_splits
from common.paths import tutor_home
from train.generate import generate_dialogues
from train.mix import Recipe, build_set
from train.sft import run_sft
from train.sft_config import load_config

CONFIGS = Path(__file__).resolve().parent / "configs"
RECIPE = Path(__file__).resolve().parent / "recipes" / "tutor.yaml"
STAGE2_VARIANTS = ("tutor-es-l2", "tutor-es-heritage", "tutor-zh-l2", "tutor-zh-heritage")
# (variant, the recipe's set, config): a corrector trained from Stage 1 on corrector turns only,
# which a catalogue variant names as its `corrector:` (docs/TRAINING.md)
CORRECTORS = (("tutor-corrector", "corrector-en", CONFIGS / "corrector-en-smollm2.yaml"),)


@dataclass
class Plan:
    recipe: Path = RECIPE
    stage1_config: Path = CONFIGS / "stage1-smollm2.yaml"
    stage2_config: Path = CONFIGS / "stage2-smollm2.yaml"
    variants: tuple[str, ...] = STAGE2_VARIANTS
    correctors: tuple[tuple[str, str, Path], ...] = CORRECTORS
    stage1_version: str | None = None  # default: the Stage 1 run's last checkpoint
    home: Path | None = None
    overrides: list[str] = field(default_factory=list)  # applied to every SFT run


@dataclass
class PhaseResult:
    name: str
    seconds: float
    detail: str


def _stage1_version(plan: Plan) -> str:

    if plan.stage1_version:
        return plan.stage1_version
    cfg = load_config(plan.stage1_config, [*plan.overrides, *_home(plan)])
    summary = cfg.output_dir / "summary.json"  # the run's folder does not depend on its data
    if not summary.exists():
        raise RuntimeError(f"Stage 1 has not finished ({summary} missing)")
    versions = json.loads(summary.read_text())["versions"]
    if not versions:
        # A resumed run registers only the checkpoints it wrote itself: ask the registry.
        from train.sft_registry import _registry

        reg, _ = _registry(cfg)
        mine = [v for v in reg.list(cfg.run.variant) if (v.source or {}).get("run") == cfg.run.name]
        if not mine:
            raise RuntimeError(f"Stage 1 run {cfg.run.name} registered no version")
        return mine[-1].name
    return versions[-1]


def _home(plan: Plan) -> list[str]:
    return [f"run.home={plan.home}"] if plan.home else []


def _sft(config: Path, overrides: list[str]) -> str:

    cfg = load_config(config, overrides)
    if (cfg.output_dir / "summary.json").exists():
        return f"{cfg.run.name}: finished earlier ({cfg.output_dir / 'summary.json'})"
    result = run_sft(cfg)
    return f"{cfg.run.name}: {', '.join(result.versions) or 'no new version'}"


def phases(plan: Plan) -> list[tuple[str, Callable[[], str]]]:

    recipe = Recipe.load(plan.recipe)

    def split() -> str:
        m = write_splits(home=plan.home)
        return ", ".join(f"{k} {v['counts']['train']['rows']}" for k, v in m["sources"].items())

    def generate() -> str:
        written = 0
        for name, job in recipe.jobs.items():
            r = generate_dialogues(job, recipe.generated_path(name, plan.home), home=plan.home)
            written += r.written
        return f"{len(recipe.jobs)} jobs, {written} new rows"

    def build() -> str:
        rows = {n: build_set(recipe, n, home=plan.home)["train"]["rows"] for n in recipe.sets}
        return ", ".join(f"{k} {v}" for k, v in rows.items())

    def stage1() -> str:
        return _sft(
            plan.stage1_config,
            [f"data.train=mix:{recipe.name}/stage1", *plan.overrides, *_home(plan)],
        )

    def from_stage1(config: Path, set_name: str, variant: str, *more: str) -> Callable[[], str]:
        """An SFT run on one of the recipe's sets that starts from Stage 1's chosen version."""

        def run() -> str:
            return _sft(
                config,
                [
                    f"data.train=mix:{recipe.name}/{set_name}",
                    f"run.variant={variant}",
                    *more,
                    f"lora.init_adapter={_stage1_version(plan)}",
                    *plan.overrides,
                    *_home(plan),
                ],
            )

        return run

    def stage2(variant: str) -> Callable[[], str]:
        short = variant.removeprefix("tutor-")
        return from_stage1(
            plan.stage2_config, variant, variant, f"run.name=stage2-{short}-smollm2-v3"
        )

    return [
        ("split", split),
        ("generate", generate),
        ("build", build),
        ("stage1", stage1),
        *[
            (f"corrector:{v}", from_stage1(c, s, v))
            for v, s, c in plan.correctors
            if s in recipe.sets
        ],
        *[(f"stage2:{v}", stage2(v)) for v in plan.variants],
    ]


def run_all(plan: Plan, only: list[str] | None = None) -> list[PhaseResult]:
    """Run the phases in order (or only the named ones), a bar over the phases and each phase's
    own bar inside; a line per phase with its wall time goes to ``$TUTOR_HOME/logs``."""
    todo = [(n, f) for n, f in phases(plan) if not only or n in only or n.split(":")[0] in only]
    log = tutor_home(plan.home) / "logs" / "train-all.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    results = []
    bar = tqdm(todo, desc="train all", unit="phase", position=0, dynamic_ncols=True)
    for name, fn in bar:
        bar.set_postfix_str(name)
        t0 = time.monotonic()
        detail = fn()
        res = PhaseResult(name, round(time.monotonic() - t0, 1), detail)
        results.append(res)
        row: dict[str, Any] = {**res.__dict__, "at": time.time()}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(f"{name}: {detail} ({res.seconds:.0f} s)")
    return results
