"""Dialogue generation: mode assignment, multi-turn, kill-safe resume, and a teacher over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from common.data import load_split, write_splits
from common.files import read_jsonl
from common.modes import SCAFFOLDING
from common.paths import REPO, data_dir
from train.gates import gate
from train.generate import generate_dialogues
from train.generate_plan import GenJob, assign_modes, plan
from train.generate_replies import TeacherGenerator
from train.generate_writer import ResumableJsonl

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")


@pytest.fixture(scope="module")
def split_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    write_splits(["jfleg", "mucgec", "l1bank"], home=home)
    return home


def test_mode_assignment_blocks_and_interleave() -> None:
    assert assign_modes(10, "block:3", 0) == [
        "recast",
        "recast",
        "recast",
        "elicitation",
        "elicitation",
        "elicitation",
        "expansion",
        "expansion",
        "expansion",
        "metalinguistic",
    ]
    inter = assign_modes(400, "interleave", 7)
    assert Counter(inter) == {m: 100 for m in SCAFFOLDING}
    assert all(set(inter[i : i + 4]) == set(SCAFFOLDING) for i in range(0, 400, 4))
    assert inter == assign_modes(400, "interleave", 7) != assign_modes(400, "interleave", 8)
    with pytest.raises(ValueError):
        assign_modes(4, "random", 0)


def test_plan_is_deterministic_and_has_multi_turn(split_home: Path) -> None:
    records = load_split("jfleg", "train", home=split_home)
    job = GenJob(
        name="j", source="jfleg", variant="tutor", limit=200, multi_turn=0.4, language="en"
    )
    a, b = plan(job, records), plan(job, records)
    assert [(i.record.id, i.mode, i.multi) for i in a] == [
        (i.record.id, i.mode, i.multi) for i in b
    ]
    assert 40 < sum(i.multi for i in a) < 120
    assert all(i.follow is not None for i in a if i.multi and i.mode in ("recast", "expansion"))


def test_generated_dialogues_pass_the_gates_in_every_language(
    split_home: Path, tmp_path: Path
) -> None:
    for source, variant in (
        ("jfleg", "tutor"),
        ("mucgec", "tutor-zh-l2"),
        ("l1bank", "tutor-es-l2"),
    ):
        job = GenJob(name=source, source=source, variant=variant, limit=80, multi_turn=0.5)
        res = generate_dialogues(job, tmp_path / f"{source}.jsonl", home=split_home, progress=False)
        rows = list(read_jsonl(res.path))
        assert len(rows) == res.total == res.written > 0
        kept, report = gate(rows)
        assert len(kept) >= 0.8 * len(rows), report.to_dict()
        assert {r["mode"] for r in kept} == set(SCAFFOLDING)
        multi = [r for r in rows if r["multi_turn"]]
        assert multi and all(len(r["messages"]) == 5 and len(r["turns"]) == 2 for r in multi)
        assert all(r["language"] == job.language for r in rows)
        assert rows[0]["messages"][0]["role"] == "system" and "generator" in rows[0]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_resume_after_sigkill_loses_and_duplicates_nothing(
    split_home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed.jsonl"
    args = [
        sys.executable,
        "-m",
        "train.cli",
        "data",
        "generate",
        "--source",
        "jfleg",
        "--variant",
        "tutor",
        "--limit",
        "300",
        "--seed",
        "3",
        "--out",
        str(out),
        "--home",
        str(split_home),
        "--max-rate",
        "150",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _lines(out) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _lines(out)
    assert 40 <= before < 300, "the kill must land mid-run"
    with open(out, "ab") as f:  # what a kill in the middle of a write leaves behind
        f.write(b'{"idx": 99999, "torn')

    resumed = subprocess.run(args[:-2], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{300 - before} written, {before} already there, 300 planned" in resumed.stdout

    rows = list(read_jsonl(out))
    assert sorted(r["idx"] for r in rows) == list(range(300))  # nothing lost, nothing twice
    reference = tmp_path / "reference.jsonl"
    job = GenJob(name="killed", source="jfleg", variant="tutor", limit=300, seed=3)
    generate_dialogues(job, reference, home=split_home, progress=False)
    by_idx = {r["idx"]: r for r in read_jsonl(reference)}
    assert all(r == by_idx[r["idx"]] for r in rows)  # the same rows as an uninterrupted run
    index = json.loads(out.with_name(out.name + ".progress.json").read_text())
    assert index["done"] == 300 and index["bytes"] == out.stat().st_size


def test_a_different_plan_refuses_to_append(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    ResumableJsonl(out, "plan-a", 3).recover()
    with pytest.raises(RuntimeError, match="different plan"):
        ResumableJsonl(out, "plan-b", 3).recover()
    assert ResumableJsonl(out, "plan-b", 3).recover(restart=True).done == set()


def flaky_proxy(upstream: str, failures: int) -> tuple[FastAPI, list[int]]:
    """A real HTTP hop that answers 503 to the first ``failures`` requests, then forwards."""
    app = FastAPI()
    seen: list[int] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        seen.append(1)
        if len(seen) <= failures:
            return JSONResponse(
                {"error": {"message": "busy", "type": "overloaded"}}, status_code=503
            )
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(
                f"{upstream}/v1/chat/completions",
                content=await request.body(),
                headers={"content-type": "application/json"},
            )
        return JSONResponse(r.json(), status_code=r.status_code)

    return app, seen


def test_teacher_generator_over_a_real_gateway_with_retries(
    split_home: Path, tmp_path: Path, tiny_settings
) -> None:
    from server.app import create_app
    from tests.support import running_server

    job = GenJob(name="teach", source="l1bank", variant="tutor", limit=2, multi_turn=1.0)
    with running_server(create_app(tiny_settings)) as gateway:
        proxy, seen = flaky_proxy(gateway, failures=2)
        with running_server(proxy) as url:
            teacher = TeacherGenerator(
                f"{url}/v1", "tutor", concurrency=2, retries=3, backoff=0.05, max_tokens=8
            )
            res = generate_dialogues(
                job, tmp_path / "t.jsonl", generator=teacher, home=split_home, progress=False
            )
    rows = list(read_jsonl(res.path))
    assistant_turns = sum(len(r["turns"]) for r in rows)
    assert len(rows) == res.total == 2
    assert teacher.failures == 2 and teacher.calls == assistant_turns + 2 == len(seen)
    assert all(r["generator"] == "teacher:tutor" for r in rows)
    assert all(m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant")
    # A random tiny model is a poor teacher: the gates account for every row it wrote.
    kept, report = gate(rows)
    assert report.total == 2 and report.kept + sum(report.dropped.values()) == 2


def test_corrector_turns_and_grounded_dialogues(split_home: Path, tmp_path: Path) -> None:
    """The two halves of a grounded recast, rendered as the gateway sends them: the corrector
    turn answers with the gold correction (a control with the sentence as it stands), and a
    grounded dialogue has the hidden note right after its last learner turn."""
    from adapters.variants import Catalogue
    from common.settings import DEFAULT_CATALOGUE

    tutor = Catalogue.load(DEFAULT_CATALOGUE).variants["tutor"]
    for derive in ("references", "controls"):
        job = GenJob(
            name=f"c-{derive}",
            source="jfleg",
            variant="tutor",
            derive=derive,
            task="correct",
            limit=40,
        )
        res = generate_dialogues(
            job, tmp_path / f"{job.name}.jsonl", home=split_home, progress=False
        )
        rows = list(read_jsonl(res.path))
        kept, report = gate(rows)
        assert len(kept) == len(rows) == 40, report.to_dict()
        for r in rows:
            sys_msg, user, answer = r["messages"]
            assert [sys_msg, user] == tutor.corrector_messages(r["turns"][0]["utterance"])
            assert answer == {"role": "assistant", "content": r["turns"][0]["correction"]}
            assert r["mode"] == "correct" and r["task"] == "correct" and not r["multi_turn"]
            same = answer["content"] == user["content"]
            assert same == (derive == "controls")

    job = GenJob(name="g", source="jfleg", variant="tutor", limit=120, multi_turn=0.5, grounded=0.5)
    rows = list(
        read_jsonl(
            generate_dialogues(job, tmp_path / "g.jsonl", home=split_home, progress=False).path
        )
    )
    grounded = [r for r in rows if r["grounded"]]
    assert 30 < len(grounded) < 90
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        notes = [i for i, role in enumerate(roles) if role == "system" and i > 0]
        if not r["grounded"]:
            assert not notes
            continue
        # one note, between the last learner turn and the last tutor turn
        assert notes == [len(roles) - 2] and roles[-3:] == ["user", "system", "assistant"]
        learner = r["messages"][-3]["content"]
        turn = r["turns"][-1]
        meant = turn["correction"] if learner == turn["utterance"] else learner
        assert r["messages"][-2]["content"] == tutor.grounding_note(learner, meant)
    # a learner who repaired the sentence is told nothing is wrong
    repaired = [r for r in grounded if r["turns"][-1]["mode"] == "confirm"]
    assert repaired and all(
        r["messages"][-2]["content"] == tutor.grounding["correct"] for r in repaired
    )
    kept, report = gate(rows)
    assert len(kept) >= 0.8 * len(rows), report.to_dict()


def test_natural_echo_zero_answers_every_control_with_a_reaction(
    split_home: Path, tmp_path: Path
) -> None:
    """Mandarin Stage 2 controls (natural_echo: 0) never repeat the learner's sentence back; the
    default still echoes some, and leaving the option unset keeps an older job's plan hash."""
    from common.templates import NATURAL_REACTIONS, NATURAL_REACTIONS_NO_ECHO

    base = {"source": "mucgec", "variant": "tutor-zh-l2", "derive": "controls", "limit": 60}
    reactions = tuple(NATURAL_REACTIONS["zh"] + NATURAL_REACTIONS_NO_ECHO["zh"])
    starts: dict[str, list[bool]] = {}
    for name, echo in (("dflt", None), ("none", 0.0)):
        job = GenJob(name=name, natural_echo=echo, **base)
        res = generate_dialogues(job, tmp_path / f"{name}.jsonl", home=split_home, progress=False)
        rows = list(read_jsonl(res.path))
        assert len(rows) == 60 and gate(rows)[1].to_dict()
        starts[name] = [r["messages"][-1]["content"].startswith(reactions) for r in rows]
    assert all(starts["none"])
    assert 5 < starts["dflt"].count(False) < 35  # about 30% echoed
    unset = GenJob(name="x", **base)
    later = ("natural_echo", "note_drops_move")  # options added after the first sets
    older = {k: v for k, v in asdict(unset).items() if k not in later}
    older_hash = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:16]
    assert unset.plan_hash() == older_hash
    assert GenJob(name="x", natural_echo=0.0, **base).plan_hash() != older_hash


def test_note_drops_move_renders_the_prompt_the_gateway_sends(
    split_home: Path, tmp_path: Path
) -> None:
    """With ``note_drops_move`` an error-free turn with the "correct" note has no move hint in its
    system prompt, which is what server/grounding.py sends when its corrector changes nothing;
    without it the hint stays beside the note (the older sets); the option is in the plan hash."""
    from adapters.variants import Catalogue
    from common.settings import DEFAULT_CATALOGUE

    variant = Catalogue.load(DEFAULT_CATALOGUE).variants["tutor-zh-l2"]
    hints = {h.strip() for h in variant.scaffolding_hints.values()}
    base = {"source": "mucgec", "variant": "tutor-zh-l2", "derive": "controls", "limit": 80,
            "grounded": 1.0}  # fmt: skip
    hinted: dict[str, int] = {}
    for name, drops in (("kept", None), ("drops", True)):
        job = GenJob(name=name, note_drops_move=drops, **base)
        res = generate_dialogues(job, tmp_path / f"{name}.jsonl", home=split_home, progress=False)
        rows = list(read_jsonl(res.path))
        assert len(rows) == 80
        assert all(r["messages"][-2]["content"] == variant.grounding["correct"] for r in rows)
        hinted[name] = sum(
            any(p.strip() in hints for p in r["messages"][0]["content"].split("\n\n")) for r in rows
        )
        for r in rows:  # the persona itself is never cut
            assert r["messages"][0]["content"].startswith(variant.persona.strip())
    assert hinted["drops"] == 0
    assert 20 < hinted["kept"] < 60  # half of the error-free turns come with a move hint
    plain = GenJob(name="x", **base).plan_hash()
    assert GenJob(name="x", note_drops_move=True, **base).plan_hash() != plain
