"""What happens at each SFT checkpoint: export the adapter, score it, register it, log progress.

Every checkpoint is exported as a clean PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``), scored on the held-out dialogues (perplexity over assistant tokens,
base vs adapter) into ``metrics.jsonl``, and registered as ``<variant>@<n>`` with its lineage.
Separate from the run because this is the trainer callback's side of the work (files, metrics,
registry), not building the model and the trainer; transformers is imported inside make_callback.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from common.files import atomic_dir
from train.sft_config import SFTRunConfig
from train.sft_heldout import heldout_nll
from train.sft_registry import _registry

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_adapter(checkpoint: Path, dest: Path) -> Path:
    """Only the two files an engine needs, written whole or not at all."""
    with atomic_dir(dest, mode=0o755) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(checkpoint / name, tmp / name)
    return dest


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def make_callback(
    cfg: SFTRunConfig,
    *,
    run_dir: Path,
    encoded_eval: list[tuple[list[int], list[int]]],
    base_source: str,
    parent: str | None,
    data_manifest: dict[str, Any] | None,
    starts_from_adapter: bool = False,
) -> Any:
    from transformers import TrainerCallback

    metrics_path, progress_path = run_dir / "metrics.jsonl", run_dir / "progress.jsonl"

    class CheckpointCallback(TrainerCallback):
        """Per log line: loss and tokens/s. Per checkpoint: export, perplexity, register."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.last_t, self.last_tokens = self.t0, 0.0
            self.last_loss: float | None = None
            self.base_nll: float | None = None
            self.registered: list[str] = []

        def _base(self, model: Any) -> float | None:
            if self.base_nll is None and encoded_eval:
                with model.disable_adapter():
                    self.base_nll = heldout_nll(model, encoded_eval)
            return self.base_nll

        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            if encoded_eval and state.global_step == 0 and model is not None:
                base = self._base(model)  # every rank runs the forward passes (FSDP shards)
                # A fresh LoRA (B = 0) is the base: score it only when starting from an adapter.
                start = heldout_nll(model, encoded_eval) if starts_from_adapter else base
                if not state.is_world_process_zero:
                    return
                _append_jsonl(
                    metrics_path,
                    {
                        "step": 0,
                        "eval_nll_base": base,
                        "eval_ppl_base": math.exp(base),
                        "eval_nll_adapter": start,
                        "eval_ppl_adapter": math.exp(start),
                        "eval_rows": len(encoded_eval),
                    },
                )

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.monotonic()
            tokens = float(logs.get("num_tokens", state.num_input_tokens_seen or 0))
            rate = (tokens - self.last_tokens) / max(1e-9, now - self.last_t)
            self.last_t, self.last_tokens = now, tokens
            self.last_loss = float(logs["loss"])
            row = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": self.last_loss,
                "lr": logs.get("learning_rate"),
                "tokens": tokens,
                "tokens_per_s": round(rate, 1),
                "elapsed_s": round(now - self.t0, 1),
            }
            _append_jsonl(progress_path, row)
            print(
                f"step {row['step']}/{row['max_steps']}  loss {row['loss']:.4f}  "
                f"{row['tokens_per_s']:.0f} tok/s  {row['elapsed_s']:.0f}s",
                flush=True,
            )

        def on_save(self, args, state, control, model=None, **kw):  # noqa: ANN001
            step = state.global_step
            nll = base = None
            if encoded_eval and model is not None:  # on every rank, for sharded models
                base = self._base(model)
                nll = heldout_nll(model, encoded_eval)
            if not state.is_world_process_zero:  # one rank exports, writes and registers
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{step}"
            adapter = export_adapter(ckpt, run_dir / "adapters" / f"step-{step:05d}")
            row: dict[str, Any] = {
                "step": step,
                "train_loss": self.last_loss,
                "adapter": str(adapter),
            }
            if nll is not None and base is not None:
                row.update(
                    eval_nll_base=base,
                    eval_ppl_base=math.exp(base),
                    eval_nll_adapter=nll,
                    eval_ppl_adapter=math.exp(nll),
                    eval_rows=len(encoded_eval),
                )
            if cfg.run.register:
                reg, settings = _registry(cfg)
                summary = {k: row[k] for k in ("eval_ppl_base", "eval_ppl_adapter") if k in row}
                version = reg.add(
                    adapter,
                    variant=cfg.run.variant,
                    base_model=base_source,
                    # a Stage 2 started from a shipped folder inherits its config's public base id
                    base_aliases=(cfg.model.name,),
                    max_rank=settings.max_lora_rank,
                    parent=parent,
                    source={
                        "run": cfg.run.name,
                        "run_dir": str(run_dir),
                        "step": step,
                        "data": cfg.data.train,
                        "data_manifest_sha256": (data_manifest or {}).get("sha256"),
                    },
                    eval_summary={"heldout": summary} if summary else None,
                )
                row["version"] = version.name
                row["parent"] = parent
                self.registered.append(version.name)
            _append_jsonl(metrics_path, row)
            ppl = row.get("eval_ppl_adapter")
            print(
                f"checkpoint {step}: ppl {ppl if ppl is None else round(ppl, 3)} "
                f"(base {row.get('eval_ppl_base') and round(row['eval_ppl_base'], 3)}) "
                f"-> {row.get('version', adapter)}",
                flush=True,
            )

    return CheckpointCallback()
