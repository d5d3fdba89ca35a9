"""LoRA SFT with TRL's SFTTrainer and PEFT: Stage 1 from the base, Stage 2 from a Stage 1 adapter.

The config follows TRL's style: dataclasses whose fields carry ``help`` metadata, loaded from
YAML, with ``--set section.key=value`` overrides on the command line. The ``training`` section is
passed through to ``trl.SFTConfig`` unchanged, so every TRL/transformers option is available.

Every checkpoint is exported as a clean PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``), scored on the held-out dialogues (perplexity over assistant tokens,
base vs adapter) into ``metrics.jsonl``, and registered as ``<variant>@<n>`` with its lineage.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text, read_jsonl, sha256_file
from common.paths import tutor_home

TEMPLATE = Path(__file__).resolve().parent / "chatml_generation.jinja"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class ModelArgs:
    name: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Base model: a preset, a local folder or a hub id (Qwen/Qwen3-8B-Base)."},
    )
    dtype: str = field(
        default="bfloat16", metadata={"help": "Weights dtype: bfloat16, float32 or float16."}
    )
    chat_template: str = field(
        default=str(TEMPLATE),
        metadata={
            "help": "ChatML template with {% generation %} markers, so the loss covers assistant "
            "tokens only; it renders exactly like the served template."
        },
    )


@dataclass
class DataArgs:
    train: str = field(
        default="mix:tutor/stage1",
        metadata={"help": "A JSONL of chats, or mix:<recipe>/<set> (built by `tutor data build`)."},
    )
    eval: str | None = field(
        default=None,
        metadata={"help": "Held-out JSONL; default: the eval.jsonl beside a mix's train.jsonl."},
    )
    max_eval_rows: int = field(default=64, metadata={"help": "Held-out chats scored per ckpt."})


@dataclass
class LoraArgs:
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        metadata={"help": "Modules that get LoRA matrices."},
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Stage 2: continue from this adapter: a registry name (tutor@3, tutor@latest) "
            "or a PEFT folder. Empty: Stage 1, a fresh adapter on the base."
        },
    )


@dataclass
class RunArgs:
    variant: str = field(default="tutor", metadata={"help": "Registry variant for checkpoints."})
    name: str = field(default="run", metadata={"help": "Run name: $TUTOR_HOME/runs/<name>."})
    output_dir: str | None = field(default=None, metadata={"help": "Overrides the run folder."})
    home: str | None = field(default=None, metadata={"help": "TUTOR_HOME (models, registry)."})
    register: bool = field(default=True, metadata={"help": "Register every checkpoint."})
    resume: bool = field(
        default=True, metadata={"help": "Resume from the run's last checkpoint if there is one."}
    )


DEFAULT_TRAINING: dict[str, Any] = {
    "max_steps": 200,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 10,
    "logging_steps": 5,
    "save_steps": 40,
    "max_length": 512,
    "use_cpu": True,
    "bf16": True,
    "gradient_checkpointing": False,
    "report_to": "none",
    "seed": 42,
    "dataloader_num_workers": 0,
}


@dataclass
class SFTRunConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    run: RunArgs = field(default_factory=RunArgs)
    training: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Passed to trl.SFTConfig (max_steps, save_steps, learning_rate, ...)."},
    )

    @property
    def home(self) -> Path:
        return tutor_home(self.run.home)

    @property
    def output_dir(self) -> Path:
        return (
            Path(self.run.output_dir) if self.run.output_dir else self.home / "runs" / self.run.name
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        sub = known[name].default_factory if known[name].default_factory is not None else None  # type: ignore[misc]
        if sub is not None and isinstance(value, dict) and is_dataclass(sub):
            kwargs[name] = _build(sub, value)  # type: ignore[arg-type]
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> SFTRunConfig:
    """YAML sections model/data/lora/run/training, then ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {item!r}: use section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    sections = {"model": ModelArgs, "data": DataArgs, "lora": LoraArgs, "run": RunArgs}
    unknown = set(raw) - set(sections) - {"training"}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}")
    cfg = SFTRunConfig(
        **{k: _build(cls, raw.get(k) or {}) for k, cls in sections.items()},
        training={**DEFAULT_TRAINING, **(raw.get("training") or {})},
    )
    return cfg


def config_help() -> str:
    """Every field with its help text: `tutor train sft --help-config`."""
    lines = []
    for section, cls in (
        ("model", ModelArgs),
        ("data", DataArgs),
        ("lora", LoraArgs),
        ("run", RunArgs),
    ):
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            lines.append(f"{section}.{f.name} = {default!r}\n    {f.metadata.get('help', '')}")
    lines.append("training.* = any trl.SFTConfig field; defaults: " + json.dumps(DEFAULT_TRAINING))
    return "\n".join(lines)


# -- data --------------------------------------------------------------------------------------


def resolve_data(cfg: SFTRunConfig) -> tuple[Path, Path | None]:
    ref = cfg.data.train
    if ref.startswith("mix:"):
        recipe, _, name = ref[4:].partition("/")
        folder = cfg.home / "data" / "mixes" / recipe / name
        train = folder / "train.jsonl"
        evalp = Path(cfg.data.eval) if cfg.data.eval else folder / "eval.jsonl"
    else:
        train = Path(ref)
        evalp = Path(cfg.data.eval) if cfg.data.eval else None
    if not train.exists():
        raise FileNotFoundError(f"{train} missing: build it with `tutor data build`")
    return train, evalp if evalp and evalp.exists() else None


def _chats(path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    rows = [r["messages"] for r in read_jsonl(path)]
    return rows[:limit] if limit else rows


# -- held-out perplexity -----------------------------------------------------------------------


def encode_heldout(tokenizer: Any, chats: list[list[dict[str, str]]], template: str, max_len: int):
    """(input_ids, assistant mask) per chat, with the same template and mask as training."""
    out = []
    for chat in chats:
        enc = tokenizer.apply_chat_template(
            chat,
            chat_template=template,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = enc["input_ids"][:max_len], enc["assistant_masks"][:max_len]
        if sum(mask[1:]):
            out.append((ids, mask))
    return out


def heldout_nll(model: Any, encoded: list[tuple[list[int], list[int]]]) -> float:
    """Mean negative log-likelihood per assistant token (exp of it is the perplexity)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in encoded:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            target = x[0, 1:]
            m = torch.tensor(mask[1:], device=device, dtype=torch.bool)
            nll = torch.nn.functional.cross_entropy(logits[m], target[m], reduction="sum")
            total += float(nll)
            count += int(m.sum())
    if was_training:
        model.train()
    return total / max(1, count)


# -- registry ----------------------------------------------------------------------------------


def _registry(cfg: SFTRunConfig) -> Any:
    from adapters.registry import Registry
    from common.settings import Settings

    settings = Settings(home=cfg.home)
    return Registry.from_settings(settings), settings


def resolve_init_adapter(
    cfg: SFTRunConfig, base_model: str | None = None
) -> tuple[Path | None, str | None]:
    """(folder, registered parent name) of the adapter Stage 2 starts from. A shipped folder
    (with its manifest) is registered first if this registry lacks it, so it is the parent."""
    ref = cfg.lora.init_adapter
    if not ref:
        return None, None
    folder = Path(ref).expanduser().resolve()
    if folder.is_dir():
        if base_model is None or not cfg.run.register:
            return folder, None
        from adapters.shipped import register_folder

        reg, settings = _registry(cfg)
        version = register_folder(
            reg,
            folder,
            base_model=base_model,
            base_aliases=(cfg.model.name,),
            max_rank=settings.max_lora_rank,
        )
        return folder, version.name if version else None
    if "@" not in ref:
        raise ValueError(f"init_adapter {ref!r} is neither a folder nor a registry name")
    reg, _ = _registry(cfg)
    variant, _, which = ref.partition("@")
    if which == "latest":
        versions = reg.list(variant)
        if not versions:
            raise ValueError(f"no registered versions of {variant}")
        v = versions[-1]
    else:
        v = reg.get(ref)
    return v.path, v.name


# -- the run -----------------------------------------------------------------------------------


def export_adapter(checkpoint: Path, dest: Path) -> Path:
    """Only the two files an engine needs, via a temp folder and a rename."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy2(checkpoint / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
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

    from server.model_store import resolve_model

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
