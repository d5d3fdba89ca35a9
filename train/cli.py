"""``tutor data ...`` and ``tutor train ...``: the training pipeline's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from common.files import atomic_write_text, dumps_jsonl, read_jsonl
from common.paths import tutor_home

data_app = typer.Typer(
    help="Learner-error data: splits, dialogue generation, gates, mixes.", no_args_is_help=True
)
train_app = typer.Typer(help="LoRA SFT and export.", no_args_is_help=True)

HomeOpt = Annotated[Path | None, typer.Option(help="TUTOR_HOME (default ~/.cache/tutor)")]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="learner data (TUTOR_DATA_DIR, default ../shared/data)")
]


@data_app.command("split")
def data_split(
    source: Annotated[list[str] | None, typer.Option(help="jfleg, cowsl2h, mucgec, l1bank")] = None,
    home: HomeOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Write the fixed train/eval split of each source with its manifest (eval/ reads it)."""
    from common.corpora import SOURCES
    from common.data import split_dir, write_splits

    manifest = write_splits(source or SOURCES, root=data_dir, home=home)
    for name, info in manifest["sources"].items():
        c = info["counts"]
        typer.echo(f"{name:8} train {c['train']['rows']:6}  eval {c['eval']['rows']:6}")
    typer.echo(f"manifest: {split_dir(home) / 'manifest.json'}")


@data_app.command("generate")
def data_generate(
    recipe: Annotated[Path | None, typer.Argument(help="a recipe YAML (all its jobs)")] = None,
    job: Annotated[list[str] | None, typer.Option(help="only these jobs of the recipe")] = None,
    source: Annotated[str | None, typer.Option(help="ad hoc job: the source")] = None,
    variant: Annotated[str, typer.Option(help="ad hoc job: the variant")] = "tutor",
    split: Annotated[str, typer.Option(help="ad hoc job: train or eval")] = "train",
    learner: Annotated[str | None, typer.Option(help="ad hoc job: l2 or heritage")] = None,
    limit: Annotated[int | None, typer.Option(help="ad hoc job: at most this many")] = None,
    modes: Annotated[str, typer.Option(help="interleave or block:N")] = "interleave",
    multi_turn: Annotated[float, typer.Option(help="share of two-exchange dialogues")] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="ad hoc job: output JSONL")] = None,
    teacher_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible /v1 URL of a teacher model")
    ] = None,
    teacher_model: Annotated[str, typer.Option(help="the teacher's model id")] = "tutor",
    teacher_key: Annotated[str, typer.Option(envvar="TUTOR_TEACHER_API_KEY")] = "none",
    concurrency: Annotated[int, typer.Option(help="teacher requests in flight")] = 4,
    retries: Annotated[int, typer.Option(help="teacher retries per request")] = 4,
    max_rate: Annotated[float | None, typer.Option(help="at most this many rows/s")] = None,
    restart: Annotated[bool, typer.Option(help="discard earlier output and start over")] = False,
    home: HomeOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Turn error records into tutoring dialogues; rerun the same command to resume."""
    from train.generate import generate_dialogues
    from train.generate_plan import GenJob
    from train.generate_replies import TeacherGenerator
    from train.mix import Recipe

    jobs: list[tuple[GenJob, Path]] = []
    if recipe is not None:
        r = Recipe.load(recipe)
        for name, j in r.jobs.items():
            if not job or name in job:
                jobs.append((j, r.generated_path(name, home)))
    elif source:
        name = out.stem if out else f"{source}-{variant}-{split}"
        j = GenJob(
            name=name,
            source=source,
            variant=variant,
            split=split,
            learner=learner,
            limit=limit,
            modes=modes,
            multi_turn=multi_turn,
            seed=seed,
        )

        jobs.append((j, out or tutor_home(home) / "data" / "generated" / f"{name}.jsonl"))
    else:
        raise typer.BadParameter("give a recipe or --source")
    for j, path in jobs:
        gen = None
        if teacher_url:
            gen = TeacherGenerator(
                teacher_url,
                teacher_model,
                api_key=teacher_key,
                concurrency=concurrency,
                retries=retries,
            )
        res = generate_dialogues(
            j,
            path,
            generator=gen,
            home=home,
            data_root=data_dir,
            restart=restart,
            max_rate=max_rate,
        )
        typer.echo(
            f"{j.name}: {res.written} written, {res.skipped} already there, "
            f"{res.total} planned -> {res.path}"
        )


@data_app.command("gate")
def data_gate(
    inputs: Annotated[list[Path], typer.Argument(help="generated JSONL files")],
    out: Annotated[Path | None, typer.Option(help="write the kept rows here")] = None,
) -> None:
    """Run the quality gates over generated dialogues and print the drop report."""
    from train.gates import GateReport

    report = GateReport()
    kept = [r for p in inputs for r in read_jsonl(p) if report.check(r)]
    if out:
        atomic_write_text(out, dumps_jsonl(kept))
    typer.echo(json.dumps(report.to_dict(), indent=2))


@data_app.command("build")
def data_build(
    recipe: Annotated[Path, typer.Argument(help="the recipe YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="sets to build (all)")] = None,
    home: HomeOpt = None,
) -> None:
    """Gate, mix by the recipe's ratios and write train/eval JSONL + manifest per set."""
    from train.mix import Recipe, build_set

    r = Recipe.load(recipe)
    for name in set_ or list(r.sets):
        m = build_set(r, name, home=home)
        typer.echo(
            f"{name}: train {m['train']['rows']} {m['train']['by_mode']}  eval {m['eval']['rows']}"
            f"  dropped {m['gates']['dropped']} -> {r.set_dir(name, home)}"
        )


@train_app.command("sft")
def train_sft(
    config: Annotated[Path | None, typer.Option(help="YAML config (see train/configs/)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override: section.key=value")
    ] = None,
    help_config: Annotated[bool, typer.Option(help="list every config field and exit")] = False,
) -> None:
    """LoRA SFT (TRL SFTTrainer + PEFT); checkpoints are scored and registered."""
    from train.sft import run_sft
    from train.sft_config import config_help, load_config

    if help_config:
        typer.echo(config_help())
        return
    cfg = load_config(config, set_ or [])
    result = run_sft(cfg)
    typer.echo(f"run: {result.run_dir}  versions: {', '.join(result.versions) or '-'}")


@train_app.command("all")
def train_all(
    phase: Annotated[
        list[str] | None,
        typer.Option(
            help="only these phases: split, generate, build, stage1, corrector[:variant], "
            "stage2[:variant]"
        ),
    ] = None,
    stage1_version: Annotated[
        str | None, typer.Option(help="Stage 2 starts from this (default: Stage 1's last)")
    ] = None,
    variant: Annotated[list[str] | None, typer.Option(help="Stage 2 variants")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override for every SFT run")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Split, generate, build, Stage 1, the English corrector, Stage 2 for every variant:
    resumable, one bar a phase."""
    from train.pipeline import STAGE2_VARIANTS, Plan, run_all

    plan = Plan(
        variants=tuple(variant or STAGE2_VARIANTS),
        stage1_version=stage1_version,
        home=home,
        overrides=set_ or [],
    )
    total = sum(r.seconds for r in run_all(plan, phase))
    typer.echo(f"done in {total / 60:.1f} min")


@train_app.command("sweep")
def train_sweep(
    config: Annotated[Path | None, typer.Option(help="YAML config (see train/configs/)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override: section.key=value")
    ] = None,
    batch: Annotated[list[int] | None, typer.Option(help="batch sizes to time")] = None,
    lr: Annotated[list[float] | None, typer.Option(help="learning rates to compare")] = None,
    speed_steps: Annotated[int, typer.Option(help="steps per batch-size point")] = 6,
    lr_steps: Annotated[int, typer.Option(help="steps per learning-rate point")] = 24,
    name: Annotated[str, typer.Option(help="$TUTOR_HOME/sweeps/<name>")] = "sweep",
    home: HomeOpt = None,
) -> None:
    """Batch size by measured tokens/s, then learning rate by held-out perplexity."""
    from train.sweep import sweep, table

    result = sweep(
        config,
        set_ or [],
        batches=batch or [4, 8, 16],
        lrs=lr or [1e-4, 3e-4, 6e-4],
        speed_steps=speed_steps,
        lr_steps=lr_steps,
        out=tutor_home(home) / "sweeps" / name,
    )
    typer.echo(table(result))


@train_app.command("export-ollama")
def train_export_ollama(
    adapter: Annotated[str, typer.Argument(help="adapter folder or registry name (tutor@3)")],
    out: Annotated[Path, typer.Option(help="folder for the Modelfile")],
    base: Annotated[str, typer.Option(help="Ollama's FROM for the base model")] = "qwen3:8b",
    name: Annotated[str | None, typer.Option(help="model name, for the printed command")] = None,
    merged: Annotated[bool, typer.Option(help="merge LoRA into the base weights")] = False,
    base_model: Annotated[
        str | None, typer.Option(help="merged: the transformers base (preset, folder, hub id)")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Write an Ollama Modelfile with ADAPTER (or FROM merged weights)."""
    from train.export import export_ollama

    path = export_ollama(adapter, out, base=base, merged=merged, base_model=base_model, home=home)
    typer.echo(f"wrote {path}\nollama create {name or out.name} -f {path}")


cli = typer.Typer(no_args_is_help=True)
cli.add_typer(data_app, name="data")
cli.add_typer(train_app, name="train")

if __name__ == "__main__":
    cli()
