"""Statistics for comparing checkpoints on the same items: bootstrap confidence intervals, paired
win rates, McNemar's test for yes/no metrics, and agreement (accuracy, Cohen's kappa) for the
judge. Fixed seeds, so a report is reproducible to the digit. Pure Python plus numpy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 2000
SEED = 20250601
EXACT_BELOW = 25  # McNemar: exact binomial test when fewer discordant pairs than this


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = SEED
) -> Estimate:
    """Mean and percentile bootstrap interval (resampling items with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(x.mean()), float(lo), float(hi), int(x.size))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED
) -> Estimate:
    """Mean of a - b over the same items, with a bootstrap interval over items."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    return bootstrap_ci([x - y for x, y in zip(a, b, strict=True)], n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class WinRate:
    wins: int
    losses: int
    ties: int
    rate: float  # (wins + ties / 2) / n
    lo: float
    hi: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def win_rate(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, seed: int = SEED
) -> WinRate:
    """How often a beats b on the same item (a tie counts half), with a bootstrap interval."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    outcome = [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(a, b, strict=True)]
    est = bootstrap_ci(outcome, n_boot=n_boot, seed=seed)
    return WinRate(
        wins=sum(o == 1.0 for o in outcome),
        losses=sum(o == 0.0 for o in outcome),
        ties=sum(o == 0.5 for o in outcome),
        rate=est.mean,
        lo=est.lo,
        hi=est.hi,
    )


@dataclass(frozen=True)
class McNemar:
    b: int  # a yes, b no
    c: int  # a no, b yes
    statistic: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def mcnemar(b: int, c: int, *, exact: bool | None = None) -> McNemar:
    """McNemar's test on the discordant pairs of a paired 2x2 table.

    Exact (two-sided binomial, p = 0.5) when ``b + c`` is below :data:`EXACT_BELOW` or when
    asked; otherwise the chi-square statistic with Edwards' continuity correction, one degree of
    freedom, whose p-value is ``erfc(sqrt(x / 2))``.
    """
    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact")
    if exact if exact is not None else n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return McNemar(b, c, float(k), min(1.0, 2 * tail), "exact")
    stat = (abs(b - c) - 1) ** 2 / n
    return McNemar(b, c, stat, math.erfc(math.sqrt(stat / 2)), "chi2-cc")


def mcnemar_paired(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's test for two models' yes/no outcomes on the same items."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    yes_no = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    no_yes = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return mcnemar(yes_no, no_yes)


def accuracy(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    if len(truth) != len(pred):
        raise ValueError("label sequences must have the same length")
    return sum(t == p for t, p in zip(truth, pred, strict=True)) / len(truth) if truth else 0.0


def cohen_kappa(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """Cohen's kappa: agreement beyond chance, (p_o - p_e) / (1 - p_e).

    ``p_e`` comes from each rater's own label frequencies. When both raters always use the same
    single label, kappa is undefined; 1.0 is returned if they agree on it, else 0.0.
    """
    if len(truth) != len(pred):
        raise ValueError("label sequences must have the same length")
    n = len(truth)
    if n == 0:
        return 0.0
    p_o = accuracy(truth, pred)
    ct, cp = Counter(truth), Counter(pred)
    p_e = sum(ct[k] * cp.get(k, 0) for k in ct) / n**2
    if p_e == 1.0:
        return 1.0 if p_o == 1.0 else 0.0
    return (p_o - p_e) / (1 - p_e)
