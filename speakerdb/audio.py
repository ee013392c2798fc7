"""Decode any supported audio file to 16 kHz mono float32.

The path of a sample: file -> decoder (soundfile/libsndfile for WAV, FLAC, OGG, MP3, ...;
PyAV/FFmpeg for what libsndfile cannot read, such as M4A/AAC or WebM) -> float32 in
[-1, 1] (integer PCM is scaled by the decoder) -> channels averaged to mono -> resampled
to 16 kHz with soxr -> checked (finite, long enough, not silent).

torchaudio is not used: it has no build for the torch this project pins, and its I/O
moved to torchcodec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16_000  # Hz: what WavLM and the other x-vector models were trained on
# The WavLM x-vector head needs a few hundred milliseconds of frames: the conv front end
# hops 20 ms (320 samples) and the TDNN layers look at 15 frames (kernels 5,3,3 with
# dilations 1,2,3), i.e. 0.3 s. Anything shorter than half a second says nothing reliable
# about a voice, so it is refused rather than embedded.
MIN_DURATION_S = 0.5  # seconds
# Peak amplitude below -80 dBFS (full scale = 1.0) is digital silence or a dead input.
SILENCE_PEAK = 10 ** (-80 / 20)  # = 1e-4, linear amplitude

# Speech activity, for enrollment warnings: 30 ms frames (480 samples at 16 kHz) are
# "active" when their energy is within ACTIVE_RANGE_DB of the loudest frame and either
# NOISE_MARGIN_DB above the noise floor (the 10th percentile of frame energies) or
# louder than LOUD_DBFS outright (a clip with no pause has no floor below its speech).
FRAME_S = 0.030  # seconds
ACTIVE_RANGE_DB = 40.0  # dB below the loudest frame
NOISE_MARGIN_DB = 6.0  # dB above the noise floor
LOUD_DBFS = -45.0  # dB, frame mean square relative to full scale (1.0)


@dataclass(frozen=True)
class Audio:
    """A decoded recording: 16 kHz mono float32 samples and where they came from."""

    source: str
    samples: np.ndarray  # (n_samples,) float32 at SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def sha256(self) -> str:
        """Hash of the decoded samples: the same recording in another container hashes the same."""
        return samples_sha256(self.samples)


def samples_sha256(samples: np.ndarray) -> str:
    """sha256 of 16 kHz mono samples as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes()).hexdigest()


def load(path: str | Path) -> Audio:
    """Decode ``path`` to 16 kHz mono float32 and check it is usable.

    Raises:
        AudioError: the file is missing, not a file, empty, unreadable, not audio,
            corrupt, contains NaN/inf samples, is silent, or shorter than MIN_DURATION_S.
    """
    path = check_file(path)
    samples, rate = _decode(path)  # (n, channels) float32, Hz
    if samples.size == 0:
        raise AudioError(path, "contains no audio samples")
    mono = samples.mean(axis=1, dtype=np.float32)  # (n,)
    return Audio(source=str(path), samples=prepare(mono, rate, source=path))


def check_file(path: str | Path) -> Path:
    """Cheap checks before any decoding or model loading: exists, a file, readable, not empty."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    return path


def prepare(mono: np.ndarray, rate: int, source: str | Path = "<array>") -> np.ndarray:
    """Resample a mono float signal to 16 kHz and apply the checks of :func:`load`.

    Use this for audio that is already in memory (the Python API accepts arrays).
    """
    mono = np.asarray(mono, dtype=np.float32)
    if mono.ndim != 1:
        raise AudioError(source, f"expected a mono signal (1-D array), got shape {mono.shape}")
    if not np.isfinite(mono).all():
        raise AudioError(source, "contains NaN or infinite samples")
    if rate <= 0:
        raise AudioError(source, f"invalid sample rate {rate}")
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    duration = len(mono) / SAMPLE_RATE
    if duration < MIN_DURATION_S:
        raise AudioError(
            source, f"too short: {duration:.2f} s, at least {MIN_DURATION_S:g} s of audio is needed"
        )
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise AudioError(source, "is silent (peak below -80 dBFS)")
    return np.ascontiguousarray(mono)


def active_seconds(samples: np.ndarray) -> float:
    """Seconds of audio in frames loud enough to hold speech (a simple energy detector).

    Not a voice activity detector in the strict sense: it measures how much of a clip
    stands out from its own noise floor, which is what separates a real enrollment
    utterance from a clip of room tone with a cough in it.
    """
    frame = int(FRAME_S * SAMPLE_RATE)  # samples
    n = len(samples) // frame
    if n == 0:
        return 0.0
    frames = samples[: n * frame].reshape(n, frame)  # (n_frames, frame)
    energy_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)  # (n_frames,)
    floor = np.percentile(energy_db, 10)
    above_floor = (energy_db >= floor + NOISE_MARGIN_DB) | (energy_db >= LOUD_DBFS)
    active = (energy_db >= energy_db.max() - ACTIVE_RANGE_DB) & above_floor
    return float(active.sum() * FRAME_S)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Return (samples (n, channels) float32, sample rate in Hz), trying libsndfile, then FFmpeg."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as sf_error:
        first_error = sf_error
    try:
        return _decode_with_av(path)
    except AudioError:
        raise
    except Exception as av_error:  # PyAV raises many types (av.error.*, OSError, ValueError)
        raise AudioError(
            path,
            "not a readable audio file (supported: WAV, FLAC, OGG, MP3 and what FFmpeg decodes); "
            f"libsndfile: {_short(first_error)}; ffmpeg: {_short(av_error)}",
        ) from None


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError(path, "not an audio file (FFmpeg finds no audio stream in it)")
        rate = stream.rate
        # Planar float keeps channels apart so they can be averaged here, like the
        # soundfile path, instead of FFmpeg's own downmix matrix.
        to_planar = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        chunks = []
        for frame in container.decode(stream):
            for out in to_planar.resample(frame):
                chunks.append(out.to_ndarray())  # (channels, n_frame) float32
        for out in to_planar.resample(None):  # flush
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]
