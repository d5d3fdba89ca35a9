"""``tutor eval compare``: score a run's replies, compare the models on the same items, and
recommend the version to serve.

The decision rule (also in docs/EVAL.md and every report):

1. Rank the models by their mean **pedagogy score** over the suite's items (per item: the mean of
   the applicable pedagogical checks, see :func:`eval.replies.pedagogy_score`).
2. Every model within ``tolerance`` (default 0.02) of the best is tied with it.
3. Among tied models, prefer the **lower held-out perplexity** (train/'s per-checkpoint figure);
   a model whose perplexity is unknown ranks after those whose perplexity is known.
4. The winner is the recommended version; ``--promote`` points its variant at it in the registry
   when it is a registered version and not already live.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from common.files import read_jsonl
from common.modes import LABELS, MODES, confusion_matrix
from eval.diversity import diversity
from eval.replies import HIGHER_IS_BETTER, YES_NO, failed_checks, score_reply
from eval.runner import runs_dir
from eval.stats import bootstrap_ci, mcnemar_paired, paired_difference, win_rate
from eval.suites import Suite, SuiteItem, load_suite

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.02
N_EXAMPLES = 3
GROUPS = ("language", "mode", "category", "kind", "turns")


@dataclass
class RunData:
    path: Path
    meta: dict[str, Any]
    suite: Suite
    replies: dict[str, dict[str, dict[str, Any]]]  # model -> item id -> reply record

    @property
    def models(self) -> list[str]:
        return [m["model"] for m in self.meta["models"]]

    def model_meta(self, model: str) -> dict[str, Any]:
        return next(m for m in self.meta["models"] if m["model"] == model)


def find_run(ref: str | Path, home: Path | str | None = None) -> Path:

    p = Path(ref).expanduser()
    if (p / "run.json").exists():
        return p
    q = runs_dir(home) / str(ref)
    if (q / "run.json").exists():
        return q
    raise FileNotFoundError(
        f"no eval run {ref!s} (a folder with run.json, or a name in {q.parent})"
    )


def load_run(ref: str | Path, home: Path | str | None = None) -> RunData:

    path = find_run(ref, home)
    meta = json.loads((path / "run.json").read_text())
    suite_path = meta.get("suite_path")
    if suite_path and Path(suite_path).is_dir():
        suite = load_suite(Path(suite_path))
    else:
        suite = load_suite(meta["suite"], home=home)
    if meta.get("suite_items_sha256") not in (None, suite.manifest.get("items_sha256")):
        raise ValueError(f"{path}: the suite {suite.ref} changed since this run")
    replies: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in read_jsonl(path / "replies.jsonl"):
        replies[row["model"]][row["item_id"]] = row
    return RunData(path, meta, suite, dict(replies))


# -- scoring ---------------------------------------------------------------------------------------


def item_groups(item: SuiteItem) -> dict[str, str]:
    return {
        "language": item.language,
        "mode": item.mode,
        "category": item.category,
        "kind": "control" if item.control else "error",
        "turns": "multi" if item.context else "single",
    }


def score_run(
    run: RunData, languages: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per model, one row per suite item (of ``languages``, default all): the item, the reply
    and every metric."""
    items = [it for it in run.suite.items if not languages or it.language in languages]
    if not items:
        raise ValueError(f"no items in {run.suite.ref} for languages {list(languages or [])}")
    out: dict[str, list[dict[str, Any]]] = {}
    for model in run.models:
        rows = []
        for item in items:
            rec = run.replies.get(model, {}).get(item.id)
            if rec is None:
                raise ValueError(f"{run.path}: no reply from {model} to {item.id}")
            metrics = score_reply(
                rec["reply"],
                utterance=item.utterance,
                corrections=item.corrections,
                language=item.language,
                mode=item.mode,
                control=item.control,
                finish_reason=rec.get("finish_reason"),
            )
            rows.append(
                {
                    "item_id": item.id,
                    **item_groups(item),
                    "utterance": item.utterance,
                    "correction": item.correction,
                    "reply": rec["reply"],
                    "adapter": rec.get("adapter"),
                    **metrics,
                }
            )
        out[model] = rows
    return out


def timing(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Time to the first streamed token (the corrector turn of a grounded recast included) and
    what the corrector did, over the replies that recorded them (cached ones keep theirs)."""
    recs = list(records)
    ttfts = sorted(r["ttft_s"] for r in recs if r.get("ttft_s") is not None)
    outcomes = Counter(r["grounding"] for r in recs if r.get("grounding"))

    def q(p: float) -> float | None:
        return round(ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))], 3) if ttfts else None

    return {
        "n": len(ttfts),
        "ttft_p50_s": q(0.5),
        "ttft_p90_s": q(0.9),
        "grounding": dict(outcomes),
    }


def _values(rows: Sequence[dict[str, Any]], metric: str) -> list[float]:
    return [float(bool(r[metric])) for r in rows if r.get(metric) is not None]


def metric_estimates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {"pedagogy": bootstrap_ci([r["pedagogy"] for r in rows]).to_dict()}
    for name in YES_NO:
        vals = _values(rows, name)
        if vals:
            out[name] = bootstrap_ci(vals).to_dict()
    return out


def breakdown(scored: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """group kind -> group value -> model -> {n, pedagogy and each yes/no metric's mean}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group in GROUPS:
        table: dict[str, dict[str, Any]] = defaultdict(dict)
        for model, rows in scored.items():
            by: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                by[r[group]].append(r)
            for value, sub in sorted(by.items()):
                cell = {"n": len(sub), "pedagogy": sum(r["pedagogy"] for r in sub) / len(sub)}
                for name in YES_NO:
                    vals = _values(sub, name)
                    if vals:
                        cell[name] = sum(vals) / len(vals)
                table[value][model] = cell
        out[group] = dict(table)
    return out


def confusion(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Requested mode (controls on their own row) against the classified move."""
    row_names = [*MODES, "control"]
    pairs = [("control" if r["kind"] == "control" else r["mode"], r["label"]) for r in rows]
    return {"rows": row_names, "cols": list(LABELS), "table": confusion_matrix(pairs, row_names)}


def pairwise(scored: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For every pair of models on the same items: the pedagogy difference and win rate with
    bootstrap intervals, and McNemar's test for each yes/no metric."""
    out = []
    for a, b in combinations(scored, 2):
        ra, rb = scored[a], scored[b]
        pa, pb = [r["pedagogy"] for r in ra], [r["pedagogy"] for r in rb]
        tests = {}
        for name in YES_NO:
            both = [
                (bool(x[name]), bool(y[name]))
                for x, y in zip(ra, rb, strict=True)
                if x.get(name) is not None and y.get(name) is not None
            ]
            if both:
                t = mcnemar_paired([x for x, _ in both], [y for _, y in both])
                tests[name] = {**t.to_dict(), "n": len(both)}
        out.append(
            {
                "a": a,
                "b": b,
                "pedagogy_difference": paired_difference(pa, pb).to_dict(),
                "win_rate": win_rate(pa, pb).to_dict(),
                "mcnemar": tests,
            }
        )
    return out


def examples(rows: Sequence[dict[str, Any]], n: int = N_EXAMPLES) -> dict[str, list[dict]]:
    """The best and worst replies by pedagogy score (ties by item id), with what failed."""
    keep = ("item_id", "language", "mode", "kind", "utterance", "reply", "label", "pedagogy")
    ranked = sorted(rows, key=lambda r: (r["pedagogy"], r["item_id"]))

    def pick(r: dict[str, Any]) -> dict[str, Any]:
        return {**{k: r[k] for k in keep}, "failed": failed_checks(r)}

    best = sorted(rows, key=lambda r: (-r["pedagogy"], r["item_id"]))[:n]
    return {"best": [pick(r) for r in best], "worst": [pick(r) for r in ranked[:n]]}


# -- perplexity and the decision -------------------------------------------------------------------


def _ppl_from_run(version: Any) -> float | None:
    """The run's metrics.jsonl row for the version's step (train/sft_checkpoints.py writes it)."""
    source = version.source or {}
    run_dir, step = source.get("run_dir"), source.get("step")
    metrics = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if metrics is None or not metrics.exists():
        return None
    for line in metrics.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("step") == step and "eval_ppl_adapter" in row:
            return float(row["eval_ppl_adapter"])
    return None


def heldout_perplexities(
    adapters: dict[str, str], registry: Any | None
) -> dict[str, dict[str, Any]]:
    """model -> {perplexity, source}: the registry's eval summary (train/ records the held-out
    perplexity of every checkpoint there), else the run's metrics.jsonl; the base model's
    perplexity on the same held-out set is the one recorded beside the versions compared."""
    out: dict[str, dict[str, Any]] = {}
    base_ppl: tuple[float, str] | None = None
    versions = {}
    if registry is not None:
        from adapters.registry import VersionNotFound

        for model, adapter in adapters.items():
            if "@" not in adapter:
                continue
            try:
                versions[model] = registry.get(adapter)
            except VersionNotFound:
                continue
    for model, version in versions.items():
        summary = (version.eval_summary or {}).get("heldout", {})
        ppl = summary.get("eval_ppl_adapter")
        where = f"registry eval_summary of {version.name}"
        if ppl is None:
            ppl, where = _ppl_from_run(version), f"{(version.source or {}).get('run_dir')}"
        out[model] = {"perplexity": ppl, "source": where if ppl is not None else None}
        if summary.get("eval_ppl_base") is not None and base_ppl is None:
            base_ppl = (float(summary["eval_ppl_base"]), version.name)
    for model, adapter in adapters.items():
        if model in out:
            continue
        if adapter == "base" and base_ppl is not None:
            out[model] = {
                "perplexity": base_ppl[0],
                "source": f"base model, same held-out set (recorded with {base_ppl[1]})",
            }
        else:
            out[model] = {"perplexity": None, "source": None}
    return out


def decide(
    pedagogy: dict[str, float],
    perplexity: dict[str, float | None],
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The decision rule of this module's docstring, with the reasons in words."""
    if not pedagogy:
        raise ValueError("no models to decide between")
    best_model = max(pedagogy, key=lambda m: (pedagogy[m], m))
    best = pedagogy[best_model]
    tied = sorted(m for m in pedagogy if best - pedagogy[m] <= tolerance + 1e-12)
    reasons = [
        f"best pedagogy score: {best_model} ({best:.3f}); within {tolerance:.3f}: "
        + ", ".join(f"{m} ({pedagogy[m]:.3f})" for m in tied)
    ]
    if len(tied) == 1:
        chosen = best_model
        reasons.append(f"{chosen} is ahead by more than the tolerance")
    else:
        known = [m for m in tied if perplexity.get(m) is not None]
        if known:
            chosen = min(known, key=lambda m: (perplexity[m], -pedagogy[m], m))
            reasons.append(
                "tie broken by lower held-out perplexity: "
                + ", ".join(f"{m} {perplexity[m]:.3f}" for m in sorted(known))
            )
        else:
            chosen = best_model
            reasons.append("no held-out perplexity known for the tied models: best score kept")
    return {
        "rule": (
            "prefer the better pedagogy score; models within the tolerance of the best are tied, "
            "and a tie is broken by lower held-out perplexity"
        ),
        "tolerance": tolerance,
        "recommended": chosen,
        "tied": tied,
        "reasons": reasons,
    }


# -- the whole comparison --------------------------------------------------------------------------


def compare_run(
    run: RunData,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    registry: Any | None = None,
    votes: Path | None = None,
    languages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (written as report.json); ``languages``
    restricts the comparison (and the decision) to those items."""
    scored = score_run(run, languages)
    adapters = {m: run.model_meta(m)["adapter"] for m in run.models}
    for m in run.models:
        served = run.model_meta(m).get("served_by") or [adapters[m]]
        if len(served) > 1:
            raise ValueError(f"{m} was served by several versions in this run: {served}")
    ppl = heldout_perplexities(adapters, registry)
    metrics = {m: metric_estimates(rows) for m, rows in scored.items()}
    pedagogy = {m: metrics[m]["pedagogy"]["mean"] for m in scored}
    decision = decide(pedagogy, {m: ppl[m]["perplexity"] for m in scored}, tolerance)
    chosen = decision["recommended"]
    chosen_adapter = adapters[chosen]
    decision["version"] = chosen_adapter if "@" in chosen_adapter else None
    decision["variant"] = run.model_meta(chosen).get("persona")
    if registry is not None and decision["version"]:
        decision["variant"] = registry.get(decision["version"]).variant
        decision["live"] = registry.alias(decision["variant"])
    result = {
        "run": str(run.path),
        "suite": run.suite.ref,
        "languages": sorted({r["language"] for rows in scored.values() for r in rows}),
        "suite_counts": run.suite.manifest.get("counts", {}),
        "generation": run.suite.generation,
        "base_url": run.meta.get("base_url"),
        "models": [
            {
                "model": m,
                "adapter": adapters[m],
                "persona": run.model_meta(m).get("persona"),
                "perplexity": ppl[m]["perplexity"],
                "perplexity_source": ppl[m]["source"],
            }
            for m in run.models
        ],
        "metrics": metrics,
        "directions": {"pedagogy": True, **HIGHER_IS_BETTER},
        "diversity": {
            m: diversity(
                [r["reply"] for r in rows], [r["label"] for r in rows if r["kind"] == "error"]
            )
            for m, rows in scored.items()
        },
        "confusion": {m: confusion(rows) for m, rows in scored.items()},
        "timing": {m: timing(run.replies.get(m, {}).values()) for m in run.models},
        "pairs": pairwise(scored),
        "breakdown": breakdown(scored),
        "examples": {m: examples(rows) for m, rows in scored.items()},
        "decision": decision,
        "human": None,
        "judge": None,
    }
    if votes is not None and Path(votes).exists():
        from eval.arena import VoteStore, human_win_rates

        store = VoteStore(votes)
        keys = {m: run.model_meta(m)["key"] for m in run.models}
        result["human"] = human_win_rates(store.votes(), keys)
    judged = run.path / "judge.json"
    if judged.exists():
        result["judge"] = json.loads(judged.read_text())
    return result


def promote(decision: dict[str, Any], registry: Any) -> str:
    """Point the variant at the recommended version, if the rule picked a registered version
    that is not live yet; returns what was done, in words."""
    version, variant = decision.get("version"), decision.get("variant")
    if not version or not variant:
        return f"nothing to promote: {decision['recommended']} is not a registered version"
    live = registry.alias(variant)
    if live == version:
        return f"{version} is already live for {variant}"
    previous, now = registry.promote(variant, version)
    return f"promoted {variant}: {previous or 'base'} -> {now}"
