"""Chart of the gateway's added latency vs concurrency, from overhead reports.

One panel per upstream (rows) and mode (columns); a line per gateway version and percentile;
the targets (p50 1 ms, p99 5 ms at 32 streams) as dotted lines. Symmetric-log y axis: added
latency within noise can be negative.

    .venv/bin/python -m deploy.bench.chart reports/bench/overhead.json --out docs/perf-overhead.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

NAMES = {"gateway": "after", "routes": "after + async deps (proposed)"}
COLOURS = {"before": "tab:red", "after": "tab:blue", "after + async deps (proposed)": "tab:purple"}


def series(reports: list[dict[str, Any]], upstream: str) -> dict[tuple[str, str], list]:
    """(version, mode) -> [(concurrency, added p50, added p99)]."""
    out: dict[tuple[str, str], list] = {}
    for report in reports:
        for row in report["rows"]:
            if row["upstream"] != upstream:
                continue
            version = NAMES.get(row.get("gateway", "gateway"), row["gateway"])
            out.setdefault((version, row["mode"]), []).append(
                (row["concurrency"], row["added_p50_ms"], row["added_p99_ms"])
            )
    return {k: sorted(v) for k, v in out.items()}


def plot(reports: list[dict[str, Any]], out: Path, upstreams: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("nonstream", "stream")
    panels = [
        (upstream, mode, data)
        for upstream in upstreams
        for data in [series(reports, upstream)]
        for mode in modes
        if any(k[1] == mode for k in data)
    ]
    cols = 3 if len(panels) == 3 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (upstream, mode, data) in zip(axes.flat, panels, strict=False):
        lowest = 0.0
        for (version, m), points in sorted(data.items()):
            if m != mode:
                continue
            xs = [p[0] for p in points]
            colour = COLOURS.get(version, "tab:gray")
            ax.plot(xs, [p[1] for p in points], "o-", color=colour, label=f"{version} p50")
            ax.plot(xs, [p[2] for p in points], "s--", color=colour, label=f"{version} p99")
            lowest = min([lowest, *(p[1] for p in points), *(p[2] for p in points)])
        ax.axhline(1.0, color="tab:green", linestyle=":", label="target p50 (1 ms)")
        ax.axhline(5.0, color="tab:olive", linestyle=":", label="target p99 (5 ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=1.5 * lowest if lowest < 0 else 0)
        ax.set_xticks([1, 8, 32], ["1", "8", "32"])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("added latency, ms (gateway - direct)")
        name = "streaming" if mode == "stream" else "non-streaming"
        what = {"fake": "fake upstream (instant)", "paced": "fake upstream, 20 ms/token"}
        ax.set_title(f"{name}, {what.get(upstream, upstream)}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Gateway overhead on a shared 2-core VM, measured side by side", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.chart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reports", nargs="+", type=Path, help="overhead JSON reports")
    p.add_argument("--upstreams", default="fake,paced", help="comma list: fake, paced, vllm")
    p.add_argument("--out", type=Path, default=Path("docs/perf-overhead.png"))
    a = p.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in a.reports]
    print(f"wrote {plot(reports, a.out, a.upstreams.split(','))}")


if __name__ == "__main__":
    main()
