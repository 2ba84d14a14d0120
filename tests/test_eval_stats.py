"""Interval maths against hand-computed and published cases; the generated-answer parser."""

from __future__ import annotations

import math

import pytest

from step_ray.eval.answers import normalise_answer, parse_answer
from step_ray.eval.stats import (
    accuracy_cell,
    bootstrap_interval,
    mcnemar_exact_p,
    pair_outcomes,
    paired_difference,
    wilson_interval,
    z_value,
)

Z95 = 1.959963984540054


def test_z_value():
    assert z_value(0.95) == pytest.approx(Z95, abs=1e-12)
    assert z_value(0.90) == pytest.approx(1.6448536, abs=1e-6)
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="not in"):
            z_value(bad)


def test_wilson_hand_computed():
    # 5 of 10 by hand: p = .5, z^2 = 3.841459, denominator 1 + z^2/10 = 1.3841459, centre (.5 + .1920729) /
    # 1.3841459 = .5, half-width 1.959964 * sqrt(.025 + .0096036) / 1.3841459 = .2634  ->  (.2366, .7634)
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert low + high == pytest.approx(1.0)  # symmetric around 1/2
    # 0 of 20: centre = half-width, so the lower bound is exactly 0; upper z^2 / (n + z^2) = .1611
    assert wilson_interval(0, 20) == pytest.approx((0.0, Z95 ** 2 / (20 + Z95 ** 2)), abs=1e-12)
    assert wilson_interval(20, 20) == pytest.approx((20 / (20 + Z95 ** 2), 1.0), abs=1e-12)


@pytest.mark.parametrize("correct, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857-872: its
    # example intervals for method 3 (the score interval without continuity correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0000, 0.1611), (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0000),
])
def test_wilson_published(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson_interval(30, 50, 0.90)
    lo95, hi95 = wilson_interval(30, 50, 0.95)
    assert lo95 < lo90 < 0.6 < hi90 < hi95
    for correct, n in ((-1, 5), (6, 5), (1, -1)):
        with pytest.raises(ValueError, match="want 0 <= correct <= n"):
            wilson_interval(correct, n)


def test_bootstrap_interval():
    assert bootstrap_interval(70, 100, seed=1) == bootstrap_interval(70, 100, seed=1)  # seeded
    low, high = bootstrap_interval(280, 400, n_boot=20_000, seed=0)
    w_low, w_high = wilson_interval(280, 400)
    assert abs(low - w_low) < 0.01 and abs(high - w_high) < 0.01  # near Wilson at n = 400, p = .7
    assert bootstrap_interval(0, 10) == (0.0, 0.0) and bootstrap_interval(10, 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_interval(1, 2, n_boot=0)


def test_accuracy_cell():
    cell = accuracy_cell([True, True, False, True, False, True, True, False, True, False])
    assert cell == {"accuracy": 0.6, "correct": 6, "n": 10, **dict(zip(("low", "high"), wilson_interval(6, 10)))}
    boot = accuracy_cell([True] * 6 + [False] * 4, method="bootstrap", n_boot=500, seed=3)
    assert boot["accuracy"] == 0.6 and boot["low"] < 0.6 < boot["high"]
    assert accuracy_cell([])["accuracy"] is None
    with pytest.raises(ValueError, match="interval method 'wald'"):
        accuracy_cell([True], method="wald")


def _table(both, a_only, b_only, neither):
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


def test_paired_wald_published():
    """Agresti, Categorical Data Analysis (2002), sec. 10.1: presidential approval of 1600 people in two surveys
    (794 approve both, 150 first only, 86 second only, 570 neither): difference -.04, SE .0095, 95% CI (-.06, -.02),
    McNemar z = (86 - 150) / sqrt(236) = -4.17."""
    a, b = _table(794, 150, 86, 570)
    r = paired_difference(a, b, method="wald")
    assert (r["accuracy_a"], r["accuracy_b"], r["difference"]) == pytest.approx((0.59, 0.55, -0.04))
    se = math.sqrt(236 - 64 ** 2 / 1600) / 1600
    assert se == pytest.approx(0.0095, abs=5e-5)
    assert (r["low"], r["high"]) == pytest.approx((-0.04 - Z95 * se, -0.04 + Z95 * se))
    assert (round(r["low"], 2), round(r["high"], 2)) == (-0.06, -0.02)
    assert (86 - 150) / math.sqrt(236) == pytest.approx(-4.17, abs=5e-3)
    assert r["mcnemar_p"] < 1e-4 and r["verdict"] == "A better"
    assert (r["both"], r["a_only"], r["b_only"], r["neither"]) == (794, 150, 86, 570)


def test_paired_newcombe_hand_computed():
    """Newcombe's method 10 on the paired table of Altman et al., Statistics with Confidence, Table 6.2 (14 both,
    5 B only, 0 A only, 22 neither; n = 41), by hand:
    B: 19/41 = .46341, Wilson (.32056, .61254); A: 14/41 = .34146, Wilson (.21559, .49450);
    phi: A = 19*22*14*27 = 158004, B = 14*22 - 5*0 = 308 > n/2 so C = 308 - 20.5 = 287.5, phi = 287.5/sqrt(A) = .72328;
    low = .12195 - sqrt((.46341-.32056)^2 - 2*.72328*(.46341-.32056)*(.49450-.34146) + (.49450-.34146)^2) = .01148;
    high = .12195 + sqrt((.34146-.21559)^2 - 2*.72328*(.34146-.21559)*(.61254-.46341) + (.61254-.46341)^2) = .22649.
    """
    a, b = _table(14, 0, 5, 22)
    r = paired_difference(a, b)
    assert r["method"] == "newcombe" and r["difference"] == pytest.approx(5 / 41)
    assert (r["low"], r["high"]) == pytest.approx((0.01148, 0.22649), abs=5e-6)
    assert r["verdict"] == "B better"
    assert r["mcnemar_p"] == pytest.approx(2 / 32)  # 5 discordant, all one way: 2 * (1/2)^5
    swapped = paired_difference(b, a)  # A <-> B mirrors the interval
    assert (swapped["low"], swapped["high"]) == pytest.approx((-r["high"], -r["low"]))


def test_paired_intervals_agree_at_large_n_and_bootstrap_is_paired():
    a, b = _table(300, 40, 70, 90)
    wald, newcombe = paired_difference(a, b, method="wald"), paired_difference(a, b)
    boot = paired_difference(a, b, method="bootstrap", n_boot=20_000, seed=0)
    for r in (newcombe, boot):
        assert abs(r["low"] - wald["low"]) < 0.006 and abs(r["high"] - wald["high"]) < 0.006
    # the paired interval is narrower than the independent intervals of the two accuracies suggest
    lo_a, hi_a = wilson_interval(340, 500)
    lo_b, hi_b = wilson_interval(370, 500)
    assert newcombe["high"] - newcombe["low"] < math.hypot(hi_a - lo_a, hi_b - lo_b)
    assert paired_difference(a, b, method="bootstrap", seed=4) == paired_difference(a, b, method="bootstrap", seed=4)


def test_paired_no_difference_is_within_noise():
    a, b = _table(10, 0, 0, 5)  # identical answers
    for method in ("newcombe", "wald", "bootstrap"):
        r = paired_difference(a, b, method=method)
        assert r["difference"] == 0 and r["low"] <= 0 <= r["high"] and r["verdict"] == "within noise", method
    assert paired_difference(a, b)["high"] > 0  # Newcombe does not collapse to a point at 0 discordant pairs
    small = paired_difference(*_table(20, 3, 6, 11))
    assert small["verdict"] == "within noise" and small["difference"] == pytest.approx(3 / 40)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="no paired questions"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="paired method 'exact'"):
        paired_difference(a, b, method="exact")


def test_mcnemar_exact_hand_computed():
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    assert mcnemar_exact_p(9, 1) == mcnemar_exact_p(1, 9)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)
    # many discordant pairs: no overflow, close to the normal approximation with continuity correction
    z = (abs(1000 - 1100) - 1) / math.sqrt(2100)
    assert mcnemar_exact_p(1000, 1100) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.02)


def test_pair_outcomes():
    a = {"q1": True, "q2": False, "q3": None, "q4": True}
    b = {"q1": False, "q2": False, "q3": True, "q5": True}
    ids, fa, fb, dropped = pair_outcomes(a, b)
    assert ids == ["q1", "q2"] and fa == [True, False] and fb == [False, False]
    assert dropped == {"only_a": 1, "only_b": 2}


def test_normalise_answer():
    assert normalise_answer("The closet/cabinet.") == "closet/cabinet"
    assert normalise_answer("  Two ") == normalise_answer("2") == "2"
    assert normalise_answer("the baby's toy") == "baby s toy"
    assert normalise_answer("Sitting on a chair.") == "sitting on chair"
    assert normalise_answer("T-shirt") == "t shirt" and normalise_answer("a") == ""


def test_parse_answer():
    options = ["The cup.", "The book.", "The pillow.", "The phone/camera."]
    assert parse_answer("The book.", options) == (1, "exact")
    assert parse_answer("  the Pillow ", options) == (2, "normalised")
    assert parse_answer("phone/camera", options) == (3, "normalised")
    rationale = "At 1.2s the person picks up a cup.\nThey hold it until 5s. So the answer is the cup."
    assert parse_answer(rationale, options) == (0, "normalised")
    assert parse_answer("Answer: (B)", options) == (1, "letter")
    for text in ("B", "(B)", "B.", "(B) the book", "B: book"):
        assert parse_answer(text, options) == (1, "letter"), text
    assert parse_answer("(B) the cup", options) == (None, "unparsed")  # letter and text disagree
    assert parse_answer("E", options) == (None, "unparsed")  # a letter with no option
    assert parse_answer("a sofa", options) == (None, "unparsed")
    assert parse_answer("", options) == (None, "unparsed") and parse_answer(None, options) == (None, "unparsed")
    assert parse_answer("two", ["one", "2", "three"]) == (1, "normalised")
    assert parse_answer("cup", ["the cup", "a cup", "book"]) == (None, "unparsed")  # ambiguous after normalising
    assert parse_answer("B", ["A", "B"], letters=None) == (1, "exact")
    assert parse_answer("C", ["no", "yes"], letters=None) == (None, "unparsed")
