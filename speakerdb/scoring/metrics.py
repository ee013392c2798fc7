"""Speaker-recognition metrics: DET curve, EER, minDCF, operating points, open-set DIR.

Pure numpy, so it can score a system anywhere speakerdb is installed (no torch, sklearn
or scipy).

Conventions shared by every function here:

- Scores are similarities: higher means "more likely the same speaker". A trial is
  accepted when ``score >= threshold``.
- For target scores ``T`` (same-speaker trials) and non-target scores ``N``
  (different-speaker trials), at a threshold ``θ``::

      P_miss(θ) = #{t in T : t <  θ} / |T|
      P_fa(θ)   = #{n in N : n >= θ} / |N|

- The candidate thresholds are every distinct score in ``T ∪ N``, ascending, then
  ``+inf``. The lowest candidate accepts everything (``P_miss = 0, P_fa = 1``); ``+inf``
  accepts nothing (``P_miss = 1, P_fa = 0``). Between two adjacent candidates nothing
  changes, so these are all the operating points the scores allow.
- Ties are exact: errors are counted by comparing every score with the threshold, never
  by walking a sorted list of trials, so a target and a non-target with the same score
  are always accepted or rejected together, whatever order they arrive in.
- Scores must be finite (NaN or ±inf raise :class:`ValueError`: NaN cannot be compared,
  and a score of ``+inf`` would be accepted by the "accept nothing" threshold). Empty
  score sets raise :class:`ValueError` too, since the error rates are undefined.

Every function returns a :class:`typing.NamedTuple` (:func:`midpoint_below` aside, a float):
unpack it like a tuple (``value, threshold = eer(T, N)``) or read its fields by name
(``eer(T, N).threshold``).

The thresholds the functions pick are candidates, observed scores; a threshold to report or
store is the midpoint below one (:func:`midpoint_below`), which decides every trial alike
with none on it: :func:`eer_threshold` for the equal error rate, the one ``evaluate``
reports and ``calibrate --target eer`` stores.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

#: The threshold that accepts nothing; always the last candidate.
ACCEPT_NOTHING = float("inf")


class DetCurve(NamedTuple):
    """Error rates at every candidate threshold, ascending threshold (all arrays (k + 1,))."""

    thresholds: np.ndarray  # distinct scores of T ∪ N, then +inf
    p_miss: np.ndarray  # non-decreasing, from 0 to 1
    p_fa: np.ndarray  # non-increasing, from 1 to 0


class EqualErrorRate(NamedTuple):
    eer: float
    threshold: float  # a candidate threshold, always finite (see :func:`eer`)


class MinDCF(NamedTuple):
    min_dcf: float  # normalised, in [0, 1]
    threshold: float  # may be +inf: accepting nothing is sometimes the cheapest


class OperatingPoint(NamedTuple):
    threshold: float
    p_miss: float
    p_fa: float


class DetectionAtFar(NamedTuple):
    dir: float  # detection and identification rate at rank 1
    threshold: float


def det_curve(target: Sequence[float] | np.ndarray, nontarget: Sequence[float] | np.ndarray) -> DetCurve:
    """P_miss and P_fa at every candidate threshold (distinct scores, then +inf), ascending.

    Returns a :class:`DetCurve` ``(thresholds, p_miss, p_fa)`` of float64 arrays of equal
    length. Raises ValueError for empty or non-finite scores.
    """
    thresholds, misses, false_alarms, n_t, n_n = _error_counts(target, nontarget)
    return DetCurve(thresholds, misses / n_t, false_alarms / n_n)


def eer(target: Sequence[float] | np.ndarray, nontarget: Sequence[float] | np.ndarray) -> EqualErrorRate:
    """Equal error rate, by linear interpolation between adjacent DET operating points.

    Definition. ``d(θ) = P_miss(θ) - P_fa(θ)`` is strictly increasing over the candidate
    thresholds (each step to the next candidate rejects at least one more trial, which
    either adds a miss or removes a false alarm), from -1 at the lowest score to +1 at
    ``+inf``. So exactly one of these holds:

    - some candidate has ``d == 0`` (decided exactly, in integer counts): the EER is its
      ``P_miss`` (= ``P_fa``) and the threshold is that candidate;
    - otherwise ``d`` changes sign between one adjacent pair ``θ1 < θ2``: the EER is where
      the straight line from ``(P_fa(θ1), P_miss(θ1))`` to ``(P_fa(θ2), P_miss(θ2))``
      crosses ``P_miss = P_fa``, and the threshold is whichever of ``θ1``, ``θ2`` has the
      smaller ``|d|`` (``θ1`` when they are equal).

    This is not the ROC convex hull (ROCCH) EER: no hull is taken, only the segment
    between the two operating points that straddle the diagonal. Consequences:

    - perfectly separated scores give EER 0 at the lowest target score (there
      ``P_miss = P_fa = 0``);
    - all scores equal give EER 0.5 at that score (the segment joins "accept all" and
      "accept nothing");
    - perfectly inverted scores give EER 1 (``P_miss = P_fa = 1`` at the lowest
      non-target score), where the ROCCH EER would be 0.5.

    The returned threshold is always finite: at ``+inf``, ``|d| = 1``, which is never
    smaller than ``|d|`` at the candidate below it.

    Returns :class:`EqualErrorRate` ``(eer, threshold)``. Raises ValueError for empty or
    non-finite scores.
    """
    thresholds, misses, false_alarms, n_t, n_n = _error_counts(target, nontarget)
    # d scaled by n_t * n_n, so its sign and its zero are decided in exact integers.
    scaled_d = misses * n_n - false_alarms * n_t  # (k + 1,) int64, strictly increasing
    i = int(np.argmax(scaled_d >= 0))  # exists: the last entry (+inf) is n_t * n_n > 0
    if scaled_d[i] == 0:
        # The rule "an exact P_miss == P_fa is the EER", stated outright; the interpolation
        # below would give the same (t = 1 exactly, the threshold of the second point).
        return EqualErrorRate(float(misses[i]) / n_t, float(thresholds[i]))
    # i >= 1 because scaled_d[0] = -n_n * n_t < 0.
    d1, d2 = int(scaled_d[i - 1]), int(scaled_d[i])  # d1 < 0 < d2
    m1, m2 = int(misses[i - 1]), int(misses[i])
    t = -d1 / (d2 - d1)  # in (0, 1): where d1 + t * (d2 - d1) = 0 along the segment
    value = (m1 + t * (m2 - m1)) / n_t  # P_miss there, which equals P_fa there
    threshold = thresholds[i - 1] if -d1 <= d2 else thresholds[i]
    return EqualErrorRate(float(value), float(threshold))


def eer_threshold(target: Sequence[float] | np.ndarray, nontarget: Sequence[float] | np.ndarray) -> OperatingPoint:
    """The threshold to decide by at the equal error rate, and the error rates there: what
    ``evaluate`` reports as the EER threshold and ``calibrate --target eer`` stores.

    It is :func:`midpoint_below` the threshold :func:`eer` picks (a candidate: an observed
    score), so it accepts and rejects every trial as that candidate does, with the same
    ``P_miss`` and ``P_fa``, but no trial lies on it: half the gap to the nearest score
    separates it from every trial.

    Returns :class:`OperatingPoint` ``(threshold, p_miss, p_fa)``. Raises ValueError for
    empty or non-finite scores.
    """
    t, n = _scores("target", target), _scores("nontarget", nontarget)
    threshold = midpoint_below(eer(t, n).threshold, np.concatenate([t, n]))
    return OperatingPoint(threshold, float(np.mean(t < threshold)), float(np.mean(n >= threshold)))


def midpoint_below(threshold: float, scores: Sequence[float] | np.ndarray) -> float:
    """The midpoint between ``threshold`` (a candidate: one of ``scores``) and the highest
    score below it, the threshold to store or report for that operating point.

    Nothing lies between the two, so every score is accepted or rejected as by
    ``threshold``; but a threshold equal to an observed score puts that trial on a knife
    edge, which the last bit of rounding in another build, or another order of summation,
    would flip. At the lowest score the gap to the next one up is mirrored below it.
    ``+inf`` (accept nothing) is returned as it is.
    """
    if not np.isfinite(threshold):
        return float(threshold)
    scores = np.asarray(scores, np.float64)
    below, above = scores[scores < threshold], scores[scores > threshold]
    if len(below):
        lower = float(below.max())
    elif len(above):
        lower = threshold - (float(above.min()) - threshold)
    else:
        lower = threshold - 1e-3  # one distinct score: any value under it accepts it
    mid = lower + (threshold - lower) / 2
    return float(mid) if lower < mid < threshold else float(threshold)


def min_dcf(
    target: Sequence[float] | np.ndarray,
    nontarget: Sequence[float] | np.ndarray,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> MinDCF:
    """Minimum normalised detection cost over the candidate thresholds (NIST SRE convention).

    ``DCF(θ) = (c_miss·P_miss(θ)·p_target + c_fa·P_fa(θ)·(1 − p_target)) / C_default``
    with ``C_default = min(c_miss·p_target, c_fa·(1 − p_target))``, the cost of the better
    of "accept everything" and "reject everything" without looking at the scores, so a
    useless system scores 1 and minDCF is never above 1.

    Among thresholds whose (float64) DCF equals the minimum, the lowest is reported. The
    threshold is ``+inf`` when rejecting every trial is (one of) the cheapest choices and
    no lower threshold is as cheap.

    Returns :class:`MinDCF` ``(min_dcf, threshold)``. Raises ValueError for empty or
    non-finite scores, ``p_target`` outside (0, 1), or costs that are not finite and > 0.
    """
    p_target = _probability("p_target", p_target, open_interval=True)
    c_miss, c_fa = _positive("c_miss", c_miss), _positive("c_fa", c_fa)
    thresholds, misses, false_alarms, n_t, n_n = _error_counts(target, nontarget)
    p_miss, p_fa = misses / n_t, false_alarms / n_n  # (k + 1,) each
    c_default = min(c_miss * p_target, c_fa * (1 - p_target))
    dcf = (c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)) / c_default  # (k + 1,)
    best = int(np.argmin(dcf))  # argmin takes the first, i.e. lowest threshold, on ties
    return MinDCF(float(dcf[best]), float(thresholds[best]))


def threshold_at_far(
    target: Sequence[float] | np.ndarray, nontarget: Sequence[float] | np.ndarray, far: float
) -> OperatingPoint:
    """The lowest candidate threshold whose P_fa is <= ``far``, with its error rates.

    The attained P_fa never exceeds ``far`` (it is usually below it, since P_fa moves in
    steps of ``1/|N|``); among thresholds that meet it, the lowest has the fewest misses.
    ``far = 0`` gives the lowest candidate above every non-target score (``+inf`` when the
    highest score is a non-target); ``far = 1`` gives the lowest score (accept all).

    Returns :class:`OperatingPoint` ``(threshold, p_miss, p_fa)``. Raises ValueError for
    empty or non-finite scores or ``far`` outside [0, 1].
    """
    far = _probability("far", far)
    thresholds, misses, false_alarms, n_t, n_n = _error_counts(target, nontarget)
    p_fa = false_alarms / n_n  # (k + 1,) non-increasing, 0 at +inf
    i = int(np.argmax(p_fa <= far))  # exists: the last entry is 0
    return OperatingPoint(float(thresholds[i]), float(misses[i]) / n_t, float(p_fa[i]))


def dir_at_far(
    genuine_top_scores: Sequence[float] | np.ndarray,
    genuine_top_correct: Sequence[bool] | np.ndarray,
    impostor_top_scores: Sequence[float] | np.ndarray,
    far: float,
) -> DetectionAtFar:
    """Open-set identification: rank-1 detection and identification rate at a false-alarm rate.

    Each genuine probe (its speaker is enrolled) contributes its rank-1 score and whether
    the rank-1 candidate is its true speaker; each impostor probe (speaker not enrolled)
    contributes its rank-1 score. The candidate thresholds are the distinct scores of all
    probes, then ``+inf``. The threshold is the lowest candidate at which the fraction of
    impostor probes with top score ``>= θ`` is ``<= far``; at it::

        DIR = #{genuine probes: rank-1 correct and score >= θ} / #genuine probes

    Since DIR can only fall as θ rises, the lowest such threshold gives the highest DIR.

    Returns :class:`DetectionAtFar` ``(dir, threshold)``. Raises ValueError for empty or
    non-finite scores, ``genuine_top_correct`` of another length or not boolean (0/1 is
    accepted), or ``far`` outside [0, 1].
    """
    far = _probability("far", far)
    genuine = _scores("genuine_top_scores", genuine_top_scores)
    impostor = _scores("impostor_top_scores", impostor_top_scores)
    correct = _booleans("genuine_top_correct", genuine_top_correct, len(genuine))
    thresholds = np.append(np.unique(np.concatenate([genuine, impostor])), ACCEPT_NOTHING)  # (k + 1,)
    n_i = len(impostor)
    # Counting by comparison with each threshold (via searchsorted on sorted copies) keeps
    # tied scores together: every probe scoring exactly θ counts as accepted.
    false_alarm_rate = (n_i - np.searchsorted(np.sort(impostor), thresholds, side="left")) / n_i  # (k + 1,)
    i = int(np.argmax(false_alarm_rate <= far))  # exists: the last entry (+inf) is 0
    hits = np.count_nonzero(correct & (genuine >= thresholds[i]))
    return DetectionAtFar(hits / len(genuine), float(thresholds[i]))


def closed_set_accuracy(ranks: Sequence[int | None] | np.ndarray, k: int = 1) -> float:
    """Fraction of probes whose true speaker is within the top ``k`` (rank-k accuracy).

    ``ranks`` holds, per probe, the 1-based rank of its true speaker among the returned
    candidates, or 0 / None when the true speaker was not returned at all (counted as a
    failure at every k). Raises ValueError for no probes, ``k < 1``, or ranks that are not
    non-negative integers.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    values = np.asarray([0 if r is None else r for r in ranks])
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("ranks must be a non-empty 1-D sequence")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"ranks must be integers (1-based) or 0/None, got dtype {values.dtype}")
    if np.any(values < 0):
        raise ValueError("ranks must be >= 0 (0 or None: true speaker not returned)")
    return float(np.count_nonzero((values >= 1) & (values <= k))) / len(values)


def _error_counts(target, nontarget) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Candidate thresholds with the miss and false-alarm counts at each.

    Returns ``(thresholds, misses, false_alarms, n_t, n_n)``: thresholds (k + 1,) float64
    ascending, ending in +inf; misses (k + 1,) int64 = #T < θ; false_alarms (k + 1,)
    int64 = #N >= θ.
    """
    t = _scores("target", target)
    n = _scores("nontarget", nontarget)
    thresholds = np.append(np.unique(np.concatenate([t, n])), ACCEPT_NOTHING)  # (k + 1,)
    # searchsorted(side="left") counts the elements strictly below each threshold: a pure
    # comparison, so tied scores (within or across classes) fall on the same side.
    misses = np.searchsorted(np.sort(t), thresholds, side="left").astype(np.int64)  # (k + 1,)
    false_alarms = len(n) - np.searchsorted(np.sort(n), thresholds, side="left").astype(np.int64)  # (k + 1,)
    return thresholds, misses, false_alarms, len(t), len(n)


def _scores(name: str, scores) -> np.ndarray:
    """``scores`` as a (n,) float64 array; ValueError if empty, not 1-D, or not finite."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty: error rates need at least one score")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def _booleans(name: str, values, n: int) -> np.ndarray:
    """``values`` as a (n,) bool array; ValueError on another length or non-0/1 values."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the scores, got {arr.shape}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.number) and np.all((arr == 0) | (arr == 1))):
            raise ValueError(f"{name} must be booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _probability(name: str, value: float, open_interval: bool = False) -> float:
    """``value`` as a float in [0, 1] (or (0, 1)); ValueError otherwise, NaN included."""
    value = float(value)
    ok = 0 < value < 1 if open_interval else 0 <= value <= 1  # False for NaN
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def _positive(name: str, value: float) -> float:
    """``value`` as a finite float > 0; ValueError otherwise."""
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return value
