"""Hear once: a pass of Silero over the start of a recording, kept (``vad.hear``) and carried
on later (``vad.Resumed``), gives what one uninterrupted pass gives, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import SR, speech
from speakerdb.audio import denoise, vad
from speakerdb.embedding import pipeline


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
    blocks), with this machine's onnxruntime kernels."""
    samples = recordings["two"]
    whole = vad.probabilities([samples])
    for size in (1000, 4096, 160_000, 16_384 * 17):
        assert np.array_equal(vad.probabilities(np.split(samples, range(size, len(samples), size))), whole)


def test_a_resumed_detector_gives_what_one_uninterrupted_pass_gives(recordings, frames_run):
    """Replayed, then carried on from the detector's state, over any blocks: the same
    probabilities, bit for bit, as a fresh detector's, with the model run only on the rest."""
    samples = recordings["long"]
    fresh = vad.probabilities([samples], vad.SileroVAD())
    rng = np.random.default_rng(0)
    for n_heard in (len(samples), vad.FRAME * 700, pipeline.WINDOW, 12_345):
        heard = vad.hear(samples[:n_heard])
        assert np.array_equal(heard.probabilities(), vad.probabilities([samples[:n_heard]]))
        for cuts in ([], [160_000, 320_000, 480_000, 640_000], sorted(rng.integers(0, len(samples), 9))):
            frames_run.clear()
            resumed = vad.probabilities(np.split(samples, cuts), vad.Resumed(heard, vad.SileroVAD()))
            assert np.array_equal(resumed, fresh)
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
