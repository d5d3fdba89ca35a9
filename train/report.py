"""What a training run did, for docs/TRAINING.md: tables, a loss/perplexity plot, and sample
replies generated through the gateway (``tutor serve`` in a subprocess, the openai client)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from train.data import read_jsonl

SAMPLE_PROMPTS = {
    "tutor": [
        "Yesterday I go to the park with my friends.",
        "My sister work in a hospital since three years.",
        "I am agree with you, the movie was very bored.",
    ],
    "tutor-es-l2": [
        "Ayer yo voy a la playa con mi familia.",
        "Mi hermana es muy cansada hoy.",
        "Me gusta mucho los libros de aventuras.",
    ],
}


def load_run(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    run_dir = Path(run_dir)
    return {
        "metrics": list(read_jsonl(run_dir / "metrics.jsonl")),
        "progress": list(read_jsonl(run_dir / "progress.jsonl")),
    }


def plot_runs(runs: dict[str, Path], out: Path) -> Path:
    """Training loss (left) and held-out perplexity, adapter vs base (right), per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for label, run_dir in runs.items():
        data = load_run(run_dir)
        prog = data["progress"]
        ax1.plot([p["step"] for p in prog], [p["loss"] for p in prog], label=label)
        ms = [m for m in data["metrics"] if "eval_ppl_adapter" in m]
        (line,) = ax2.plot(
            [m["step"] for m in ms], [m["eval_ppl_adapter"] for m in ms], marker="o", label=label
        )
        if ms:
            ax2.axhline(
                ms[0]["eval_ppl_base"],
                ls="--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{label}: base",
            )
    ax1.set(title="training loss (assistant tokens)", xlabel="step")
    ax2.set(title="held-out perplexity", xlabel="step")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def markdown_table(run_dir: Path) -> str:
    data = load_run(run_dir)
    losses = {p["step"]: p["loss"] for p in data["progress"]}
    lines = [
        "| step | train loss | held-out ppl (adapter) | held-out ppl (base) | version |",
        "|---:|---:|---:|---:|---|",
    ]
    for m in data["metrics"]:
        loss = m.get("train_loss") or losses.get(m["step"])
        ppl, base = m.get("eval_ppl_adapter", float("nan")), m.get("eval_ppl_base", float("nan"))
        shown = "-" if loss is None else f"{loss:.3f}"
        lines.append(
            f"| {m['step']} | {shown} | {ppl:.2f} | {base:.2f} | {m.get('version', '-')} |"
        )
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_replies(
    variant: str,
    prompts: list[str],
    *,
    adapter: Path | None,
    home: Path | None = None,
    model: str = "smollm2-135m-instruct",
    max_tokens: int = 60,
) -> list[str]:
    """Ask a freshly started ``tutor serve`` (transformers engine) at temperature 0."""
    from openai import OpenAI

    port = _free_port()
    env = {
        **os.environ,
        "TUTOR_ENGINE": "transformers",
        "TUTOR_MODEL": model,
        "TUTOR_PORT": str(port),
        "TUTOR_UI": "false",
        "TUTOR_ADAPTERS": json.dumps({variant: str(adapter)} if adapter else {}),
    }
    if home:
        env["TUTOR_HOME"] = str(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--log-level", "warning"],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("tutor serve did not start") from None
                time.sleep(1)
        out = []
        for p in prompts:
            r = client.chat.completions.create(
                model=variant,
                messages=[{"role": "user", "content": p}],
                temperature=0,
                max_tokens=max_tokens,
            )
            out.append((r.choices[0].message.content or "").strip())
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)
