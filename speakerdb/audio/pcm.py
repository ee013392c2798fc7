"""Raw audio as it arrives from a socket or a pipe: bytes of one encoding at one sample rate.

A live session (:mod:`speakerdb.live`) takes frames of headerless audio: 16-bit little-endian
PCM (what ``arecord -f S16_LE`` and most WebSocket clients send), 32-bit little-endian floats
(what a browser's Web Audio gives), or G.711 mu-law / A-law (8-bit, as telephony platforms
send a call). :func:`decode_pcm` turns one frame into float32 samples in [-1, 1];
:class:`Resampler` brings any rate from 8 kHz to 48 kHz to the models' 16 kHz as the frames
arrive, with soxr's streaming resampler, so the cut between two frames adds no click and the
samples are those a whole-file resample gives (the same resampler :func:`audio.decode.stream`
uses for files).

G.711 is decoded by table (ITU-T G.711; the 256 values each law can take), not with
``audioop``, which Python 3.13 removed.
"""

from __future__ import annotations

import numpy as np

from ..errors import AudioError, InvalidInputError
from .decode import SAMPLE_RATE, check_values

#: The encodings a live session takes. ``f32`` is accepted as another name of ``f32le``.
ENCODINGS = ("pcm_s16le", "f32le", "mulaw", "alaw")
ALIASES = {"f32": "f32le"}
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "f32le": 4, "mulaw": 1, "alaw": 1}
MIN_RATE, MAX_RATE = 8_000, 48_000  # Hz: telephony to studio rates
SOURCE = "live audio"  # how errors about a frame name it: there is no file


def _mulaw_table() -> np.ndarray:
    """The 256 linear values (float32, /32768) of G.711 mu-law bytes."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF  # bytes are sent inverted
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    linear = np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """The 256 linear values (float32, /32768) of G.711 A-law bytes."""
    a = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are sent inverted
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    linear = np.where(a & 0x80, magnitude, -magnitude)  # A-law: the sign bit set is positive
    return (linear / 32768.0).astype(np.float32)


MULAW = _mulaw_table()
ALAW = _alaw_table()


def check_encoding(encoding: str) -> str:
    """The encoding's canonical name (``f32`` -> ``f32le``), or InvalidInputError naming the ones accepted."""
    name = ALIASES.get(encoding, encoding)
    if name not in ENCODINGS:
        raise InvalidInputError(f"unknown audio encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    return name


def check_sample_rate(rate: int) -> int:
    """``rate`` if a live session can take it (8,000 to 48,000 Hz, whole), else InvalidInputError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInputError(
            f"sample rate must be a whole number of Hz from {MIN_RATE:,} to {MAX_RATE:,}, not {rate!r}"
        )
    return int(rate)


def decode_pcm(data: bytes | bytearray | memoryview, encoding: str) -> np.ndarray:
    """One frame of raw audio as float32 mono samples in [-1, 1]: (n,).

    Raises AudioError (code ``bad_audio``) for a byte count that is not a whole number of
    samples and for NaN or infinite float samples; InvalidInputError for an unknown encoding.
    """
    encoding = check_encoding(encoding)
    raw = bytes(data) if not isinstance(data, bytes) else data
    width = BYTES_PER_SAMPLE[encoding]
    if len(raw) % width:
        raise AudioError(SOURCE, f"{len(raw)} bytes is not a whole number of {encoding} samples ({width} bytes each)")
    if encoding == "pcm_s16le":
        return (np.frombuffer(raw, "<i2").astype(np.float32)) / np.float32(32768.0)
    if encoding == "f32le":
        samples = np.frombuffer(raw, "<f4").astype(np.float32)
        return check_samples(samples)
    table = MULAW if encoding == "mulaw" else ALAW
    return table[np.frombuffer(raw, np.uint8)]


def check_samples(samples: np.ndarray) -> np.ndarray:
    """``samples`` as float32 (n,), or AudioError for NaN, infinite or impossible values or a shape not mono."""
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 1:
        raise AudioError(SOURCE, f"expected mono samples (a 1-D array), got shape {samples.shape}")
    # As for files: a little above full scale is clipping, this far is another encoding.
    check_values(samples, SOURCE, "float audio lies within [-1, 1]: is it 16-bit PCM sent as f32le?")
    return samples


class Resampler:
    """Streaming conversion of one rate to 16 kHz: ``feed`` each frame's samples, ``flush`` at the end.

    At 16 kHz it passes samples through untouched. Otherwise soxr's streaming resampler (HQ,
    as :func:`speakerdb.audio.decode.stream`) keeps its filter state between frames; its output
    lags the input by the filter's delay, which ``flush`` releases.
    """

    def __init__(self, rate: int) -> None:
        self.rate = check_sample_rate(rate)
        self._stream = None
        if self.rate != SAMPLE_RATE:
            import soxr  # deferred: soxr is heavy to import

            self._stream = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz samples for ``samples`` at this rate (fewer at first: the filter's delay)."""
        if self._stream is None:
            return samples
        return self._checked(self._stream.resample_chunk(samples, last=False))

    def flush(self) -> np.ndarray:
        """The samples the filter still holds; after this the resampler takes no more."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._checked(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        self._stream = None
        return tail

    @staticmethod
    def _checked(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, np.float32)
        if not np.isfinite(out).all():
            raise AudioError(SOURCE, "resampling produced NaN or infinite samples")
        return out
