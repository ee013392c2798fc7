"""From a recording to one speaker vector, in bounded memory whatever its length.

    file -> audio.stream (16 kHz mono blocks) -> windows of WINDOW_S -> embedder -> weighted mean

A recording up to 1.5 x WINDOW_S is one window: the model sees all of it, and the
vector is exactly the model card's. A longer one is cut into consecutive windows of
WINDOW_S (the last one absorbs a remainder shorter than half a window, so no window is
shorter than WINDOW_S / 2); each window is embedded on its own and the vectors are
averaged, weighted by window length, then L2-normalised. Attention costs grow with the
square of the length, so windows keep compute linear in the recording's length, and
memory bounded by two windows plus one decode block.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import audio
from .embed import Embedder, l2_normalize
from .errors import AudioError

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
    speech_s: float  # seconds of active speech (audio.active_seconds, per window)
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


def check_vector(vector: np.ndarray, source: str) -> None:
    """Raise AudioError unless ``vector`` is finite and of unit norm: only such vectors are stored."""
    norm = float(np.linalg.norm(vector.astype(np.float64))) if np.isfinite(vector).all() else float("nan")
    if not abs(norm - 1.0) <= UNIT_NORM_TOLERANCE:  # NaN fails this comparison too
        raise AudioError(source, f"the model produced an unusable embedding (norm {norm:.3g}, not 1): nothing stored")


def embed_clip(source: str | Path | audio.Audio, embedder: Embedder) -> EmbeddedClip:
    """Decode (or take) one recording and embed it, window by window.

    Raises AudioError for a file that cannot be used (see audio.stream and audio.check_samples).
    """
    if isinstance(source, audio.Audio):
        label, blocks = audio.source_label(source.source), iter([source.samples])
    else:
        label, blocks = audio.source_label(source), audio.stream(source)
    sha = hashlib.sha256()
    n_samples, peak, speech_s, n_windows = 0, 0.0, 0.0, 0
    total: np.ndarray | None = None  # (dim,) float64: sum of window vectors x window length

    def tracked(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal n_samples, peak
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            if not np.isfinite(block).all():  # arrays given to the API skip audio.stream's checks
                raise AudioError(label, "contains NaN or infinite samples")
            sha.update(block.astype("<f4", copy=False).tobytes())
            n_samples += len(block)
            peak = max(peak, float(np.max(np.abs(block))) if len(block) else 0.0)
            yield block

    naming = _NameTheFile(label)  # embed() does not know file names; its warnings get this one
    pending = windows(tracked(blocks))
    window = next(pending, None)
    while window is not None:
        following = next(pending, None)
        if following is None:
            # The whole recording has been read: check it before the last (often the only)
            # window costs any compute.
            audio.check_duration_and_level(n_samples, peak, label)
        log.addFilter(naming)
        try:
            vector = embedder.embed([window])[0].astype(np.float64)  # (dim,)
        finally:
            log.removeFilter(naming)
        total = vector * len(window) if total is None else total + vector * len(window)
        speech_s += audio.active_seconds(window)
        n_windows += 1
        window = following
    if total is None:  # no samples at all
        audio.check_duration_and_level(n_samples, peak, label)
    assert total is not None
    vector = l2_normalize(total[None])[0]  # (dim,)
    check_vector(vector, label)
    return EmbeddedClip(label, n_samples / audio.SAMPLE_RATE, sha.hexdigest(), speech_s, vector, n_windows)
