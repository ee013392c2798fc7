"""Choose a decision threshold from the user's own labelled recordings (``speakerdb calibrate``).

The recordings are scored as :mod:`.evaluate` scores them, on the scale the database decides
on (AS-norm with its cohort when normalisation is on, else raw cosine), and the threshold
is the operating point asked for: the equal error rate, or the lowest threshold whose
false-acceptance rate is at most a given rate (:func:`.evaluate.operating_point`).
Storing it is the facade's part (:func:`speakerdb.workflows.calibrate_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..embedding.models import Embedder
from . import evaluate, norm


@dataclass(frozen=True)
class Calibration:
    """A threshold measured on labelled recordings, the error rates expected at it, and the
    evaluation it comes from."""

    target: str  # "eer" or "far=RATE"
    threshold: float | None  # None: no threshold reaches the target (accept nothing)
    p_miss: float
    p_fa: float
    threshold_scale: str  # norm.COSINE or norm.AS_NORM
    applied: bool  # stored in the database
    report: evaluate.Report
    database: str | None = None  # where it was stored, as shown (no password); not in to_dict

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "threshold": self.threshold,
            "p_miss": self.p_miss,
            "p_fa": self.p_fa,
            "threshold_scale": self.threshold_scale,
            "applied": self.applied,
            "report": self.report.to_dict(),
        }


def measure(
    data_dir: str | Path,
    target: str = "eer",
    *,
    cohort: norm.CohortVectors | None = None,
    top_n: int | None = None,
    **run_options: Any,
) -> tuple[Calibration, Embedder]:
    """Score ``data_dir`` (:func:`.evaluate.run` with ``run_options``) and find the threshold for
    ``target``; with ``cohort`` (a database's normalisation) on the AS-norm scale.

    Returns the calibration (not applied) and the embedder used, for storing the threshold
    in a database of the same model. A bad ``target`` fails before any scoring.
    """
    evaluate.parse_target(target)
    extra: dict[str, Any] = {"cohort": cohort, "top_n": top_n} if cohort is not None else {}
    report, scores, embedder = evaluate.run(data_dir, **extra, **run_options)
    point = evaluate.operating_point(scores.active(), target)
    scale = norm.AS_NORM if cohort is not None else norm.COSINE
    return Calibration(
        target, point["threshold"], float(point["p_miss"] or 0.0), float(point["p_fa"] or 0.0), scale, False, report
    ), embedder
