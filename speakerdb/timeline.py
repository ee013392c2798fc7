"""Who speaks when: a timeline of named (or unknown) voices in one recording.

    file -> vad (speech regions) -> windows over the speech -> embedder (batched)
         -> clustering of the windows into voices -> each voice named from the gallery
            (its mean window vector scored against the enrolled centroids) or unknown-N
         -> every window re-assigned to the nearest voice -> frame labels smoothed
            (Viterbi with a switch penalty) -> segments, the shortest merged away

Windows. Inside each speech region, windows of ``window_s`` start every ``hop_s``; the
last one is aligned to the region's end, so the whole region is covered. A region
shorter than ``window_s`` (but at least ``min_window_s``) is one window of its own
length. Windows never cross a pause the VAD found, so a window rarely holds two voices
when people take turns. Windows of one length are stacked into one forward pass without
padding (:meth:`speakerdb.embedding.models.TransformersXVector.embed`), so each window's embedding
is exactly what embedding that window alone gives.

Noise. A recording whose speech stands less than ``denoise.NOISY_SNR_DB`` above its pauses is
noisy: the mean spectrum of its pauses is subtracted from it (:mod:`speakerdb.audio.denoise`,
:meth:`SpeechPass.denoiser`), the VAD runs again on the result, and the windows are cut
from it. A clean recording is embedded as it is.

Voices. How many voices the recording holds, and which window is whose, is found from
the recording's own window vectors (:func:`speakerdb.clustering.voices`: spectral
clustering with the number of voices from an eigengap, each split checked against the
recording), within the user's hints (``Params.speakers``, ``min_speakers``,
``max_speakers``). The database's threshold does not split voices; it names them: each
voice's mean vector stands for many seconds of one voice, so it is scored against the
gallery with the database's own threshold, the one that decides ``identify`` on whole
recordings: it is named after the best-scoring enrolled speaker when that score reaches
the threshold (with normalisation on, the score is the AS-norm of the cosine and the
threshold is on that scale, as in ``identify``; clustering always compares cosines).
Voices that match no one are the unknown voices; two voices named alike become one, and
(without hints) a voice with less than ``min_voice_s`` of windows is dissolved into the
others. Unknown voices are numbered ``unknown-1``, ``unknown-2``... in order of first
appearance, so one unknown voice keeps one label through the recording.

Smoothing. Each speech frame (``FRAME_S``) gets, per voice, the mean similarity of the
windows covering it to that voice's profile (the mean of its windows); a Viterbi pass per
region picks the best label sequence with a cost ``switch_penalty`` per change of voice;
a segment shorter than ``min_segment_s`` joins its neighbour in the region; segments of
one voice separated only by a pause shorter than ``merge_gap_s`` become one.

Overlap. The timeline holds one voice at each instant. Where two people speak at once,
the window vectors are a blend that is usually closer to the louder voice, and the
overlapped stretch is given to that voice; the other voice's speech there is missing
from the timeline (it counts as missed speech in the diarization error rate). Short
backchannels ("mm-hm") inside someone else's turn are below ``min_segment_s`` and are
absorbed by the turn.

With a segmentation model (``Params.segmentation``: pyannote segmentation-3.0, see
:mod:`speakerdb.embedding.segmentation`) the VAD is not used: the model says, in 10 s chunks
every 5 s, which of up to three local speakers is active, two at once included. Local
speakers that the overlapping chunks agree on are followed from chunk to chunk (*tracks*);
each track's windows cover only its speech alone; tracks heard in one chunk are different
voices, the others are joined by their mean window vectors (:func:`assemble_tracks`); each
voice speaks where its tracks are active, so overlapped speech gets both voices and segments
of different voices may overlap in time.

Cost. Decoding, VAD and embedding stream the recording block by block (two passes: VAD
first, then windows, over one decode: the second pass replays the blocks the first kept, in
memory or, for a long recording, in a temporary file; see :mod:`speakerdb.audio.decoded`),
so memory holds one block, a window and the window vectors
(``dim`` floats per window); compute is linear in the speech's length. Clustering works
on at most ``clustering.MAX_ITEMS`` items: longer recordings cluster runs of consecutive
windows (averaged) instead of single windows, so its cost stays bounded.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import clustering
from .audio import decode as audio
from .audio import denoise, vad
from .audio.decoded import Decoded
from .embedding import segmentation, threads
from .embedding.models import Embedder, l2_normalize
from .errors import AudioError, InvalidInputError

# What a timeline is (Segment, Voice, Timeline) and its knobs (Params, with their defaults)
# are shared with the client: they live in results.py and stay importable from here.
from .results import (  # noqa: F401  (the defaults stay importable from here)
    DEFAULT_HOP_S,
    DEFAULT_MERGE_GAP_S,
    DEFAULT_MIN_SEGMENT_S,
    DEFAULT_MIN_VOICE_S,
    DEFAULT_SWITCH_PENALTY,
    DEFAULT_WINDOW_S,
    MIN_WINDOW_S,
    Params,
    Segment,
    Timeline,
    Voice,
)
from .scoring import norm
from .scoring.cohort import CohortCache
from .scoring.thresholds import cosine_threshold
from .storage import atomic, store
from .storage import settings as stored

FRAME_S = 0.01  # s: resolution of the output timeline
#: Two voices the recording barely separates are one when their means reach the gallery's
#: cosine threshold plus this much (see clustering.voices).
SAME_VOICE_MARGIN = 0.1
#: A live session's online voices (speakerdb.live) take a window whose cosine to a voice's
#: mean reaches the gallery's cosine threshold minus this much; the final timeline's voices
#: come from :func:`speakerdb.clustering.voices`, which needs no such cut.
CLUSTER_MARGIN = 0.18
#: Clustering is quadratic in its items; above this many windows, runs of consecutive
#: windows are averaged into one item (a 1-hour recording: 7,200 windows -> 2,000 items).
MAX_CLUSTER_ITEMS = 2000
EMBED_BATCH = 64  # windows per embedder call: bounded memory, equal lengths stack

Progress = Callable[[float, float], None]  # (seconds of audio done, seconds in all)


@dataclass(frozen=True)
class Normaliser:
    """AS-norm for a gallery (see :mod:`speakerdb.norm`): each centroid's cohort statistics
    (k,), (k,), kept by the database, and the cohort (m, dim) float64 to score voices against."""

    enroll_mean: np.ndarray
    enroll_std: np.ndarray
    cohort: np.ndarray
    top_n: int

    def __call__(self, profiles: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """AS-norm scores (V, k) of raw cosines ``raw`` (V, k) of ``profiles`` (V, dim)."""
        probe_mean, probe_std = norm.top_stats(profiles, self.cohort, self.top_n)  # (V,), (V,)
        return norm.as_norm(
            raw, self.enroll_mean[None, :], self.enroll_std[None, :], probe_mean[:, None], probe_std[:, None]
        )


@dataclass(frozen=True)
class Gallery:
    """The enrolled speakers a timeline names voices from: names (k,) and centroids (k, dim).

    ``threshold`` decides names, on the database's scale: a cosine, or an AS-norm score when
    ``normaliser`` is set. Clustering voices always compares cosines of window vectors, with
    ``cosine_threshold`` (None: ``threshold``, which is then a cosine).
    """

    names: list[str]
    centroids: np.ndarray  # (k, dim) float32, rows of norm 1
    threshold: float
    cosine_threshold: float | None = None
    normaliser: Normaliser | None = None

    @classmethod
    def empty(cls, dim: int, threshold: float) -> "Gallery":
        return cls([], np.zeros((0, dim), np.float32), threshold)

    @property
    def cosine(self) -> float:
        """The threshold on the cosine scale, for clustering."""
        return self.threshold if self.cosine_threshold is None else self.cosine_threshold

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, raw cosines), both (n, k) float64, of unit ``vectors`` (n, dim) against
        the centroids: ``scores`` are what ``threshold`` is compared to."""
        # float32 products, as before normalisation existed: a float64 copy of a large gallery
        # per segment would cost more than the whole timeline.
        raw = (np.atleast_2d(np.asarray(vectors, np.float32)) @ self.centroids.T).astype(np.float64)
        return (raw if self.normaliser is None else self.normaliser(vectors, raw)), raw


def database_gallery(db: store.Store, cohorts: CohortCache, dim: int, threshold: float | None) -> Gallery:
    """A database's enrolled speakers, their normalisation and thresholds, from one read of ``db``.

    Voices are named on the database's scale (AS-norm when normalisation is on, as identify
    names them), with ``threshold`` (None: the database's); windows are clustered by cosine,
    with the cosine threshold (see thresholds.cosine_threshold).
    """
    with db.read() as s:
        settings = store.get_settings(s)
        ids, centroids = store.centroids(s)  # (k,), (k, dim)
        by_id = store.speakers_by_id(s, ids.tolist())
        names = [by_id[int(i)].name for i in ids]
        found = cohorts.state(s, settings) if names else None
        normaliser = None
        if found is not None:
            setting, cohort = found
            enroll_mean, enroll_std = cohorts.stats.at(s, settings, cohort, setting).lookup(ids)
            normaliser = Normaliser(enroll_mean, enroll_std, cohort, setting.top_n)
    if threshold is None:
        threshold = stored.threshold(settings)
    cosine = cosine_threshold(settings)
    if not names:  # plain diarization: only the cosine threshold matters
        return Gallery.empty(dim, cosine if stored.scale(settings) != norm.COSINE else threshold)
    return Gallery(names, centroids, threshold, cosine, normaliser)


def build_each(
    files: Sequence[str | os.PathLike[str] | audio.Audio],
    embedder: Embedder,
    gallery: Gallery,
    params: Params,
    detector=None,
    max_audio_s: float | None = None,
    *,
    failed: dict[int, AudioError] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    on_result: Callable[[Timeline], None] | None = None,
) -> list[Timeline]:
    """:func:`build` for each file, in order: every file gets its timeline, or an empty one
    with its error (those of ``failed`` included, by position), so one bad file does not lose
    the batch. ``progress(files done, files, seconds of audio done)`` after each, and
    ``on_result(timeline)`` with each as soon as it is done."""
    out, seconds = [], 0.0
    for i, f in enumerate(files):
        try:
            if failed and i in failed:
                raise failed[i]
            out.append(build(f, embedder, gallery, params, detector, max_audio_s))
            seconds += out[-1].duration
        except AudioError as e:
            label = f.source if isinstance(f, audio.Audio) else audio.source_label(f)
            out.append(Timeline(label, 0.0, [], [], error=e.reason))
        if on_result is not None:
            on_result(out[-1])
        if progress is not None:
            progress(i + 1, len(files), seconds)
    return out


# ---- windows ------------------------------------------------------------------------------
def plan_windows(
    regions: Sequence[vad.Region],
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float = DEFAULT_HOP_S,
    min_window_s: float = MIN_WINDOW_S,
) -> list[tuple[int, int, int]]:
    """Windows over the speech as (start sample, end sample, region index), in time order."""
    sr = audio.SAMPLE_RATE
    window, hop, least = int(round(window_s * sr)), int(round(hop_s * sr)), int(round(min_window_s * sr))
    out = []
    for r, region in enumerate(regions):
        a, b = int(round(region.start * sr)), int(round(region.end * sr))
        if b - a < least:
            continue
        if b - a <= window:
            out.append((a, b, r))
            continue
        starts = list(range(a, b - window + 1, hop))
        if starts[-1] + window < b:
            starts.append(b - window)  # aligned to the region's end
        out.extend((s, s + window, r) for s in starts)
    return out


def cut_windows(blocks: Iterable[np.ndarray], spans: Sequence[tuple[int, int, int]]) -> Iterator[np.ndarray]:
    """The samples of each span, in order, from a stream of blocks; holds at most one block plus one window."""
    buf = np.zeros(0, np.float32)
    buf_start = 0  # sample index of buf[0]
    i = 0
    for block in blocks:
        buf = np.concatenate([buf, np.asarray(block, np.float32)])
        while i < len(spans) and spans[i][1] <= buf_start + len(buf):
            a, b, _ = spans[i]
            yield buf[a - buf_start : b - buf_start].copy()
            i += 1
        keep_from = spans[i][0] if i < len(spans) else buf_start + len(buf)
        drop = min(len(buf), max(0, keep_from - buf_start))  # never past the samples held
        buf, buf_start = buf[drop:], buf_start + drop
    if i < len(spans):  # a span past the end (never planned so): zero-length tail
        raise InvalidInputError(f"window {i} ends after the recording")


class _NoShortSpeechWarning(logging.Filter):
    """Drops the GE2E embedder's "found only x s of speech, embedding the whole recording"
    warning: meant for a whole file, it would fire for every quiet 1.5 s window, which the
    VAD has already judged to hold speech."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "embedding the whole recording instead" not in record.getMessage()


def embed_windows(windows: Iterable[np.ndarray], embedder: Embedder, batch: int = EMBED_BATCH) -> np.ndarray:
    """Embed windows in batches of ``batch``: (n, dim) float32. The embedder stacks equal lengths."""
    out, pending = [], []
    quiet = _NoShortSpeechWarning()
    logger = logging.getLogger("speakerdb")
    logger.addFilter(quiet)
    try:
        for w in windows:
            pending.append(w)
            if len(pending) == batch:
                out.append(embedder.embed(pending))
                pending = []
        if pending:
            out.append(embedder.embed(pending))
    finally:
        logger.removeFilter(quiet)
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


# ---- clustering ---------------------------------------------------------------------------
def cluster(
    vectors: np.ndarray, threshold: float, weights: np.ndarray | None = None, max_items: int = MAX_CLUSTER_ITEMS
) -> np.ndarray:
    """Agglomerative clustering with a fixed cut (the timeline's voices come from
    :func:`speakerdb.clustering.voices`): average linkage on cosine similarity, stopped when no two
    clusters reach ``threshold``: (n, dim) -> (n,) int labels 0..m-1, numbered by first row.

    Vectors must be L2-normalised. Above ``max_items`` rows, runs of consecutive rows are
    averaged first (time order: neighbours are usually one voice) and share a label.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    group = np.arange(n) * min(max_items, n) // n  # (n,) run index of each row
    if group[-1] + 1 < n:
        w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
        items = np.zeros((group[-1] + 1, vectors.shape[1]))
        np.add.at(items, group, vectors * w[:, None])
        items = l2_normalize(items)
    else:
        items = np.asarray(vectors, np.float32)
    from scipy.cluster.hierarchy import fcluster, linkage  # deferred: scipy is heavy to import

    if len(items) == 1:
        labels = np.zeros(1, np.int64)
    else:
        # cosine distance 1 - cos; average linkage: the mean distance between members
        z = linkage(items.astype(np.float64), method="average", metric="cosine")
        labels = fcluster(z, t=1.0 - threshold, criterion="distance") - 1
    full = labels[group]
    # Renumber by first appearance, so labels follow time.
    order: dict[int, int] = {}
    for lab in full:
        order.setdefault(int(lab), len(order))
    return np.array([order[int(lab)] for lab in full], np.int64)


def cluster_voices(
    vectors: np.ndarray,
    params: Params,
    same_voice: float,
    weights: np.ndarray,
    max_items: int = clustering.MAX_ITEMS,
) -> np.ndarray:
    """:func:`speakerdb.clustering.voices` within the user's hints, with BLAS on one thread: its
    eigendecompositions are most of a long recording's assembly, and a second BLAS thread spun
    more than it helped on a shared machine (see :mod:`speakerdb.embedding.threads`)."""
    # The hold limits the BLAS libraries loaded when it starts, and scipy brings its own OpenBLAS,
    # which the clustering's subset eigendecompositions run on: load it first.
    import scipy.linalg  # noqa: F401  (deferred: scipy is heavy to import)

    with threads.blas():
        return clustering.voices(
            vectors,
            hints=clustering.Hints(params.speakers, params.min_speakers, params.max_speakers),
            same_voice=same_voice,
            weights=weights,
            max_items=max_items,
        )


# ---- smoothing ------------------------------------------------------------------------------
def viterbi(scores: np.ndarray, switch_penalty: float) -> np.ndarray:
    """Best label path through (n_frames, n_labels) scores with a cost per change: (n_frames,) ints."""
    n, k = scores.shape
    if n == 0:
        return np.zeros(0, np.int64)
    back = np.zeros((n, k), np.int64)
    total = scores[0].astype(np.float64).copy()
    for t in range(1, n):
        best_prev = int(np.argmax(total))
        switch = total[best_prev] - switch_penalty
        stay = total
        back[t] = np.where(stay >= switch, np.arange(k), best_prev)
        total = np.maximum(stay, switch) + scores[t]
    path = np.empty(n, np.int64)
    path[-1] = int(np.argmax(total))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def runs(labels: Sequence[int] | np.ndarray) -> list[tuple[int, int, int]]:
    """(first index, end index, label) of each run of equal labels."""
    out: list[tuple[int, int, int]] = []
    for i, lab in enumerate(labels):
        if out and out[-1][2] == lab:
            out[-1] = (out[-1][0], i + 1, lab)
        else:
            out.append((i, i + 1, int(lab)))
    return out


def merge_short(
    labels: np.ndarray, scores: np.ndarray, min_frames: int, lengths: np.ndarray | None = None
) -> np.ndarray:
    """Relabel runs shorter than ``min_frames`` with a neighbouring run's label (the neighbour
    whose voice scores better over the short run), shortest runs first (the earliest of equals),
    until none is left.

    ``lengths`` (frames per row, default 1) lets rows stand for blocks of frames."""
    labels = labels.copy()
    size = np.concatenate([[0], np.cumsum(np.ones(len(labels), np.int64) if lengths is None else lengths)])
    if len(labels) < 2:
        return labels
    # The runs once, as a linked list that merges keep up to date, and the short ones in a heap
    # by (frames, position): the runs were found again after each merge, which cost rows x runs.
    cut = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    start = [0, *cut.tolist()]
    end = [*cut.tolist(), len(labels)]
    label = [int(lab) for lab in labels[start]]
    n_runs = len(start)
    prev = list(range(-1, n_runs - 1))
    after = [*range(1, n_runs), -1]
    alive = [True] * n_runs

    def frames(i: int) -> int:
        return int(size[end[i]] - size[start[i]])

    heap = [(f, i, end[i]) for i in range(n_runs) if (f := frames(i)) < min_frames]
    heapq.heapify(heap)
    while heap and n_runs >= 2:
        _, i, e = heapq.heappop(heap)
        if not alive[i] or end[i] != e:  # merged since it was pushed: its entry is stale
            continue
        a, b = start[i], end[i]
        options = [label[j] for j in (prev[i], after[i]) if j >= 0]
        lab = max(options, key=lambda v: float(scores[a:b, v].sum()))
        labels[a:b] = lab
        # The run joins its neighbours of that label (both, when they have the same one): the
        # leftmost keeps its index, so positions and the heap's tie order stay as they were.
        first = prev[i] if prev[i] >= 0 and label[prev[i]] == lab else i
        last = after[i] if after[i] >= 0 and label[after[i]] == lab else i
        j = first
        while j != last:
            j = after[j]
            alive[j] = False
            n_runs -= 1
        end[first], label[first], after[first] = end[last], lab, after[last]
        if after[last] >= 0:
            prev[after[last]] = first
        if (f := frames(first)) < min_frames:
            heapq.heappush(heap, (f, first, end[first]))
    return labels


# ---- the whole pipeline ----------------------------------------------------------------------
def _blocks_of(source: audio.Audio | Decoded) -> Callable[[], Iterator[np.ndarray]]:
    if isinstance(source, audio.Audio):
        return lambda: iter([source.samples])
    return source.blocks


def build(
    source: str | os.PathLike[str] | audio.Audio | Decoded,
    embedder: Embedder,
    gallery: Gallery,
    params: Params | None = None,
    detector=None,
    max_audio_s: float | None = None,
) -> Timeline:
    """The timeline of one recording (see the module doc). Raises AudioError for unusable audio,
    a file longer than ``max_audio_s`` seconds included (default: audio.max_duration_s)."""
    if not isinstance(source, (audio.Audio, Decoded)):  # decoded once for both passes
        with Decoded(source, max_audio_s=max_audio_s) as decoded:
            return build(decoded, embedder, gallery, params, detector)
    params = (params or Params()).check()
    detector = detector if detector is not None else load_detector(params)
    if isinstance(detector, segmentation.Segmenter):
        label = source.source if isinstance(source, audio.Audio) else str(source.path)
        return _build_segmented(label, _blocks_of(source), embedder, gallery, params, detector)
    planned = plan(source, params, detector)
    if not planned.spans:
        return planned.empty()
    # Pass 2: the windows' vectors.
    vectors = embed_windows(cut_windows(planned.blocks(_blocks_of(source)()), planned.spans), embedder)  # (n, dim)
    return planned.assemble(vectors, gallery, params)


@dataclass
class Planned:
    """Pass 1 of :func:`build` over one recording: its speech and the windows to embed."""

    label: str
    duration: float
    regions: list[vad.Region]
    spans: list[tuple[int, int, int]]
    speech_s: float
    denoiser: denoise.Denoiser | None = None  # for a noisy recording: see SpeechPass.denoiser
    notes: tuple[str, ...] = ()  # for the timeline: what was done to the recording

    def blocks(self, blocks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        """The recording's blocks as pass 2 embeds them: denoised if it is noisy."""
        return _denoised(blocks, self.denoiser)

    def empty(self) -> Timeline:
        """The timeline of a recording with no window to embed, saying why."""
        return noted(empty_timeline(self.label, self.duration, self.speech_s, heard=bool(self.regions)), self.notes)

    def assemble(self, vectors: np.ndarray, gallery: Gallery, params: Params) -> Timeline:
        """The timeline, given the vectors of :attr:`spans`."""
        found = assemble(self.label, self.duration, self.regions, self.spans, vectors, gallery, params, self.speech_s)
        return noted(found, self.notes)


def _denoised(blocks: Iterable[np.ndarray], denoiser: denoise.Denoiser | None) -> Iterable[np.ndarray]:
    """``blocks`` through ``denoiser``, or as they are without one."""
    return blocks if denoiser is None else denoiser.blocks(blocks)


def noise_note(snr_db: float) -> str:
    """The note of a timeline whose recording had its noise taken out (speech ``snr_db`` above the pauses)."""
    return (
        f"noisy recording (speech {snr_db:.0f} dB above the pauses): its noise, measured in the pauses, was taken out"
    )


def noted(timeline: Timeline, notes: Sequence[str]) -> Timeline:
    """``timeline`` with ``notes`` before its own."""
    return replace(timeline, notes=[*notes, *timeline.notes]) if notes else timeline


def empty_timeline(label: str, duration: float, speech_s: float, *, heard: bool) -> Timeline:
    """The timeline of a recording with no window to embed: no speech ``heard``, or only bursts
    too short for a window."""
    note = f"speech found only in bursts shorter than {MIN_WINDOW_S:g} s" if heard else "no speech found"
    return Timeline(label, duration, [], [], speech_s, [note])


class SpeechPass:
    """Pass 1's bookkeeping over a stream of blocks: the samples and the peak (the checks
    identify makes) and the VAD's frame probabilities, gathered as :meth:`watch` hands the
    blocks on (to nothing, or to a segmentation model reading the same pass). With ``levels``,
    also how far the speech stands above the pauses, and their noise
    (:class:`speakerdb.audio.denoise.NoiseMeter`)."""

    def __init__(self, detector, *, levels: bool = False) -> None:
        self.detector = detector
        self.n_samples, self.peak = 0, 0.0
        self._probs: list[np.ndarray] = []
        self._meter = denoise.NoiseMeter(vad.frame_samples(detector)) if levels else None
        self._noisy: tuple[float, np.ndarray] | None = None  # the meter's verdict, made by finish()
        detector.reset()

    def watch(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``blocks``, each counted and fed to the VAD before it is passed on."""
        for block in blocks:
            self.n_samples += len(block)
            self.peak = max(self.peak, float(np.max(np.abs(block))) if len(block) else 0.0)
            self._probs.append(self.detector.feed(block))
            if self._meter is not None:
                self._meter.watch(block, self._probs[-1])
            yield block

    def snr_db(self) -> float | None:
        """How far the speech stands above the pauses, in dB (:meth:`speakerdb.audio.denoise.NoiseMeter.snr_db`);
        None without both, or when the pass was not made with ``levels=True``. Call after :meth:`finish`."""
        return self._meter.snr_db() if self._meter is not None else None

    def noise(self) -> np.ndarray | None:
        """The mean power spectrum of the pauses (a :meth:`speakerdb.audio.denoise.NoiseSpectrum.power`),
        when the pass was made with ``levels=True`` and held enough of them; else None."""
        return self._meter.pauses.power() if self._meter is not None else None

    def denoiser(self) -> denoise.Denoiser | None:
        """What takes the noise out of a noisy recording (speech less than
        ``denoise.NOISY_SNR_DB`` above the pauses) before its windows are embedded; None for a
        clean one, or one with too few pauses to measure its noise. Call after :meth:`finish`."""
        return None if self._noisy is None else denoise.Denoiser(self._noisy[1])

    def notes(self) -> list[str]:
        """What the timeline tells of the recording: that its noise was taken out, if it was.
        Call after :meth:`finish`."""
        return [] if self._noisy is None else [noise_note(self._noisy[0])]

    def finish(self, label: str) -> tuple[float, list[vad.Region]]:
        """(duration in seconds, speech regions) once every block was watched. Raises AudioError
        for a recording too short, too long or silent."""
        self._probs.append(self.detector.flush())
        audio.check_duration_and_level(self.n_samples, self.peak, label)
        self._noisy = self._meter.noisy() if self._meter is not None else None  # once: denoiser() and notes() read it
        duration = self.n_samples / audio.SAMPLE_RATE
        frame_s = vad.frame_seconds(self.detector)
        return duration, list(vad.regions(np.concatenate(self._probs), frame_s=frame_s, duration_s=duration))


def plan(source: audio.Audio | Decoded, params: Params, detector=None, heard: vad.Heard | None = None) -> Planned:
    """Pass 1: voice activity over ``source`` (and the checks identify makes), and the windows
    over its speech. Raises AudioError for a recording too short, too long or silent.

    ``heard``: Silero's pass over the start of ``source`` (:func:`speakerdb.audio.vad.hear`;
    identify's embedding made it to judge the noise of its first window): when the detector
    is Silero, those probabilities are replayed and the model runs only on the rest."""
    label = source.source if isinstance(source, audio.Audio) else str(source.path)
    detector = detector if detector is not None else vad.load(params.vad_backend)
    first = vad.Resumed(heard, detector) if heard is not None and isinstance(detector, vad.SileroVAD) else detector
    speech = SpeechPass(first, levels=True)
    for _ in speech.watch(_blocks_of(source)()):
        pass
    duration, regions = speech.finish(label)
    denoiser = speech.denoiser()
    if denoiser is not None:  # found again without the noise, the quiet ends of words stand out of it
        probs = vad.probabilities(denoiser.blocks(_blocks_of(source)()), detector)
        regions = vad.regions(probs, frame_s=vad.frame_seconds(detector), duration_s=duration)
    speech_s = float(sum(r.duration for r in regions))
    spans = plan_windows(regions, params.window_s, params.hop_s)
    return Planned(label, duration, regions, spans, speech_s, denoiser, tuple(speech.notes()))


def load_detector(params: Params):
    """What finds the speech: the segmentation model ``params.segmentation`` names (a
    :class:`speakerdb.embedding.segmentation.Segmenter`), else the VAD ``params.vad_backend``."""
    if params.segmentation:
        return segmentation.load(params.segmentation)
    return vad.load(params.vad_backend)


def _build_segmented(
    label: str,
    blocks: Callable[[], Iterator[np.ndarray]],
    embedder: Embedder,
    gallery: Gallery,
    params: Params,
    segmenter: segmentation.Segmenter,
) -> Timeline:
    """:func:`build` with a segmentation model (see :func:`assemble_tracks`); the VAD runs in
    the same pass, and speech that only it hears goes to the nearest voice (:func:`fill_speech`)."""
    speech = SpeechPass(vad.load(params.vad_backend), levels=True)
    chunks = list(segmenter.chunk_outputs(speech.watch(blocks())))
    duration, heard = speech.finish(label)
    activity = segmentation.aggregate(chunks, speech.n_samples)
    spans, speech_s = track_windows(activity, duration, params)
    if not spans:
        return empty_timeline(label, duration, speech_s, heard=speech_s > 0)
    denoiser = speech.denoiser()  # a noisy recording's
    vectors = embed_windows(cut_windows(_denoised(blocks(), denoiser), spans), embedder)
    found = assemble_tracks(
        label, duration, activity, spans, vectors, gallery, params, speech_s, noisy=denoiser is not None
    )
    return noted(fill_speech(found, heard), speech.notes())


def _runs_of(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, value) of the runs of equal values >= 0 in ``values`` (1-D ints)."""
    if len(values) == 0:
        return []
    cuts = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(values)]])
    return [(int(a), int(b), int(values[a])) for a, b in zip(starts, ends) if values[a] >= 0]


def _frame_span(activity: segmentation.Activity, a: int, b: int, duration: float) -> tuple[float, float]:
    """Seconds covered by segmentation frames a..b-1."""
    half = segmentation.FRAME_STEP_S / 2
    return max(0.0, float(activity.time(a)) - half), min(duration, float(activity.time(b - 1)) + half)


def track_windows(
    activity: segmentation.Activity, duration: float, params: Params
) -> tuple[list[tuple[int, int, int]], float]:
    """Windows (start sample, end sample, track) over each track's speech where it speaks
    alone (a window over two voices is a blend of both), or over all its speech when it never
    speaks alone long enough for a window; in time order. And the seconds of speech."""
    tracks = activity.tracks
    active = tracks >= 0
    speech_s = float(np.count_nonzero(active.any(axis=1))) * segmentation.FRAME_STEP_S
    solo = active.sum(axis=1) == 1
    out: list[tuple[int, int, int]] = []
    for only_solo in (True, False):
        have = {t for _, _, t in out}
        regions: list[vad.Region] = []
        owners: list[int] = []
        for k in range(tracks.shape[1]):
            ids = np.where(solo, tracks[:, k], -1) if only_solo else tracks[:, k]
            for a, b, t in _runs_of(ids):
                if t in have:
                    continue
                start, end = _frame_span(activity, a, b, duration)
                regions.append(vad.Region(start, end))
                owners.append(t)
        out.extend((x, y, owners[r]) for x, y, r in plan_windows(regions, params.window_s, params.hop_s))
    out.sort()
    return out, speech_s


#: Tracks that the recording's clustering put in different voices are still one voice when
#: their mean window vectors reach this cosine (GE2E; without a cluster threshold). In one
#: room the tracks of two voices pass 0.8, and the clustering tells them apart
#: (docs/timeline.md, "Joining tracks: the recording's clustering first").
TRACK_SAME_VOICE = 0.9
#: In a noisy recording (speech less than denoise.NOISY_SNR_DB above the pauses) the
#: clustering splits one voice in two more often than it joins two: tracks join from 0.8.
TRACK_SAME_VOICE_NOISY = 0.8
#: Without hints, a voice with less speech than this joins the voice it is most like (unless
#: the model heard both at once): a track the model split off by mistake.
TRACK_MIN_VOICE_S = 1.0
#: Pauses shorter than this inside one voice's speech do not split its segment.
TRACK_GAP_S = 0.1


def split_tracks(
    activity: segmentation.Activity,
    spans: Sequence[tuple[int, int, int]],
    vectors: np.ndarray,
    weights: np.ndarray,
    gallery: Gallery,
    params: Params,
) -> tuple[segmentation.Activity, list[tuple[int, int, int]], np.ndarray]:
    """Tracks cut where the recording's own clustering of their windows changes voice.

    The model sometimes keeps two voices that follow each other as one local speaker; the
    windows' clustering (:func:`speakerdb.clustering.voices`, as without a segmentation model)
    tells them apart where the voices differ clearly. A track is cut between two windows of
    different voices, each part at least two windows long. Returns the new activity, the
    windows with their new tracks, and each window's voice from the clustering."""
    same_voice = gallery.cosine + SAME_VOICE_MARGIN if params.cluster_threshold is None else params.cluster_threshold
    labels = cluster_voices(vectors, params, same_voice, weights)
    if len(labels) == 0 or labels.max() == 0:
        return activity, list(spans), labels
    sr = audio.SAMPLE_RATE
    owner = np.array([t for _, _, t in spans])
    times = activity.time(np.arange(len(activity.count)))
    tracks = activity.tracks.copy()
    new_spans = list(spans)
    origin: dict[int, int] = {}
    n_tracks = activity.n_tracks
    for t in sorted(set(owner.tolist())):
        idx = np.flatnonzero(owner == t)  # in time order
        runs: list[list[int]] = []  # [label, first, last] positions in idx
        for k, lab in enumerate(labels[idx].tolist()):
            if runs and runs[-1][0] == lab:
                runs[-1][2] = k
            else:
                runs.append([lab, k, k])
        kept: list[list[int]] = []
        for run in runs:  # a single window of another voice is noise, not a turn
            if kept and (run[2] == run[1] or kept[-1][0] == run[0]):
                kept[-1][2] = run[2]
            else:
                kept.append(run)
        if len(kept) > 1 and kept[0][2] == kept[0][1]:
            kept[1][1] = 0
            del kept[0]
        if len(kept) < 2:
            continue
        centre = [(spans[i][0] + spans[i][1]) / 2 / sr for i in idx.tolist()]
        for run, previous in zip(kept[1:], kept[:-1]):
            cut = (centre[previous[2]] + centre[run[1]]) / 2
            new, n_tracks = n_tracks, n_tracks + 1
            origin[new] = origin.get(t, t)
            later = times >= cut
            mine = tracks == t
            tracks[mine & later[:, None]] = new
            for k in range(run[1], len(idx)):
                a, b, _ = new_spans[idx[k]]
                new_spans[idx[k]] = (a, b, new)
            t = new
    if not origin:
        return activity, list(spans), labels
    # Parts of two tracks the model heard in one chunk stay apart where they lie within a chunk.
    extent: dict[int, tuple[float, float]] = {}
    for k in range(tracks.shape[1]):
        for a, b, t in _runs_of(tracks[:, k]):
            lo, hi = extent.get(t, (math.inf, -math.inf))
            extent[t] = (min(lo, float(times[a])), max(hi, float(times[b - 1])))
    parts: dict[int, list[int]] = {}
    for t in extent:
        parts.setdefault(origin.get(t, t), []).append(t)
    voice = {}
    for t in extent:
        mine = np.array([s[2] == t for s in new_spans])
        voice[t] = int(np.bincount(labels[mine], weights=weights[mine]).argmax()) if mine.any() else -1
    co_active = set()
    for x, y in activity.co_active:
        whole = len(parts.get(x, [])) == 1 and len(parts.get(y, [])) == 1
        for p in parts.get(x, []):
            for q in parts.get(y, []):
                (pa, pb), (qa, qb) = extent[p], extent[q]
                # A part cut from a track keeps it apart from another only when the windows agree.
                if max(pa, qa) - min(pb, qb) < segmentation.CHUNK_S and (whole or voice[p] != voice[q]):
                    co_active.add((min(p, q), max(p, q)))
    return segmentation.Activity(tracks, activity.count, n_tracks, frozenset(co_active)), new_spans, labels


def assemble_tracks(
    label: str,
    duration: float,
    activity: segmentation.Activity,
    spans: Sequence[tuple[int, int, int]],
    vectors: np.ndarray,
    gallery: Gallery,
    params: Params,
    speech_s: float,
    *,
    noisy: bool = False,
) -> Timeline:
    """Voices from the segmentation's tracks.

    Tracks are first cut where the recording's own clustering of their windows changes voice
    (:func:`split_tracks`). Tracks that the model heard in one chunk are two voices; others
    are joined, most alike first: tracks whose windows the clustering put in one voice, then
    by the cosine of their mean window vectors while it reaches ``params.cluster_threshold``
    (else ``TRACK_SAME_VOICE``, or ``TRACK_SAME_VOICE_NOISY`` for a ``noisy`` recording), or
    while the hints ask for fewer voices (past the user's
    count, even tracks heard at once); without hints a voice under ``TRACK_MIN_VOICE_S``
    joins the one it is most like. Each voice speaks where its tracks are active, two at once
    where the model hears two: the segments of different voices may overlap."""
    sr = audio.SAMPLE_RATE
    vectors = l2_normalize(vectors)
    weights = np.array([(b - a) / sr for a, b, _ in spans])
    activity, spans, window_voice_guess = split_tracks(activity, spans, vectors, weights, gallery, params)
    owner = np.array([t for _, _, t in spans])
    present = sorted(set(owner.tolist()))
    guess = {t: int(np.bincount(window_voice_guess[owner == t], weights=weights[owner == t]).argmax()) for t in present}
    sums = {t: (vectors[owner == t] * weights[owner == t, None]).sum(axis=0) for t in present}
    frames = np.bincount(activity.tracks[activity.tracks >= 0], minlength=activity.n_tracks)
    seconds = {t: float(frames[t]) * segmentation.FRAME_STEP_S for t in present}
    clusters: list[set[int]] = [{t} for t in present]
    total = [sums[t].copy() for t in present]
    secs = [seconds[t] for t in present]
    guessed = [guess[t] for t in present]  # the windows' own voice (first track's, once joined)
    conflict = activity.co_active

    def apart(i: int, j: int) -> bool:
        return any((min(x, y), max(x, y)) in conflict for x in clusters[i] for y in clusters[j])

    default = TRACK_SAME_VOICE_NOISY if noisy else TRACK_SAME_VOICE
    threshold = params.cluster_threshold if params.cluster_threshold is not None else default
    least = params.speakers or params.min_speakers or 1
    most = params.speakers or params.max_speakers
    while len(clusters) > least:
        unit = l2_normalize(np.stack(total))
        sim = unit @ unit.T
        # Tracks whose windows the recording's clustering put in one voice join first.
        sim += np.equal.outer(guessed, guessed)
        np.fill_diagonal(sim, -np.inf)
        order = np.dstack(np.unravel_index(np.argsort(-sim, axis=None), sim.shape))[0]
        pick = None
        # The user's count outweighs the model: past it, voices heard at once may join too.
        over = most is not None and len(clusters) > most
        for i, j in order:
            if i < j and np.isfinite(sim[i, j]) and (over or not apart(int(i), int(j))):
                pick = (int(i), int(j), float(sim[i, j]))
                break
        if pick is None:
            break
        i, j, value = pick
        small = not params.hinted and min(secs[i], secs[j]) < TRACK_MIN_VOICE_S
        if value < threshold and not small and (most is None or len(clusters) <= most):
            break
        clusters[i] |= clusters[j]
        total[i] = total[i] + total[j]
        secs[i] += secs[j]
        del clusters[j], total[j], secs[j], guessed[j]
    profiles = l2_normalize(np.stack(total))
    names = _name(profiles, gallery)
    # Voices named alike are one voice.
    key: list[str] = [names[i][0] or f"#{i}" for i in range(len(clusters))]
    voice_of_track = np.full(max(activity.n_tracks, 1), -1)
    firsts: dict[str, int] = {}
    for i, k in enumerate(key):
        firsts.setdefault(k, i)
        for t in clusters[i]:
            voice_of_track[t] = firsts[k]
    voices_idx = sorted(set(firsts.values()))
    tracks = activity.tracks
    mapped = np.where(tracks >= 0, voice_of_track[np.maximum(tracks, 0)], -1)  # (frames, 3) voice ids
    gap = int(round(TRACK_GAP_S / segmentation.FRAME_STEP_S))
    runs: list[tuple[float, float, int]] = []
    for v in voices_idx:
        on = (mapped == v).any(axis=1)
        edges = [(a, b) for a, b, _ in _runs_of(np.where(on, 0, -1))]
        joined: list[list[int]] = []
        for a, b in edges:
            if joined and a - joined[-1][1] <= gap:
                joined[-1][1] = b
            else:
                joined.append([a, b])
        runs.extend((*_frame_span(activity, a, b, duration), v) for a, b in joined)
    runs.sort()
    centres = np.array([(a + b) / 2 / sr for a, b, _ in spans])
    segments, voices = _labelled(runs, voices_idx, names, gallery, profiles, vectors, centres, voice_of_track[owner])
    return Timeline(label, duration, segments, voices, speech_s, [])


def fill_speech(timeline: Timeline, regions: Sequence[vad.Region], max_gap_s: float = 1.0) -> Timeline:
    """Speech the VAD hears and no voice of ``timeline`` covers goes to the nearest voice in
    time (within ``max_gap_s``), joined to that voice's segment when they touch."""
    if not timeline.segments:
        return timeline

    def v_rest(v: Voice) -> tuple[float | None, str | None, float | None]:
        return v.score, v.nearest, v.raw_score

    n = int(math.ceil(timeline.duration / FRAME_S))
    covered = np.zeros(n, bool)
    for s in timeline.segments:
        covered[int(round(s.start / FRAME_S)) : int(round(s.end / FRAME_S))] = True
    added: list[Segment] = []
    for r in regions:
        a, b = int(round(r.start / FRAME_S)), min(n, int(round(r.end / FRAME_S)))
        for fa, fb, _ in _runs_of(np.where(covered[a:b], -1, 0)):
            start, end = (a + fa) * FRAME_S, (a + fb) * FRAME_S
            best, gap = None, max_gap_s
            for s in timeline.segments:
                d = max(s.start - end, start - s.end, 0.0)
                if d <= gap:
                    best, gap = s, d
            if best is not None:
                added.append(Segment(start, end, best.label, best.speaker, best.score, best.raw_score))
    if not added:
        return timeline
    by_label: dict[str, list[Segment]] = {}
    for s in sorted([*timeline.segments, *added], key=lambda s: (s.start, s.end)):
        runs = by_label.setdefault(s.label, [])
        if runs and s.start <= runs[-1].end + 1e-6:
            last = runs[-1]
            runs[-1] = Segment(last.start, max(last.end, s.end), last.label, last.speaker, last.score, last.raw_score)
        else:
            runs.append(s)
    segments = sorted((s for runs in by_label.values() for s in runs), key=lambda s: (s.start, s.end))
    voices = [
        Voice(
            v.label,
            v.speaker,
            sum(s.end - s.start for s in segments if s.label == v.label),
            v.score,
            v.nearest,
            v.raw_score,
        )
        for v in timeline.voices
    ]
    voices.sort(key=lambda x: -x.seconds)
    return Timeline(timeline.file, timeline.duration, segments, voices, timeline.speech_s, list(timeline.notes))


def assemble(
    label: str,
    duration: float,
    regions: Sequence[vad.Region],
    spans: Sequence[tuple[int, int, int]],
    vectors: np.ndarray,
    gallery: Gallery,
    params: Params,
    speech_s: float | None = None,
) -> Timeline:
    """Voices, labels and segments from the window vectors (the part after embedding)."""
    sr = audio.SAMPLE_RATE
    vectors = l2_normalize(vectors)
    weights = np.array([(b - a) / sr for a, b, _ in spans])  # (n,) s
    threshold = gallery.cosine
    same_voice = params.cluster_threshold if params.cluster_threshold is not None else threshold + SAME_VOICE_MARGIN
    clusters = cluster_voices(vectors, params, same_voice, weights)

    # Name the clusters; merge those named alike; dissolve the small ones.
    assignment = clusters.copy()
    for _ in range(2):  # name, re-assign, name again with the cleaner profiles
        voice_ids = sorted(set(assignment.tolist()))
        profiles = l2_normalize(np.stack([_weighted_mean(vectors, weights, assignment == v) for v in voice_ids]))
        names = _name(profiles, gallery)
        # Clusters with one name are one voice; unnamed clusters stay apart (the recording
        # itself decided they differ).
        key = [names[i][0] if names[i][0] is not None else f"#{v}" for i, v in enumerate(voice_ids)]
        seconds = {k: 0.0 for k in key}
        for i, v in enumerate(voice_ids):
            seconds[key[i]] += float(weights[assignment == v].sum()) * params.hop_s / max(params.window_s, 1e-9)
        least = params.min_voice_s if not params.hinted else 0.0
        keep = [k for k in dict.fromkeys(key) if seconds[k] >= least]
        if not keep:  # nothing long enough: keep the biggest voice
            keep = [max(seconds, key=lambda k: seconds[k])]
        merged = np.stack(
            [
                l2_normalize(
                    _weighted_mean(
                        vectors, weights, np.isin(assignment, [v for i, v in enumerate(voice_ids) if key[i] == k])
                    )[None]
                )[0]
                for k in keep
            ]
        )
        sims = vectors @ merged.T  # (n, V)
        assignment = np.argmax(sims, axis=1)
    voice_ids = list(range(len(keep)))
    profiles = l2_normalize(
        np.stack(
            [
                _weighted_mean(vectors, weights, assignment == v) if np.any(assignment == v) else merged[v]
                for v in voice_ids
            ]
        )
    )
    names = _name(profiles, gallery)
    sims = vectors @ profiles.T  # (n, V)

    # Frame scores: mean similarity of the covering windows, per region; Viterbi; short runs merged.
    frame_labels: list[tuple[float, float, int]] = []  # (start s, end s, voice)
    by_region: dict[int, list[int]] = {}
    for i, (_, _, r) in enumerate(spans):
        by_region.setdefault(r, []).append(i)
    min_frames = int(round(params.min_segment_s / FRAME_S))
    for r, idx in by_region.items():
        region = regions[r]
        n_frames = max(1, int(round(region.duration / FRAME_S)))
        acc = np.zeros((n_frames, len(voice_ids)))
        count = np.zeros(n_frames)
        for i in idx:
            a, b, _ = spans[i]
            fa = max(0, int(math.floor((a / sr - region.start) / FRAME_S)))
            fb = min(n_frames, int(math.ceil((b / sr - region.start) / FRAME_S)))
            acc[fa:fb] += sims[i]
            count[fa:fb] += 1
        covered = count > 0
        acc[covered] /= count[covered, None]
        # Frames no window covers (a region's padding): the nearest covered frame's scores.
        if not covered.all():
            idx_cov = np.flatnonzero(covered)
            nearest = idx_cov[np.clip(np.searchsorted(idx_cov, np.arange(n_frames)), 0, len(idx_cov) - 1)]
            acc[~covered] = acc[nearest[~covered]]
        # The scores only change where a window starts or ends: Viterbi and the short-run
        # merge work on those blocks (score x length), which gives the same path as frame by
        # frame (a change of voice inside a block of constant scores never pays) at ~1/50 the cost.
        edges = np.unique(
            np.concatenate([[0, n_frames], np.flatnonzero(np.any(np.diff(acc, axis=0) != 0, axis=1)) + 1])
        )
        lengths = np.diff(edges)  # (n_blocks,) frames
        block_scores = acc[edges[:-1]] * lengths[:, None]  # (n_blocks, V)
        path = viterbi(block_scores, params.switch_penalty)
        path = merge_short(path, block_scores, min_frames, lengths)
        for a, b, v in runs(path):
            fa, fb = edges[a], edges[b]
            frame_labels.append((region.start + fa * FRAME_S, min(region.end, region.start + fb * FRAME_S), v))
    frame_labels.sort()
    merged_labels: list[tuple[float, float, int]] = []
    for start, end, v in frame_labels:
        if merged_labels and merged_labels[-1][2] == v and start - merged_labels[-1][1] < params.merge_gap_s:
            merged_labels[-1] = (merged_labels[-1][0], end, v)
        else:
            merged_labels.append((start, end, v))
    frame_labels = merged_labels

    centres = np.array([(a + b) / 2 / sr for a, b, _ in spans])  # (n,) s
    segments, voices = _labelled(frame_labels, voice_ids, names, gallery, profiles, vectors, centres)
    if speech_s is None:
        speech_s = float(sum(r.duration for r in regions))
    return Timeline(label, duration, segments, voices, speech_s, [])


def _labelled(
    runs: Sequence[tuple[float, float, int]],
    voice_ids: Sequence[int],
    names: list[tuple[str | None, float | None, int, str | None, float | None]],
    gallery: Gallery,
    profiles: np.ndarray,
    vectors: np.ndarray,
    centres: np.ndarray,
    window_voice: np.ndarray | None = None,
) -> tuple[list[Segment], list[Voice]]:
    """Segments and voices from the runs (start s, end s, voice), in time order: each voice its
    name, else unknown-N by first appearance. A named segment is scored by the mean of the
    windows centred inside it (only its voice's, given ``window_voice``), else its voice's profile."""
    unknown_number: dict[int, int] = {}
    for _, _, v in runs:
        if names[v][0] is None and v not in unknown_number:
            unknown_number[v] = len(unknown_number) + 1
    text: dict[int, str] = {v: names[v][0] or f"unknown-{unknown_number.get(v, 0)}" for v in voice_ids}
    segments = []
    for start, end, v in runs:
        score = raw = None
        if len(gallery.names):
            inside = (centres >= start) & (centres < end)
            if window_voice is not None:
                inside &= window_voice == v
            mean = vectors[inside].mean(axis=0) if inside.any() else profiles[v]
            scores, raws = gallery.scores(l2_normalize(mean[None]))
            score, raw = float(scores[0, names[v][2]]), float(raws[0, names[v][2]])
        segments.append(Segment(start, end, text[v], names[v][0], score, raw))
    voices = []
    for v in voice_ids:
        secs = sum(s.end - s.start for s in segments if s.label == text[v])
        if secs > 0:
            voices.append(Voice(text[v], names[v][0], secs, names[v][1], names[v][3], names[v][4]))
    voices.sort(key=lambda x: -x.seconds)
    return segments, voices


def _weighted_mean(vectors: np.ndarray, weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = weights[mask]
    return (vectors[mask] * w[:, None]).sum(axis=0) / max(float(w.sum()), 1e-12)


def _name(
    profiles: np.ndarray, gallery: Gallery
) -> list[tuple[str | None, float | None, int, str | None, float | None]]:
    """(name or None, score to the best-scoring centroid, its row, its name, its raw cosine)
    per voice profile. With normalisation the best is the highest AS-norm score, as identify ranks."""
    if not gallery.names:
        return [(None, None, -1, None, None) for _ in profiles]
    scores, raws = gallery.scores(profiles)  # (V, k), (V, k)
    out: list[tuple[str | None, float | None, int, str | None, float | None]] = []
    for row, raw in zip(scores, raws):
        j = int(np.argmax(row))
        out.append(
            (
                gallery.names[j] if row[j] >= gallery.threshold else None,
                float(row[j]),
                j,
                gallery.names[j],
                float(raw[j]),
            )
        )
    return out


# ---- RTTM --------------------------------------------------------------------------------------
def rttm_lines(timeline: Timeline, uri: str | None = None) -> list[str]:
    """The timeline as RTTM ``SPEAKER`` lines (NIST RT format; the label is the speaker name).

    RTTM fields are separated by spaces, so spaces in the file id and in labels become ``_``.
    """
    uri = _rttm_token(uri) if uri is not None else rttm_id(timeline.file)
    return [
        f"SPEAKER {uri} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {_rttm_token(s.label)} <NA> <NA>"
        for s in timeline.segments
    ]


def write_rttm(path: str | Path, timelines: Sequence[Timeline], *, overwrite: bool = False) -> None:
    """Write the timelines of one or more recordings to one RTTM file (0600, never through a
    link; an existing file is replaced only with ``overwrite``: see atomic.write_output)."""
    text = "".join(line + "\n" for t in timelines for line in rttm_lines(t))
    with atomic.write_output(path, overwrite=overwrite, what="the RTTM file ") as f:
        f.write(text.encode("utf-8"))


def read_rttm(path: str | Path) -> dict[str, list[tuple[float, float, str]]]:
    """RTTM ``SPEAKER`` lines by file id: [(start s, end s, speaker)], in file order."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise InvalidInputError(f"{path}:{n}: an RTTM SPEAKER line has at least 8 fields")
        start, dur = float(fields[3]), float(fields[4])
        out.setdefault(fields[1], []).append((start, start + dur, fields[7]))
    return out


def rttm_id(file: str | os.PathLike[str]) -> str:
    """The recording id :func:`rttm_lines` gives a file's lines: its name without directory or
    extension, spaces made ``_`` (so ``/a/conv 1.wav`` and ``/b/conv_1.flac`` share one)."""
    return _rttm_token(Path(file).stem)


def _rttm_token(text: str) -> str:
    return "_".join(text.split()) or "_"


# ---- plot ---------------------------------------------------------------------------------------
def plot_names(files: Sequence[str]) -> list[str]:
    """What each of ``files`` is called in the plot: the shortest tail of its path (its name, then
    its folder and name, ...) that no other path of ``files`` ends with, so that ``a/conv-00.wav``
    and ``b/conv-00.wav`` are told apart while a lone ``/data/call.wav`` stays ``call.wav``. A path
    that is the tail of another (``conv.wav`` beside ``sub/conv.wav``) is shown as given; one given
    twice is one recording, named alike."""
    parts = [PurePath(f).parts or (f,) for f in files]
    distinct = set(parts)
    tails: dict[int, Counter[tuple[str, ...]]] = {}  # tail length -> how many distinct paths end so
    out = []
    for f, p in zip(files, parts):
        for k in range(1, len(p)):
            if k not in tails:
                tails[k] = Counter(q[-k:] for q in distinct)
            if tails[k][p[-k:]] == 1:
                out.append(str(PurePath(*p[-k:])))
                break
        else:
            out.append(f)
    return out


def plot(timelines: Sequence[Timeline], path: str | Path, *, overwrite: bool = False) -> None:
    """One panel per recording, one lane per voice over time (needs matplotlib: the plot extra),
    written as :func:`write_rttm` writes (0600, never through a link, ``overwrite`` to replace)."""
    try:
        import matplotlib  # deferred: matplotlib is heavy to import
    except ImportError:
        raise InvalidInputError('--plot needs matplotlib: pip install -e ".[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib is heavy to import

    lanes = [max(1, len(t.voices)) for t in timelines]
    fig, axes = plt.subplots(
        len(timelines),
        1,
        figsize=(11, 0.9 + 0.45 * sum(lanes) + 0.6 * len(timelines)),
        squeeze=False,
        gridspec_kw={"height_ratios": lanes},
    )
    colours = plt.get_cmap("tab10")
    # Not the bare name: a/conv-00.wav and b/conv-00.wav, plotted together, would look alike.
    names = plot_names([t.file for t in timelines])
    for ax, t, name in zip(axes[:, 0], timelines, names):
        order = [v.label for v in sorted(t.voices, key=lambda v: (v.speaker is None, v.label))]
        for row, lab in enumerate(order):
            spans = [(s.start, s.end - s.start) for s in t.segments if s.label == lab]
            colour = "0.55" if lab.startswith("unknown-") else colours(row % 10)
            ax.broken_barh(spans, (row - 0.4, 0.8), facecolors=colour)
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(-0.6, max(len(order), 1) - 0.4)
        ax.invert_yaxis()
        ax.set_xlim(0, max(t.duration, 1e-3))
        ax.set_title(f"{name} ({t.duration:.1f} s)" + ("" if t.segments else ": no speech"), fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    try:
        with atomic.write_output(path, overwrite=overwrite, what="the plot ") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)


# ---- how many voices (identify's check) ----------------------------------------------------------
#: identify's check embeds windows that do not overlap (hop = window): one extra pass over
#: the speech instead of three, at the cost of coarser boundaries it does not need.
VOICE_CHECK_PARAMS = Params(window_s=DEFAULT_WINDOW_S, hop_s=DEFAULT_WINDOW_S)


class VoiceCounter:
    """How many voices speak in each of several recordings (identify's voice check), their
    windows embedded together: the windows are all ``VOICE_CHECK_PARAMS.window_s`` long, so
    those of many short files share forward passes (:meth:`prepare` each, then :meth:`finish`).

    The timeline's diarization without a gallery (windows clustered, clusters whose means
    reach ``threshold`` together merged, voices with under ``DEFAULT_MIN_VOICE_S`` of
    speech dropped), on non-overlapping windows.
    """

    def __init__(self, embedder: Embedder, threshold: float, detector=None) -> None:
        self.embedder, self.detector = embedder, detector
        self.gallery = Gallery.empty(embedder.dim, threshold)

    def prepare(self, source: audio.Audio | Decoded, heard: vad.Heard | None = None) -> Pending:
        """Pass 1 over ``source`` and its windows' samples, ready for :meth:`finish` (AudioError
        for unusable audio); ``source`` may be closed afterwards. A recording with more than
        ``SHARED_COUNT_S`` of windows is counted here, its windows cut as they are embedded.
        ``heard``: Silero's pass over the start of ``source`` already made (see :func:`plan`)."""
        planned = plan(source, VOICE_CHECK_PARAMS, self.detector, heard)
        if not planned.spans:
            return Pending(planned, [], 0)
        if sum(b - a for a, b, _ in planned.spans) > SHARED_COUNT_S * audio.SAMPLE_RATE:
            vectors = embed_windows(cut_windows(planned.blocks(_blocks_of(source)()), planned.spans), self.embedder)
            return Pending(planned, [], self._count(planned, vectors))
        return Pending(planned, list(cut_windows(planned.blocks(_blocks_of(source)()), planned.spans)))

    def finish(self, pending: Sequence[Pending]) -> list[int]:
        """The number of voices in each prepared recording: 0 without speech, 1 for one speaker."""
        vectors = embed_windows((w for p in pending for w in p.windows), self.embedder)
        out, start = [], 0
        for p in pending:
            if p.voices is None:
                p.voices = self._count(p.planned, vectors[start : start + len(p.windows)])
                start += len(p.windows)
                p.windows = []
            out.append(p.voices)
        return out

    def _count(self, planned: Planned, vectors: np.ndarray) -> int:
        return len(planned.assemble(vectors, self.gallery, VOICE_CHECK_PARAMS).voices)


#: A recording whose voice-check windows hold more than this (seconds) is counted alone,
#: without holding its windows' samples; shorter ones wait to share forward passes.
SHARED_COUNT_S = 30.0


@dataclass
class Pending:
    """One recording prepared by :class:`VoiceCounter`: its pass 1, and the samples of the
    windows still to embed or the count already made."""

    planned: Planned
    windows: list[np.ndarray]
    voices: int | None = None

    @property
    def seconds(self) -> float:
        """Seconds of audio in its windows (what :meth:`VoiceCounter.finish` will embed)."""
        return sum(len(w) for w in self.windows) / audio.SAMPLE_RATE


def count_voices(
    source: str | Path | audio.Audio | Decoded,
    embedder: Embedder,
    threshold: float,
    detector=None,
    max_audio_s: float | None = None,
) -> int:
    """How many voices speak in one recording (:class:`VoiceCounter`): 0 without speech, 1 for
    one speaker. ``source`` may be a :class:`Decoded` that identify's embedding has already
    read: its blocks are replayed, not decoded again."""
    if not isinstance(source, (audio.Audio, Decoded)):
        with Decoded(source, max_audio_s=max_audio_s) as decoded:
            return count_voices(decoded, embedder, threshold, detector)
    counter = VoiceCounter(embedder, threshold, detector)
    return counter.finish([counter.prepare(source)])[0]
