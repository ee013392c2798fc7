"""From a recording to one speaker vector, in bounded memory whatever its length.

    file -> audio.stream (16 kHz mono blocks) -> windows of WINDOW_S -> denoised if noisy
         -> embedder -> weighted mean

A recording up to 1.5 x WINDOW_S is one window: the model sees all of it, and the
vector is exactly the model card's. A longer one is cut into consecutive windows of
WINDOW_S (the last one absorbs a remainder shorter than half a window, so no window is
shorter than WINDOW_S / 2); each window is embedded on its own and the vectors are
averaged, weighted by window length, then L2-normalised. Attention costs grow with the
square of the length, so windows keep compute linear in the recording's length, and
memory bounded by two windows plus one decode block.

A window whose speech stands less than ``denoise.NOISY_SNR_DB`` above its pauses (Silero's
frames) has the pauses' noise taken out before it is embedded (:func:`heard`), as the
timeline takes it out of a noisy recording: a call at 10 dB then scores against clean
enrollment as it would clean (docs/timeline.md, "Noise: measured in the pauses and taken out").
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..audio import decode as audio
from ..audio import denoise, vad
from ..audio.decoded import Decoded
from ..errors import AudioError, printable_path
from .models import Embedder, l2_normalize

log = logging.getLogger("speakerdb")

WINDOW_S = 30.0  # seconds
WINDOW = int(WINDOW_S * audio.SAMPLE_RATE)  # samples: 480,000
# A stored vector must be unit length: float32 rounding leaves ~1e-7; anything further off
# means the model produced garbage (NaN, inf or zeros) and must not reach the database.
UNIT_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EmbeddedClip:
    """What speakerdb keeps of a recording: a label, checks' figures and the vector."""

    source: str
    duration_s: float
    sha256: str  # of the 16 kHz mono float32 samples, little-endian
    speech_s: float  # seconds of active speech (audio.active_seconds, per window as the model hears it)
    vector: np.ndarray  # (dim,) float32, norm 1
    n_windows: int


def windows(blocks: Iterable[np.ndarray], window: int = WINDOW) -> Iterator[np.ndarray]:
    """Regroup 1-D blocks into windows of ``window`` samples; the last absorbs a short remainder.

    A window is held back until the next one is known, so that a remainder shorter than
    half a window joins the window before it (at most 1.5 x ``window``).
    """
    pending: list[np.ndarray] = []
    pending_len = 0
    held: np.ndarray | None = None
    for block in blocks:
        pending.append(block)
        pending_len += len(block)
        while pending_len >= window:
            joined = np.concatenate(pending)
            if held is not None:
                yield held
            held, rest = joined[:window], joined[window:]
            pending, pending_len = [rest], len(rest)
    remainder = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if held is None:
        if len(remainder):
            yield remainder
    elif len(remainder) < window // 2:
        yield np.concatenate([held, remainder])
    else:
        yield held
        yield remainder


class _NameTheFile(logging.Filter):
    """Prefixes records logged on the speakerdb logger with the file being embedded."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"{self.label}: {record.msg}"
        return True


def heard(windows: Iterable[np.ndarray], keep: Callable[[vad.Heard], None] | None = None) -> Iterator[np.ndarray]:
    """Each window as it is embedded: with its noise taken out if it is noisy (its speech less
    than ``denoise.NOISY_SNR_DB`` above its pauses; :func:`speakerdb.audio.denoise.denoised`),
    as the timeline takes it out of a noisy recording, else as it is.

    ``keep`` is given Silero's pass over the first window (:func:`speakerdb.audio.vad.hear`),
    the recording's start, for a later pass over the recording to replay (identify's voice count).
    """
    for i, window in enumerate(windows):
        if i == 0 and keep is not None:
            first = vad.hear(window)
            keep(first)
            yield denoise.denoised(window, heard=first)[0]
        else:
            yield denoise.denoised(window)[0]


def check_vector(vector: np.ndarray, source: str) -> None:
    """Raise AudioError unless ``vector`` is finite and of unit norm: only such vectors are stored."""
    norm = float(np.linalg.norm(vector.astype(np.float64))) if np.isfinite(vector).all() else float("nan")
    if not abs(norm - 1.0) <= UNIT_NORM_TOLERANCE:  # NaN fails this comparison too
        raise AudioError(source, f"the model produced an unusable embedding (norm {norm:.3g}, not 1): nothing stored")


class _Recording:
    """One recording being read: its windows, and the figures an EmbeddedClip keeps of it."""

    def __init__(
        self, source: str | os.PathLike[str] | audio.Audio | Decoded, max_audio_s: float | None = None
    ) -> None:
        blocks: Iterable[np.ndarray]
        if isinstance(source, audio.Audio):
            self.label, blocks = audio.source_label(source.source), iter([source.samples])
        elif isinstance(source, Decoded):  # decoded on its first read, replayed after (identify's voice count)
            self.label, blocks = printable_path(source.path), source.blocks()
        else:
            self.label, blocks = printable_path(source), audio.stream(Path(source), max_audio_s=max_audio_s)
        self.sha = hashlib.sha256()
        self.n_samples, self.peak = 0, 0.0
        self._blocks = blocks

    def _tracked(self) -> Iterator[np.ndarray]:
        for block in self._blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            if not np.isfinite(block).all():  # arrays given to the API skip audio.stream's checks
                raise AudioError(self.label, "contains NaN or infinite samples")
            self.sha.update(block.astype("<f4", copy=False).tobytes())
            self.n_samples += len(block)
            self.peak = max(self.peak, float(np.max(np.abs(block))) if len(block) else 0.0)
            yield block

    def windows(self) -> Iterator[np.ndarray]:
        """The recording's windows; the whole recording is read and checked (duration, level)
        before the last one (often the only one) is handed out, so a bad file costs no compute."""
        pending = windows(self._tracked())
        window = next(pending, None)
        while window is not None:
            following = next(pending, None)
            if following is None:
                audio.check_duration_and_level(self.n_samples, self.peak, self.label)
            yield window
            window = following
        if self.n_samples == 0:  # no samples at all
            audio.check_duration_and_level(self.n_samples, self.peak, self.label)

    def clip(self, total: np.ndarray, speech_s: float, n_windows: int) -> EmbeddedClip:
        """The EmbeddedClip from the sum of window vectors x window lengths (dim,)."""
        vector = l2_normalize(total[None])[0]  # (dim,)
        check_vector(vector, self.label)
        return EmbeddedClip(
            self.label, self.n_samples / audio.SAMPLE_RATE, self.sha.hexdigest(), speech_s, vector, n_windows
        )


def _embed(embedder: Embedder, waves: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """``embedder.embed(waves)`` (n, dim) float64, its log records naming the files."""
    naming = _NameTheFile(", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else ""))
    log.addFilter(naming)  # embed() does not know file names; its warnings get these
    try:
        return np.asarray(embedder.embed(waves), np.float64)
    finally:
        log.removeFilter(naming)


def embed_clip(
    source: str | os.PathLike[str] | audio.Audio | Decoded, embedder: Embedder, max_audio_s: float | None = None
) -> EmbeddedClip:
    """Decode (or take) one recording and embed it, window by window.

    Raises AudioError for a file that cannot be used (see audio.stream and audio.check_samples),
    a file longer than ``max_audio_s`` seconds included (default: audio.max_duration_s).
    """
    rec = _Recording(source, max_audio_s)
    return _embed_windows(rec, heard(rec.windows()), embedder)


def _embed_windows(rec: _Recording, parts: Iterable[np.ndarray], embedder: Embedder) -> EmbeddedClip:
    """Embed ``rec``'s windows ``parts`` one by one: the clip of their length-weighted mean."""
    total: np.ndarray | None = None  # (dim,) float64: sum of window vectors x window length
    speech_s, n_windows = 0.0, 0
    for window in parts:
        vector = _embed(embedder, [window], [rec.label])[0]
        total = vector * len(window) if total is None else total + vector * len(window)
        speech_s += audio.active_seconds(window)
        n_windows += 1
    assert total is not None
    return rec.clip(total, speech_s, n_windows)


#: Seconds of one-window recordings embed_clips decodes ahead, to embed those of equal
#: length in one forward pass (bounds the audio held: 120 s is 7.7 MB of float32).
BATCH_AHEAD_S = 120.0
#: Audio in one stacked forward pass at most (s): with the full-size WavLM, passes of about
#: 30 s cost the least per window for 1.5 s, 3 s and 10 s windows alike; larger ones lose
#: (docs/service.md, "Measured throughput").
BATCH_FORWARD_S = 30.0


def embed_clips(
    sources: Sequence[str | os.PathLike[str] | audio.Audio | Decoded],
    embedder: Embedder,
    batch_ahead_s: float = BATCH_AHEAD_S,
    max_audio_s: float | None = None,
    first_heard: dict[int, vad.Heard] | None = None,
) -> Iterator[tuple[int, EmbeddedClip | AudioError]]:
    """:func:`embed_clip` for each source, as (position, clip or the AudioError it raised),
    in the order they finish. ``first_heard``, if given, gets Silero's pass over each source's
    first window by position (:func:`heard`), before the source's clip is handed out.

    Recordings of one window (up to 1.5 x WINDOW_S) are read ahead, up to ``batch_ahead_s``
    seconds of them, and those of identical length share one forward pass: the embedder
    stacks equal lengths without padding, so each vector is the one embedding it alone
    gives (to float rounding), at less cost per clip when clips are short (many requests of
    one chunk length, at a service), up to BATCH_FORWARD_S of audio per pass. Longer
    recordings are embedded window by window at once.
    """
    held: list[tuple[int, _Recording, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, EmbeddedClip | AudioError]]:
        by_length: dict[int, list[tuple[int, _Recording, np.ndarray]]] = {}
        for item in held:
            by_length.setdefault(len(item[2]), []).append(item)
        held.clear()
        for length, same in by_length.items():
            per_pass = max(1, int(BATCH_FORWARD_S * audio.SAMPLE_RATE) // length)
            for start in range(0, len(same), per_pass):
                yield from embed_group(same[start : start + per_pass])

    def embed_group(group: list[tuple[int, _Recording, np.ndarray]]) -> Iterator[tuple[int, EmbeddedClip | AudioError]]:
        vectors = _embed(embedder, [w for _, _, w in group], [r.label for _, r, _ in group])
        for (i, rec, window), vector in zip(group, vectors):
            try:
                yield i, rec.clip(vector * len(window), audio.active_seconds(window), 1)
            except AudioError as e:
                yield i, e

    for i, source in enumerate(sources):
        try:
            rec = _Recording(source, max_audio_s)
            keep = None if first_heard is None else functools.partial(first_heard.__setitem__, i)
            parts = heard(rec.windows(), keep)
            first = next(parts, None)
            if first is None:  # windows() raises for an empty recording first; never reached
                raise AudioError(rec.label, "holds no audio")
            second = next(parts, None)
            if second is None:
                held.append((i, rec, first))
                if sum(len(w) for _, _, w in held) >= batch_ahead_s * audio.SAMPLE_RATE:
                    yield from flush()
                continue
            yield i, _embed_windows(rec, itertools.chain([first, second], parts), embedder)
        except AudioError as e:
            yield i, e
    yield from flush()


#: A recording as callers give it: a path, or audio already in memory.
Source = str | os.PathLike[str] | audio.Audio


def embed_all(
    files: Sequence[Source],
    embedder: Embedder,
    max_audio_s: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    each: Callable[[EmbeddedClip], None] | None = None,
) -> list[EmbeddedClip]:
    """:func:`embed_clip` for each file in turn (the first AudioError stops them all), with
    ``progress(files done, files, seconds of audio done)`` after each. ``each(clip)`` sees
    every clip as it is made; what it raises stops the rest."""
    out: list[EmbeddedClip] = []
    seconds = 0.0
    for i, f in enumerate(files):
        clip = embed_clip(f, embedder, max_audio_s)
        if each is not None:
            each(clip)
        out.append(clip)
        seconds += clip.duration_s
        if progress is not None:
            progress(i + 1, len(files), seconds)
    return out


@dataclass
class Batch:
    """What :func:`embed_batch` made of each file, by position: its clip and voice count, or its error."""

    clips: dict[int, EmbeddedClip] = field(default_factory=dict)
    voices: dict[int, int] = field(default_factory=dict)
    errors: dict[int, AudioError] = field(default_factory=dict)


class VoiceCount(Protocol):
    """Identify's voice count over the files of a batch (``timeline.VoiceCounter`` behind the
    facade's warnings): :meth:`prepare` each file as its clip is done, then :meth:`finish` a
    group of them, whose windows share forward passes."""

    def prepare(self, source: audio.Audio | Decoded, file: Source, heard: vad.Heard | None = None) -> Any:
        """Pass 1 over ``source``; a handle with ``seconds`` (the audio its windows hold).
        ``heard``: Silero's pass over the start of ``source``, made by the embedding, to replay."""
        ...

    def finish(self, prepared: Sequence[Any]) -> list[int]:
        """The voices in each prepared file."""
        ...


def embed_batch(
    files: Sequence[Source],
    embedder: Embedder,
    max_audio_s: float | None = None,
    *,
    failed: Mapping[int, AudioError] | None = None,
    count: VoiceCount | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    settled: Callable[[int, Batch], None] | None = None,
) -> Batch:
    """Embed every file not already ``failed`` (:func:`embed_clips`: short ones share forward
    passes); a file that cannot be used gets its AudioError instead of stopping the batch.

    ``count`` (identify's voice count) runs on each embedded file; the file is then decoded
    once: the embedding's read keeps the blocks (in memory, or a temporary file for a long
    one) and the count replays them, with Silero's pass over the first window that judged its
    noise (all of the file up to 1.5 x WINDOW_S): the VAD runs once over that part. The
    counts of files whose windows add up to at most ``BATCH_FORWARD_S`` are finished together
    (their windows share forward passes), unless ``settled`` asks for each answer as soon as
    it can be given. ``progress`` counts failed files as done. ``settled(i, batch)`` is
    called as each file ``i`` not already failed gets its clip (and count) or its error, in
    the order they finish: what a caller streams answers from.
    """
    batch = Batch(errors=dict(failed or {}))
    good = [i for i in range(len(files)) if i not in batch.errors]
    kept: dict[int, audio.Audio | Decoded] = {}
    for i in good if count is not None else []:
        f = files[i]
        kept[i] = f if isinstance(f, audio.Audio) else Decoded(f, max_audio_s=max_audio_s)
    first_heard: dict[int, vad.Heard] | None = {} if count is not None else None  # by position in `good`
    done, seconds = len(files) - len(good), 0.0
    waiting: list[tuple[int, Any]] = []  # (file, prepared count) not finished yet

    def report(i: int) -> None:
        nonlocal done
        done += 1
        if settled is not None:
            settled(i, batch)
        if progress is not None:
            progress(done, len(files), seconds)

    def finish_waiting() -> None:
        assert count is not None
        counts = count.finish([prepared for _, prepared in waiting])
        for (i, _), n in zip(waiting, counts, strict=True):
            batch.voices[i] = n
        for i, _ in waiting:
            report(i)
        waiting.clear()

    try:
        sources = [kept.get(i, files[i]) for i in good]
        for position, clip in embed_clips(sources, embedder, max_audio_s=max_audio_s, first_heard=first_heard):
            i = good[position]
            first = first_heard.pop(position, None) if first_heard is not None else None
            try:
                if isinstance(clip, AudioError):
                    raise clip
                if count is not None:
                    waiting.append((i, count.prepare(kept[i], files[i], first)))
                batch.clips[i] = clip
                seconds += clip.duration_s
            except AudioError as e:
                batch.errors[i] = e
            finally:
                _release(kept.pop(i, None))
            if waiting and waiting[-1][0] == i:
                if settled is not None or sum(p.seconds for _, p in waiting) >= BATCH_FORWARD_S:
                    finish_waiting()
            else:
                report(i)
        if waiting:
            finish_waiting()
    finally:
        for source in kept.values():  # an error stopped the batch: nothing is kept
            _release(source)
    return batch


def _release(source: object) -> None:
    """Free what a :class:`Decoded` file keeps (its temporary file, if any); other sources hold nothing."""
    if isinstance(source, Decoded):
        source.close()
