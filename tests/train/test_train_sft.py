"""LoRA SFT end to end on the tiny model: Stage 1 and Stage 2, registered, served, exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI

from common.data import write_splits
from common.files import read_jsonl
from common.paths import REPO, data_dir
from train.generate import generate_dialogues
from train.generate_plan import GenJob
from train.sft import run_sft
from train.sft_config import load_config

pytestmark = pytest.mark.skipif(not (data_dir() / "jfleg").is_dir(), reason="no learner data")


@pytest.fixture(scope="module")
def home(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh TUTOR_HOME (registry, runs) that borrows the prepared models."""
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(tiny_path.parent, target_is_directory=True)
    write_splits(["l1bank"], home=home)
    return home


def _dialogues(home: Path, variant: str, split: str, limit: int) -> Path:
    out = home / "data" / f"{variant}-{split}.jsonl"
    job = GenJob(
        name=f"{variant}-{split}",
        source="l1bank",
        variant=variant,
        split=split,
        limit=limit,
        multi_turn=0.5,
    )
    generate_dialogues(job, out, home=home, progress=False)
    return out


def _config(home: Path, variant: str, train: Path, eval_: Path, steps: int, *extra: str):
    return load_config(
        None,
        [
            "model.name=tiny-qwen3",
            "model.dtype=float32",
            f"data.train={train}",
            f"data.eval={eval_}",
            "data.max_eval_rows=4",
            "lora.r=8",
            f"run.variant={variant}",
            f"run.name={variant}-test",
            f"run.home={home}",
            f"training.max_steps={steps}",
            "training.save_steps=1",
            "training.logging_steps=1",
            "training.per_device_train_batch_size=2",
            "training.learning_rate=0.01",
            "training.warmup_steps=0",
            "training.max_length=384",
            "training.bf16=false",
            *extra,
        ],
    )


def _reply(url: str, model: str) -> str:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Yesterday I go to the store with my sister."}],
        temperature=0,
        max_tokens=12,
    )
    return out.choices[0].message.content or ""


def test_stage1_then_stage2_registered_served_and_exported(home: Path) -> None:
    from adapters.registry import Registry
    from common.settings import Settings
    from server.app import create_app
    from tests.support import running_server
    from train.export import export_ollama

    train_en = _dialogues(home, "tutor", "train", 6)
    eval_en = _dialogues(home, "tutor", "eval", 4)
    stage1 = run_sft(_config(home, "tutor", train_en, eval_en, 2))

    # Every checkpoint: a clean adapter, held-out perplexity (base vs adapter), a registry version.
    assert stage1.versions == ["tutor@1", "tutor@2"]
    metrics = [m for m in read_jsonl(stage1.run_dir / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[0]["eval_ppl_adapter"] == metrics[0]["eval_ppl_base"]  # a fresh LoRA is the base
    assert metrics[-1]["eval_ppl_adapter"] != metrics[-1]["eval_ppl_base"]
    assert all(m["eval_ppl_base"] == metrics[0]["eval_ppl_base"] for m in metrics)
    progress = list(read_jsonl(stage1.run_dir / "progress.jsonl"))
    assert progress and all(p["tokens_per_s"] > 0 and p["loss"] > 0 for p in progress)
    assert sorted(p.name for p in (stage1.run_dir / "adapters" / "step-00002").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    settings = Settings(home=home, model="tiny-qwen3", engine="transformers")
    reg = Registry.from_settings(settings)
    v1 = reg.get("tutor@2")
    assert v1.parent is None and v1.source["step"] == 2 and v1.source["run"] == "tutor-test"
    assert v1.eval_summary["heldout"]["eval_ppl_adapter"] == metrics[-1]["eval_ppl_adapter"]

    # Stage 2 continues from the Stage 1 version, and says so in its lineage.
    train_es = _dialogues(home, "tutor-es-l2", "train", 4)
    eval_es = _dialogues(home, "tutor-es-l2", "eval", 2)
    stage2 = run_sft(
        _config(home, "tutor-es-l2", train_es, eval_es, 1, "lora.init_adapter=tutor@latest")
    )
    v2 = reg.get(stage2.versions[-1])
    assert v2.name == "tutor-es-l2@1" and v2.parent == "tutor@2" and v2.rank == 8
    first = next(read_jsonl(stage2.run_dir / "metrics.jsonl"))
    assert first["step"] == 0 and first["eval_ppl_adapter"] != first["eval_ppl_base"]
    config = json.loads((stage2.run_dir / "config.json").read_text())
    assert config["resolved"]["parent"] == "tutor@2"

    # A fresh machine starts Stage 2 from the shipped Stage 1 folder, whose config names the
    # base by its public id rather than the trainer's path: its checkpoints still register.
    from adapters.shipped import ship

    shipped = home / "shipped" / "tutor"
    ship(reg, "tutor@2", shipped, base_id="tiny-qwen3", shipped_version=1)

    def stage2_from_shipped(run: str):
        return run_sft(
            _config(
                home,
                "tutor-es-l2",
                train_es,
                eval_es,
                1,
                f"lora.init_adapter={shipped}",
                f"run.name={run}",
            )
        )

    from_shipped = stage2_from_shipped("es-from-shipped")
    assert from_shipped.versions == ["tutor-es-l2@2"]
    assert reg.get("tutor-es-l2@2").base_model == "tiny-qwen3"
    # ... and its lineage: the shipped folder is registered (once) and is the parent, so
    # `tutor adapters ship` writes the parent's hash into the Stage 2 manifest.
    parent = reg.get(reg.get("tutor-es-l2@2").parent)
    assert parent.name == "tutor@3" and parent.source["shipped"] is True
    assert parent.sha256 == json.loads((shipped / "tutor-adapter.json").read_text())["sha256"]
    assert reg.alias("tutor") != "tutor@3"  # registering a parent moves no alias
    again = stage2_from_shipped("es-from-shipped-again")
    assert reg.get(again.versions[-1]).parent == "tutor@3"
    assert [v.name for v in reg.list("tutor")] == ["tutor@1", "tutor@2", "tutor@3"]
    es_manifest = ship(reg, "tutor-es-l2@2", home / "shipped" / "tutor-es-l2", base_id="tiny-qwen3")
    assert es_manifest["parent_trained_as"] == "tutor@3"
    assert es_manifest["parent_sha256"] == parent.sha256

    # The gateway serves the registered adapter, and it changes what the variant says.
    with running_server(create_app(settings)) as url:
        base_reply = _reply(url, "tutor")
    tuned = settings.model_copy(update={"adapters": {"tutor": str(v1.path)}})
    with running_server(create_app(tuned)) as url:
        tuned_reply = _reply(url, "tutor")
    assert tuned_reply != base_reply

    # Ollama: a Modelfile layering the adapter, or merged weights.
    modelfile = export_ollama("tutor@2", home / "ollama", base="qwen3:8b", home=home)
    text = modelfile.read_text()
    assert "FROM qwen3:8b" in text and "ADAPTER ./adapter" in text
    assert (home / "ollama" / "adapter" / "adapter_model.safetensors").is_file()
    merged = export_ollama(str(v2.path), home / "ollama-merged", merged=True, home=home)
    assert "FROM ./merged" in merged.read_text() and "ADAPTER" not in merged.read_text()
    assert (home / "ollama-merged" / "merged" / "config.json").is_file()


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    from train.sft_config import config_help

    cfg = load_config(
        REPO / "train/configs/stage1-smollm2.yaml",
        ["training.max_steps=7", "lora.r=4", "run.name=x"],
    )
    assert cfg.training["max_steps"] == 7 and cfg.lora.r == 4 and cfg.run.name == "x"
    assert cfg.training["save_steps"] == 100 and cfg.model.name == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(None, ["lora.rank=4"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["max_steps=4"])
    assert "lora.init_adapter" in config_help()


def test_a_killed_run_resumes_from_its_last_checkpoint(home: Path) -> None:
    """SIGKILL mid-run, the same command again: it continues after the last checkpoint, and
    no step is trained or registered twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from adapters.registry import Registry
    from common.settings import Settings

    repo = REPO
    train = _dialogues(home, "tutor-zh-l2", "train", 8)
    eval_ = _dialogues(home, "tutor-zh-l2", "eval", 2)
    run_dir = home / "runs" / "resume-test"
    sets = [
        "model.name=tiny-qwen3",
        "model.dtype=float32",
        f"data.train={train}",
        f"data.eval={eval_}",
        "data.max_eval_rows=2",
        "lora.r=8",
        "run.variant=tutor-zh-l2",
        "run.name=resume-test",
        f"run.home={home}",
        "training.max_steps=58",  # not a multiple of save_steps
        "training.save_steps=5",
        "training.logging_steps=1",
        "training.per_device_train_batch_size=2",
        "training.learning_rate=0.001",
        "training.warmup_steps=0",
        "training.bf16=false",
    ]
    args = [sys.executable, "-m", "train.cli", "train", "sft"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        args, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (ckpts / "checkpoint-10" / "trainer_state.json").is_file():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the kill must land mid-run"
    saved = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    last = max(s for s in saved if (ckpts / f"checkpoint-{s}" / "trainer_state.json").is_file())
    assert 10 <= last < 58
    logged_before = [p["step"] for p in read_jsonl(run_dir / "progress.jsonl")]

    resumed = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [p["step"] for p in read_jsonl(run_dir / "progress.jsonl")]
    after = logged[len(logged_before) :]
    assert after[0] == last + 1 and after[-1] == 58  # continued, not restarted
    assert after == list(range(last + 1, 59))

    reg = Registry.from_settings(Settings(home=home, model="tiny-qwen3"))
    steps = [v.source["step"] for v in reg.list("tutor-zh-l2") if v.source["run"] == "resume-test"]
    assert len(steps) == len(set(steps)) and 58 in steps  # nothing registered twice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 58
