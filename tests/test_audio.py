"""Audio in: formats, resampling, channels, integer scaling, and every refusal naming file and reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from speakerdb import audio
from speakerdb.errors import AudioError

from conftest import SR, voice, write


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
    b = audio.load(write(tmp_path / "b.flac", x, subtype="PCM_24"))
    c = audio.load(write(tmp_path / "c.wav", voice(150, 1.0, seed=1), subtype="FLOAT"))
    assert a.sha256 == audio.samples_sha256(x)
    assert a.sha256 != c.sha256
    assert len(b.sha256) == 64


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


def test_truncated_file(tmp_path):
    good = write(tmp_path / "good.flac", voice(150, 2.0)).read_bytes()
    path = tmp_path / "truncated.flac"
    path.write_bytes(good[:40])
    _refusal(path)


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
