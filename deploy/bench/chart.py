"""Chart of the gateway's added latency vs concurrency, from overhead reports.

One panel per mode (non-streaming, streaming) for the chosen upstream; a line per gateway
version and percentile; the targets (p50 1 ms, p99 5 ms at 32 streams) as dotted lines.

    .venv/bin/python -m deploy.bench.chart reports/bench/overhead.json --out docs/perf-overhead.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def series(reports: list[dict[str, Any]], upstream: str) -> dict[tuple[str, str], list]:
    """(version, mode) -> [(concurrency, added p50, added p99)]."""
    out: dict[tuple[str, str], list] = {}
    for report in reports:
        for row in report["rows"]:
            if row["upstream"] != upstream:
                continue
            version = {"gateway": "after"}.get(row.get("gateway", "gateway"), row["gateway"])
            out.setdefault((version, row["mode"]), []).append(
                (row["concurrency"], row["added_p50_ms"], row["added_p99_ms"])
            )
    return {k: sorted(v) for k, v in out.items()}


def plot(reports: list[dict[str, Any]], out: Path, upstream: str = "fake") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(reports, upstream)
    modes = [m for m in ("nonstream", "stream") if any(k[1] == m for k in data)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), squeeze=False)
    colours = {"before": "tab:red", "after": "tab:blue"}
    for ax, mode in zip(axes[0], modes, strict=True):
        for (version, m), points in sorted(data.items()):
            if m != mode:
                continue
            xs = [p[0] for p in points]
            colour = colours.get(version, "tab:gray")
            ax.plot(
                xs, [max(p[1], 0.01) for p in points], "o-", color=colour, label=f"{version} p50"
            )
            ax.plot(
                xs, [max(p[2], 0.01) for p in points], "s--", color=colour, label=f"{version} p99"
            )
        ax.axhline(1.0, color="tab:green", linestyle=":", label="target p50 (1 ms)")
        ax.axhline(5.0, color="tab:olive", linestyle=":", label="target p99 (5 ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 32], ["1", "8", "32"])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("added latency, ms (gateway - direct)")
        name = "streaming" if mode == "stream" else "non-streaming"
        ax.set_title(f"{name}, {upstream} upstream")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Gateway overhead on a 2-core VM (shared, noisy): before and after", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench.chart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reports", nargs="+", type=Path, help="overhead JSON reports")
    p.add_argument("--upstream", default="fake", help="fake, paced or vllm")
    p.add_argument("--out", type=Path, default=Path("docs/perf-overhead.png"))
    a = p.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in a.reports]
    print(f"wrote {plot(reports, a.out, a.upstream)}")


if __name__ == "__main__":
    main()
