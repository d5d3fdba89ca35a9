"""`tutor eval` end to end against a real gateway (uvicorn, tiny model) with two registered
adapter versions: run a small suite through the API, re-run from the cache (counted with the
gateway's own request counter), compare, write the report, promote through the registry, and
the LLM judge's calibration against MRBench over the same gateway.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, HTTPException, Request
from typer.testing import CliRunner

from adapters.registry import Registry
from cli.main import app as cli
from common.paths import data_dir
from common.settings import Settings
from eval.judge import (
    DIMENSIONS,
    MIN_KAPPA,
    UNPARSED,
    agreement,
    calibration_path,
    default_mrbench_path,
    judge_messages,
    load_mrbench,
    parse_judgement,
)
from server.app import create_app
from tests.support import running_server

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")

PPL = {"v1": 9.0, "v2": 8.0, "base": 12.0}  # held-out perplexities recorded for the versions


@pytest.fixture(scope="module")
def env(tmp_path_factory, tutor_home, tiny_path, tiny_adapters) -> Iterator[dict]:
    """A gateway over the tiny model whose own registry holds tutor@1 and tutor@2."""
    import torch

    home = tmp_path_factory.mktemp("evalhome")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process engine shares 2 busy cores with the test client
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUTOR_REGISTRY", str(home / "registry.sqlite"))
        mp.setenv("TUTOR_ADAPTER_DIR", str(home / "adapters"))
        mp.setenv("TUTOR_HOME", str(tutor_home))  # models; suites and runs go to --home
        settings = Settings(home=tutor_home, model="tiny-qwen3", engine="transformers")
        registry = Registry.from_settings(settings)
        versions = {}
        for key, adapter in (("v1", tiny_adapters["es"]), ("v2", tiny_adapters["zh"])):
            v = registry.add(adapter, variant="tutor", base_model=str(tiny_path), max_rank=16)
            heldout = {"eval_ppl_adapter": PPL[key], "eval_ppl_base": PPL["base"]}
            registry.set_eval_summary(v.name, {"heldout": heldout})
            versions[key] = v.name
        from eval.suites import build_suite

        build_suite("smoke", home=home, split_home=tutor_home)
        with running_server(create_app(settings)) as url:
            yield {"url": url, "home": home, "registry": registry, **versions}
    torch.set_num_threads(threads)


def requests_total(url: str) -> float:
    """All chat requests the gateway has answered (its Prometheus counter)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r"^tutor_requests_total\{[^}]*\} (\S+)$", text, re.M))


def tutor(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_run_compare_report_and_promote(env) -> None:
    url, home = env["url"], str(env["home"])
    v1, v2 = env["v1"], env["v2"]
    models = f"tiny-qwen3,{v1},{v2}"
    run_dir = env["home"] / "run"
    args = ["eval", "run", "--base-url", url, "--models", models, "--suite", "smoke"]
    args += ["--home", home, "--out", str(run_dir), "--no-progress", "--concurrency", "2"]

    before = requests_total(url)
    out = tutor(*args)
    asked = requests_total(url) - before
    assert asked == 3 * 12  # three models, twelve items, nothing cached yet
    assert "36 asked" in out
    rows = [json.loads(x) for x in (run_dir / "replies.jsonl").read_text().splitlines()]
    assert len(rows) == 36
    assert {r["adapter"] for r in rows if r["model"] == v1} == {v1}  # x-tutor-adapter
    assert {r["adapter"] for r in rows if r["model"] == "tiny-qwen3"} == {"base"}
    seeds = {(r["item_id"], r["seed"]) for r in rows}
    assert len(seeds) == 12  # the same seed for an item across models

    # Re-run: every reply from the cache, no request reaches the gateway.
    before = requests_total(url)
    out = tutor(*args)
    assert requests_total(url) - before == 0
    assert "0 asked, 36 from the cache" in out
    assert [json.loads(x) for x in (run_dir / "replies.jsonl").read_text().splitlines()] == [
        {**r, "cached": True} for r in rows
    ]

    # Compare with a tolerance wide enough to tie everything: the rule then picks the lowest
    # held-out perplexity, which the registry records per version.
    out = tutor("eval", "compare", str(run_dir), "--tolerance", "1", "--promote", "--home", home)
    lowest = min(("v1", "v2"), key=lambda k: PPL[k])
    assert f"recommended: {env[lowest]}" in out
    assert f"promoted tutor: base -> {env[lowest]}" in out
    report = run_dir / "report"
    for name in ("report.md", "report.json", "metrics.png", "confusion.png"):
        assert (report / name).stat().st_size > 500, name
    for png in ("metrics.png", "confusion.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((report / "report.json").read_text())
    assert [m["model"] for m in result["models"]] == ["tiny-qwen3", v1, v2]
    assert {m["model"]: m["perplexity"] for m in result["models"]} == {
        "tiny-qwen3": PPL["base"],
        v1: PPL["v1"],
        v2: PPL["v2"],
    }
    assert result["decision"]["recommended"] == env[lowest]
    assert result["decision"]["promotion"] == f"promoted tutor: base -> {env[lowest]}"
    for model in ("tiny-qwen3", v1, v2):
        assert result["metrics"][model]["pedagogy"]["n"] == 12
        assert sum(map(sum, result["confusion"][model]["table"])) == 12
        assert len(result["examples"][model]["worst"]) == 3
    assert len(result["pairs"]) == 3 and "question" in result["pairs"][0]["mcnemar"]
    assert set(result["breakdown"]["language"]) == {"en", "es", "zh"}
    assert set(result["breakdown"]["kind"]) == {"error", "control"}
    md = (report / "report.md").read_text()
    assert f"**Recommended: `{env[lowest]}`**" in md and "![metrics](metrics.png)" in md

    # The registry moved the alias, and the running gateway follows it within its poll interval.
    assert env["registry"].alias("tutor") == env[lowest]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    deadline = time.monotonic() + 10
    while True:
        raw = client.chat.completions.with_raw_response.create(
            model="tutor", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        if raw.headers["x-tutor-adapter"] == env[lowest] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert raw.headers["x-tutor-adapter"] == env[lowest]

    # The cache is keyed by version: `tutor` now *is* that version, so nothing is asked again.
    before = requests_total(url)
    out = tutor(
        "eval", "run", "--base-url", url, "--models", f"tutor,{env[lowest]}", "--suite", "smoke",
        "--home", home, "--out", str(env["home"] / "run2"), "--no-progress",
    )  # fmt: skip
    assert requests_total(url) - before == 0
    assert re.search(rf"^\s*tutor\s+-> {re.escape(env[lowest])} ", out, re.M), out


def test_compare_promotes_in_the_registry_of_its_home(env, tmp_path, monkeypatch) -> None:
    """`--home X --promote` with no TUTOR_REGISTRY set promotes in X's registry (the one beside
    X's suites and runs), not in $TUTOR_HOME's: here $TUTOR_HOME is an empty folder whose
    registry knows no version, so a promotion there would fail."""
    home, registry = env["home"], env["registry"]
    assert registry.db_path == home / "registry.sqlite"
    lowest = min(("v1", "v2"), key=lambda k: PPL[k])
    other = env["v2" if lowest == "v1" else "v1"]
    registry.promote("tutor", other)
    monkeypatch.delenv("TUTOR_REGISTRY")
    monkeypatch.delenv("TUTOR_ADAPTER_DIR")
    monkeypatch.setenv("TUTOR_HOME", str(tmp_path))
    run = str(home / "run")
    out = tutor("eval", "compare", run, "--tolerance", "1", "--promote", "--home", str(home))
    assert f"promoted tutor: {other} -> {env[lowest]}" in out
    assert registry.alias("tutor") == env[lowest]
    assert not (tmp_path / "registry.sqlite").exists()


def test_changed_parameters_are_asked_again(env) -> None:
    import asyncio

    from eval.cache import ReplyCache
    from eval.runner import run_suite
    from eval.suites import load_suite

    suite = load_suite("smoke", home=env["home"])
    cache = ReplyCache(env["home"] / "eval" / "cache.sqlite")
    try:
        before = requests_total(env["url"])
        _, first = asyncio.run(
            run_suite(suite, ["tiny-qwen3"], env["url"], cache=cache, progress=False)
        )
        asked_first = requests_total(env["url"]) - before
        suite.manifest["generation"] = {**suite.generation, "max_tokens": 5}
        before = requests_total(env["url"])
        _, second = asyncio.run(
            run_suite(suite, ["tiny-qwen3"], env["url"], cache=cache, progress=False)
        )
        assert requests_total(env["url"]) - before == 12  # a new parameter: all asked again
    finally:
        cache.close()
    assert asked_first == sum(not r.cached for r in first)
    assert not any(r.cached for r in second)


def test_judge_calibration_and_judging_a_run(env) -> None:
    """The pipeline and its statistics, not the tiny judge's quality (near chance)."""
    url, home = env["url"], str(env["home"])
    cal_path = env["home"] / "cal.json"
    tutor(
        "eval", "judge-calibrate", "--base-url", url, "--model", "tiny-qwen3", "--n", "6",
        "--max-tokens", "16", "--no-progress", "--out", str(cal_path), "--home", home,
    )  # fmt: skip
    cal = json.loads(cal_path.read_text())
    assert cal["n"] == 6 and len(cal["answers"]) == 6
    assert cal["licence"] == "MRBench: CC BY-SA 4.0"
    # the reported agreement is what the stored answers give
    truth = [a["labels"] for a in cal["answers"]]
    said = [parse_judgement(a["answer"]) for a in cal["answers"]]
    assert said == [a["parsed"] for a in cal["answers"]]
    assert agreement(truth, said) == cal["dimensions"]
    for dim in DIMENSIONS:
        d = cal["dimensions"][dim]
        hits = sum(t[dim] == (s[dim] or UNPARSED) for t, s in zip(truth, said, strict=True))
        assert d["accuracy"] == hits / 6
        assert -1.0 <= d["kappa"] <= 1.0
    assert cal["trusted"] is False  # a random tiny model is not a judge
    assert cal_path.with_suffix(".md").read_text().count("|") > 20

    # Calibrating again asks nothing: the judge's answers are cached too.
    before = requests_total(url)
    tutor(
        "eval", "judge-calibrate", "--base-url", url, "--model", "tiny-qwen3", "--n", "6",
        "--max-tokens", "16", "--no-progress", "--out", str(cal_path), "--home", home,
    )  # fmt: skip
    assert requests_total(url) - before == 0

    # Judge a run's replies (forced: this judge's calibration lives elsewhere); the report then
    # shows the judge's scores, marked as not trusted.
    run_dir = env["home"] / "run-judged"
    tutor(
        "eval", "run", "--base-url", url, "--models", "tiny-qwen3", "--suite", "smoke",
        "--home", home, "--out", str(run_dir), "--no-progress",
    )  # fmt: skip
    out = tutor(
        "eval", "judge", str(run_dir), "--base-url", url, "--model", "tiny-qwen3", "--force",
        "--max-tokens", "8", "--no-progress", "--home", home,
    )  # fmt: skip
    assert "judge trusted: False" in out
    judged = json.loads((run_dir / "judge.json").read_text())
    assert judged["dimensions"] == list(DIMENSIONS)
    assert set(judged["scores"]) == {"tiny-qwen3"}
    tutor("eval", "compare", str(run_dir), "--home", home)
    assert "NOT trusted" in (run_dir / "report" / "report.md").read_text()


def test_grounded_and_plain_side_by_side(env) -> None:
    """`~grounded` / `~plain` ask one version both ways in one run: separate cache keys, the
    gateway's corrector outcome per reply, streamed time to first token, and the report's table."""
    url, home, v1 = env["url"], str(env["home"]), env["v1"]
    run_dir = env["home"] / "run-grounded"
    models = f"{v1}~plain,{v1}~grounded"
    out = tutor(
        "eval",
        "run",
        "--base-url",
        url,
        "--models",
        models,
        "--suite",
        "smoke",
        "--home",
        home,
        "--out",
        str(run_dir),
        "--no-progress",
        "--concurrency",
        "2",
    )
    assert "24 asked" in out
    rows = [json.loads(x) for x in (run_dir / "replies.jsonl").read_text().splitlines()]
    by = {m: [r for r in rows if r["model"] == m] for m in models.split(",")}
    assert {len(v) for v in by.values()} == {12}
    assert all(r["grounding"] is None for r in by[f"{v1}~plain"])
    assert {r["grounding"] for r in by[f"{v1}~grounded"]} <= {"changed", "unchanged", "rejected"}
    assert all(r["grounding"] for r in by[f"{v1}~grounded"])
    assert all(r["adapter"] == v1 and r["ttft_s"] > 0 for r in rows)
    assert len({r["model_key"] for r in rows}) == 2
    tutor("eval", "compare", str(run_dir), "--home", home)
    result = json.loads((run_dir / "report" / "report.json").read_text())
    timing = result["timing"][f"{v1}~grounded"]
    assert timing["n"] == 12 and sum(timing["grounding"].values()) == 12
    assert result["timing"][f"{v1}~plain"]["grounding"] == {}
    assert "Time to first token" in (run_dir / "report" / "report.md").read_text()


def test_the_base_under_a_variant_persona_and_the_ship_gate(env) -> None:
    """`tutor@base` is the tutor persona on the bare base wherever the alias points (what a
    version is gated against), and `--base` gates every other model before `--promote`."""
    url, home, v1, v2 = env["url"], str(env["home"]), env["v1"], env["v2"]
    env["registry"].promote("tutor", v2)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    card = client.models.retrieve("tutor@base").model_dump()
    assert card["metadata"]["adapter"] == "base" and card["metadata"]["persona"] == "tutor"
    assert "tutor@base" not in {m.id for m in client.models.list().data}  # answerable, not listed
    raw = client.chat.completions.with_raw_response.create(
        model="tutor@base", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert raw.headers["x-tutor-adapter"] == "base"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nosuch@base")

    run_dir = env["home"] / "run-gate"
    out = tutor(
        "eval", "run", "--base-url", url, "--models", f"tutor@base,{v1}", "--suite", "smoke",
        "--home", home, "--out", str(run_dir), "--no-progress",
    )  # fmt: skip
    rows = [json.loads(x) for x in (run_dir / "replies.jsonl").read_text().splitlines()]
    keys = {r["model_key"] for r in rows if r["model"] == "tutor@base"}
    assert keys == {"tutor|base|tiny-qwen3|dtype=float32"}  # the transformers engine's dtype
    assert {r["adapter"] for r in rows if r["model"] == "tutor@base"} == {"base"}
    out = tutor(
        "eval", "compare", str(run_dir), "--base", "tutor@base", "--tolerance", "1",
        "--promote", "--home", home,
    )  # fmt: skip
    result = json.loads((run_dir / "report" / "report.json").read_text())
    [gate] = result["gates"]
    assert gate["base"] == "tutor@base" and gate["candidate"] == v1
    assert gate["checks"][0]["name"].startswith("beats the base")
    want = next(p for p in result["pairs"] if {p["a"], p["b"]} == {"tutor@base", v1})
    lo = want["pedagogy_difference"]["lo" if want["a"] == v1 else "hi"]
    assert gate["checks"][0]["ok"] == ((lo if want["a"] == v1 else -lo) > 0)
    assert "Ship gate" in (run_dir / "report" / "report.md").read_text()
    chosen = result["decision"]["recommended"]
    if chosen == v1 and gate["passed"]:
        assert env["registry"].alias("tutor") == v1
    else:  # the base won, or the winner failed the gate: the alias stays where it was
        assert env["registry"].alias("tutor") == v2
        assert "not promoted" in out or "nothing to promote" in out


def test_select_asks_both_ways_gates_them_and_promotes_only_a_winner(env) -> None:
    """`tutor eval select`: base under the persona, the version plain and grounded, the ship
    gate for each way, the choice, the promotion (or none) and the summary file."""
    from eval.select import choose

    url, home, v1, v2 = env["url"], str(env["home"]), env["v1"], env["v2"]
    env["registry"].promote("tutor", v2)
    out = tutor(
        "eval", "select", "--variant", "tutor", "--candidate", v1, "--suite", "smoke",
        "--base-url", url, "--home", home, "--no-progress", "--concurrency", "2",
    )  # fmt: skip
    sel = json.loads((env["home"] / "eval" / "select" / "tutor.json").read_text())
    ways = [f"{v1}~plain", f"{v1}~grounded"]
    assert sel["base"] == "tutor@base" and sel["candidate"] == v1
    assert sorted(sel["gates"]) == sorted(ways) and set(sel["pedagogy"]) == {"tutor@base", *ways}
    assert sel["chosen"] == choose(sel["pedagogy"], sel["gates"])
    run = json.loads((Path(sel["run"]) / "run.json").read_text())
    assert [m["model"] for m in run["models"]] == ["tutor@base", *ways]
    assert (Path(sel["run"]) / "report" / "report.md").read_text().count(
        " against `tutor@base`"
    ) == 2
    if sel["chosen"]:
        assert env["registry"].alias("tutor") == v1 and sel["grounded"] == sel["chosen"].endswith(
            "~grounded"
        )
    else:
        assert env["registry"].alias("tutor") == v2 and "not promoted" in sel["promotion"]
    assert f"| tutor | {v1} |" in out
    # The version's eval summary (what `tutor adapters ship` writes into the manifest) keeps its
    # held-out figures and gains this suite's.
    summary = env["registry"].get(v1).eval_summary
    assert summary["heldout"]["eval_ppl_adapter"] == PPL["v1"]
    mine = summary[sel["suite"]]
    assert mine["gate"] == {w: sel["gates"][f"{v1}~{w}"]["passed"] for w in ("plain", "grounded")}
    assert mine["plain"]["pedagogy"] == round(sel["pedagogy"][f"{v1}~plain"], 3)
    assert mine["served"] == (sel["chosen"].split("~")[1] if sel["chosen"] else None)


# -- the judge's trust, with a deterministic stand-in for a judge model ---------------------------

KIND_REPLY = "Nice try! We say 'I went', not 'I go', for yesterday. Can you say it again?"
CURT_REPLY = "Wrong."
# What the scripted judges make of the two replies of the runs below (Yes = 1, To some extent =
# 0.5, No = 0; Encouraging = 1, Neutral = 0.5, Offensive = 0).
VERDICTS = {
    KIND_REPLY: ("Yes", "Yes", "To some extent", "Encouraging"),
    CURT_REPLY: ("No", "No", "No", "Neutral"),
}
# A contrary judge moves every label one step round its scale: it never agrees with MRBench.
CONTRARY = {
    "Yes": "No",
    "To some extent": "Yes",
    "No": "To some extent",
    "Encouraging": "Offensive",
    "Neutral": "Encouraging",
    "Offensive": "Neutral",
}
TUTOR_A, TUTOR_B = "tutor-a", "tutor-b"  # a: KIND_REPLY always; b: CURT_REPLY but to controls


class ScriptedJudgeServer:
    """A deterministic stand-in for a judge model: a real OpenAI-compatible HTTP app (model
    card and chat completions) whose answer is a pure function of the request.

    A prompt about an MRBench reply is answered with MRBench's own human labels (the judge
    prompt is looked up among all of MRBench's), a prompt about one of ``VERDICTS``' replies
    with its verdict, anything else with a sentence that names no label. ``contrary`` moves
    each label one step (``CONTRARY``): the same judge, always disagreeing with the humans."""

    def __init__(self, model: str, mrbench: dict[str, dict[str, str]], *, contrary: bool) -> None:
        self.model, self.mrbench, self.contrary = model, mrbench, contrary
        self.asked: list[str] = []  # the user prompt of each chat request, in arrival order

    def answer(self, prompt: str) -> str:
        labels = self.mrbench.get(prompt)
        if labels is None:
            reply = prompt.rsplit("Tutor reply to assess:\n", 1)[-1]
            if reply not in VERDICTS:
                return "I cannot judge this reply."
            labels = dict(zip(DIMENSIONS, VERDICTS[reply], strict=True))
        if self.contrary:
            labels = {d: CONTRARY[v] for d, v in labels.items()}
        return "\n".join(f"{d}: {labels[d]}" for d in DIMENSIONS)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models/{model}")
        def card(model: str) -> dict[str, Any]:
            if model != self.model:
                raise HTTPException(404, f"no model {model}")
            return {"id": model, "object": "model", "created": 0, "owned_by": "scripted"}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict[str, Any]:
            body = await request.json()
            if body["model"] != self.model:
                raise HTTPException(404, f"no model {body['model']}")
            prompt = body["messages"][-1]["content"]
            self.asked.append(prompt)
            text = self.answer(prompt)
            return {
                "id": f"chatcmpl-{len(self.asked)}",
                "object": "chat.completion",
                "created": 0,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

        return app


def _scores(verdicts: Sequence[tuple[str, ...]], contrary: bool) -> dict[str, float]:
    """The mean score per dimension of these verdicts, as the scripted judge gives them."""
    table = {"Yes": 1.0, "To some extent": 0.5, "No": 0.0}
    table |= {"Encouraging": 1.0, "Neutral": 0.5, "Offensive": 0.0}
    out = {}
    for i, dim in enumerate(DIMENSIONS):
        labels = [CONTRARY[v[i]] if contrary else v[i] for v in verdicts]
        out[dim] = sum(table[x] for x in labels) / len(labels)
    return out


@pytest.fixture(scope="module")
def mrbench_prompts() -> dict[str, dict[str, str]]:
    """Every MRBench judge prompt (as eval/judge.py words it) -> its human labels."""
    prompts: dict[str, dict[str, str]] = {}
    for row in load_mrbench(default_mrbench_path()):
        prompts.setdefault(judge_messages(row.history, row.response)[1]["content"], row.labels)
    return prompts


@pytest.fixture
def judged_home(tmp_path: Path, tutor_home: Path) -> dict[str, Any]:
    """A fresh home holding the smoke suite and a run of two scripted tutors over it (no
    gateway): tutor-a always replies KIND_REPLY; tutor-b replies CURT_REPLY to the learner's
    mistakes and KIND_REPLY to the controls; with the VERDICTS on each model's replies, from
    which the scores a scripted judge must give follow."""
    from eval.runner import ModelInfo, ReplyRecord, write_run
    from eval.suites import build_suite

    home = tmp_path / "home"
    suite = build_suite("smoke", home=home, split_home=tutor_home)
    replies = {
        TUTOR_A: {it.id: KIND_REPLY for it in suite.items},
        TUTOR_B: {it.id: KIND_REPLY if it.control else CURT_REPLY for it in suite.items},
    }
    assert 0 < sum(it.control for it in suite.items) < len(suite.items)
    infos = {m: ModelInfo(m, m, None, m) for m in replies}
    records = [
        ReplyRecord(m, infos[m].key, m, item_id, text, "stop", 0.1, 0, False)
        for m, by_item in replies.items()
        for item_id, text in by_item.items()
    ]
    run = write_run(
        tmp_path / "run", suite=suite, base_url="scripted", infos=infos, records=records
    )
    verdicts = {m: [VERDICTS[r] for r in by_item.values()] for m, by_item in replies.items()}
    return {"home": home, "run": run, "items": len(suite.items), "verdicts": verdicts}


def _judge_report(run: Path) -> str:
    """The report's LLM judge section."""
    md = (run / "report" / "report.md").read_text()
    return md.split("## LLM judge", 1)[1].split("## Examples", 1)[0]


def _row(model: str, scores: dict[str, float]) -> str:
    return f"| `{model}` | " + " | ".join(f"{scores[d]:.2f}" for d in DIMENSIONS) + " |"


def test_a_judge_that_agrees_with_mrbench_is_trusted_and_its_scores_are_reported(
    judged_home: dict[str, Any], mrbench_prompts: dict[str, dict[str, str]]
) -> None:
    """A judge that answers MRBench with its human labels calibrates as trusted (kappa 1 on
    every dimension); `tutor eval judge` then runs without --force, reports it trusted, and
    judge.json and the report carry exactly the scores that judge gave each model.

    Catches a calibration that cannot trust any judge (the only judge tested before was the
    untrusted tiny model), a trust flag or kappas lost between calibration and judge.json,
    and scores that are not the judge's (wrong model, wrong labels, wrong mean)."""
    home, run = str(judged_home["home"]), judged_home["run"]
    judge = ScriptedJudgeServer("faithful-judge", mrbench_prompts, contrary=False)
    with running_server(judge.app()) as url:
        out = tutor(
            "eval", "judge-calibrate", "--base-url", url, "--model", judge.model, "--n", "30",
            "--no-progress", "--home", home,
        )  # fmt: skip
        cal_path = calibration_path(judge.model, home)
        cal = json.loads(cal_path.read_text())
        assert "**trusted**" in out and f"calibration: {cal_path}" in out
        assert len(judge.asked) == cal["n"] == 30
        assert all(a["parsed"] == a["labels"] for a in cal["answers"])
        for dim in DIMENSIONS:  # no prompt of this seeded sample has two sets of labels
            d = cal["dimensions"][dim]
            assert (d["accuracy"], d["kappa"], d["parsed"]) == (1.0, 1.0, 1.0), dim
        assert cal["trusted"] is True

        out = tutor(
            "eval", "judge", str(run), "--base-url", url, "--model", judge.model,
            "--no-progress", "--home", home,
        )  # fmt: skip
    assert "judged 2 models; judge trusted: True" in out
    assert len(judge.asked) == 30 + 2 * judged_home["items"]
    judged = json.loads((run / "judge.json").read_text())
    assert judged["model"] == judge.model and judged["parsed"] == 1.0
    assert judged["calibration"] == {"trusted": True, "kappa": dict.fromkeys(DIMENSIONS, 1.0)}
    expected = {m: _scores(v, contrary=False) for m, v in judged_home["verdicts"].items()}
    assert expected[TUTOR_A] == {
        "Mistake_Identification": 1.0,
        "Providing_Guidance": 1.0,
        "Actionability": 0.5,
        "Tutor_Tone": 1.0,
    }
    assert judged["scores"] == expected  # halves and quarters: exact in floating point

    tutor("eval", "compare", str(run), "--home", home)
    assert json.loads((run / "report" / "report.json").read_text())["judge"] == judged
    section = _judge_report(run)
    assert f"Judge `{judge.model}`: calibrated and trusted." in section
    assert "NOT trusted" not in section
    for model, scores in expected.items():
        assert _row(model, scores) in section


def test_a_judge_that_disagrees_with_mrbench_stays_untrusted_even_when_forced(
    judged_home: dict[str, Any], mrbench_prompts: dict[str, dict[str, str]]
) -> None:
    """A judge that never gives MRBench's label calibrates as not trusted (every kappa below
    MIN_KAPPA); judging with it under --force uses its scores but keeps it marked not trusted,
    with its calibration's kappas, in the CLI's line, judge.json and the report.

    Catches a calibration that trusts a judge that disagrees with the humans, and --force
    passing an untrusted judge's scores off as trusted."""
    home, run = str(judged_home["home"]), judged_home["run"]
    judge = ScriptedJudgeServer("contrary-judge", mrbench_prompts, contrary=True)
    with running_server(judge.app()) as url:
        out = tutor(
            "eval", "judge-calibrate", "--base-url", url, "--model", judge.model, "--n", "30",
            "--no-progress", "--home", home,
        )  # fmt: skip
        cal = json.loads(calibration_path(judge.model, home).read_text())
        assert "**not trusted**" in out
        for dim in DIMENSIONS:
            d = cal["dimensions"][dim]
            assert d["parsed"] == 1.0 and d["accuracy"] == 0.0, dim  # it answered, wrongly
            assert d["kappa"] < MIN_KAPPA, dim
        assert cal["trusted"] is False

        out = tutor(
            "eval", "judge", str(run), "--base-url", url, "--model", judge.model, "--force",
            "--no-progress", "--home", home,
        )  # fmt: skip
    assert "judged 2 models; judge trusted: False" in out
    judged = json.loads((run / "judge.json").read_text())
    kappas = {d: cal["dimensions"][d]["kappa"] for d in DIMENSIONS}
    assert judged["calibration"] == {"trusted": False, "kappa": kappas}
    expected = {m: _scores(v, contrary=True) for m, v in judged_home["verdicts"].items()}
    assert judged["scores"] == expected  # halves and quarters: exact in floating point

    tutor("eval", "compare", str(run), "--home", home)
    section = _judge_report(run)
    assert f"Judge `{judge.model}`: NOT trusted (see its calibration)." in section
    assert "calibrated and trusted" not in section
    for model, scores in expected.items():
        assert _row(model, scores) in section


def test_an_uncalibrated_judge_needs_force_and_is_then_marked_not_trusted(
    judged_home: dict[str, Any], mrbench_prompts: dict[str, dict[str, str]]
) -> None:
    """Without a calibration, `tutor eval judge` refuses (exit 2, naming judge-calibrate and
    --force) before asking the judge anything or writing judge.json; with --force the same
    judge's scores are used and reported, marked not trusted with no kappas, even though this
    judge would calibrate as trusted.

    Catches judging silently without a calibration, --force being ignored, and an
    uncalibrated judge reported as trusted."""
    home, run = str(judged_home["home"]), judged_home["run"]
    judge = ScriptedJudgeServer("uncalibrated-judge", mrbench_prompts, contrary=False)
    assert not calibration_path(judge.model, home).exists()
    with running_server(judge.app()) as url:
        args = ["eval", "judge", str(run), "--base-url", url, "--model", judge.model]
        args += ["--no-progress", "--home", home]
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 2, refused.output
        said = " ".join(refused.output.replace("│", " ").split())
        assert f"no calibration for {judge.model}" in said
        assert "tutor eval judge-calibrate" in said and "--force" in said
        assert judge.asked == [] and not (run / "judge.json").exists()

        out = tutor(*args, "--force")
    assert "judged 2 models; judge trusted: False" in out
    assert len(judge.asked) == 2 * judged_home["items"]
    judged = json.loads((run / "judge.json").read_text())
    assert judged["model"] == judge.model
    assert judged["calibration"] == {"trusted": False, "kappa": {}}
    expected = {m: _scores(v, contrary=False) for m, v in judged_home["verdicts"].items()}
    assert judged["scores"] == expected  # halves and quarters: exact in floating point

    tutor("eval", "compare", str(run), "--home", home)
    section = _judge_report(run)
    assert f"Judge `{judge.model}`: NOT trusted (see its calibration)." in section
    for model, scores in expected.items():
        assert _row(model, scores) in section
