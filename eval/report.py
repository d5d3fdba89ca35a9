"""The comparison as files: ``report.md``, ``report.json`` and PNG plots (matplotlib, Agg).

- ``metrics.png``: per metric, one bar per model with its 95% bootstrap interval;
- ``confusion.png``: per model, requested mode (rows) against the classified move (columns);
- ``human.png`` when votes exist: the human win rate of each pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from eval.gate import gate_lines
from eval.replies import METRICS

PLOTTED = ("pedagogy", *(m.name for m in METRICS))
SHORT = {"elicitation": "elicit", "metalinguistic": "metaling.", "clarification": "clarify"}
SHORT["explicit_correction"] = "explicit"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(e: dict[str, Any] | None) -> str:
    if not e:
        return "-"
    return f"{e['mean']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plot_metrics(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["model"] for m in result["models"]]
    names = [n for n in PLOTTED if any(n in result["metrics"][m] for m in models)]
    width_in = min(13.0, max(8.0, 0.2 * len(names) * max(1, len(models))))
    fig, ax = plt.subplots(figsize=(width_in, 4.2))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for j, name in enumerate(names):
            e = result["metrics"][model].get(name)
            if e is None:
                continue
            xs.append(j + (i - (len(models) - 1) / 2) * width)
            ys.append(e["mean"])
            lo.append(e["mean"] - e["lo"])
            hi.append(e["hi"] - e["mean"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=model)
    labels = [n + ("" if result["directions"].get(n, True) else " (v)") for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of replies (mean, 95% CI)")
    ax.set_title(f"{result['suite']}: per-reply metrics ((v): lower is better)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside, not over bars
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_confusion(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["model"] for m in result["models"]]
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        c = result["confusion"][model]
        table = c["table"]
        ax.imshow(table, cmap="Blues", aspect="auto")
        for i, row in enumerate(table):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        short = [SHORT.get(s, s) for s in c["cols"]]
        ax.set_xticks(range(len(c["cols"])), short, rotation=45, fontsize=7)
        ax.set_yticks(range(len(c["rows"])), c["rows"], fontsize=7)
        ax.set_title(model, fontsize=8)
        ax.set_xlabel("classified move", fontsize=7)
    axes[0][0].set_ylabel("requested mode", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_human(result: dict[str, Any], out: Path) -> Path | None:
    human = result.get("human")
    if not human or not human.get("pairs"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = human["pairs"]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(pairs)))
    ys = range(len(pairs))
    rates = [p["rate"] for p in pairs]
    err = [[p["rate"] - p["lo"] for p in pairs], [p["hi"] - p["rate"] for p in pairs]]
    ax.barh(list(ys), rates, xerr=err, capsize=3)
    ax.axvline(0.5, ls="--", color="grey")
    ax.set_yticks(list(ys), [f"{p['a']} vs {p['b']} (n={p['n']})" for p in pairs], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("human win rate of the first (ties count half)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _gate_section(result: dict[str, Any]) -> list[str]:
    """The ship gate of each candidate against the base (eval/gate.py), when one was asked."""
    gates = result.get("gates") or []
    lines = ["## Ship gate (against the base model, eval/gate.py)", ""] if gates else []
    for gate in gates:
        lines += [*gate_lines(gate), ""]
    return lines


def markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    models = [m["model"] for m in result["models"]]
    d = result["decision"]
    lines = [
        f"# Evaluation: {result['suite']}",
        "",
        f"Run `{result['run']}` against `{result.get('base_url')}`; generation "
        f"`{json.dumps(result['generation'], sort_keys=True)}`; "
        f"{result['suite_counts'].get('items', '?')} items "
        f"({result['suite_counts'].get('controls', '?')} error-free controls, "
        f"{result['suite_counts'].get('multi_turn', '?')} multi-turn).",
        "",
        f"Compared on {result['metrics'][models[0]]['pedagogy']['n']} items in "
        f"{', '.join(result.get('languages', []))}.",
        "",
        "## Decision",
        "",
        f"Rule: {d['rule']} (tolerance {d['tolerance']}).",
        "",
        *[f"- {r}" for r in d["reasons"]],
        "",
        f"**Recommended: `{d['recommended']}`**"
        + (f" (version `{d['version']}` of `{d['variant']}`)" if d.get("version") else ""),
        "",
        *_gate_section(result),
        "## Models",
        "",
        "| model | served by | persona | held-out perplexity | pedagogy [95% CI] |",
        "|---|---|---|---:|---|",
    ]
    for m in result["models"]:
        lines.append(
            f"| `{m['model']}` | `{m['adapter']}` | {m['persona'] or '-'} | "
            f"{_fmt(m['perplexity'], 2)} | {_ci(result['metrics'][m['model']]['pedagogy'])} |"
        )
    lines += [
        "",
        "## Metrics (mean [95% bootstrap CI]; lower is better for those marked v)",
        "",
        "| metric | " + " | ".join(f"`{m}`" for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for name in PLOTTED:
        if not any(name in result["metrics"][m] for m in models):
            continue
        arrow = "" if result["directions"].get(name, True) else " (v)"
        cells = [_ci(result["metrics"][m].get(name)) for m in models]
        n = next(result["metrics"][m][name]["n"] for m in models if name in result["metrics"][m])
        lines.append(f"| {name}{arrow} (n={n}) | " + " | ".join(cells) + " |")
    if any(t.get("n") for t in result.get("timing", {}).values()):
        lines += [
            "",
            "## Time to first token (streamed; a grounded reply includes its corrector turn)",
            "",
            "| model | n | p50 s | p90 s | corrector outcomes |",
            "|---|---:|---:|---:|---|",
        ]
        for m in models:
            t = result["timing"].get(m) or {}
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t.get("grounding", {}).items()))
            lines.append(
                f"| `{m}` | {t.get('n', 0)} | {_fmt(t.get('ttft_p50_s'), 2)} | "
                f"{_fmt(t.get('ttft_p90_s'), 2)} | {outcomes or '-'} |"
            )
    if "metrics" in plots:
        lines += ["", f"![metrics]({plots['metrics']})"]
    lines += ["", "## Paired comparisons", ""]
    for p in result["pairs"]:
        diff, wr = p["pedagogy_difference"], p["win_rate"]
        lines += [
            f"### `{p['a']}` vs `{p['b']}`",
            "",
            f"- pedagogy difference {diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]; "
            f"win rate of `{p['a']}` {wr['rate']:.2f} [{wr['lo']:.2f}, {wr['hi']:.2f}] "
            f"({wr['wins']} wins, {wr['losses']} losses, {wr['ties']} ties)",
            "",
            "| metric | n | a yes, b no | a no, b yes | McNemar p | test |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, t in p["mcnemar"].items():
            lines.append(
                f"| {name} | {t['n']} | {t['b']} | {t['c']} | {t['p_value']:.3g} | {t['method']} |"
            )
        lines.append("")
    lines += ["## Breakdown (mean pedagogy score, n)", ""]
    for group, table in result["breakdown"].items():
        lines += [
            f"**by {group}**",
            "",
            f"| {group} | n | " + " | ".join(f"`{m}`" for m in models) + " |",
            "|---|---:|" + "---:|" * len(models),
        ]
        for value, cells in table.items():
            n = next(iter(cells.values()))["n"]
            vals = [_fmt(cells.get(m, {}).get("pedagogy"), 2) for m in models]
            lines.append(f"| {value} | {n} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += [
        "## Mode adherence (requested mode x classified move)",
        "",
    ]
    if "confusion" in plots:
        lines += [f"![confusion]({plots['confusion']})", ""]
    for m in models:
        c = result["confusion"][m]
        lines += [
            f"`{m}`:",
            "",
            "| requested | " + " | ".join(c["cols"]) + " |",
            "|---|" + "---:|" * len(c["cols"]),
        ]
        for name, row in zip(c["rows"], c["table"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    lines += [
        "## Diversity",
        "",
        "| model | distinct-1 | distinct-2 | repeated openings | top opening | top move "
        "(share) | move entropy | collapsed |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for m in models:
        dv = result["diversity"][m]
        lines.append(
            f"| `{m}` | {dv['distinct_1']:.2f} | {dv['distinct_2']:.2f} | "
            f"{dv['repeated_opening_rate']:.2f} | {_cell(str(dv['top_opening']))} | "
            f"{dv['top_mode']} ({dv['top_mode_share']:.2f}) | {dv['mode_entropy']:.2f} | "
            f"{'yes' if dv['collapsed'] else 'no'} |"
        )
    lines.append("")
    human = result.get("human")
    lines += ["## Human side-by-side", ""]
    if human and human.get("pairs"):
        lines += [
            f"{human['votes']} votes.",
            "",
            "| a | b | n | a wins | b wins | ties | win rate of a [95% CI] |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for p in human["pairs"]:
            lines.append(
                f"| `{p['a']}` | `{p['b']}` | {p['n']} | {p['wins']} | {p['losses']} | "
                f"{p['ties']} | {p['rate']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}] |"
            )
        if "human" in plots:
            lines += ["", f"![human]({plots['human']})"]
    else:
        lines.append("No votes for these versions yet (`tutor eval arena`).")
    lines.append("")
    judge = result.get("judge")
    lines += ["## LLM judge", ""]
    if judge:
        trust = judge.get("calibration", {}).get("trusted")
        lines += [
            f"Judge `{judge.get('model')}`: "
            + ("calibrated and trusted." if trust else "NOT trusted (see its calibration)."),
            "",
            "| model | " + " | ".join(judge.get("dimensions", [])) + " |",
            "|---|" + "---:|" * len(judge.get("dimensions", [])),
        ]
        for m in models:
            row = judge.get("scores", {}).get(m, {})
            lines.append(
                f"| `{m}` | "
                + " | ".join(_fmt(row.get(dim), 2) for dim in judge.get("dimensions", []))
                + " |"
            )
    else:
        lines.append("Not run (optional: `tutor eval judge`).")
    lines += ["", "## Examples", ""]
    for m in models:
        ex = result["examples"][m]
        for kind in ("best", "worst"):
            lines += [
                f"**`{m}`, {kind}**",
                "",
                "| item | mode | learner | reply | move | score | failed |",
                "|---|---|---|---|---|---:|---|",
            ]
            for e in ex[kind]:
                control = " (control)" if e["kind"] == "control" else ""
                lines.append(
                    f"| {e['item_id']} | {e['mode']}{control}"
                    f" | {_cell(e['utterance'])} | {_cell(e['reply'])} | {e['label']} | "
                    f"{e['pedagogy']:.2f} | {', '.join(e['failed']) or '-'} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """All report files into ``out``; returns them by kind."""

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": plot_metrics(result, out / "metrics.png"),
        "confusion": plot_confusion(result, out / "confusion.png"),
    }
    human = plot_human(result, out / "human.png")
    if human is not None:
        files["human"] = human
    md = markdown(result, {k: v.name for k, v in files.items()})
    atomic_write_text(out / "report.md", md)
    atomic_write_text(
        out / "report.json", json.dumps(result, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    )
    files["markdown"] = out / "report.md"
    files["json"] = out / "report.json"
    return files
