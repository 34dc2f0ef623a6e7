"""Scoring on hand-made curves and numbers."""

import math

import pytest

from metalearner.bench.metrics import (
    INF,
    bootstrap_median_ci,
    budget_epochs_to_target,
    epochs_to_target,
    lower_median,
    performance_profile,
    profile_score,
)

CURVE = [(0.25, 0.80), (0.5, 0.90), (0.75, 0.95), (1.0, 0.94), (1.25, 0.97)]


def test_epochs_to_target_is_the_first_evaluation_reaching_it():
    assert epochs_to_target(CURVE, 0.95) == 0.75  # reached at 0.75, dips after: still 0.75
    assert epochs_to_target(CURVE, 0.96) == 1.25
    assert epochs_to_target(CURVE, 0.80) == 0.25
    assert epochs_to_target(CURVE, 0.99) == INF
    assert epochs_to_target([], 0.5) == INF


def test_budget_rule_scores_the_smallest_budget_that_reaches():
    assert budget_epochs_to_target({10: True, 1: False, 2: False, 3: True}) == 3
    assert budget_epochs_to_target({10: True, 4: True, 1: True}) == 1
    assert budget_epochs_to_target({10: False}) == INF
    assert budget_epochs_to_target({}) == INF


def test_profile_score_on_hand_made_times():
    # problem p1: a best (1), b twice as slow; p2: b best (2), a 3x slower (6); p3: only a reaches
    times = {"a": {"p1": 1.0, "p2": 6.0, "p3": 5.0}, "b": {"p1": 2.0, "p2": 2.0, "p3": INF}}
    s = profile_score(times, tau_max=4.0)
    # a: ratios 1, 3, 1 -> (3 + 1 + 3) / 3 / 3 ; b: ratios 2, 1, inf -> (2 + 3 + 0) / 3 / 3
    assert s["a"] == pytest.approx(7 / 9)
    assert s["b"] == pytest.approx(5 / 9)
    rho = performance_profile(times, [1.0, 2.0, 3.0, 4.0])
    assert rho["a"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert rho["b"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_profile_score_is_one_for_the_fastest_everywhere_and_zero_when_nobody_reaches():
    assert profile_score({"a": {"p": 1.0}, "b": {"p": 5.0}}) == {"a": 1.0, "b": 0.0}
    assert profile_score({"a": {"p": INF}, "b": {"p": INF}}) == {"a": 0.0, "b": 0.0}


def test_profile_score_matches_a_numeric_integral_of_the_profile():
    times = {"a": {"p1": 1.0, "p2": 2.5, "p3": 3.0}, "b": {"p1": 1.7, "p2": 1.0, "p3": INF}, "c": {"p1": 2.0, "p2": 4.0, "p3": 1.0}}
    taus = [1 + 3 * (i + 0.5) / 30000 for i in range(30000)]
    rho = performance_profile(times, taus)
    s = profile_score(times)
    for m in times:
        assert s[m] == pytest.approx(sum(rho[m]) / len(taus), abs=1e-3)


def test_bootstrap_ci_brackets_the_median_and_keeps_inf():
    med, lo, hi = bootstrap_median_ci([2.0, 2.5, 3.0, 3.5, 4.0])
    assert med == 3.0 and lo <= med <= hi and 2.0 <= lo and hi <= 4.0
    med, lo, hi = bootstrap_median_ci([2.0, INF, INF, INF, INF])
    assert med == INF and hi == INF
    med, lo, hi = bootstrap_median_ci([1.0, 1.0, 1.0])
    assert (med, lo, hi) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_median_ci([]))


def test_the_target_is_a_value_half_the_reference_runs_reach():
    assert lower_median([0.9, 0.7, 0.8]) == 0.8  # odd: the median
    assert lower_median([0.7242, 0.743]) == 0.7242  # even: both seeds reach it (their mean, one)
    assert lower_median([0.4, 0.1, 0.3, 0.2]) == 0.2
    assert math.isnan(lower_median([0.9, math.nan, 0.8])) and math.isnan(lower_median([]))
