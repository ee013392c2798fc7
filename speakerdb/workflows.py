"""Workflows on the user's recordings, built on the facade: ``speakerdb evaluate``,
``speakerdb calibrate`` (with ``--apply``) and the files ``speakerdb timeline`` writes.

Each opens the databases it needs through :class:`speakerdb.api.SpeakerDB`, calls the
scoring room and returns a result type; the command line formats it. The facade never
imports this module (tests/test_layout.py).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from . import timeline as timeline_files
from .api import SpeakerDB
from .config import db_target
from .embedding.models import Embedder
from .errors import check_output
from .results import Timeline
from .scoring import calibrate as calibration
from .scoring import evaluate, norm
from .scoring.calibrate import Calibration
from .scoring.evaluate import Report
from .storage.settings import DEFAULT_THRESHOLD

__all__ = ["calibrate_threshold", "evaluate_recordings", "evaluation_database", "write_timeline_files"]


def evaluate_recordings(
    data_dir: str | os.PathLike[str],
    *,
    db: str | os.PathLike[str] | None = None,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    cohort: str | os.PathLike[str] | None = None,
    top_n: int = norm.DEFAULT_TOP_N,
    plot: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **split: Any,
) -> Report:
    """Measure accuracy on labelled recordings, ``DATA_DIR/<speaker>/<files>``
    (:func:`speakerdb.scoring.evaluate.run`, with ``split``'s enroll_count, impostor_speakers,
    impostor_dirs, seed, test_seconds), in a temporary database: ``db`` is never changed.

    Without ``model``, the model of ``db`` if it exists (else the default). ``plot`` draws the
    scores and a DET curve there, marking the threshold ``db`` would use; it is checked
    before any scoring.
    """
    if plot is not None:
        check_output(plot, overwrite=overwrite)
        evaluate.check_plotting()
    mine = _existing_database(db, model, device, precision)
    try:
        # The database's model, like every other command (a GE2E database is evaluated with GE2E).
        bound = model if model is not None or mine is None else mine.info().model_source
        report, scores, embedder = evaluate.run(
            Path(data_dir),
            model=bound,
            device=device,
            precision=precision,
            cohort=Path(cohort) if cohort is not None else None,
            top_n=top_n,
            progress=progress,
            open_db=evaluation_database,
            **split,
        )
        if plot is not None:
            evaluate.plot(scores, report, Path(plot), threshold=_plotted_threshold(mine, embedder), overwrite=overwrite)
    finally:
        if mine is not None:
            mine.close()
    return report


def calibrate_threshold(
    data_dir: str | os.PathLike[str],
    target: str = "eer",
    *,
    db: str | os.PathLike[str] | None = None,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    apply: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    **split: Any,
) -> Calibration:
    """Choose the threshold for ``target`` ("eer" or "far=RATE") from labelled recordings
    (:func:`speakerdb.scoring.calibrate.measure`), on the scale ``db`` decides on: its
    AS-norm cohort when normalisation is on, else raw cosine scores.

    ``apply`` stores it in ``db`` (created if absent, binding the model; refused if ``db``
    uses another model). Without ``model``, the model of ``db`` if it exists.
    """
    evaluate.parse_target(target)  # a typo fails before the model loads
    mine = _existing_database(db, model, device, precision)
    try:
        bound = model if model is not None or mine is None else mine.info().model_source
        settings = mine.norm_settings if mine is not None else None
        cohort = mine.cohort_vectors() if mine is not None and settings is not None else None
        result, embedder = calibration.measure(
            Path(data_dir),
            target,
            cohort=cohort,
            top_n=settings.top_n if settings is not None else None,
            model=bound,
            device=device,
            precision=precision,
            progress=progress,
            open_db=evaluation_database,
            **split,
        )
        if not apply:
            return result
        if mine is None:
            mine = SpeakerDB(db, model=model, device=device, precision=precision, embedder=embedder, create=True)
        try:
            mine.apply_threshold(result.threshold, scale=result.threshold_scale)
        except BaseException:
            if mine.created:  # a new database that the refusal left empty is not kept
                mine.discard_if_unused()
                mine = None
            raise
        return dataclasses.replace(result, applied=True, database=str(mine.db_path))
    finally:
        if mine is not None:
            mine.close()


def write_timeline_files(
    results: Sequence[Timeline],
    *,
    rttm: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> None:
    """Write timelines as RTTM and/or draw them into a PNG (each replaced only with ``overwrite``)."""
    if rttm:
        timeline_files.write_rttm(Path(rttm), results, overwrite=overwrite)
    if plot:
        timeline_files.plot(results, Path(plot), overwrite=overwrite)


def evaluation_database(path: Path, embedder: Embedder) -> SpeakerDB:
    """The temporary database an evaluation enrolls in (the product's own enroll and identify):
    what :func:`speakerdb.scoring.evaluate.run` takes as ``open_db``."""
    return SpeakerDB(path, embedder=embedder)


def _existing_database(
    db: str | os.PathLike[str] | None, model: str | None, device: str, precision: str
) -> SpeakerDB | None:
    """``db`` opened if it exists (a server URL always does), else None: never created here."""
    target = db_target(db)
    if isinstance(target, Path) and not target.exists():
        return None
    return SpeakerDB(db, model=model, device=device, precision=precision, create=False)


def _plotted_threshold(db: SpeakerDB | None, embedder: Embedder) -> float | None:
    """The cosine threshold identify would use now: the database's, else the model's starting
    one; None when the database's threshold is on the AS-norm scale (not the plot's axis)."""
    if db is not None:
        return db.threshold if db.threshold_scale == norm.COSINE else None
    own = getattr(embedder, "default_threshold", None)
    return DEFAULT_THRESHOLD if own is None else float(own)
