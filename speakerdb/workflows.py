"""Workflows on the user's recordings, built on the facade: ``speakerdb evaluate``,
``speakerdb calibrate`` (with ``--apply``) and the files ``speakerdb timeline`` writes.

Each opens the databases it needs through :class:`speakerdb.api.SpeakerDB`, calls the
scoring room and returns a result type; the command line formats it. The facade never
imports this module (tests/test_layout.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from . import timeline as timeline_files
from .api import SpeakerDB
from .audio import decode as audio
from .audio import microphone, pcm
from .config import db_target
from .embedding import segmentation
from .embedding.models import DEFAULT_MODEL, Embedder, default_threshold_for, load_embedder
from .errors import AudioError, InvalidInputError, check_output
from .results import Params, Timeline
from .scoring import calibrate as calibration
from .scoring import evaluate, norm
from .scoring.calibrate import Calibration
from .scoring.evaluate import Report
from .scoring.thresholds import check_threshold
from .storage.settings import DEFAULT_THRESHOLD

__all__ = [
    "LiveInput",
    "calibrate_threshold",
    "diarize",
    "evaluate_recordings",
    "evaluation_database",
    "live_input",
    "write_timeline_files",
]


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
    gallery: str | None = None,
    **split: Any,
) -> Report:
    """Measure accuracy on labelled recordings, ``DATA_DIR/<speaker>/<files>``
    (:func:`speakerdb.scoring.evaluate.run`, with ``split``'s enroll_count, impostor_speakers,
    impostor_dirs, seed, test_seconds), in a temporary database: ``db`` is never changed.

    Without ``model``, the model of ``db`` if it exists (else the default). ``plot`` draws the
    scores and a DET curve there, marking the threshold ``db`` would use; it is checked
    before any scoring. ``gallery``: the gallery of ``db`` whose threshold is marked. With
    ``model`` and no ``plot``, ``db`` is not opened.
    """
    if plot is not None:
        check_output(plot, overwrite=overwrite)
        evaluate.check_plotting()
    # The user's database gives the model when none is named, and the threshold a plot marks;
    # needing neither, it is not opened (an encrypted one would want its key for nothing).
    needed = model is None or plot is not None
    mine = _existing_database(db, model, device, precision, gallery) if needed else None
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
    gallery: str | None = None,
    **split: Any,
) -> Calibration:
    """Choose the threshold for ``target`` ("eer" or "far=RATE") from labelled recordings
    (:func:`speakerdb.scoring.calibrate.measure`), on the scale ``db`` decides on: its
    AS-norm cohort when normalisation is on, else raw cosine scores.

    ``apply`` stores it in ``db`` (created if absent, binding the model; refused if ``db``
    uses another model). Without ``model``, the model of ``db`` if it exists. ``gallery``: the
    gallery of ``db`` whose normalisation is used and whose threshold is stored.
    """
    evaluate.parse_target(target)  # a typo fails before the model loads
    mine = _existing_database(db, model, device, precision, gallery)
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
            mine = SpeakerDB(
                db, model=model, device=device, precision=precision, embedder=embedder, create=True, gallery=gallery
            )
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


def diarize(
    files: Sequence[str | os.PathLike[str]],
    *,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    threshold: float | None = None,
    params: Params | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    on_result: Callable[[Timeline], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> list[Timeline]:
    """Who speaks when without a database: :func:`speakerdb.timeline.build_each` with nobody
    enrolled, ``model`` (None: the default model) and its own starting threshold (or
    ``threshold``, a cosine). Nothing is written. ``announce(model)`` is told which model
    before it loads (the CLI says it on stderr); ``progress`` and ``on_result`` as in
    :meth:`SpeakerDB.timeline`."""
    params = (params or Params()).check()
    if not files:
        raise InvalidInputError("timeline needs at least one audio file")
    if threshold is not None:
        threshold = check_threshold(threshold)
    failed: dict[int, AudioError] = {}
    for i, f in enumerate(files):  # cheap checks first, as SpeakerDB.timeline: all-bad batches load no model
        try:
            audio.check_file(f)
        except AudioError as e:
            failed[i] = e
    if len(failed) == len(files):
        out = [Timeline(audio.source_label(f), 0.0, [], [], error=failed[i].reason) for i, f in enumerate(files)]
        for t in out:
            if on_result is not None:
                on_result(t)
        return out
    source = model or DEFAULT_MODEL
    if announce is not None:
        announce(source)
    # Before the model: a missing VAD or a bad segmentation file is reported at once.
    detector = timeline_files.load_detector(params)
    embedder = load_embedder(source, device=device, precision=precision)
    if threshold is None:
        own = default_threshold_for(embedder.model_id)
        threshold = DEFAULT_THRESHOLD if own is None else float(own)
    gallery = timeline_files.Gallery.empty(embedder.dim, threshold)
    return timeline_files.build_each(
        files, embedder, gallery, params, detector, failed=failed, progress=progress, on_result=on_result
    )


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


def check_segmentation(source: str | os.PathLike[str]) -> None:
    """Raise ModelLoadError (one line) now, before any work, for a segmentation model that
    cannot be used: a missing file, a hub id not in the local cache (see segmentation.resolve),
    or a file that is not a segmentation-3.0 checkpoint."""
    # Loaded, not just found: a file that is there but no checkpoint fails only when read. The
    # timeline loads it again; reading ~6 MB and building the network costs ~50 ms, once per command.
    segmentation.load(source)


def rttm_clash(files: Sequence[str | os.PathLike[str]]) -> tuple[str, str, str] | None:
    """The first two of ``files`` whose RTTM lines would carry one recording id (a scorer would
    take them for one recording), and the id; None when every file has its own."""
    seen: dict[str, str] = {}
    for f in files:
        uri = timeline_files.rttm_id(f)
        if uri in seen:
            return seen[uri], str(f), uri
        seen[uri] = str(f)
    return None


def evaluation_database(path: Path, embedder: Embedder) -> SpeakerDB:
    """The temporary database an evaluation enrolls in (the product's own enroll and identify):
    what :func:`speakerdb.scoring.evaluate.run` takes as ``open_db``."""
    return SpeakerDB(path, embedder=embedder)


def _existing_database(
    db: str | os.PathLike[str] | None, model: str | None, device: str, precision: str, gallery: str | None = None
) -> SpeakerDB | None:
    """``db`` opened (in ``gallery``) if it exists (a server URL always does), else None: never created here."""
    target = db_target(db)
    if isinstance(target, Path) and not target.exists():
        return None
    return SpeakerDB(db, model=model, device=device, precision=precision, create=False, gallery=gallery)


def _plotted_threshold(db: SpeakerDB | None, embedder: Embedder) -> float | None:
    """The cosine threshold identify would use now: the database's, else the model's starting
    one; None when the database's threshold is on the AS-norm scale (not the plot's axis)."""
    if db is not None:
        return db.threshold if db.threshold_scale == norm.COSINE else None
    own = getattr(embedder, "default_threshold", None)
    return DEFAULT_THRESHOLD if own is None else float(own)


# ---- live input (speakerdb listen) -----------------------------------------------------------------
LIVE_FRAME_S = 0.1  # s of audio per frame fed to a live session


@dataclasses.dataclass(frozen=True)
class LiveInput:
    """What ``speakerdb listen`` feeds a live session: the session's encoding and rate, and the frames."""

    encoding: str
    sample_rate: int
    frames: Iterator[bytes]


def live_input(
    source: str | os.PathLike[str],
    *,
    encoding: str | None = None,
    sample_rate: int = audio.SAMPLE_RATE,
    realtime: bool = False,
    stdin: BinaryIO | None = None,
    max_audio_s: float | None = None,
) -> LiveInput:
    """Frames of audio for a live session from ``source``: ``-`` is raw audio on standard input
    (``encoding``, default ``pcm_s16le``, at ``sample_rate``); a file is decoded as every command
    decodes one (16 kHz float32 frames), unless ``encoding`` says it is raw audio.

    ``realtime`` paces the frames at the audio's own speed (a file played as if it were live);
    otherwise they come as fast as they are taken. Checks (encoding, rate, the file) are made here,
    before any frame is read.
    """
    rate = pcm.check_sample_rate(sample_rate)
    if str(source) == "-" or encoding is not None:
        name = pcm.check_encoding(encoding or "pcm_s16le")
        frame_bytes = max(1, int(rate * LIVE_FRAME_S)) * pcm.BYTES_PER_SAMPLE[name]
        if str(source) == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            frames = _raw_frames(stream, frame_bytes, close=False)
        else:
            path = audio.check_file(Path(source))
            frames = _raw_frames(open(path, "rb"), frame_bytes, close=True)
        return LiveInput(name, rate, _paced(frames, rate * pcm.BYTES_PER_SAMPLE[name]) if realtime else frames)
    blocks = audio.stream(Path(source), block_s=LIVE_FRAME_S, max_audio_s=max_audio_s)
    frames = (block.astype("<f4").tobytes() for block in blocks)
    return LiveInput("f32le", audio.SAMPLE_RATE, _paced(frames, 4 * audio.SAMPLE_RATE) if realtime else frames)


def microphone_input(
    *, sample_rate: int = audio.SAMPLE_RATE, device: str | None = None, max_seconds: float | None = None
) -> LiveInput:
    """Frames of 16-bit PCM from a microphone (``device``: an index or a name; None: the
    system's default input) at ``sample_rate``, as they are captured, until ``max_seconds`` of
    audio or Ctrl-C. Needs the optional ``sounddevice`` package (``speakerdb[mic]``)."""
    rate = pcm.check_sample_rate(sample_rate)
    if max_seconds is not None and not max_seconds > 0:
        raise InvalidInputError(f"--seconds must be above 0, not {max_seconds:g}")
    return LiveInput("pcm_s16le", rate, microphone.frames(rate, device, max_seconds))


def _raw_frames(stream: BinaryIO, frame_bytes: int, close: bool) -> Iterator[bytes]:
    """Frames of ``frame_bytes`` (the last one shorter) until the end of ``stream``."""
    try:
        while True:
            data = stream.read(frame_bytes)
            if not data:
                return
            yield data
    finally:
        if close:
            stream.close()


def _paced(frames: Iterator[bytes], bytes_per_second: int) -> Iterator[bytes]:
    """``frames`` (``bytes_per_second`` bytes a second of audio), each held back until the audio
    before it has had its time: a file played as if it were live."""
    start, fed = time.monotonic(), 0.0
    for frame in frames:
        time.sleep(max(0.0, start + fed - time.monotonic()))
        yield frame
        fed += len(frame) / bytes_per_second
