"""The ship gate (eval/gate.py) on comparison results whose figures are known."""

from __future__ import annotations

from typing import Any

import pytest

from eval.gate import gate_lines, ship_gate


def est(mean: float, n: int = 10) -> dict[str, float]:
    return {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": n}


def result(
    diff: tuple[float, float, float],
    *,
    over: tuple[float, float] = (0.1, 0.2),
    cand: dict[str, float] | None = None,
    languages: list[str] | None = None,
    order: tuple[str, str] = ("base", "cand"),
) -> dict[str, Any]:
    """A compare_run result with two models; ``diff`` is cand - base (mean, lo, hi)."""
    mean, lo, hi = diff
    if order == ("base", "cand"):  # the table holds a - b: base - cand
        pair = {
            "a": "base",
            "b": "cand",
            "pedagogy_difference": est(-mean) | {"lo": -hi, "hi": -lo},
        }
    else:
        pair = {"a": "cand", "b": "base", "pedagogy_difference": est(mean) | {"lo": lo, "hi": hi}}
    good = {"language_ok": 1.0, "explicit": 0.0, "question": 1.0, "uptake": 0.6}
    return {
        "models": [{"model": "base"}, {"model": "cand"}],
        "languages": languages or ["es"],
        "pairs": [pair],
        "metrics": {
            "base": {"over_correction": est(over[1]), **{k: est(0.5) for k in good}},
            "cand": {
                "over_correction": est(over[0]),
                **{k: est(v) for k, v in {**good, **(cand or {})}.items()},
            },
        },
    }


def checks(gate: dict[str, Any]) -> dict[str, bool]:
    return {c["name"].split(" (")[0]: c["ok"] for c in gate["checks"]}


@pytest.mark.parametrize("order", [("base", "cand"), ("cand", "base")])
def test_a_candidate_that_beats_the_base_and_over_corrects_less_passes(order) -> None:
    gate = ship_gate(result((0.15, 0.07, 0.24), order=order), base="base", candidate="cand")
    assert gate["passed"] and gate["targets_met"]
    assert gate["checks"][0]["detail"] == "+0.150 [+0.070, +0.240]"  # whichever way it was stored
    assert gate["checks"][1]["detail"] == "1/10 vs base 2/10"


def test_an_interval_touching_zero_fails_even_with_a_higher_mean() -> None:
    gate = ship_gate(result((0.04, -0.001, 0.09)), base="base", candidate="cand")
    assert not gate["passed"]
    assert checks(gate)["beats the base"] is False


def test_more_over_correction_than_the_base_fails() -> None:
    gate = ship_gate(result((0.2, 0.1, 0.3), over=(0.3, 0.2)), base="base", candidate="cand")
    assert not gate["passed"]
    assert checks(gate)["over-corrects controls no more than the base"] is False
    equal = ship_gate(result((0.2, 0.1, 0.3), over=(0.2, 0.2)), base="base", candidate="cand")
    assert equal["passed"]  # "no worse" allows the same count


def test_targets_are_reported_but_do_not_block_and_uptake_counts_for_english_only() -> None:
    weak = {"explicit": 0.1, "uptake": 0.3}
    es = ship_gate(result((0.2, 0.1, 0.3), cand=weak), base="base", candidate="cand")
    assert es["passed"] and not es["targets_met"]
    assert "uptake >= 0.5" not in checks(es)
    assert checks(es)["explicit <= 0.05"] is False
    en = ship_gate(
        result((0.2, 0.1, 0.3), cand=weak, languages=["en"]), base="base", candidate="cand"
    )
    assert checks(en)["uptake >= 0.5"] is False
    assert "| uptake >= 0.5 | target | 0.30 | **no** |" in gate_lines(en)


def test_a_model_the_run_did_not_ask_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a model of this run"):
        ship_gate(result((0.2, 0.1, 0.3)), base="tutor@base", candidate="cand")


def test_choose_takes_the_best_passing_way_and_plain_on_a_tie() -> None:
    from eval.select import choose

    ok, no = {"passed": True}, {"passed": False}
    ped = {"v~plain": 0.70, "v~grounded": 0.71}
    assert choose(ped, {"v~plain": ok, "v~grounded": ok}) == "v~plain"  # within 0.02: plain
    assert choose({**ped, "v~grounded": 0.80}, {"v~plain": ok, "v~grounded": ok}) == "v~grounded"
    assert choose({**ped, "v~plain": 0.90}, {"v~plain": no, "v~grounded": ok}) == "v~grounded"
    assert choose(ped, {"v~plain": no, "v~grounded": no}) is None
