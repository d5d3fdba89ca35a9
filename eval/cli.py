"""``tutor eval ...``: suites, runs over the API, comparison and promotion, judge, A/B arena."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from common.files import atomic_write_text
from common.paths import tutor_home

app = typer.Typer(
    help="Side-by-side evaluation of tutoring quality, and the promotion decision.",
    no_args_is_help=True,
)
suite_app = typer.Typer(help="Evaluation suites from the held-out split.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")

HomeOpt = Annotated[Path | None, typer.Option(help="TUTOR_HOME (default ~/.cache/tutor)")]
BaseUrlOpt = Annotated[str, typer.Option(help="the gateway (or any OpenAI-compatible /v1)")]
KeyOpt = Annotated[str, typer.Option(envvar="TUTOR_EVAL_API_KEY", help="bearer key")]


def _settings(home: Path | None):  # noqa: ANN202
    """This machine's settings, with ``--home`` as TUTOR_HOME when given: the registry then
    defaults to the one in that home, as everything else the command reads and writes does."""
    from common.settings import Settings

    return Settings(home=home) if home is not None else Settings()


def _registry(settings, required: bool = False):  # noqa: ANN001, ANN202
    """The adapter registry of these settings, or None when there is none."""
    from adapters.registry import Registry

    # a PostgreSQL registry (a URL) always exists once reachable; only a file can be absent
    if not required and settings.registry_url is None and not settings.registry_path.exists():
        return None
    return Registry.from_settings(settings)


@suite_app.command("build")
def suite_build(
    recipe: Annotated[str, typer.Argument(help="a recipe YAML, or a name in eval/suites/")],
    home: HomeOpt = None,
) -> None:
    """Build <name>@<version> from a recipe (idempotent; a changed build needs a new version)."""
    from eval.suites import build_suite

    suite = build_suite(recipe, home=home)
    typer.echo(f"{suite.ref}: {json.dumps(suite.manifest['counts'], sort_keys=True)}")
    typer.echo(f"  {suite.path}")


@suite_app.command("list")
def suite_list(home: HomeOpt = None) -> None:
    """Built suites and their item counts."""
    from eval.suites import load_suite, suites_dir

    for p in sorted(suites_dir(home).glob("*@*")):
        if (p / "manifest.json").exists():
            s = load_suite(p)
            c = s.manifest["counts"]
            typer.echo(f"{s.ref:20} {c['items']:4} items  {json.dumps(c['by_language'])}")


@app.command("run")
def run(
    models: Annotated[str, typer.Option(help="comma-separated model ids: tutor,tutor@1,tutor@4")],
    suite: Annotated[str, typer.Option(help="name, name@version, or a suite folder")],
    base_url: BaseUrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = "unused",
    concurrency: Annotated[int, typer.Option(help="requests in flight")] = 4,
    out: Annotated[Path | None, typer.Option(help="run folder (default under TUTOR_HOME)")] = None,
    cache: Annotated[Path | None, typer.Option(help="reply cache (SQLite)")] = None,
    progress: Annotated[bool, typer.Option(help="tqdm progress bar")] = True,
    home: HomeOpt = None,
) -> None:
    """Send every suite item to every model through the API; cached by model version."""
    from eval.cache import ReplyCache
    from eval.runner import default_run_name, run_suite, runs_dir, write_run
    from eval.suites import load_suite

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise typer.BadParameter("no models given", param_hint="--models")
    s = load_suite(suite, home=home)
    store = ReplyCache(cache or tutor_home(home) / "eval" / "cache.sqlite")
    try:
        infos, records = asyncio.run(
            run_suite(
                s,
                names,
                base_url,
                cache=store,
                api_key=api_key,
                concurrency=concurrency,
                progress=progress,
            )
        )
        folder = out or runs_dir(home) / default_run_name(s, names)
        write_run(folder, suite=s, base_url=base_url, infos=infos, records=records)
    finally:
        store.close()
    asked = sum(not r.cached for r in records)
    typer.echo(f"{len(records)} replies ({asked} asked, {len(records) - asked} from the cache)")
    for m, info in infos.items():
        typer.echo(f"  {m:28} -> {info.adapter} (persona {info.persona or '-'})")
    typer.echo(f"run: {folder}")


@app.command("compare")
def compare(
    run: Annotated[str, typer.Argument(help="a run folder, or its name under TUTOR_HOME")],
    tolerance: Annotated[float, typer.Option(help="pedagogy scores this close are tied")] = 0.02,
    out: Annotated[Path | None, typer.Option(help="report folder (default <run>/report)")] = None,
    votes: Annotated[Path | None, typer.Option(help="arena votes (SQLite)")] = None,
    languages: Annotated[
        str | None, typer.Option(help="only these items' languages, e.g. en or en,es")
    ] = None,
    promote: Annotated[
        bool, typer.Option(help="promote the recommended version in the registry")
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(
            help="the run's base model (e.g. tutor-es-l2@base): ship-gate every other model "
            "against it; --promote then needs the recommended one to pass"
        ),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Compare the run's models; write report.md/.json and plots; recommend (and promote)."""
    from eval.arena import default_votes_path
    from eval.compare import compare_run, load_run
    from eval.compare import promote as do_promote
    from eval.gate import gate_lines, gates_against
    from eval.report import write_report

    data = load_run(run, home)
    registry = _registry(_settings(home), required=promote)
    langs = [x.strip() for x in languages.split(",") if x.strip()] if languages else None
    result = compare_run(
        data,
        tolerance=tolerance,
        registry=registry,
        votes=votes or default_votes_path(home),
        languages=langs,
    )
    gates = {}
    if base is not None:
        gates = gates_against(result, base)
        result["gates"] = list(gates.values())
    if promote:
        chosen = result["decision"]["recommended"]
        if base is not None and chosen != base and not gates[chosen]["passed"]:
            result["decision"]["promotion"] = f"not promoted: {chosen} does not pass the ship gate"
        else:
            result["decision"]["promotion"] = do_promote(result["decision"], registry)
    files = write_report(result, out or data.path / "report")
    d = result["decision"]
    for gate in gates.values():
        typer.echo("\n".join(gate_lines(gate)) + "\n")
    for reason in d["reasons"]:
        typer.echo(reason)
    typer.echo(f"recommended: {d['recommended']}" + (f" ({d['version']})" if d["version"] else ""))
    if "promotion" in d:
        typer.echo(d["promotion"])
    typer.echo(f"report: {files['markdown']}")


@app.command("select")
def select(
    variant: Annotated[list[str] | None, typer.Option(help="variants (default: all five)")] = None,
    candidate: Annotated[
        str | None,
        typer.Option(help="the version to try (default: the variant's newest trained one)"),
    ] = None,
    suite: Annotated[
        str | None, typer.Option(help="the suite (default: the variant's own, e.g. es-l2)")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="a running gateway; default: start `tutor serve` (vLLM, float32)"),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="requests in flight")] = 4,
    promote: Annotated[bool, typer.Option(help="promote a winner in the registry")] = True,
    ways: Annotated[str, typer.Option(help="ways to ask: plain,grounded or one")] = (
        "plain,grounded"
    ),
    progress: Annotated[bool, typer.Option(help="tqdm progress bar")] = True,
    home: HomeOpt = None,
) -> None:
    """Eval and registration after training: each variant's newest version, plain and
    grounded, against the base under its persona; the ship gate; promote the winner."""
    from contextlib import nullcontext

    from eval.select import SUITE_OF, select_variant, started_gateway, summary_lines

    names = variant or list(SUITE_OF)
    if (candidate or suite) and len(names) != 1:
        raise typer.BadParameter("needs exactly one --variant", param_hint="--candidate/--suite")
    settings = _settings(home)
    registry = _registry(settings, required=True)
    log = tutor_home(home) / "logs" / "select-gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # a gateway started here serves the registry this command promotes in
    serves = {"TUTOR_REGISTRY": str(settings.registry_location)}
    serves["TUTOR_ADAPTER_DIR"] = str(settings.adapter_store)
    gateway = nullcontext(base_url) if base_url else started_gateway(serves, log=log)
    done = []
    with gateway as url:
        for name in names:
            sel = select_variant(
                name,
                url,
                registry=registry,
                candidate=candidate,
                suite=suite,
                home=home,
                concurrency=concurrency,
                promote=promote,
                progress=progress,
                ways=[w.strip() for w in ways.split(",") if w.strip()],
            )
            done.append(sel)
            typer.echo(f"{name}: {sel.promotion} (report: {sel.run}/report/report.md)")
    typer.echo("\n".join(summary_lines(done)))


@app.command("judge-calibrate")
def judge_calibrate(
    model: Annotated[str, typer.Option(help="the judge's model id")],
    base_url: BaseUrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = "unused",
    n: Annotated[int, typer.Option(help="MRBench replies to judge")] = 100,
    mrbench: Annotated[Path | None, typer.Option(help="an MRBench JSON file")] = None,
    concurrency: Annotated[int, typer.Option()] = 4,
    max_tokens: Annotated[int, typer.Option(help="the judge's answer length")] = 60,
    out: Annotated[Path | None, typer.Option(help="calibration JSON")] = None,
    progress: Annotated[bool, typer.Option()] = True,
    home: HomeOpt = None,
) -> None:
    """Measure the judge's agreement with MRBench's human labels before trusting it."""
    from eval.cache import ReplyCache
    from eval.judge import (
        Judge,
        calibrate,
        calibration_markdown,
        calibration_path,
        default_mrbench_path,
    )

    store = ReplyCache(tutor_home(home) / "eval" / "cache.sqlite")
    try:
        judge = Judge(base_url, model, store, api_key, concurrency, max_tokens, progress)
        cal = asyncio.run(calibrate(judge, mrbench or default_mrbench_path(), n=n))
    finally:
        store.close()
    path = out or calibration_path(model, home)
    atomic_write_text(path, json.dumps(cal, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(path.with_suffix(".md"), calibration_markdown(cal))
    typer.echo(calibration_markdown(cal))
    typer.echo(f"calibration: {path}")


@app.command("judge")
def judge_command(
    run: Annotated[str, typer.Argument(help="a run folder, or its name")],
    model: Annotated[str, typer.Option(help="the judge's model id")],
    base_url: BaseUrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = "unused",
    concurrency: Annotated[int, typer.Option()] = 4,
    max_tokens: Annotated[int, typer.Option(help="the judge's answer length")] = 60,
    progress: Annotated[bool, typer.Option()] = True,
    force: Annotated[bool, typer.Option(help="judge even without a calibration")] = False,
    home: HomeOpt = None,
) -> None:
    """Score a run's replies with the judge (written to <run>/judge.json for the report)."""
    from eval.cache import ReplyCache
    from eval.compare import load_run
    from eval.judge import Judge, calibration_path, judge_run

    cal_path = calibration_path(model, home)
    calibration = json.loads(cal_path.read_text()) if cal_path.exists() else None
    if calibration is None and not force:
        raise typer.BadParameter(
            f"no calibration for {model}: run `tutor eval judge-calibrate` first (or --force)"
        )
    data = load_run(run, home)
    store = ReplyCache(tutor_home(home) / "eval" / "cache.sqlite")
    try:
        judge = Judge(base_url, model, store, api_key, concurrency, max_tokens, progress)
        result = asyncio.run(judge_run(data, judge, calibration))
    finally:
        store.close()
    atomic_write_text(data.path / "judge.json", json.dumps(result, indent=2) + "\n")
    trusted = result["calibration"]["trusted"]
    typer.echo(f"judged {len(data.models)} models; judge trusted: {trusted}")


@app.command("arena")
def arena(
    run: Annotated[str, typer.Argument(help="a run folder, or its name")],
    votes: Annotated[Path | None, typer.Option(help="votes (SQLite)")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7861,
    home: HomeOpt = None,
) -> None:
    """The blind A/B page over a run's replies."""
    from eval.arena import Arena, VoteStore, build_arena, default_votes_path
    from eval.compare import load_run

    page = build_arena(Arena(load_run(run, home), VoteStore(votes or default_votes_path(home))))
    page.launch(server_name=host, server_port=port)


@app.command("export-dpo")
def export_dpo_command(
    out: Annotated[Path, typer.Option(help="JSONL of prompt/chosen/rejected")],
    votes: Annotated[Path | None, typer.Option(help="votes (SQLite)")] = None,
    home: HomeOpt = None,
) -> None:
    """Export the arena's votes as preference pairs in TRL's DPO format (ties left out)."""
    from eval.arena import VoteStore, default_votes_path, export_dpo

    store = VoteStore(votes or default_votes_path(home))
    typer.echo(f"{export_dpo(store.votes(), out)} preference pairs -> {out}")
