"""The SFT run's configuration: dataclasses with ``help`` metadata, loaded from YAML.

The config follows TRL's style: dataclasses whose fields carry ``help`` metadata, loaded from
YAML, with ``--set section.key=value`` overrides on the command line. The ``training`` section is
passed through to ``trl.SFTConfig`` unchanged, so every TRL/transformers option is available.

Separate from the run (train/sft.py) because reading and checking a config needs only PyYAML:
``tutor train sft --help-config``, the pipeline and the sweep load configs without importing the
trainer's pieces.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from common.paths import tutor_home

TEMPLATE = Path(__file__).resolve().parent / "chatml_generation.jinja"


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
