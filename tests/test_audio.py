"""Audio in: formats, resampling, channels, integer scaling, and every refusal naming file and reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, voice, write
from speakerdb.audio import decode as audio
from speakerdb.errors import AudioError, InvalidInputError


@pytest.mark.parametrize(
    "suffix, kwargs",
    [
        (".wav", {"subtype": "PCM_16"}),
        (".wav", {"subtype": "PCM_24"}),
        (".wav", {"subtype": "FLOAT"}),
        (".flac", {}),
        (".ogg", {"format": "OGG", "subtype": "VORBIS"}),
        (".mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
    ],
)
def test_formats_decode_to_16k_mono_float32(tmp_path, suffix, kwargs):
    x = voice(150, 2.0)
    path = write(tmp_path / f"v{suffix}", x, **kwargs)
    clip = audio.load(path)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    # Lossy codecs add encoder delay and padding; the duration stays within 0.1 s.
    assert clip.duration_s == pytest.approx(2.0, abs=0.1)
    if suffix in (".wav", ".flac"):  # lossless: the samples themselves survive
        assert np.max(np.abs(clip.samples - x)) < 1e-3


def test_ffmpeg_fallback_for_formats_libsndfile_cannot_read(tmp_path):
    av = pytest.importorskip("av")
    x = voice(150, 2.0)
    path = tmp_path / "v.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate = SR
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(path))
    clip = audio.load(path)
    # AAC adds 1024 samples of priming plus a padded last frame: 2.0 s comes back as ~2.11 s.
    assert clip.duration_s == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_any_rate_is_resampled_to_16k(tmp_path, rate):
    path = write(tmp_path / "v.wav", voice(150, 1.5, sr=rate), sr=rate)
    clip = audio.load(path)
    assert len(clip.samples) == pytest.approx(1.5 * SR, abs=2)
    # The fundamental stays at 150 Hz after resampling.
    spectrum = np.abs(np.fft.rfft(clip.samples))
    peak_hz = np.argmax(spectrum) * SR / len(clip.samples)
    assert peak_hz == pytest.approx(150, abs=3)


def test_channels_are_averaged(tmp_path):
    x = voice(150, 1.0)
    stereo = np.stack([x, 0.5 * x], axis=1)  # (n, 2)
    clip = audio.load(write(tmp_path / "s.wav", stereo, subtype="FLOAT"))
    np.testing.assert_allclose(clip.samples, 0.75 * x, atol=1e-6)


def test_integers_are_scaled_to_unit_range(tmp_path):
    ints = (voice(150, 1.0) / 0.5 * 16000).astype(np.int16)
    clip = audio.load(write(tmp_path / "i.wav", ints, subtype="PCM_16"))
    np.testing.assert_allclose(clip.samples, ints / 32768.0, atol=1e-7)


def test_sha256_is_of_decoded_audio(tmp_path):
    x = voice(150, 1.0)
    a = audio.load(write(tmp_path / "a.wav", x, subtype="FLOAT"))
    c = audio.load(write(tmp_path / "c.wav", voice(150, 1.0, seed=1), subtype="FLOAT"))
    assert a.sha256 == audio.samples_sha256(x)
    assert a.sha256 != c.sha256
    # The same 16-bit recording in two containers (bytes on disk differ) hashes the same.
    pcm = (x * 32767).astype(np.int16)
    wav = write(tmp_path / "p.wav", pcm, subtype="PCM_16")
    flac = write(tmp_path / "p.flac", pcm, subtype="PCM_16")
    assert wav.read_bytes() != flac.read_bytes()
    assert audio.load(wav).sha256 == audio.load(flac).sha256 == audio.samples_sha256(pcm / np.float32(32768))


def _refusal(path) -> str:
    with pytest.raises(AudioError) as err:
        audio.load(path)
    assert str(path) in str(err.value)
    return err.value.reason


def test_missing_file(tmp_path):
    assert "no such file" in _refusal(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty" in _refusal(path)


def test_directory(tmp_path):
    assert "directory" in _refusal(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.flac"
    path.write_bytes(b"fLaC" + os.urandom(3000))
    assert "not a readable audio file" in _refusal(path)


@pytest.mark.parametrize("name", ["call.raw", "CALL.RAW", "call.pcm"])
def test_headerless_raw_audio_is_refused_in_one_line(tmp_path, name):
    """libsndfile asks a .raw file for its sample rate (TypeError, a traceback from every audio
    command); raw samples have none to give, so the refusal says how to use them instead."""
    path = tmp_path / name
    path.write_bytes((voice(150, 2.0) * 32767).astype("<i2").tobytes())
    reason = _refusal(path)
    assert reason.startswith("raw audio without a header") and "speakerdb listen -" in reason


def test_truncated_file(tmp_path):
    good = write(tmp_path / "good.flac", voice(150, 2.0)).read_bytes()
    path = tmp_path / "truncated.flac"
    path.write_bytes(good[: len(good) // 2])  # the header and the first frames are intact
    # The file opens; the decoder fails partway through, which is the path under test.
    assert sf.info(str(path)).frames > 0
    reason = _refusal(path)
    assert reason.startswith("damaged or truncated audio")


def test_decoder_errors_do_not_leak_internals(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF" + os.urandom(3000))
    reason = _refusal(path)
    assert reason.startswith("not a readable audio file")
    assert "Errno" not in reason and "libsndfile" not in reason and "ffmpeg:" not in reason


def _float_wav_at_44k(tmp_path, value: float):
    """2 s of voice at 44.1 kHz, float32, with a 1 ms burst of ``value`` in the middle."""
    rate = 44_100
    x = voice(150, 2.0, sr=rate)
    x[rate : rate + rate // 1000] = value
    return write(tmp_path / "burst.wav", x, sr=rate, subtype="FLOAT")


def test_huge_finite_samples_are_refused(tmp_path):
    # 3e38 is finite, so the NaN check passed it; soxr then turned it into hundreds of NaNs.
    reason = _refusal(_float_wav_at_44k(tmp_path, 3e38))
    assert "impossible magnitude" in reason


def test_samples_are_checked_after_resampling(tmp_path, monkeypatch):
    # With the magnitude check out of the way, the resampler's own output check must catch it.
    monkeypatch.setattr(audio, "MAX_ABS_SAMPLE", float("inf"))
    reason = _refusal(_float_wav_at_44k(tmp_path, 3e38))
    assert "resampling produced NaN" in reason
    with pytest.raises(AudioError, match="resampling produced NaN"):
        audio.prepare(audio.load(write(tmp_path / "ok.wav", voice(150, 1.0))).samples * 1e38 * 3, 44_100)


def test_fifo_is_refused_without_hanging(tmp_path):
    import threading

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_catch(lambda: audio.load(fifo))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # the old code blocks in open(): give it a writer so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=10)
        pytest.fail("loading a FIFO hung")
    [error] = outcome
    assert isinstance(error, AudioError) and "not a regular file" in error.reason


def _catch(fn):
    try:
        fn()
    except Exception as e:  # returned to the test thread for its assertions
        return e
    return None


@pytest.mark.parametrize("rate", [1, 100, 2_000_000])
def test_implausible_sample_rate(tmp_path, rate):
    # 20 KB declaring 1 Hz is 10,000 s of audio: it ran for minutes.
    path = write(tmp_path / "rate.wav", (voice(150, 1.0)[:10_000] * 32767).astype(np.int16), sr=rate)
    assert "implausible sample rate" in _refusal(path)


def _wav_header(n_data_bytes: int, rate: int = SR) -> bytes:
    """A 16-bit mono PCM WAV header declaring ``n_data_bytes`` of samples."""
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + n_data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", n_data_bytes)
    )


def test_sparse_zeros_stop_early(tmp_path):
    # A header and 3 hours of zeros (345 MB, sparse on disk): decoding stops after
    # MAX_SILENT_RUN_S of digital silence instead of reading (and embedding) it all.
    import time

    n_bytes = 3 * 3600 * SR * 2
    path = tmp_path / "zeros.wav"
    with open(path, "wb") as f:
        f.write(_wav_header(n_bytes))
        f.truncate(44 + n_bytes)
    started = time.monotonic()
    reason = _refusal(path)
    assert "digital silence" in reason and "decoding stopped" in reason
    assert time.monotonic() - started < 20  # 300 s of audio to read, not 10,800


def test_declared_length_beyond_the_maximum_is_refused_before_decoding(tmp_path):
    n_bytes = 2**32 - 64  # 37 h at 16 kHz: the largest a WAV header can declare
    path = tmp_path / "huge.wav"
    with open(path, "wb") as f:
        f.write(_wav_header(n_bytes))
        f.truncate(44 + n_bytes)
    reason = _refusal(path)
    assert "declares" in reason and "SPEAKERDB_MAX_AUDIO_S" in reason


def test_maximum_duration_is_configurable(tmp_path, monkeypatch):
    path = write(tmp_path / "v.wav", voice(150, 3.0))
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_S", "2")
    assert "more than the 2 s accepted" in _refusal(path)
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_S", "4")
    assert audio.load(path).duration_s == pytest.approx(3.0)
    monkeypatch.setenv("SPEAKERDB_MAX_AUDIO_S", "nan")  # a bad setting, not a bad file
    with pytest.raises(InvalidInputError, match="^SPEAKERDB_MAX_AUDIO_S must be a positive number of seconds"):
        audio.load(path)


def test_unsupported_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 100)
    assert _refusal(path).startswith(("not an audio file", "not a readable audio file"))


def test_too_short(tmp_path):
    reason = _refusal(write(tmp_path / "short.wav", voice(150, 0.2)))
    assert "too short" in reason and "0.20 s" in reason


def test_nan_samples(tmp_path):
    x = voice(150, 1.0)
    x[100] = np.nan
    assert "NaN" in _refusal(write(tmp_path / "nan.wav", x, subtype="FLOAT"))


def test_silence(tmp_path):
    assert "silent" in _refusal(write(tmp_path / "silence.wav", np.zeros(SR, np.float32)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable(tmp_path):
    path = write(tmp_path / "locked.wav", voice(150, 1.0))
    path.chmod(0)
    assert "permission denied" in _refusal(path)


def test_infinite_samples(tmp_path):
    x = voice(150, 1.0)
    x[5] = np.inf
    assert "NaN or infinite" in _refusal(write(tmp_path / "inf.wav", x, subtype="FLOAT"))


def test_mislabelled_files_are_decoded_by_content(tmp_path):
    """An MP3 named .wav still decodes (formats are sniffed, not guessed from the name)..."""
    real_mp3 = write(tmp_path / "take.mp3", voice(150, 2.0), format="MP3", subtype="MPEG_LAYER_III")
    renamed = tmp_path / "take.wav"
    renamed.write_bytes(real_mp3.read_bytes())
    assert audio.load(renamed).duration_s == pytest.approx(2.0, abs=0.1)
    # ...and a text file named .flac is refused with the reason.
    fake = tmp_path / "notes.flac"
    fake.write_text("not audio at all\n" * 50)
    assert _refusal(fake).startswith(("not an audio file", "not a readable audio file"))
    # Found by this test: FFmpeg reports a stream with sample rate 0 for this one.
    fake.write_text("this is not audio\n" * 100)
    assert _refusal(fake).startswith(("not an audio file", "not a readable audio file"))
