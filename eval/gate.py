"""The ship gate: what a candidate must show against the base model before it ships.

The decision rule of :mod:`eval.compare` picks the best of the models one run asked. Shipping a
version as a variant's default asks more, and asks it against the *base model under the same
persona* (``<variant>@base``, or the variant's alias while it still points at the base):

Required (``passed``):
  1. it beats the base in its own language: the paired pedagogy difference (candidate - base)
     has its 95% bootstrap interval above 0;
  2. it over-corrects error-free controls no more often than the base does.

Targets (``targets_met``, reported beside the required checks; a version that passes the
required checks but misses a target is still better than the base it replaces, and the closing
notes say which targets are missed):
  language_ok >= 0.9, explicit <= 0.05, question >= 0.9, and for English items the recast uptake
  (recast/expansion items) >= 0.5.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any

TARGETS: tuple[tuple[str, str, float], ...] = (
    ("language_ok", ">=", 0.9),
    ("explicit", "<=", 0.05),
    ("question", ">=", 0.9),
)
ENGLISH_UPTAKE = 0.5
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Check:
    name: str
    required: bool
    ok: bool
    detail: str


def _mean(result: dict[str, Any], model: str, metric: str) -> float | None:
    est = result["metrics"][model].get(metric)
    return None if est is None else float(est["mean"])


def _difference(result: dict[str, Any], candidate: str, base: str) -> dict[str, float]:
    """candidate - base, from the run's pairwise table (which holds each pair once)."""
    for pair in result["pairs"]:
        d = pair["pedagogy_difference"]
        if (pair["a"], pair["b"]) == (candidate, base):
            return d
        if (pair["a"], pair["b"]) == (base, candidate):
            return {**d, "mean": -d["mean"], "lo": -d["hi"], "hi": -d["lo"]}
    raise ValueError(f"the run has no pair {candidate} / {base}")


def ship_gate(result: dict[str, Any], *, base: str, candidate: str) -> dict[str, Any]:
    """The checks of this module's docstring for ``candidate`` against ``base`` in a
    :func:`eval.compare.compare_run` result; ``passed`` is all required checks."""
    models = {m["model"] for m in result["models"]}
    for name in (base, candidate):
        if name not in models:
            raise ValueError(f"{name} is not a model of this run ({sorted(models)})")
    checks = []
    d = _difference(result, candidate, base)
    checks.append(
        Check(
            "beats the base (paired pedagogy difference, 95% CI above 0)",
            True,
            d["lo"] > 0,
            f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
        )
    )
    over_c, over_b = (_mean(result, m, "over_correction") for m in (candidate, base))
    if over_c is not None and over_b is not None:
        n = result["metrics"][candidate]["over_correction"]["n"]
        checks.append(
            Check(
                "over-corrects controls no more than the base",
                True,
                over_c <= over_b + 1e-9,
                f"{round(over_c * n)}/{n} vs base {round(over_b * n)}/{n}",
            )
        )
    targets = list(TARGETS)
    if result.get("languages") == ["en"]:
        targets.append(("uptake", ">=", ENGLISH_UPTAKE))
    for metric, op, bound in targets:
        value = _mean(result, candidate, metric)
        if value is None:
            continue
        checks.append(
            Check(f"{metric} {op} {bound}", False, _OPS[op](value, bound), f"{value:.2f}")
        )
    return {
        "base": base,
        "candidate": candidate,
        "checks": [asdict(c) for c in checks],
        "passed": all(c.ok for c in checks if c.required),
        "targets_met": all(c.ok for c in checks if not c.required),
    }


def gates_against(result: dict[str, Any], base: str) -> dict[str, dict[str, Any]]:
    """Every other model of the run through the gate against ``base``, by model id."""
    others = [m["model"] for m in result["models"] if m["model"] != base]
    return {m: ship_gate(result, base=base, candidate=m) for m in others}


def gate_lines(gate: dict[str, Any]) -> list[str]:
    """The gate as markdown lines (the report's section, the CLI's output)."""
    verdict = "passes" if gate["passed"] else "FAILS"
    lines = [
        f"`{gate['candidate']}` against `{gate['base']}`: {verdict} the required checks; "
        f"targets {'all met' if gate['targets_met'] else 'not all met'}.",
        "",
        "| check | required | result | |",
        "|---|---|---|---|",
    ]
    for c in gate["checks"]:
        mark = "ok" if c["ok"] else "**no**"
        kind = "yes" if c["required"] else "target"
        lines.append(f"| {c['name']} | {kind} | {c['detail']} | {mark} |")
    return lines
