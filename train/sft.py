"""LoRA SFT with TRL's SFTTrainer and PEFT: Stage 1 from the base, Stage 2 from a Stage 1 adapter.

This module owns the run itself: resolve the model, the data and the starting adapter, build the
PEFT model and the ``SFTTrainer``, train (resuming from the last checkpoint), and write the run's
config and summary. Its pieces live beside it, one concern each: the config
(train/sft_config.py), the data paths (train/sft_data.py), held-out perplexity
(train/sft_heldout.py), the registry (train/sft_registry.py) and what is done at every checkpoint
(export, score, register: train/sft_checkpoints.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import atomic_write_text, read_jsonl, sha256_file
from common.model_store import resolve_model
from train.sft_checkpoints import make_callback
from train.sft_config import SFTRunConfig
from train.sft_data import _chats, resolve_data
from train.sft_heldout import encode_heldout
from train.sft_registry import resolve_init_adapter


@dataclass
class RunResult:
    run_dir: Path
    adapters: list[Path]
    versions: list[str]
    metrics: list[dict[str, Any]]
    seconds: float


def run_sft(cfg: SFTRunConfig) -> RunResult:
    """Train, checkpoint, score and register; returns what was produced."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t0 = time.monotonic()
    run_dir = cfg.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model(cfg.model.name, cfg.home)
    base_source = resolved.source
    train_path, eval_path = resolve_data(cfg)
    manifest_path = train_path.parent / "manifest.json"
    data_manifest = None
    if manifest_path.exists():
        data_manifest = {"path": str(manifest_path), "sha256": sha256_file(manifest_path)}
    init_path, parent = resolve_init_adapter(cfg, base_source)
    atomic_write_text(
        run_dir / "config.json",
        json.dumps(
            {
                **cfg.to_dict(),
                "resolved": {
                    "base": base_source,
                    "train": str(train_path),
                    "eval": str(eval_path) if eval_path else None,
                    "init_adapter": str(init_path) if init_path else None,
                    "parent": parent,
                    "data_manifest": data_manifest,
                },
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
        + "\n",
    )

    template = Path(cfg.model.chat_template).read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(base_source)
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(base_source, dtype=dtype)
    if init_path is not None:
        model = PeftModel.from_pretrained(model, str(init_path), is_trainable=True)
        peft_config = None
    else:
        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_config)
        peft_config = None  # already applied, so the callback sees the same PeftModel

    train_ds = Dataset.from_list([{"messages": m} for m in _chats(train_path)])
    training = dict(cfg.training)
    max_len = int(training.get("max_length", 512))
    encoded_eval = []
    if eval_path is not None:
        encoded_eval = encode_heldout(
            tokenizer, _chats(eval_path, cfg.data.max_eval_rows), template, max_len
        )
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        assistant_only_loss=True,
        chat_template_path=cfg.model.chat_template,
        save_strategy="steps",
        **training,
    )
    callback = make_callback(
        cfg,
        run_dir=run_dir,
        encoded_eval=encoded_eval,
        base_source=base_source,
        parent=parent,
        data_manifest=data_manifest,
        starts_from_adapter=init_path is not None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    resume = None
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    if cfg.run.resume and ckpts:
        resume = str(ckpts[-1])
    trainer.train(resume_from_checkpoint=resume)
    final = run_dir / "checkpoints" / f"checkpoint-{trainer.state.global_step}"
    if not final.exists():  # the last step is a checkpoint too (transformers may have saved it)
        trainer._save_checkpoint(trainer.model, trial=None)
        callback.on_save(args, trainer.state, trainer.control, model=trainer.model)
    metrics = (
        list(read_jsonl(run_dir / "metrics.jsonl")) if (run_dir / "metrics.jsonl").exists() else []
    )
    adapters = sorted((run_dir / "adapters").glob("step-*"))
    atomic_write_text(
        run_dir / "summary.json",
        json.dumps(
            {
                "seconds": round(time.monotonic() - t0, 1),
                "steps": trainer.state.global_step,
                "versions": callback.registered,
                "parent": parent,
                "metrics": metrics,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
    )
    return RunResult(run_dir, adapters, callback.registered, metrics, time.monotonic() - t0)
