"""Decode any supported audio file to 16 kHz mono float32.

The path of a sample: file -> decoder (soundfile/libsndfile for WAV, FLAC, AIFF, ...;
PyAV/FFmpeg for Ogg and MP3, whose streams can be chained, and for what libsndfile cannot
read, such as M4A/AAC or WebM) -> float32 in
[-1, 1] (integer PCM is scaled by the decoder) -> channels averaged to mono -> resampled
to 16 kHz with soxr -> checked (finite, long enough, not silent).

torchaudio is not used: it has no build for the torch this project pins, and its I/O
moved to torchcodec.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import config
from ..errors import AudioError, InvalidInputError, printable_path
from ..errors import check_input_file as check_file  # shared with the client, which checks before uploading

log = logging.getLogger("speakerdb")

SAMPLE_RATE = 16_000  # Hz: what WavLM and the other x-vector models were trained on
# The WavLM x-vector head needs a few hundred milliseconds of frames: the conv front end
# hops 20 ms (320 samples) and the TDNN layers look at 15 frames (kernels 5,3,3 with
# dilations 1,2,3), i.e. 0.3 s. Anything shorter than half a second says nothing reliable
# about a voice, so it is refused rather than embedded.
MIN_DURATION_S = 0.5  # seconds
# Peak amplitude below -80 dBFS (full scale = 1.0) is digital silence or a dead input.
SILENCE_PEAK = 10 ** (-80 / 20)  # = 1e-4, linear amplitude
# Files are decoded this many seconds at a time, so memory does not grow with length.
BLOCK_S = 10.0  # seconds
# Sample rates a recording of a voice can plausibly have: 4 kHz (below narrow-band telephony)
# to 768 kHz (the fastest studio converters). A header claiming 1 Hz makes 20 KB of data last
# hours; one claiming 0 or billions is damaged.
MIN_SAMPLE_RATE = 4_000  # Hz
MAX_SAMPLE_RATE = 768_000  # Hz
# The longest recording accepted, unless the caller or $SPEAKERDB_MAX_AUDIO_S allows more
# (see config.DEFAULT_MAX_AUDIO_S): beyond it a file is more likely damaged or hostile than
# a recording, and embedding it takes hours.
MAX_DURATION_S = config.DEFAULT_MAX_AUDIO_S  # seconds
MAX_DURATION_ENV = config.MAX_AUDIO_ENV
# This much unbroken digital silence (peak below SILENCE_PEAK) is not a pause in speech but
# an empty or padded file: decoding stops there instead of reading to the end.
MAX_SILENT_RUN_S = 300.0  # seconds
# Ogg and MPEG audio are sequences of self-contained pages or frames, so recordings joined with
# `cat` (a chained Ogg stream, back-to-back MP3s) are valid files. libsndfile stops at the end of
# the first part, and its length for them comes from headers that describe one part; FFmpeg
# decodes them whole. These containers go to FFmpeg and their length is what is decoded.
CHAINABLE_FORMATS = ("OGG", "MPEG")  # libsndfile's names
# Packets FFmpeg's decoder rejects (junk between or after MP3 frames) are skipped, as the
# ffmpeg command does; more than this many bytes of them is worth a warning.
MAX_SKIPPED_BYTES = 64 * 1024
# Decoded float samples lie in [-1, 1]; float files may overshoot a little. Anything beyond
# +60 dBFS is not a recording, and resampling such values overflows float32 into NaN.
MAX_ABS_SAMPLE = 1_000.0  # linear amplitude, full scale = 1.0

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


def source_label(path: str | os.PathLike[str]) -> str:
    """A file name as speakerdb stores and prints it: bytes that are not UTF-8 (which Python
    keeps as lone surrogates) become \\xNN escapes, so the label can be written as UTF-8."""
    return printable_path(path)


def samples_sha256(samples: np.ndarray) -> str:
    """sha256 of 16 kHz mono samples as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes()).hexdigest()


def max_duration_s(given: float | None = None) -> float:
    """The longest recording accepted: ``given`` (seconds) when the caller says, else
    $SPEAKERDB_MAX_AUDIO_S if set, else MAX_DURATION_S (4 h).

    A bad $SPEAKERDB_MAX_AUDIO_S is an InvalidInputError that names it: a setting, not a
    file, is wrong (an AudioError became each file's error in a batch, blaming the file)."""
    if given is not None:
        try:
            return config.check_max_audio_s(given)
        except ValueError as e:
            raise AudioError("max_audio_s", str(e)) from None
    try:
        return config.max_audio_s()
    except ValueError as e:
        raise InvalidInputError(f"{MAX_DURATION_ENV} {e}") from None


def load(path: str | Path, max_audio_s: float | None = None) -> Audio:
    """Decode ``path`` to 16 kHz mono float32 and check it is usable.

    The whole recording is held in memory (4 bytes per sample at 16 kHz: 230 MB per
    hour); :func:`stream` gives it block by block instead.

    Raises:
        AudioError: the file is missing, not a file, empty, unreadable, not audio,
            corrupt, contains NaN/inf samples, is silent, or shorter than MIN_DURATION_S,
            or longer than ``max_audio_s`` (default: :func:`max_duration_s`).
    """
    blocks = list(stream(path, max_audio_s=max_audio_s))
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)  # (n,)
    check_samples(samples, source=path)
    return Audio(source=str(path), samples=samples)


def stream(path: str | Path, block_s: float = BLOCK_S, max_audio_s: float | None = None) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block: yields 16 kHz mono float32 arrays of about ``block_s`` seconds.

    A recording longer than ``max_audio_s`` seconds (default: :func:`max_duration_s`) is
    refused, by its declared length before decoding, else as soon as decoding passes it.

    Memory stays bounded whatever the file's length. Decoding and NaN/inf errors raise
    AudioError as they are met; the length and silence checks need the whole signal and
    are the caller's (see :func:`check_samples`, or pipeline.embed_clip).
    """
    path = check_file(path)
    limit_s = max_duration_s(max_audio_s)
    rate, blocks, declared_frames = _decode_blocks(path, block_s)
    if rate <= 0:  # FFmpeg "finds" audio with no sample rate in some text files
        raise AudioError(path, f"not an audio file (sample rate {rate})")
    check_rate(rate, path)
    if declared_frames is not None and declared_frames / rate > limit_s:  # refused before decoding
        raise AudioError(path, _too_long(declared_frames / rate, limit_s, "declares"))
    resampler = None
    if rate != SAMPLE_RATE:
        import soxr  # deferred: soxr is heavy to import

        # Streaming soxr gives the same samples as resampling the whole signal at once.
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    try:
        any_samples = False
        n_in = 0  # samples read, at the file's rate
        silent_run = 0  # samples, at the file's rate, since the last one above SILENCE_PEAK
        for block in _guard(path, blocks, rate):
            if block.size == 0:
                continue
            any_samples = True
            mono = block.mean(axis=1, dtype=np.float32)  # (n,) channels averaged
            check_values(mono, path)
            n_in += len(mono)
            if n_in / rate > limit_s:  # counted while decoding: a header's length can be wrong
                raise AudioError(path, _too_long(n_in / rate, limit_s, "is longer than"))
            loud = np.flatnonzero(np.abs(mono) >= SILENCE_PEAK)
            silent_run = silent_run + len(mono) if not len(loud) else len(mono) - 1 - int(loud[-1])
            if silent_run / rate > MAX_SILENT_RUN_S:
                raise AudioError(
                    path,
                    f"holds more than {MAX_SILENT_RUN_S:g} s of unbroken digital silence (from "
                    f"{(n_in - silent_run) / rate:.0f} s on): an empty or padded file, not speech; decoding stopped",
                )
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=False)
                _check_resampled(mono, path)
            if len(mono):
                yield mono
        if not any_samples:
            raise AudioError(path, "contains no audio samples")
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            _check_resampled(tail, path)
            if len(tail):
                yield tail
    finally:
        # The traceback of an AudioError raised here keeps this frame, and so the soxr
        # resampler, alive as long as the error is; the CLI freezes the heap at exit instead
        # of collecting it, and nanobind (soxr's binding) then reports the live resampler as
        # leaked on stderr. Nothing needs the resampler (or the decoder) once this generator ends.
        del resampler, blocks


def check_rate(rate: float, source: str | Path = "<array>") -> None:
    """Raise AudioError for a sample rate no recording of a voice has (see MIN/MAX_SAMPLE_RATE)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            source, f"implausible sample rate {rate:g} Hz (accepted: {MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz)"
        )


def check_values(mono: np.ndarray, source: str | Path, hint: str = "audio lies within [-1, 1]") -> None:
    """Samples must be finite and near full scale; resampling turns 3e38 into NaN. ``hint``
    ends the message for samples far beyond full scale."""
    if not np.isfinite(mono).all():
        raise AudioError(source, "contains NaN or infinite samples")
    if len(mono) and float(np.max(np.abs(mono))) > MAX_ABS_SAMPLE:
        raise AudioError(
            source, f"contains samples of impossible magnitude (peak {float(np.max(np.abs(mono))):.3g}; {hint})"
        )


def _check_resampled(mono: np.ndarray, source: str | Path) -> None:
    """The resampler's output is checked too: whatever slipped through must not become NaN downstream."""
    if not np.isfinite(mono).all():
        raise AudioError(source, "resampling produced NaN or infinite samples (the recording is damaged)")


def _too_long(seconds: float, limit_s: float, verb: str) -> str:
    return (
        f"{verb} {seconds:,.0f} s of audio, more than the {limit_s:,.0f} s accepted "
        f"(set {MAX_DURATION_ENV} to allow longer recordings)"
    )


def check_samples(samples: np.ndarray, source: str | Path = "<array>") -> None:
    """The checks that need the whole 16 kHz signal: long enough, not silent."""
    check_duration_and_level(len(samples), float(np.max(np.abs(samples))) if len(samples) else 0.0, source)


def check_duration_and_level(n_samples: int, peak: float, source: str | Path) -> None:
    """Raise AudioError for a signal shorter than MIN_DURATION_S or with its peak below -80 dBFS."""
    duration = n_samples / SAMPLE_RATE
    if duration < MIN_DURATION_S:
        raise AudioError(source, f"too short: {duration:.2f} s, at least {MIN_DURATION_S:g} s of audio is needed")
    if peak < SILENCE_PEAK:
        raise AudioError(source, "is silent (peak below -80 dBFS)")


def prepare(
    mono: np.ndarray, rate: int, source: str | Path = "<array>", max_audio_s: float | None = None
) -> np.ndarray:
    """Resample a mono float signal to 16 kHz and apply the checks of :func:`load`.

    Use this for audio that is already in memory (the Python API accepts arrays).
    """
    mono = np.asarray(mono, dtype=np.float32)
    if mono.ndim != 1:
        raise AudioError(source, f"expected a mono signal (1-D array), got shape {mono.shape}")
    check_values(mono, source)
    check_rate(rate, source)
    limit_s = max_duration_s(max_audio_s)
    if len(mono) / rate > limit_s:
        raise AudioError(source, _too_long(len(mono) / rate, limit_s, "is"))
    if rate != SAMPLE_RATE:
        import soxr  # deferred: soxr is heavy to import

        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        _check_resampled(mono, source)
    check_samples(mono, source)
    return np.ascontiguousarray(mono)


def active_seconds(samples: np.ndarray) -> float:
    """Seconds of audio in frames loud enough to hold speech (a simple energy detector).

    Not a voice activity detector in the strict sense: it measures how much of a clip
    stands out from its own noise floor, which is what separates a real enrollment
    utterance from a clip of room tone with a cough in it.
    """
    return float(active_frames(samples).sum() * FRAME_S)


def active_frames(samples: np.ndarray) -> np.ndarray:
    """Which FRAME_S frames of ``samples`` hold speech by :func:`active_seconds`' rule: (n_frames,) bool
    (a last partial frame is left out)."""
    frame = int(FRAME_S * SAMPLE_RATE)  # samples
    n = len(samples) // frame
    if n == 0:
        return np.zeros(0, bool)
    frames = samples[: n * frame].reshape(n, frame)  # (n_frames, frame)
    energy_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)  # (n_frames,)
    floor = np.percentile(energy_db, 10)
    above_floor = (energy_db >= floor + NOISE_MARGIN_DB) | (energy_db >= LOUD_DBFS)
    return (energy_db >= energy_db.max() - ACTIVE_RANGE_DB) & above_floor


#: Suffixes of headerless sample data, which no decoder can read without being told its format.
RAW_SUFFIXES = frozenset({".raw", ".pcm"})
RAW_REASON = (
    "raw audio without a header: its sample rate and encoding are unknown (convert it to WAV, "
    "or stream it to `speakerdb listen -` with --encoding and --sample-rate)"
)


def _decode_blocks(path: Path, block_s: float) -> tuple[int, Iterator[np.ndarray], int | None]:
    """(sample rate in Hz, blocks of (n, channels) float32, frames the header declares or None).

    Ogg and MP3 go to FFmpeg, which decodes chained streams to their end; the rest to
    libsndfile, then FFmpeg for what libsndfile cannot read. The declared length is given
    only where it is backed by the file's bytes (libsndfile's formats other than Ogg and MP3).
    """
    import soundfile  # deferred: soundfile is heavy to import

    errors: list[BaseException] = []
    parts = _joined_parts(path)
    if parts is not None:
        return _parts_blocks(path, parts, block_s)
    chainable = _looks_chainable(path)
    # Ogg and MP3 are sniffed before libsndfile opens them: mpg123 prints its warnings to stderr.
    if chainable and (decoded := _ffmpeg_or_none(path, block_s, errors)) is not None:
        return (*decoded, None)
    try:
        f = soundfile.SoundFile(str(path))
        if f.format in CHAINABLE_FORMATS and not chainable:  # found by libsndfile, not by its magic bytes
            f.close()
            if (decoded := _ffmpeg_or_none(path, block_s, errors)) is not None:
                return (*decoded, None)
            f = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as sf_error:
        errors.append(sf_error)  # TypeError: libsndfile takes .raw for headerless PCM and asks its rate
    else:
        rate = int(f.samplerate)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            f.close()  # refused before a block is read (check_rate in stream says why)
        # libsndfile reports 2**63-1 frames for streams of unknown length: only a real count counts.
        frames = int(f.frames) if 0 <= f.frames < 2**62 else None
        if f.format in CHAINABLE_FORMATS:  # FFmpeg failed on it: libsndfile may read the first part
            log.debug("%s: ffmpeg: %s; decoded by libsndfile", path, _short(errors[-1]))
            frames = None  # a header that describes one part of the stream, not the file
        return rate, _soundfile_blocks(f, block_s), frames
    raw = path.suffix.lower() in RAW_SUFFIXES  # whatever FFmpeg makes of it, say what raw samples need
    try:
        if not chainable and (decoded := _ffmpeg_or_none(path, block_s, errors)) is not None:
            return (*decoded, None)
    except AudioError:
        if not raw:
            raise
    # The decoders' own words (errno numbers, library names) help a developer, not the user.
    log.debug("%s: %s", path, "; ".join(_short(e) for e in errors))
    if raw:
        raise AudioError(path, RAW_REASON) from None
    raise AudioError(
        path,
        "not a readable audio file (supported: WAV, FLAC, OGG, MP3 and what FFmpeg decodes)",
    ) from None


def _ffmpeg_or_none(path: Path, block_s: float, errors: list[BaseException]) -> tuple[int, Iterator[np.ndarray]] | None:
    """FFmpeg's (rate, blocks) for ``path``, or None with FFmpeg's error added to ``errors``
    (an AudioError, a verdict on the file rather than on the decoder, propagates)."""
    try:
        return _av_blocks(path, block_s)
    except AudioError:
        raise
    except Exception as av_error:  # PyAV raises many types (av.error.*, OSError, ValueError)
        errors.append(av_error)
        return None


def _looks_chainable(path: Path) -> bool:
    """Whether the file starts like an Ogg stream or MPEG audio (an ID3 tag or a frame header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head.startswith((b"OggS", b"ID3")):
        return True
    # An MPEG audio frame header: 11 sync bits, a layer (not the reserved 0, which is ADTS AAC's),
    # a bitrate index that is not 15 and a sample-rate index that is not 3.
    return (
        len(head) == 4
        and head[0] == 0xFF
        and head[1] & 0xE0 == 0xE0
        and (head[1] >> 1) & 3 != 0
        and head[2] >> 4 != 15
        and (head[2] >> 2) & 3 != 3
    )


# WAV, AIFF and FLAC files begin with a header that gives their own length, so libsndfile
# (and FFmpeg) stop at the end of the first of several files joined with `cat`. A later
# part is found by its own header: 8-12 fixed bytes, which PCM or FLAC frames hold by chance
# about once in 2**64 positions.
def _part_header(head: bytes) -> bytes | None:
    """The 4 bytes that begin every part of a file like ``head`` (WAV, AIFF, FLAC), or None."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return head[:4]
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return b"FORM"
    if len(head) >= 8 and head[:4] == b"fLaC" and head[4] & 0x7F == 0 and head[5:8] == b"\x00\x00\x22":
        return b"fLaC"  # the STREAMINFO block, 34 bytes, always first
    return None


def _joined_parts(path: Path) -> list[tuple[int, int]] | None:
    """(start, end) byte offsets of each file joined end to end in ``path``, or None for one file."""
    try:
        with open(path, "rb") as f:
            marker = _part_header(f.read(12))
            if marker is None:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                starts, at = [0], 0
                while (at := data.find(marker, at + 1)) > 0:
                    if _part_header(data[at : at + 12]) == marker:
                        starts.append(at)
                size = len(data)
    except (OSError, ValueError):  # unreadable, empty or not a regular file: the decoders say why
        return None
    if len(starts) == 1:
        return None
    return list(zip(starts, starts[1:] + [size]))


class _Part(io.RawIOBase):
    """Bytes ``start`` to ``end`` of a file, as a file of their own (for libsndfile's virtual I/O)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 (closed with this object)
        self._start, self._size, self._at = start, end - start, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = min(max(0, base + offset), self._size)
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._at)
        if n <= 0:
            return 0
        self._file.seek(self._start + self._at)
        got = self._file.readinto(memoryview(buffer)[:n]) or 0
        self._at += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _parts_blocks(path: Path, parts: list[tuple[int, int]], block_s: float) -> tuple[int, Iterator[np.ndarray], int]:
    """(rate, blocks, declared frames) of recordings joined end to end, decoded part after part.

    Every part must have the first part's sample rate (a joined file of several rates is
    refused rather than decoded in part); channels may differ, since blocks are averaged to mono.
    """
    import soundfile  # deferred: soundfile is heavy to import

    opened: list[soundfile.SoundFile] = []
    try:
        for number, (start, end) in enumerate(parts, 1):
            try:
                opened.append(soundfile.SoundFile(_Part(path, start, end)))
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
                log.debug("%s: part %d: %s", path, number, _short(e))
                raise AudioError(
                    path,
                    f"holds {len(parts)} recordings joined end to end, and part {number} "
                    f"(from byte {start:,}) cannot be decoded: damaged",
                ) from None
        rates = sorted({int(f.samplerate) for f in opened})
        if len(rates) > 1:
            raise AudioError(
                path,
                f"holds {len(parts)} recordings joined end to end at different sample rates "
                f"({', '.join(f'{r:,} Hz' for r in rates)}): decode them as separate files",
            )
    except BaseException:
        for f in opened:
            f.close()
        raise
    declared = sum(int(f.frames) if 0 <= f.frames < 2**62 else 0 for f in opened)

    def blocks() -> Iterator[np.ndarray]:
        try:
            for f in opened:
                yield from _soundfile_blocks(f, block_s)
        finally:
            for f in opened:
                f.close()

    return rates[0], blocks(), declared


def _soundfile_blocks(f, block_s: float) -> Iterator[np.ndarray]:
    with f:
        # float32 reads scale integer PCM to [-1, 1).
        yield from f.blocks(blocksize=max(1, int(block_s * f.samplerate)), dtype="float32", always_2d=True)


def _av_blocks(path: Path, block_s: float) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, blocks of about ``block_s`` s as (n, channels) float32) decoded by FFmpeg.

    Every part of a chained stream comes out at the first part's rate and channel layout
    (back-to-back MP3s may differ), decoded to the end of the file.
    """
    import av  # deferred: av is heavy to import

    container = av.open(str(path))
    try:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError(path, "not an audio file (FFmpeg finds no audio stream in it)")
        rate, layout = int(stream.rate), stream.layout
    except BaseException:
        container.close()
        raise
    per_block = max(1, int(block_s * rate)) if rate > 0 else 1

    def blocks() -> Iterator[np.ndarray]:
        # Planar float keeps channels apart so they are averaged here, like the soundfile
        # path, instead of by FFmpeg's own downmix matrix.
        converter = None
        shape = None  # (format, layout, rate) of the frames the converter was made for
        pending: list[np.ndarray] = []
        n_pending = 0
        skipped = 0  # bytes of packets the decoder rejected

        def convert(frame) -> Iterator[np.ndarray]:
            nonlocal converter, shape
            frame_shape = (frame.format.name, frame.layout.name, frame.sample_rate)
            if frame_shape != shape:  # the first frame, or a part with another rate or layout
                if converter is not None:  # what it still holds of the last part comes first
                    yield from (out.to_ndarray().T for out in converter.resample(None))
                # Vorbis, Opus and MP3 decode to planar float already: no conversion needed.
                same = frame_shape == ("fltp", layout.name, rate)
                converter = None if same else av.AudioResampler(format="fltp", layout=layout, rate=rate)
                shape = frame_shape
            if converter is None:
                yield frame.to_ndarray().T  # (n, channels)
            else:
                yield from (out.to_ndarray().T for out in converter.resample(frame))

        with container:
            try:
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:
                        skipped += packet.size  # junk between or after frames, skipped as ffmpeg does
                        continue
                    for frame in frames:
                        for out in convert(frame):
                            pending.append(out)
                            n_pending += len(out)
                    if n_pending >= per_block:
                        yield np.concatenate(pending)
                        pending, n_pending = [], 0
            except Exception:
                if pending:  # what was decoded goes first, so the error can say how far decoding got
                    yield np.concatenate(pending)
                raise
            if converter is not None:
                pending.extend(out.to_ndarray().T for out in converter.resample(None))
            if pending:
                yield np.concatenate(pending)
        if skipped > MAX_SKIPPED_BYTES:
            log.warning(
                "%s: %s KB of the file is not audio the decoder can read: skipped",
                printable_path(path),
                f"{skipped / 1024:,.0f}",
            )

    return rate, blocks()


def _guard(path: Path, blocks: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Decoder errors met halfway through a file (truncation, corruption, a chained stream whose
    parts FFmpeg cannot join) become AudioError saying where decoding stopped."""
    n = 0  # frames decoded so far
    try:
        for block in blocks:
            n += len(block)
            yield block
    except AudioError:
        raise
    except Exception as e:
        log.debug("%s: decoder error: %s", path, _short(e))
        where = f", after {n / rate:.1f} s" if n else ""
        raise AudioError(path, f"damaged or truncated audio (the decoder stopped partway through{where})") from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]
