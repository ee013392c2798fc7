"""speakerdb.metrics against values worked out by hand, and against brute force on random scores.

Every expected number below is a literal, with the arithmetic that gives it in a comment;
none is computed by the module under test. Notation: at threshold θ, misses are the
targets < θ and false alarms the non-targets >= θ.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from speakerdb.scoring.metrics import (
    closed_set_accuracy,
    det_curve,
    dir_at_far,
    eer,
    eer_threshold,
    min_dcf,
    threshold_at_far,
)

INF = float("inf")

# The running example: 4 targets, 5 non-targets, no ties.
T4 = [0.9, 0.8, 0.6, 0.4]
N5 = [0.7, 0.5, 0.3, 0.2, 0.1]
# Its DET table, by hand (θ: misses/4, false alarms/5):
#   0.1: 0/4, 5/5    0.2: 0/4, 4/5    0.3: 0/4, 3/5    0.4: 0/4, 2/5 (0.7, 0.5)
#   0.5: 1/4 (0.4), 2/5   0.6: 1/4, 1/5 (0.7)   0.7: 2/4 (0.4, 0.6), 1/5
#   0.8: 2/4, 0/5    0.9: 3/4, 0/5    +inf: 4/4, 0/5
T4N5_THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, INF]
T4N5_P_MISS = [0, 0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
T4N5_P_FA = [1, 0.8, 0.6, 0.4, 0.4, 0.2, 0.2, 0, 0, 0]


# --- det_curve -------------------------------------------------------------------------


def test_det_curve_by_hand():
    thresholds, p_miss, p_fa = det_curve(T4, N5)
    assert thresholds.tolist() == T4N5_THRESHOLDS
    assert p_miss.tolist() == pytest.approx(T4N5_P_MISS, abs=1e-15)
    assert p_fa.tolist() == pytest.approx(T4N5_P_FA, abs=1e-15)


def test_det_curve_ties_across_and_within_classes():
    # T = {0.5, 0.5, 0.8}, N = {0.5, 0.2}: distinct scores 0.2, 0.5, 0.8, then +inf.
    #   0.2: misses 0/3, FAs 2/2
    #   0.5: misses 0/3 (both 0.5 targets accepted), FAs 1/2 (the 0.5 non-target accepted too)
    #   0.8: misses 2/3 (both 0.5 targets), FAs 0/2
    #   inf: 3/3, 0/2
    # There is no point where the tied 0.5 target and 0.5 non-target are split.
    for target, nontarget in [([0.5, 0.5, 0.8], [0.5, 0.2]), ([0.8, 0.5, 0.5], [0.2, 0.5])]:
        thresholds, p_miss, p_fa = det_curve(target, nontarget)
        assert thresholds.tolist() == [0.2, 0.5, 0.8, INF]
        assert p_miss.tolist() == pytest.approx([0, 0, 2 / 3, 1])
        assert p_fa.tolist() == pytest.approx([1, 0.5, 0, 0])


# --- eer -------------------------------------------------------------------------------


def test_eer_by_hand_interpolated():
    # d = P_miss - P_fa from the table: 0.5: 0.25 - 0.4 = -0.15; 0.6: 0.25 - 0.2 = +0.05.
    # Segment (P_fa, P_miss) from (0.4, 0.25) to (0.2, 0.25): P_miss is 0.25 all along, and
    # P_fa = 0.25 at t = 0.15 / (0.15 + 0.05) = 0.75 (0.4 - 0.75 * 0.2 = 0.25). EER = 0.25.
    # Threshold: |d| = 0.05 at 0.6 < 0.15 at 0.5, so 0.6.
    value, threshold = eer(T4, N5)
    assert value == pytest.approx(0.25)
    assert threshold == 0.6


def test_eer_ties_across_classes():
    # From the tie table above: d(0.5) = 0 - 1/2 = -1/2, d(0.8) = 2/3 - 0 = +2/3.
    # t = (1/2) / (1/2 + 2/3) = (1/2) / (7/6) = 3/7.
    # P_miss = 0 + 3/7 * 2/3 = 2/7; P_fa = 1/2 - 3/7 * 1/2 = 2/7. EER = 2/7.
    # Threshold: |d| = 1/2 at 0.5 < 2/3 at 0.8, so 0.5.
    value, threshold = eer([0.5, 0.5, 0.8], [0.5, 0.2])
    assert value == pytest.approx(2 / 7)
    assert threshold == 0.5
    # Any order of the same scores gives the same answer (no sort-order artifacts).
    rng = np.random.default_rng(0)
    for _ in range(10):
        assert eer(rng.permutation([0.5, 0.5, 0.8]), rng.permutation([0.5, 0.2])) == (value, threshold)


def test_eer_exact_crossing_at_a_candidate():
    # T = {0.9, 0.6, 0.2} (3), N = {0.7, 0.4, 0.3, 0.1, 0.05, 0.0} (6).
    # θ = 0.3: misses 1/3 (0.2), FAs 3/6 (0.7, 0.4, 0.3) -> d < 0
    # θ = 0.4: misses 1/3 (0.2), FAs 2/6 (0.7, 0.4)      -> d = 1/3 - 1/3 = 0 exactly.
    value, threshold = eer([0.9, 0.6, 0.2], [0.7, 0.4, 0.3, 0.1, 0.05, 0.0])
    assert value == pytest.approx(1 / 3)
    assert threshold == 0.4


def test_eer_perfectly_separated_is_zero_at_lowest_target():
    # θ = 0.7 (lowest target): misses 0/2, FAs 0/2 (0.4 and 0.1 are below) -> EER 0.
    assert eer([0.9, 0.7], [0.4, 0.1]) == (0.0, 0.7)
    # Single elements: T = {0.5}, N = {0.2}: θ = 0.5 gives 0 misses, 0 FAs.
    assert eer([0.5], [0.2]) == (0.0, 0.5)


def test_eer_all_scores_equal_is_one_half():
    # Candidates 0.3 (accept all: P_miss 0, P_fa 1, d = -1) and +inf (1, 0, d = +1).
    # t = 1 / (1 + 1) = 1/2; P_miss = 0 + 1/2 * 1 = 0.5. |d| ties at 1, so the lower, 0.3.
    assert eer([0.3] * 4, [0.3] * 5) == (0.5, 0.3)
    assert eer([0.5], [0.5]) == (0.5, 0.5)


def test_eer_perfectly_inverted_is_one():
    # T = {0.2}, N = {0.5}. θ = 0.2: misses 0/1, FAs 1/1, d = -1.
    # θ = 0.5: misses 1/1 (0.2 < 0.5), FAs 1/1 (0.5 >= 0.5), d = 0 -> EER = 1 at 0.5.
    assert eer([0.2], [0.5]) == (1.0, 0.5)


# --- eer_threshold ---------------------------------------------------------------------
def test_eer_threshold_is_the_midpoint_below_the_eer_candidate_with_its_error_rates():
    # eer(T4, N5) decides at 0.6 (see above); the next lower score is 0.5.
    assert eer_threshold(T4, N5) == (0.55, 1 / 4, 1 / 5)
    assert eer_threshold([0.9, 0.7], [0.4, 0.1]) == (0.55, 0.0, 0.0)  # between 0.4 and 0.7
    # One distinct score (eer decides at it): half of 1e-3 under it, which accepts it.
    assert eer_threshold([0.3] * 4, [0.3] * 5) == (0.3 - 0.0005, 0.0, 1.0)


def test_eer_threshold_decides_every_trial_as_the_candidate_and_is_never_a_score():
    rng = np.random.default_rng(11)
    for _ in range(200):
        target = np.round(rng.normal(0.6, 0.15, rng.integers(1, 30)), rng.integers(1, 4))
        nontarget = np.round(rng.normal(0.3, 0.15, rng.integers(1, 60)), rng.integers(1, 4))
        at = eer(target, nontarget).threshold
        threshold, p_miss, p_fa = eer_threshold(target, nontarget)
        assert threshold not in np.concatenate([target, nontarget])
        assert np.array_equal(target < threshold, target < at)
        assert np.array_equal(nontarget >= threshold, nontarget >= at)
        assert (p_miss, p_fa) == (np.mean(target < at), np.mean(nontarget >= at))


# --- min_dcf ---------------------------------------------------------------------------


def test_min_dcf_p_target_half_by_hand():
    # c_miss = c_fa = 1, p = 0.5: C_default = min(0.5, 0.5) = 0.5, DCF = P_miss + P_fa.
    # From the table: 0.1: 1, 0.2: 0.8, 0.3: 0.6, 0.4: 0 + 0.4 = 0.4, 0.5: 0.65,
    # 0.6: 0.45, 0.7: 0.7, 0.8: 0.5, 0.9: 0.75, inf: 1. Minimum 0.4 at 0.4.
    value, threshold = min_dcf(T4, N5, p_target=0.5)
    assert value == pytest.approx(0.4)
    assert threshold == 0.4


# 4 targets and 38 non-targets (one high non-target at 0.85, 37 tied at 0.1), so that
# P_fa = 1/38 is small enough to matter at p_target = 0.05 but not at 0.01.
T_DCF = [0.9, 0.8, 0.7, 0.6]
N_DCF = [0.85] + [0.1] * 37
# θ: misses/4, FAs/38:  0.1: 0, 38/38   0.6: 0, 1/38   0.7: 1/4, 1/38   0.8: 2/4, 1/38
#                       0.85: 3/4, 1/38  0.9: 3/4, 0   inf: 1, 0


def test_min_dcf_p_target_005_by_hand():
    # C_default = min(0.05, 0.95) = 0.05, DCF = P_miss + (0.95 / 0.05) P_fa = P_miss + 19 P_fa.
    # 0.1: 19; 0.6: 0 + 19/38 = 0.5; 0.7: 0.75; 0.8: 1.0; 0.85: 1.25; 0.9: 0.75; inf: 1.
    value, threshold = min_dcf(T_DCF, N_DCF, p_target=0.05)
    assert value == pytest.approx(0.5)
    assert threshold == 0.6


def test_min_dcf_p_target_001_by_hand():
    # C_default = 0.01, DCF = P_miss + 99 P_fa.
    # 0.1: 99; 0.6: 99/38 = 2.605...; 0.7: 2.855...; 0.8: 3.105...; 0.85: 3.355...;
    # 0.9: 0.75 + 0 = 0.75; inf: 1. Minimum 0.75 at 0.9.
    value, threshold = min_dcf(T_DCF, N_DCF, p_target=0.01)
    assert value == pytest.approx(0.75)
    assert threshold == 0.9


def test_min_dcf_costs_and_p_target_above_half():
    # c_miss = 10, c_fa = 1, p = 0.05: C_default = min(10 * 0.05, 0.95) = 0.5,
    # DCF = (0.5 P_miss + 0.95 P_fa) / 0.5 = P_miss + 1.9 P_fa. On T_DCF / N_DCF:
    # 0.1: 1.9; 0.6: 1.9/38 = 0.05; 0.7: 0.3; 0.8: 0.55; 0.85: 0.8; 0.9: 0.75; inf: 1.
    assert min_dcf(T_DCF, N_DCF, p_target=0.05, c_miss=10) == (pytest.approx(0.05), 0.6)
    # p = 0.9, unit costs: C_default = min(0.9, 0.1) = 0.1, DCF = 9 P_miss + P_fa.
    # On T4 / N5: 0.1: 1; 0.2: 0.8; 0.3: 0.6; 0.4: 0.4; 0.5: 2.25 + 0.4; ... inf: 9.
    assert min_dcf(T4, N5, p_target=0.9) == (pytest.approx(0.4), 0.4)


def test_min_dcf_tie_takes_lowest_threshold_and_useless_system_scores_one():
    # T = {0.2}, N = {0.5}, p = 0.5: DCF = P_miss + P_fa.
    # 0.2: 0 + 1 = 1; 0.5: 1 + 1 = 2; inf: 1 + 0 = 1. Tie at 1 -> the lower, 0.2.
    assert min_dcf([0.2], [0.5], p_target=0.5) == (1.0, 0.2)
    # All scores equal, p = 0.01: 0.3: 0 + 99 * 1 = 99; inf: 1 + 0 = 1 -> 1 at +inf.
    assert min_dcf([0.3] * 4, [0.3] * 5, p_target=0.01) == (pytest.approx(1.0), INF)
    # Perfectly separated: at 0.7 both error rates are 0.
    assert min_dcf([0.9, 0.7], [0.4, 0.1], p_target=0.01) == (0.0, 0.7)


# --- threshold_at_far ------------------------------------------------------------------


@pytest.mark.parametrize(
    "far, expected",
    [
        # From the table: the lowest θ with P_fa <= far.
        (0.0, (0.8, 0.5, 0.0)),  # P_fa is 1/5 at 0.7, 0 from 0.8 up
        (0.1, (0.8, 0.5, 0.0)),  # 1/5 = 0.2 > 0.1 still
        (0.2, (0.6, 0.25, 0.2)),  # 0.5 has 2/5 > 0.2; 0.6 has exactly 1/5
        (0.3, (0.6, 0.25, 0.2)),
        (0.4, (0.4, 0.0, 0.4)),  # 0.3 has 3/5; 0.4 and 0.5 have 2/5, the lower is 0.4
        (1.0, (0.1, 0.0, 1.0)),  # accept everything
    ],
)
def test_threshold_at_far_by_hand(far, expected):
    threshold, p_miss, p_fa = threshold_at_far(T4, N5, far)
    assert (threshold, p_miss, p_fa) == (expected[0], pytest.approx(expected[1]), pytest.approx(expected[2]))
    assert p_fa <= far


def test_threshold_at_far_edges():
    # Highest score is a non-target: no finite candidate has P_fa = 0, so +inf (accept nothing).
    assert threshold_at_far([0.2], [0.5], 0.0) == (INF, 1.0, 0.0)
    # Tie across classes: T = {0.5, 0.5, 0.8}, N = {0.5, 0.2}, far = 0.5: θ = 0.5 has
    # P_fa = 1/2 (the tied non-target) and P_miss = 0 (the tied targets are accepted too).
    assert threshold_at_far([0.5, 0.5, 0.8], [0.5, 0.2], 0.5) == (0.5, 0.0, 0.5)
    # far = 0.4 < 1/2: next candidate 0.8, P_miss = 2/3.
    assert threshold_at_far([0.5, 0.5, 0.8], [0.5, 0.2], 0.4) == (0.8, pytest.approx(2 / 3), 0.0)


# --- open-set identification -----------------------------------------------------------

GENUINE = [0.9, 0.8, 0.75, 0.6, 0.4]
CORRECT = [True, True, False, True, True]  # the 0.75 probe's rank-1 is the wrong speaker
IMPOSTOR = [0.85, 0.7, 0.5, 0.3]
# Impostor false-alarm rate (#impostors >= θ / 4) at each candidate:
#   0.3: 4/4  0.4: 3/4  0.5: 3/4  0.6: 2/4  0.7: 2/4  0.75: 1/4  0.8: 1/4  0.85: 1/4
#   0.9: 0/4  inf: 0/4


@pytest.mark.parametrize(
    "far, expected",
    [
        (0.5, (3 / 5, 0.6)),  # θ = 0.6; correct and >= 0.6: 0.9, 0.8, 0.6
        (0.25, (2 / 5, 0.75)),  # θ = 0.75; 0.9, 0.8 (0.75 is a wrong rank-1)
        (0.0, (1 / 5, 0.9)),  # θ = 0.9; 0.9 only
        (1.0, (4 / 5, 0.3)),  # θ = 0.3; every correct rank-1
    ],
)
def test_dir_at_far_by_hand(far, expected):
    value, threshold = dir_at_far(GENUINE, CORRECT, IMPOSTOR, far)
    assert value == pytest.approx(expected[0])
    assert threshold == expected[1]


def test_dir_at_far_ties_and_no_threshold():
    # Genuine 0.7 (correct) tied with an impostor at 0.7; impostors {0.7, 0.2}.
    # far = 0.5: θ = 0.2 has FAR 2/2; θ = 0.7 has 1/2 <= 0.5 and accepts the tied genuine: DIR 1.
    assert dir_at_far([0.7], [True], [0.7, 0.2], 0.5) == (1.0, 0.7)
    # far = 0.4: 1/2 > 0.4, so θ = +inf and nothing is detected.
    assert dir_at_far([0.7], [True], [0.7, 0.2], 0.4) == (0.0, INF)
    # 0/1 accepted for the correctness flags.
    assert dir_at_far(GENUINE, [1, 1, 0, 1, 1], IMPOSTOR, 0.5) == dir_at_far(GENUINE, CORRECT, IMPOSTOR, 0.5)


def test_closed_set_accuracy_by_hand():
    ranks = [1, 2, 0, None, 5, 1]  # 6 probes; two at rank 1, one at 2, one at 5, two missing
    assert closed_set_accuracy(ranks, 1) == pytest.approx(2 / 6)
    assert closed_set_accuracy(ranks, 2) == pytest.approx(3 / 6)
    assert closed_set_accuracy(ranks, 4) == pytest.approx(3 / 6)
    assert closed_set_accuracy(ranks, 5) == pytest.approx(4 / 6)
    assert closed_set_accuracy(np.array([3]), k=1) == 0.0


# --- input validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: eer([], [0.1]),
        lambda: eer([0.1], []),
        lambda: det_curve([0.5, math.nan], [0.1]),
        lambda: eer([0.5], [math.nan]),
        lambda: eer([0.5, INF], [0.1]),
        lambda: eer([[0.5]], [0.1]),
        lambda: min_dcf([], [0.1], 0.01),
        lambda: min_dcf([0.5], [0.1], 0.0),
        lambda: min_dcf([0.5], [0.1], 1.0),
        lambda: min_dcf([0.5], [0.1], math.nan),
        lambda: min_dcf([0.5], [0.1], 0.01, c_miss=0),
        lambda: min_dcf([0.5], [0.1], 0.01, c_fa=-1),
        lambda: threshold_at_far([0.5], [math.nan], 0.1),
        lambda: threshold_at_far([0.5], [0.1], -0.1),
        lambda: threshold_at_far([0.5], [0.1], 1.1),
        lambda: threshold_at_far([0.5], [0.1], math.nan),
        lambda: dir_at_far([], [], [0.1], 0.1),
        lambda: dir_at_far([0.5], [True], [], 0.1),
        lambda: dir_at_far([0.5], [True, False], [0.1], 0.1),
        lambda: dir_at_far([0.5], [2], [0.1], 0.1),
        lambda: dir_at_far([math.nan], [True], [0.1], 0.1),
        lambda: closed_set_accuracy([], 1),
        lambda: closed_set_accuracy([1, 2], 0),
        lambda: closed_set_accuracy([1, -1], 1),
        lambda: closed_set_accuracy([1.5], 1),
    ],
)
def test_invalid_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


# --- randomized comparison with brute force --------------------------------------------


def _brute_rates(target, nontarget):
    """Plain-Python (threshold, misses, false alarms) over all candidates, ascending."""
    candidates = sorted(set(target) | set(nontarget)) + [INF]
    rows = []
    for theta in candidates:
        misses = sum(1 for s in target if s < theta)
        false_alarms = sum(1 for s in nontarget if s >= theta)
        rows.append((theta, misses, false_alarms))
    return rows


def _brute_eer(target, nontarget):
    """The documented EER definition in exact rational arithmetic, found by scanning pairs."""
    n_t, n_n = len(target), len(nontarget)
    rows = [(theta, Fraction(m, n_t), Fraction(f, n_n)) for theta, m, f in _brute_rates(target, nontarget)]
    for theta, pm, pf in rows:
        if pm == pf:
            return pm, theta
    for (th1, pm1, pf1), (th2, pm2, pf2) in zip(rows, rows[1:]):
        d1, d2 = pm1 - pf1, pm2 - pf2
        if d1 < 0 < d2:
            t = -d1 / (d2 - d1)
            value = pm1 + t * (pm2 - pm1)
            assert value == pf1 + t * (pf2 - pf1)  # on the diagonal
            return value, (th1 if -d1 <= d2 else th2)
    raise AssertionError("no crossing")


def _brute_min_dcf(target, nontarget, p_target, c_miss, c_fa):
    best = None
    c_default = min(c_miss * p_target, c_fa * (1 - p_target))
    for theta, m, f in _brute_rates(target, nontarget):
        p_miss, p_fa = m / len(target), f / len(nontarget)
        dcf = (c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)) / c_default
        if best is None or dcf < best[0]:
            best = (dcf, theta)
    return best


def _brute_threshold_at_far(target, nontarget, far):
    for theta, m, f in _brute_rates(target, nontarget):
        if f / len(nontarget) <= far:
            return theta, m / len(target), f / len(nontarget)
    raise AssertionError("+inf always qualifies")


def _brute_dir_at_far(genuine, correct, impostor, far):
    for theta in sorted(set(genuine) | set(impostor)) + [INF]:
        if sum(1 for s in impostor if s >= theta) / len(impostor) <= far:
            hits = sum(1 for s, c in zip(genuine, correct) if c and s >= theta)
            return hits / len(genuine), theta
    raise AssertionError("+inf always qualifies")


def _random_scores(rng, n):
    # Few distinct values (quarter steps in [-1, 1]) so ties within and across classes abound.
    return [float(v) for v in rng.integers(-4, 5, size=n) / 4]


def test_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(20240611)
    for _ in range(400):
        target = _random_scores(rng, int(rng.integers(1, 9)))
        nontarget = _random_scores(rng, int(rng.integers(1, 12)))

        thresholds, p_miss, p_fa = det_curve(target, nontarget)
        rows = _brute_rates(target, nontarget)
        assert thresholds.tolist() == [r[0] for r in rows]
        assert p_miss.tolist() == [m / len(target) for _, m, _ in rows]
        assert p_fa.tolist() == [f / len(nontarget) for _, _, f in rows]

        value, threshold = eer(target, nontarget)
        exact_value, exact_threshold = _brute_eer(target, nontarget)
        assert value == pytest.approx(float(exact_value), abs=1e-12)
        assert threshold == exact_threshold and math.isfinite(threshold)

        for p_target in (0.01, 0.05, 0.5, 0.9):
            c_miss, c_fa = float(rng.choice([1, 10])), float(rng.choice([1, 10]))
            assert tuple(min_dcf(target, nontarget, p_target, c_miss, c_fa)) == _brute_min_dcf(
                target, nontarget, p_target, c_miss, c_fa
            )

        for far in (0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 1.0, float(rng.random())):
            assert tuple(threshold_at_far(target, nontarget, far)) == _brute_threshold_at_far(target, nontarget, far)

        correct = [bool(c) for c in rng.random(len(target)) < 0.7]
        for far in (0.0, 0.1, 0.5, 1.0, float(rng.random())):
            assert tuple(dir_at_far(target, correct, nontarget, far)) == _brute_dir_at_far(
                target, correct, nontarget, far
            )


def test_invariant_to_order_and_monotone_transforms():
    rng = np.random.default_rng(7)
    for _ in range(100):
        target = np.array(_random_scores(rng, int(rng.integers(1, 9))))
        nontarget = np.array(_random_scores(rng, int(rng.integers(1, 12))))
        base_eer, base_threshold = eer(target, nontarget)
        # Shuffling never changes anything (ties are handled by comparison, not position).
        assert eer(rng.permutation(target), rng.permutation(nontarget)) == (base_eer, base_threshold)
        # A strictly increasing map of the scores keeps every error rate; thresholds follow it.
        # (2x + 3 is exact in float64 on quarter steps.)
        moved_eer, moved_threshold = eer(2 * target + 3, 2 * nontarget + 3)
        assert moved_eer == base_eer and moved_threshold == 2 * base_threshold + 3
        base_dcf = min_dcf(target, nontarget, 0.05)
        moved_dcf = min_dcf(2 * target + 3, 2 * nontarget + 3, 0.05)
        assert moved_dcf.min_dcf == base_dcf.min_dcf and moved_dcf.threshold == 2 * base_dcf.threshold + 3
