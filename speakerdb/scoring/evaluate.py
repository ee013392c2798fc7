"""Measure accuracy on the user's own labelled recordings, and pick a threshold from it.

Protocol (reproducible with ``seed``):

1. ``DATA_DIR/<speaker>/<recordings>``: every sub-directory is a speaker. Some speakers
   are held out entirely as impostors (``impostor_speakers``, default a fifth); extra
   impostor recordings can come from other directories (``impostor_dirs``: one file per
   unknown speaker, or sub-directories as above).
2. Each remaining speaker's recordings are shuffled; the first ``enroll_count`` enroll
   the speaker in a temporary database (the user's database is never touched), the rest
   are test probes, cropped to ``test_seconds`` if given (the short-utterance condition):
   the middle ``test_seconds`` of the recording's detected speech (see :func:`crop`).
3. Every probe is scored against every enrolled speaker through the product's own
   ``identify``; with a ``cohort``, both raw and AS-norm scores (see norm.py) are kept
   and every figure is reported on both scales. Verification trials: a probe against its own speaker is a target
   trial, against anyone else a non-target trial; impostor probes give only non-target
   trials. Identification: the rank of a genuine probe's speaker (closed set), and the
   rank-1 scores of genuine and impostor probes (open set).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from ..audio import decode as audio
from ..config import AUDIO_SUFFIXES, audio_files
from ..embedding import pipeline
from ..embedding.models import DEFAULT_MODEL, Embedder, load_embedder
from ..errors import InvalidInputError
from ..results import check_top_n
from ..storage import atomic
from . import metrics, norm

DEFAULT_ENROLL_COUNT = 3
DEFAULT_IMPOSTOR_FRACTION = 0.2  # of the speakers in DATA_DIR, held out entirely
P_TARGETS = (0.01, 0.05)  # minDCF operating points, with C_miss = C_fa = 1
DIR_FARS = (0.01, 0.10)  # open-set false-alarm rates for the detection-and-identification rate

Progress = Callable[[str, int, int], None]  # (stage, done, total)
#: (path, embedder) -> a new database there, used as a context manager: enroll, set_norm, identify.
OpenDatabase = Callable[[Path, Embedder], Any]


@dataclass(frozen=True)
class Split:
    """Who enrolls with what, and what is scored."""

    enroll: dict[str, list[Path]]  # speaker -> enrollment recordings
    probes: list[tuple[Path, str]]  # (recording, its speaker), speaker enrolled
    impostors: list[tuple[Path, str]]  # (recording, its speaker), speaker not enrolled


@dataclass
class Scores:
    """Everything the metrics are computed from."""

    target: np.ndarray  # (n_target_trials,) cosine scores
    nontarget: np.ndarray  # (n_nontarget_trials,)
    genuine_top: np.ndarray  # (n_probes,) rank-1 score of each genuine probe
    genuine_correct: np.ndarray  # (n_probes,) bool: rank-1 is the right speaker
    genuine_rank: np.ndarray  # (n_probes,) 1-based rank of the right speaker
    impostor_top: np.ndarray  # (n_impostor_probes,) rank-1 score of each impostor probe
    norm: Scores | None = None  # the same trials on the AS-norm scale, when a cohort was given

    def active(self) -> Scores:
        """The scores decisions are made on: AS-norm when there is a cohort, else raw."""
        return self.norm if self.norm is not None else self


@dataclass(frozen=True)
class Report:
    n_enrolled_speakers: int
    n_impostor_speakers: int
    n_enroll_recordings: int
    n_probes: int
    n_impostor_probes: int
    n_target_trials: int
    n_nontarget_trials: int
    top1: float
    top5: float
    eer: float
    eer_threshold: float  # metrics.eer_threshold: what calibrate --target eer stores
    min_dcf: dict[str, dict[str, float | None]]  # "0.01" -> {"min_dcf", "threshold"} (None: not reached)
    dir: dict[str, dict[str, float | None]]  # "0.01" -> {"dir", "threshold"} (None: not reached)
    settings: dict[str, Any] = field(default_factory=dict)
    #: The same figures on the AS-norm scale (keys top1, top5, eer, eer_threshold, min_dcf,
    #: dir), when evaluated with a cohort; None for raw scores only.
    normalised: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_recordings(directory: Path) -> dict[str, list[Path]]:
    """Speaker -> recordings: sub-directories are speakers; loose files are one speaker each."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(f"{directory} is not a directory")
    found: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            files = audio_files(entry)
            if files:
                found[entry.name] = files
        elif entry.suffix.lower() in AUDIO_SUFFIXES:
            # LibriSpeech-style names: "<speaker>-<chapter>-<utterance>.flac"
            found.setdefault(entry.stem.split("-")[0], []).append(entry)
    return found


def make_split(
    data_dir: Path,
    *,
    enroll_count: int = DEFAULT_ENROLL_COUNT,
    impostor_speakers: int | None = None,
    impostor_dirs: Sequence[Path] = (),
    seed: int = 0,
) -> Split:
    """Choose enrollment, probe and impostor recordings, reproducibly for a given seed."""
    if enroll_count < 1:
        raise InvalidInputError("enroll-count must be at least 1")
    speakers = find_recordings(data_dir)
    usable = {s: f for s, f in speakers.items() if len(f) > enroll_count}
    if len(usable) < 2:
        raise InvalidInputError(
            f"{data_dir} needs at least 2 speakers with more than {enroll_count} recordings each "
            f"(found {len(usable)}); lower --enroll-count or add recordings"
        )
    rng = np.random.default_rng(seed)
    names = sorted(usable)
    if impostor_speakers is None:
        impostor_speakers = int(round(DEFAULT_IMPOSTOR_FRACTION * len(names))) if len(names) >= 5 else 0
    if not 0 <= impostor_speakers <= len(names) - 2:
        raise InvalidInputError(f"impostor-speakers must leave at least 2 of the {len(names)} speakers enrolled")
    held_out = set(rng.choice(names, size=impostor_speakers, replace=False).tolist()) if impostor_speakers else set()
    enroll: dict[str, list[Path]] = {}
    probes: list[tuple[Path, str]] = []
    impostors: list[tuple[Path, str]] = []
    for name in names:
        files = [usable[name][i] for i in rng.permutation(len(usable[name]))]
        if name in held_out:
            impostors += [(f, name) for f in files]
        else:
            enroll[name] = files[:enroll_count]
            probes += [(f, name) for f in files[enroll_count:]]
    for extra in impostor_dirs:
        for name, files in find_recordings(Path(extra)).items():
            if name in enroll:
                raise InvalidInputError(f"impostor speaker {name!r} in {extra} is also enrolled from {data_dir}")
            impostors += [(f, name) for f in files]
    return Split(enroll, probes, impostors)


def crop(clip: audio.Audio, seconds: float | None) -> audio.Audio:
    """``seconds`` of speech from the middle of a recording's detected speech.

    Speech is detected by the energy rule speakerdb flags short enrollments with
    (:func:`speakerdb.audio.active_frames`: 30 ms frames within 40 dB of the loudest and
    6 dB over the noise floor), each speech run widened by one frame for soft onsets and
    endings. The speech frames are joined (leading and trailing silence and pauses drop
    out) and the middle ``seconds`` of them are kept: a "1 s" probe holds a second of
    voice, not the silence many recordings begin with. A recording with less detected
    speech than that gives its own middle ``seconds``; one no longer than ``seconds``,
    or ``seconds`` None, is kept whole.
    """
    if seconds is None:
        return clip
    n = int(round(seconds * audio.SAMPLE_RATE))
    if len(clip.samples) <= n:
        return clip
    active = audio.active_frames(clip.samples)  # (n_frames,)
    widened = active.copy()
    widened[1:] |= active[:-1]
    widened[:-1] |= active[1:]
    frame = int(audio.FRAME_S * audio.SAMPLE_RATE)  # samples
    speech = clip.samples[: len(widened) * frame][np.repeat(widened, frame)]
    source = speech if len(speech) >= n else clip.samples
    start = (len(source) - n) // 2
    return audio.Audio(clip.source, np.ascontiguousarray(source[start : start + n]))


def cohort_files(cohort: str | os.PathLike[str] | Sequence[Any]) -> list[Any]:
    """A cohort given as a directory (every audio file below it, sorted) or as a list of files."""
    if isinstance(cohort, (str, os.PathLike)):
        root = Path(cohort).expanduser()
        if not root.is_dir():
            raise InvalidInputError(f"cohort {root} is not a directory")
        return audio_files(root)
    return list(cohort)


def embed_cohort(cohort_dir: str | Path, embedder: Embedder) -> norm.CohortVectors:
    """Embed every recording below ``cohort_dir`` (people who are not enrolled) once, for
    :func:`run`'s ``cohort`` (scripts pass the result to several runs)."""
    files = cohort_files(cohort_dir)
    if len(files) < norm.MIN_COHORT:
        raise InvalidInputError(
            f"cohort {cohort_dir} holds {len(files)} recordings, at least {norm.MIN_COHORT} are needed"
        )
    clips = [pipeline.embed_clip(f, embedder) for f in files]
    return norm.CohortVectors(
        embedder.model_id, np.stack([c.vector for c in clips]), [c.source for c in clips], [c.sha256 for c in clips]
    )


def score(
    split: Split,
    embedder: Embedder,
    *,
    test_seconds: float | None = None,
    cohort: norm.CohortVectors | None = None,
    top_n: int = norm.DEFAULT_TOP_N,
    progress: Progress | None = None,
    open_db: OpenDatabase,
) -> Scores:
    """Enroll the split in a temporary database and score every probe against every speaker
    (raw, and with AS-norm against ``cohort`` if given: ``Scores.norm``).

    ``open_db(path, embedder)`` makes that database (``speakerdb.workflows.evaluation_database``),
    so that the scores are the product's own identify's; scoring never imports the facade above it."""
    if test_seconds is not None and test_seconds < audio.MIN_DURATION_S:
        raise InvalidInputError(f"test-seconds must be at least {audio.MIN_DURATION_S:g}")
    with (
        tempfile.TemporaryDirectory(prefix="speakerdb-eval-") as tmp,
        open_db(Path(tmp) / "eval.sqlite", embedder) as db,
    ):
        for i, (name, files) in enumerate(split.enroll.items()):
            db.enroll(name, files)
            if progress:
                progress("enrolling", i + 1, len(split.enroll))
        if cohort is not None:
            # The cohort is measured as given (its people are not the data's by the caller's word),
            # and a top-n above its size means all of it, as top_stats takes it.
            db.set_norm(cohort, top_n=min(top_n, len(set(cohort.sha256))), screen_enrolled=False)
        n_speakers = len(split.enroll)
        all_probes = split.probes + split.impostors
        clips = [crop(audio.load(path), test_seconds) for path, _ in all_probes]

        def report(done: int, total: int, _seconds: float) -> None:
            if progress:
                progress("scoring", done, total)

        # Single-speaker probes: identify's voice count would only double the time.
        results = db.identify(clips, top_k=n_speakers, progress=report, count_voices=False)
    raw = _collect(split, all_probes, results, "raw_score")
    if cohort is not None:
        raw.norm = _collect(split, all_probes, results, "score")
    return raw


def _collect(split: Split, all_probes, results, key: str) -> Scores:
    """Trials and ranks from identify's answers, ranked by the candidates' ``key`` score."""
    target: list[float] = []
    nontarget: list[float] = []
    genuine_top, genuine_correct, genuine_rank, impostor_top = [], [], [], []
    for (_, truth), result in zip(all_probes, results):
        if not result.ok:
            raise InvalidInputError(f"{result.file}: {result.error}")
        ordered = sorted(result.candidates, key=lambda c: -getattr(c, key))  # every enrolled speaker
        ranked = [c.speaker for c in ordered]
        for c in ordered:
            (target if c.speaker == truth else nontarget).append(getattr(c, key))
        if truth in split.enroll:
            genuine_top.append(getattr(ordered[0], key))
            genuine_correct.append(ranked[0] == truth)
            genuine_rank.append(ranked.index(truth) + 1)
        else:
            impostor_top.append(getattr(ordered[0], key))
    return Scores(
        np.asarray(target, np.float64),
        np.asarray(nontarget, np.float64),
        np.asarray(genuine_top, np.float64),
        np.asarray(genuine_correct, bool),
        np.asarray(genuine_rank, np.int64),
        np.asarray(impostor_top, np.float64),
    )


def summarise(split: Split, scores: Scores, settings: dict[str, Any]) -> Report:
    """Compute the report's figures from the scores (and from ``scores.norm``: ``normalised``)."""
    normalised = None
    if scores.norm is not None:
        n = summarise(split, scores.norm, settings)
        normalised = {k: getattr(n, k) for k in ("top1", "top5", "eer", "eer_threshold", "min_dcf", "dir")}
    eer = metrics.eer(scores.target, scores.nontarget).eer
    eer_threshold = metrics.eer_threshold(scores.target, scores.nontarget).threshold  # what calibrate stores
    dcf = {}
    for p in P_TARGETS:
        value, threshold = metrics.min_dcf(scores.target, scores.nontarget, p)
        dcf[f"{p:g}"] = {"min_dcf": float(value), "threshold": _finite(threshold)}
    dirs = {}
    if len(scores.impostor_top):
        for far in DIR_FARS:
            value, threshold = metrics.dir_at_far(scores.genuine_top, scores.genuine_correct, scores.impostor_top, far)
            dirs[f"{far:g}"] = {"dir": float(value), "threshold": _finite(threshold)}
    return Report(
        n_enrolled_speakers=len(split.enroll),
        n_impostor_speakers=len({s for _, s in split.impostors}),
        n_enroll_recordings=sum(len(f) for f in split.enroll.values()),
        n_probes=len(split.probes),
        n_impostor_probes=len(split.impostors),
        n_target_trials=len(scores.target),
        n_nontarget_trials=len(scores.nontarget),
        top1=float(metrics.closed_set_accuracy(scores.genuine_rank, 1)),
        top5=float(metrics.closed_set_accuracy(scores.genuine_rank, 5)),
        eer=float(eer),
        eer_threshold=float(eer_threshold),
        min_dcf=dcf,
        dir=dirs,
        settings=settings,
        normalised=normalised,
    )


def _finite(threshold: float) -> float | None:
    """Thresholds as JSON allows them: +inf ("accept nothing") becomes None."""
    return float(threshold) if np.isfinite(threshold) else None


def parse_target(target: str) -> float | None:
    """``"eer"`` -> None; ``"far=0.01"`` -> 0.01. Checked before any scoring starts."""
    if target == "eer":
        return None
    if target.startswith("far="):
        try:
            far = float(target[4:])
        except ValueError:
            far = float("nan")
        if 0 <= far <= 1:
            return far
    raise InvalidInputError(f"bad target {target!r}: use eer or far=RATE with RATE in [0, 1], e.g. far=0.01")


def operating_point(scores: Scores, target: str) -> dict[str, float | None]:
    """The threshold for ``target`` ("eer" or "far=RATE") and the error rates expected there.

    The threshold is the midpoint between the observed score the metrics pick and the next
    lower observed score (:func:`.metrics.midpoint_below`): the same error rates on these
    trials, and no trial on a knife edge. For "eer" it is the report's ``eer_threshold``
    (:func:`.metrics.eer_threshold`).
    """
    far = parse_target(target)
    if far is None:
        threshold, p_miss, p_fa = metrics.eer_threshold(scores.target, scores.nontarget)
        return {"threshold": _finite(threshold), "p_miss": p_miss, "p_fa": p_fa}
    at, _, _ = metrics.threshold_at_far(scores.target, scores.nontarget, far)
    threshold = metrics.midpoint_below(at, np.concatenate([scores.target, scores.nontarget]))
    return {
        "threshold": _finite(threshold),
        "p_miss": float(np.mean(scores.target < threshold)),
        "p_fa": float(np.mean(scores.nontarget >= threshold)),
    }


def run(
    data_dir: str | Path,
    *,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    embedder: Embedder | None = None,
    enroll_count: int = DEFAULT_ENROLL_COUNT,
    impostor_speakers: int | None = None,
    impostor_dirs: Sequence[str | Path] = (),
    seed: int = 0,
    test_seconds: float | None = None,
    cohort: str | Path | norm.CohortVectors | None = None,
    top_n: int = norm.DEFAULT_TOP_N,
    progress: Progress | None = None,
    open_db: OpenDatabase,
) -> tuple[Report, Scores, Embedder]:
    """Split DATA_DIR, enroll, score and summarise: the whole evaluation in one call.

    ``cohort`` (a directory of people who are not enrolled, or :func:`embed_cohort`'s
    result) adds AS-norm with ``top_n``: the report's ``normalised`` figures and
    ``Scores.norm``. Returns the report, the scores (for plots or your own metrics) and the
    embedder used (so a caller can apply a calibrated threshold to a database of the same model).
    ``open_db`` makes the temporary database (``speakerdb.workflows.evaluation_database``; see :func:`score`).
    """
    split = make_split(
        Path(data_dir),
        enroll_count=enroll_count,
        impostor_speakers=impostor_speakers,
        impostor_dirs=[Path(d) for d in impostor_dirs],
        seed=seed,
    )
    top_n = check_top_n(top_n, None)
    embedder = embedder or load_embedder(model or DEFAULT_MODEL, device=device, precision=precision)
    if cohort is not None and not isinstance(cohort, norm.CohortVectors):
        cohort = embed_cohort(cohort, embedder)
    scores = score(
        split, embedder, test_seconds=test_seconds, cohort=cohort, top_n=top_n, progress=progress, open_db=open_db
    )
    settings = {
        "data_dir": str(data_dir),
        "impostor_dirs": [str(d) for d in impostor_dirs],
        "model_id": embedder.model_id,
        "enroll_count": enroll_count,
        "seed": seed,
        "test_seconds": test_seconds,
        "precision": precision,
        "norm": {
            "method": norm.METHOD,
            "top_n": min(top_n, len(cohort.vectors)),  # as score() applied it
            "cohort_count": len(cohort.vectors),
        }
        if cohort is not None
        else None,
    }
    return summarise(split, scores, settings), scores, embedder


def check_plotting() -> None:
    """Raise InvalidInputError now if plots cannot be drawn (matplotlib missing), before any scoring."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidInputError('--plot needs matplotlib: pip install -e ".[plot]"') from None


#: The DET panel's window on both axes (error rates); points outside it are drawn on its edge.
DET_WINDOW = (0.0005, 0.9)


def plot(
    scores: Scores, report: Report, path: Path, threshold: float | None = None, *, overwrite: bool = False
) -> None:
    """Score histograms and a DET curve (normal-deviate axes) in one PNG.

    The title names the model, the data and the trial counts; ``threshold`` (the
    database's current one) is marked on both panels. Error rates of 0 (a perfect
    separation) are drawn on the window's edge and labelled, not left off the panel.
    """
    check_plotting()
    import matplotlib  # deferred: matplotlib is heavy to import

    matplotlib.use("Agg")

    import matplotlib.pyplot as plt  # deferred: matplotlib is heavy to import

    fig, (ax_hist, ax_det) = plt.subplots(1, 2, figsize=(11, 4.5))
    bins = np.linspace(min(scores.target.min(), scores.nontarget.min()), 1.0, 60)
    ax_hist.hist(scores.nontarget, bins=bins, alpha=0.6, density=True, label=f"non-target ({len(scores.nontarget)})")
    ax_hist.hist(scores.target, bins=bins, alpha=0.6, density=True, label=f"target ({len(scores.target)})")
    ax_hist.axvline(report.eer_threshold, color="k", linestyle="--", label=f"EER threshold {report.eer_threshold:.3f}")
    if threshold is not None:
        ax_hist.axvline(threshold, color="tab:red", linestyle=":", label=f"current threshold {threshold:.3f}")
    ax_hist.set_xlabel("cosine score")
    ax_hist.set_ylabel("density")
    ax_hist.legend()
    ax_hist.set_title("Score distributions")

    _, p_miss, p_fa = metrics.det_curve(scores.target, scores.nontarget)
    low, high = DET_WINDOW
    # Rates are clipped into the window: a curve with no errors would otherwise lie at
    # probit(0) = -inf, outside the panel, and leave it empty.
    probit = np.vectorize(lambda p: NormalDist().inv_cdf(min(max(p, low), high)))
    ax_det.plot(probit(p_fa), probit(p_miss), label="DET, raw cosine" if scores.norm is not None else "DET")
    if scores.norm is not None and report.normalised is not None:
        # AS-norm side by side: same trials, another scale, so only the DET curves compare.
        _, n_miss, n_fa = metrics.det_curve(scores.norm.target, scores.norm.nontarget)
        n_eer = report.normalised["eer"]
        top_n = (report.settings.get("norm") or {}).get("top_n")
        ax_det.plot(probit(n_fa), probit(n_miss), label=f"DET, AS-norm top-{top_n} (EER {n_eer:.2%})")
    if report.eer == 0:
        ax_det.text(
            0.5,
            0.5,
            "no errors at the EER threshold:\nthe curve runs along the edges",
            transform=ax_det.transAxes,
            ha="center",
            va="center",
        )
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8]
    ax_det.set_xticks(probit(np.array(ticks)), [f"{t:.1%}" for t in ticks])
    ax_det.set_yticks(probit(np.array(ticks)), [f"{t:.1%}" for t in ticks])
    limits = probit(np.array(DET_WINDOW))  # the usual DET window; 0 and 1 lie outside it
    margin = 0.05 * (limits[1] - limits[0])  # so points clipped to the edge stay visible
    ax_det.set_xlim(limits[0] - margin, limits[1] + margin)
    ax_det.set_ylim(limits[0] - margin, limits[1] + margin)
    ax_det.plot(probit(report.eer), probit(report.eer), "o", label=f"EER {report.eer:.2%}")
    if threshold is not None:
        miss = float(np.mean(scores.target < threshold))
        fa = float(np.mean(scores.nontarget >= threshold))
        ax_det.plot(
            probit(fa),
            probit(miss),
            "s",
            color="tab:red",
            label=f"threshold {threshold:.3f}: miss {miss:.1%}, FA {fa:.1%}",
        )
    ax_det.set_xlabel("false acceptance rate")
    ax_det.set_ylabel("miss rate")
    ax_det.grid(True, alpha=0.3)
    ax_det.legend()
    ax_det.set_title("DET curve")
    s = report.settings
    fig.suptitle(
        f"{s.get('model_id', 'model ?')} on {s.get('data_dir', '?')}: {report.n_enrolled_speakers} speakers, "
        f"{report.n_target_trials:,} target / {report.n_nontarget_trials:,} non-target trials",
        fontsize=10,
    )
    fig.tight_layout()
    try:  # as every output: 0600, never through a link, replaced only with ``overwrite``
        with atomic.write_output(path, overwrite=overwrite, what="the plot ") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
