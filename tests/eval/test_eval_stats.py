"""eval.stats on known inputs, and the decision rule of eval.compare on constructed scores."""

from __future__ import annotations

import math
import random

import pytest

from eval.compare import decide
from eval.stats import (
    accuracy,
    bootstrap_ci,
    cohen_kappa,
    mcnemar,
    mcnemar_paired,
    paired_difference,
    win_rate,
)


def test_mcnemar_chi_square_on_a_textbook_table() -> None:
    # Agresti, An Introduction to Categorical Data Analysis (2007), Table 10.1: approval of the
    # Prime Minister in two surveys, 1600 people; discordant cells 150 and 86. Without the
    # continuity correction z^2 = 64^2 / 236 = 17.36; with it (|b - c| - 1)^2 / (b + c) = 16.82.
    t = mcnemar(150, 86)
    assert t.method == "chi2-cc"
    assert t.statistic == pytest.approx(63**2 / 236)
    assert t.statistic == pytest.approx(16.818, abs=1e-3)
    assert t.p_value == pytest.approx(4.115e-5, rel=1e-3)  # chi-square, 1 df
    assert mcnemar(86, 150).p_value == t.p_value  # symmetric


def test_mcnemar_exact_binomial_for_small_counts() -> None:
    # b = 2, c = 8: two-sided binomial p = 2 * P(X <= 2 | n = 10, 1/2) = 2 * 56 / 1024
    t = mcnemar(2, 8)
    assert t.method == "exact"
    assert t.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar(5, 5).p_value == 1.0  # capped
    assert mcnemar(0, 0).p_value == 1.0
    assert mcnemar(0, 6).p_value == pytest.approx(2 / 64)
    # the exact test agrees roughly with the chi-square test on a larger table
    assert mcnemar(150, 86, exact=True).p_value == pytest.approx(mcnemar(150, 86).p_value, 0.3)


def test_mcnemar_paired_counts_the_discordant_pairs() -> None:
    a = [True, True, True, False, False, True]
    b = [True, False, False, True, False, False]
    t = mcnemar_paired(a, b)
    assert (t.b, t.c) == (3, 1)
    with pytest.raises(ValueError):
        mcnemar_paired([True], [True, False])


def test_bootstrap_ci_contains_the_true_mean() -> None:
    rng = random.Random(7)
    values = [rng.gauss(0.3, 1.0) for _ in range(400)]
    e = bootstrap_ci(values)
    assert e.lo < 0.3 < e.hi  # the population mean
    assert e.lo < e.mean < e.hi
    assert e.n == 400
    # the interval is about +-1.96 standard errors wide
    se = 1.0 / math.sqrt(400)
    assert e.hi - e.lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(values) == e  # fixed seed: the same interval every time


def test_bootstrap_ci_of_a_constant_is_a_point() -> None:
    e = bootstrap_ci([1.0] * 10)
    assert (e.mean, e.lo, e.hi) == (1.0, 1.0, 1.0)
    assert math.isnan(bootstrap_ci([]).mean)


def test_paired_difference_and_win_rate() -> None:
    a = [1.0, 0.8, 0.6, 0.5, 0.9, 0.7]
    b = [0.5, 0.8, 0.4, 0.6, 0.2, 0.7]
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(sum(a) / 6 - sum(b) / 6)
    assert d.lo <= d.mean <= d.hi
    w = win_rate(a, b)
    assert (w.wins, w.losses, w.ties) == (3, 1, 2)
    assert w.rate == pytest.approx((3 + 2 / 2) / 6)
    assert w.lo <= w.rate <= w.hi


def test_cohen_kappa_on_a_textbook_example() -> None:
    # Two raters, 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5,
    # kappa = 0.4 (the example in Cohen's kappa's Wikipedia article).
    r1 = ["yes"] * 25 + ["no"] * 25
    r2 = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert accuracy(r1, r2) == pytest.approx(0.7)
    assert cohen_kappa(r1, r2) == pytest.approx(0.4)
    assert cohen_kappa(r1, r1) == 1.0
    # a rater who always says the majority label agrees often and has kappa 0
    assert cohen_kappa(r1, ["yes"] * 50) == 0.0
    assert cohen_kappa(["a"] * 4, ["a"] * 4) == 1.0


def test_the_decision_rule() -> None:
    # a clear winner on pedagogy wins whatever its perplexity
    d = decide({"base": 0.50, "tutor@1": 0.62, "tutor@4": 0.55}, {"base": 18, "tutor@1": 9})
    assert d["recommended"] == "tutor@1" and d["tied"] == ["tutor@1"]
    # a tie within the tolerance goes to the lower held-out perplexity
    d = decide(
        {"base": 0.50, "tutor@1": 0.61, "tutor@4": 0.60},
        {"base": 18.0, "tutor@1": 9.0, "tutor@4": 5.0},
        tolerance=0.02,
    )
    assert d["recommended"] == "tutor@4"
    assert d["tied"] == ["tutor@1", "tutor@4"]
    assert "perplexity" in d["reasons"][-1]
    # with a wider tolerance the base joins the tie but loses on perplexity
    d = decide({"base": 0.60, "tutor@1": 0.61}, {"base": 18.0, "tutor@1": 9.0}, tolerance=0.05)
    assert d["recommended"] == "tutor@1"
    # unknown perplexities rank after known ones; none known keeps the best score
    d = decide({"a": 0.60, "b": 0.61}, {"a": 3.0, "b": None}, tolerance=0.05)
    assert d["recommended"] == "a"
    d = decide({"a": 0.60, "b": 0.61}, {}, tolerance=0.05)
    assert d["recommended"] == "b"
    with pytest.raises(ValueError):
        decide({}, {})
