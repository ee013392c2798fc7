"""Hear once: identify's and verify's two uses of Silero share one pass over each file.

The embedding judges the noise of each 30 s window (``pipeline.heard``: denoised if noisy),
and the voice count finds the speech of the whole file (``timeline.plan``). Both start at the
file's first sample with a fresh detector, so the count replays the embedding's pass over the
first window (``vad.hear``, ``vad.Resumed``) and the model runs only on what follows it:
nothing more for a file of one window (up to 45 s). The answers are the ones two passes gave.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import SR, EnergyDetector, FakeEmbedder, speech, write
from speakerdb import SpeakerDB, timeline
from speakerdb.audio import decode as audio
from speakerdb.audio import denoise, vad
from speakerdb.audio.decoded import Decoded
from speakerdb.embedding import pipeline

#: How far Silero's probabilities may move when the same samples reach it in other blocks.
ROUNDING = 1e-5


@pytest.fixture
def frames_run(monkeypatch) -> list[int]:
    """The frames Silero's model ran on, call by call (SileroVAD._run)."""
    runs: list[int] = []
    real = vad.SileroVAD._run

    def counting(self, frames: np.ndarray) -> np.ndarray:
        runs.append(len(frames))
        return real(self, frames)

    monkeypatch.setattr(vad.SileroVAD, "_run", counting)
    return runs


def _frames(n_samples: int) -> int:
    """Frames in one pass of Silero over ``n_samples`` samples (the last one zero-padded)."""
    return math.ceil(n_samples / vad.FRAME)


@pytest.fixture(scope="module")
def recordings() -> dict[str, np.ndarray]:
    """Generated speech that Silero hears: one voice, two voices, one voice with pauses under
    white noise 10 dB below it (denoised), and one voice over two 30 s windows."""
    rng = np.random.default_rng(7)
    gap = np.zeros(SR // 2, np.float32)
    one = speech(120, 6, seed=1)
    two = np.concatenate([speech(110, 5, seed=2), gap, speech(230, 5, seed=3, tract=0.8)])
    words = [speech(150, 2.5, seed=s) for s in (4, 5, 6)]
    power = float(np.mean(np.concatenate(words).astype(np.float64) ** 2))
    clean = np.concatenate([np.concatenate([w, np.zeros(SR, np.float32)]) for w in words])
    noisy = (clean + np.sqrt(power / 10) * rng.standard_normal(len(clean))).astype(np.float32)
    long = np.concatenate([speech(140, 10, seed=s) for s in range(10, 15)])[: 50 * SR]
    return {"one": one, "two": two, "noisy": noisy, "long": long}


def test_the_recordings_are_what_they_claim(recordings):
    assert denoise.denoised(recordings["noisy"])[1] is not None  # judged noisy
    assert denoise.denoised(recordings["one"])[1] is None
    assert len(recordings["long"]) > 1.5 * pipeline.WINDOW


# ---- the detector --------------------------------------------------------------------------------
def test_blocks_of_any_size_give_silero_the_same_probabilities(recordings):
    """What sharing one pass rests on: Silero's probabilities do not depend on how the
    recording is cut into blocks (the embedding feeds a window whole, the count a decode's
    blocks). Bit for bit on the Xeon it was written on; within rounding is all the count needs,
    and onnxruntime's kernels for another CPU may batch frames differently."""
    samples = recordings["two"]
    whole = vad.probabilities([samples])
    for size in (1000, 4096, 160_000, 16_384 * 17):
        cut = vad.probabilities(np.split(samples, range(size, len(samples), size)))
        np.testing.assert_allclose(cut, whole, rtol=0, atol=ROUNDING)


def test_a_resumed_detector_gives_what_one_uninterrupted_pass_gives(recordings, frames_run):
    """Replayed, then carried on from the detector's state, over any blocks: the same
    probabilities as a fresh detector's (up to the rounding of other block cuts), with the
    model run only on the rest."""
    samples = recordings["long"]
    fresh = vad.probabilities([samples], vad.SileroVAD())
    rng = np.random.default_rng(0)
    for n_heard in (len(samples), vad.FRAME * 700, pipeline.WINDOW, 12_345):
        heard = vad.hear(samples[:n_heard])
        assert np.array_equal(heard.probabilities(), vad.probabilities([samples[:n_heard]]))
        for cuts in ([], [160_000, 320_000, 480_000, 640_000], sorted(rng.integers(0, len(samples), 9))):
            frames_run.clear()
            resumed = vad.probabilities(np.split(samples, cuts), vad.Resumed(heard, vad.SileroVAD()))
            np.testing.assert_allclose(resumed, fresh, rtol=0, atol=ROUNDING)
            rest = 0 if n_heard == len(samples) else _frames(len(samples)) - n_heard // vad.FRAME
            assert sum(frames_run) == rest
    with pytest.raises(ValueError):  # a shorter recording is not the one heard
        vad.probabilities([samples[:1000]], vad.Resumed(vad.hear(samples[:2000]), vad.SileroVAD()))


def test_a_window_heard_before_is_judged_as_if_heard_now(recordings, frames_run):
    for samples in (recordings["noisy"], recordings["one"]):
        heard = vad.hear(samples)
        frames_run.clear()
        out, snr = denoise.denoised(samples, heard=heard)
        assert frames_run == []
        again, snr_again = denoise.denoised(samples)
        assert snr == snr_again and out.tobytes() == again.tobytes()
    with pytest.raises(ValueError):
        denoise.denoised(samples[:-1], heard=heard)


def test_a_voice_count_with_another_detector_runs_it_as_before(tmp_path, recordings):
    """A detector that is not Silero (the tests' energy VAD, webrtc) runs over the whole file:
    what Silero heard is not its own."""
    path = write(tmp_path / "two.wav", recordings["two"])
    heard = vad.hear(recordings["two"])
    params = timeline.VOICE_CHECK_PARAMS
    with Decoded(path) as decoded:
        energy = timeline.plan(decoded, params, EnergyDetector(), heard)
        assert energy.regions == timeline.plan(decoded, params, EnergyDetector()).regions
        assert energy.regions != timeline.plan(decoded, params, vad.SileroVAD(), heard).regions
        counter = timeline.VoiceCounter(FakeEmbedder(), 0.5, EnergyDetector())
        assert counter.finish([counter.prepare(decoded, heard)]) == counter.finish([counter.prepare(decoded)])


# ---- identify and verify -------------------------------------------------------------------------
def _hearing_twice(m: pytest.MonkeyPatch) -> None:
    """The behaviour before: the embedding's pass is not handed to the voice count."""
    real = pipeline.embed_clips
    m.setattr(pipeline, "embed_clips", lambda *args, first_heard=None, **kwargs: real(*args, **kwargs))


def _expected_frames(samples: np.ndarray) -> int:
    """Frames run for identify or verify of ``samples``, each part heard once: the file by the
    voice count (its first window replayed from the embedding's pass), then the windows that do
    not start the file by the embedding alone (a fresh detector on frames 480,000 samples on,
    which no pass over the file gives), and again the file denoised if it is noisy (the count
    finds its speech in what is left)."""
    windows = list(pipeline.windows([samples]))
    n = _frames(len(samples)) + sum(_frames(len(w)) for w in windows[1:])
    if len(windows) > 1:
        n += 1  # the first window's own zero-padded last frame (480,000 is not a multiple of 512)
    if denoise.denoised(samples)[1] is not None:
        n += _frames(len(samples))
    return n


@pytest.fixture
def db(tmp_path):
    with SpeakerDB(tmp_path / "d.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("ann", [write(tmp_path / "ann.wav", speech(120, 5, seed=20))])
        db.enroll("ben", [write(tmp_path / "ben.wav", speech(230, 5, seed=21, tract=0.8))])
        yield db


@pytest.mark.parametrize("name", ["one", "two", "noisy", "long"])
def test_identify_and_verify_hear_each_file_once(db, tmp_path, recordings, frames_run, monkeypatch, name):
    samples = recordings[name]
    path = write(tmp_path / f"{name}.wav", samples)
    expected = _expected_frames(samples)

    frames_run.clear()
    [found] = db.identify([path])
    assert sum(frames_run) == expected
    frames_run.clear()
    checked = db.verify("ann", path)
    assert sum(frames_run) == expected
    assert found.ok and found.voices is not None and checked.voices == found.voices

    # The answers two passes gave, bit for bit: scores, voices, the denoising's effect on them.
    with monkeypatch.context() as m:
        _hearing_twice(m)
        frames_run.clear()
        [before] = db.identify([path])
        assert sum(frames_run) > expected  # the switch does turn the sharing off
        checked_before = db.verify("ann", path)
    assert found.to_dict() == before.to_dict()
    assert checked.to_dict() == checked_before.to_dict()


def test_a_batch_of_files_is_heard_once_each(db, tmp_path, recordings, frames_run, monkeypatch):
    """Short files embedded together (one forward pass) keep each its own pass, by position."""
    paths = [write(tmp_path / f"{name}.wav", recordings[name]) for name in ("one", "two", "noisy", "one")]
    frames_run.clear()
    results = db.identify(paths)
    assert sum(frames_run) == sum(_expected_frames(recordings[p.stem]) for p in paths)
    with monkeypatch.context() as m:
        _hearing_twice(m)
        before = db.identify(paths)
    assert [r.to_dict() for r in results] == [r.to_dict() for r in before]
    assert [r.voices for r in results] == [1, 2, 1, 1]


def test_audio_in_memory_is_heard_once_too(db, recordings, frames_run, monkeypatch):
    """Samples given to the API (no file: what the service's workers and Python callers may pass)."""
    clip = audio.Audio("two", recordings["two"])
    frames_run.clear()
    [found] = db.identify([clip])
    assert sum(frames_run) == _expected_frames(recordings["two"])
    with monkeypatch.context() as m:
        _hearing_twice(m)
        [before] = db.identify([clip])
    assert found.to_dict() == before.to_dict()
