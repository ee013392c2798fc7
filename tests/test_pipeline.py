"""Windows for long recordings: exact for short ones, linear and bounded-memory for long ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import FakeEmbedder, voice, write
from speakerdb.audio import decode as audio
from speakerdb.embedding import pipeline

W = 1000  # a small window, for the pure regrouping tests


@pytest.mark.parametrize(
    "total, expected",
    [
        (400, [400]),
        (1000, [1000]),
        (1400, [1400]),  # remainder < W/2 joins the window before it
        (1500, [1000, 500]),
        (1600, [1000, 600]),
        (10_000, [1000] * 10),
        (10_300, [1000] * 9 + [1300]),
        (0, []),
    ],
)
def test_window_lengths(total, expected):
    signal = np.arange(total, dtype=np.float32)
    for block in (7, 333, 1000, 5000, max(total, 1)):
        blocks = [signal[i : i + block] for i in range(0, total, block)]
        got = list(pipeline.windows(blocks, W))
        assert [len(w) for w in got] == expected
        if got:
            np.testing.assert_array_equal(np.concatenate(got), signal)  # nothing lost, nothing repeated


def test_short_recordings_are_one_window_and_exact(tiny_embedder, tmp_path):
    wave = voice(180, 40.0)  # < 1.5 x 30 s: one window, the model sees all of it
    clip = pipeline.embed_clip(write(tmp_path / "a.wav", wave, subtype="FLOAT"), tiny_embedder)
    assert clip.n_windows == 1
    assert np.max(np.abs(clip.vector - tiny_embedder.embed([wave])[0])) < 1e-6


def test_long_recordings_are_a_weighted_mean_of_windows(tmp_path):
    wave = np.concatenate([voice(120 + 10 * k, 30.0, seed=k) for k in range(3)] + [voice(300, 20.0, seed=9)])  # 110 s
    fake = FakeEmbedder()
    clip = pipeline.embed_clip(write(tmp_path / "long.wav", wave, subtype="FLOAT"), fake)
    assert clip.n_windows == 4 and clip.duration_s == pytest.approx(110.0)
    parts = [wave[i * pipeline.WINDOW : (i + 1) * pipeline.WINDOW] for i in range(4)]
    expected = sum(fake.embed([p])[0] * len(p) for p in parts)
    np.testing.assert_allclose(clip.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert clip.sha256 == audio.samples_sha256(wave)


def test_streamed_decoding_equals_whole_file_decoding(tmp_path):
    wave = voice(150, 25.0, sr=44_100)
    path = write(tmp_path / "hi-rate.flac", np.stack([wave, 0.5 * wave], axis=1), sr=44_100)
    whole = audio.load(path)
    streamed = np.concatenate(list(audio.stream(path, block_s=0.7)))
    np.testing.assert_array_equal(streamed, whole.samples)
    assert pipeline.embed_clip(path, FakeEmbedder()).sha256 == whole.sha256


def test_checks_apply_to_the_whole_recording(tmp_path):
    from speakerdb.errors import AudioError

    fake = FakeEmbedder()
    with pytest.raises(AudioError, match="silent"):
        pipeline.embed_clip(write(tmp_path / "quiet.wav", np.zeros(16000 * 40, np.float32)), fake)
    assert fake.calls == 0  # refused before any window was embedded
    with pytest.raises(AudioError, match="too short"):
        pipeline.embed_clip(write(tmp_path / "short.wav", voice(100, 0.3)), fake)


HOUR_SCRIPT = """
import resource, sys
from conftest import FakeEmbedder
from speakerdb.embedding import pipeline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
clip = pipeline.embed_clip(sys.argv[1], FakeEmbedder())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(clip.n_windows, round(clip.duration_s), (after - before) // 1024)
"""


@pytest.mark.slow
def test_an_hour_long_file_in_bounded_memory(tmp_path):
    path = tmp_path / "hour.wav"
    block = (voice(140, 60.0) * 32767).astype(np.int16)  # one minute
    with sf.SoundFile(str(path), "w", samplerate=16_000, channels=1, subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)
    out = subprocess.run(
        [sys.executable, "-c", HOUR_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},  # conftest's FakeEmbedder
    )
    assert out.returncode == 0, out.stderr
    n_windows, seconds, grew_mib = map(int, out.stdout.split())
    assert (n_windows, seconds) == (120, 3600)
    # The decoded hour alone would be 230 MiB of float32; the pipeline holds a few windows.
    assert grew_mib < 80, f"peak memory grew by {grew_mib} MiB"


class _BrokenEmbedder(FakeEmbedder):
    """Returns what a model fed damaged input returns: NaN, or a vector that is not unit length."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def embed(self, waveforms):
        return np.full((len(waveforms), self.dim), self.value, dtype=np.float32)


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.0])
def test_only_finite_unit_vectors_leave_the_pipeline(tmp_path, value):
    from speakerdb.errors import AudioError

    path = write(tmp_path / "v.wav", voice(150, 1.0))
    with pytest.raises(AudioError, match="unusable embedding") as err:
        pipeline.embed_clip(path, _BrokenEmbedder(value))
    assert str(path) in str(err.value)


def test_arrays_given_to_the_api_are_checked_for_nan():
    from speakerdb.errors import AudioError

    samples = voice(150, 1.0)
    samples[10] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        pipeline.embed_clip(audio.Audio("array", samples), FakeEmbedder())


class _WarningEmbedder(FakeEmbedder):
    """Warns inside embed(), as the GE2E encoder does for a clip without speech."""

    def embed(self, waveforms):
        import logging

        logging.getLogger("speakerdb").warning("the voice activity detector found 0.00 s of speech")
        return super().embed(waveforms)


def test_warnings_from_the_model_name_their_file(tmp_path, caplog):
    import logging

    path = write(tmp_path / "hum.wav", voice(150, 1.0))
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        pipeline.embed_clip(path, _WarningEmbedder())
    [record] = caplog.records
    assert record.getMessage().startswith(f"{path}: the voice activity detector")
    caplog.clear()
    import logging as _logging

    _logging.getLogger("speakerdb").warning("later")  # the file's name does not stick to other records
    assert caplog.records[0].getMessage() == "later"


class _CountingEmbedder(FakeEmbedder):
    """Records the number of clips in each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def embed(self, waveforms):
        self.batches.append(len(waveforms))
        return super().embed(waveforms)


def test_equal_length_short_clips_share_a_forward_pass(tmp_path, tiny_embedder):
    """embed_clips: what embed_clip gives each file, with short files of one length in one pass,
    long files windowed, and a bad file's AudioError in its place."""
    short = [write(tmp_path / f"s{k}.wav", voice(120 + 40 * k, 3.0, seed=k), subtype="FLOAT") for k in range(3)]
    other = write(tmp_path / "other.wav", voice(200, 2.0, seed=5), subtype="FLOAT")
    long = write(tmp_path / "long.wav", voice(150, 70.0, seed=6), subtype="FLOAT")
    bad = write(tmp_path / "bad.wav", voice(100, 0.3))
    sources = [short[0], long, bad, short[1], other, short[2]]
    counting = _CountingEmbedder()
    got = dict(pipeline.embed_clips(sources, counting))
    assert sorted(got) == list(range(6)) and isinstance(got[2], pipeline.AudioError)
    assert sorted(counting.batches) == [1, 1, 1, 3]  # the long file's two windows, "other", the three 3 s clips
    for i, source in enumerate(sources):
        if i != 2:
            alone = pipeline.embed_clip(source, FakeEmbedder())
            assert (got[i].source, got[i].sha256, got[i].n_windows) == (alone.source, alone.sha256, alone.n_windows)
            np.testing.assert_allclose(got[i].vector, alone.vector, atol=1e-6)
    # A real model (the tiny WavLM) stacked gives each clip its own vector, to float rounding.
    stacked = dict(pipeline.embed_clips(short, tiny_embedder))
    for i, source in enumerate(short):
        np.testing.assert_allclose(stacked[i].vector, pipeline.embed_clip(source, tiny_embedder).vector, atol=1e-5)
    # Read-ahead is bounded: with room for one clip, each goes alone.
    counting.batches.clear()
    list(pipeline.embed_clips(short, counting, batch_ahead_s=1.0))
    assert counting.batches == [1, 1, 1]
    # At most BATCH_FORWARD_S of audio per pass: 3 s clips go by 10.
    counting.batches.clear()
    clips = [audio.Audio(f"c{k}", voice(100 + 10 * k, 3.0, seed=k)) for k in range(11)]
    assert len(dict(pipeline.embed_clips(clips, counting))) == 11
    assert counting.batches == [10, 1] and pipeline.BATCH_FORWARD_S == 30.0
