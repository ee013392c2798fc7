"""Spectral subtraction before embedding (speakerdb.audio.denoise): the timeline, identify and enroll."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import SR, EnergyDetector, KeepingEmbedder, voice, write
from speakerdb import timeline
from speakerdb.audio import decode as audio
from speakerdb.audio import denoise, vad
from speakerdb.audio.decoded import Decoded


def _blocks(x: np.ndarray, cuts: list[int]):
    edges = [0, *cuts, len(x)]
    return (x[a:b] for a, b in zip(edges, edges[1:]))


def test_a_stream_without_noise_comes_back_unchanged_whatever_its_blocks():
    x = np.random.default_rng(0).standard_normal(SR * 2 + 77).astype(np.float32)
    out = np.concatenate(list(denoise.Denoiser(np.zeros(257)).blocks(_blocks(x, [5, 700, 701, 9000]))))
    assert len(out) == len(x)
    np.testing.assert_allclose(out, x, atol=1e-5)
    assert [len(b) for b in denoise.Denoiser(np.zeros(257)).blocks([x[:100]])] == [100]  # shorter than a frame


def test_a_long_recording_in_memory_is_denoised_a_piece_at_a_time():
    """identify and the API hand whole recordings over as one array: the denoiser's working
    memory stays a few times the output, not the spectra of every frame at once (22 times it)."""
    x = np.random.default_rng(2).standard_normal(SR * 120).astype(np.float32)  # 2 minutes: 7.7 MB
    noise = np.full(vad.FRAME // 2 + 1, 0.5 * float(np.sum(denoise.window(vad.FRAME) ** 2)))
    tracemalloc.start()
    try:
        out = denoise.Denoiser(noise).samples(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == len(x)
    assert peak < 4 * x.nbytes, peak / x.nbytes
    # The same samples as a stream of small blocks gives (the end of the first 10 s aside, which lacks what follows).
    np.testing.assert_array_equal(out[: SR * 9], denoise.Denoiser(noise).samples(x[: SR * 10])[: SR * 9])


def test_steady_noise_is_taken_out_and_the_voice_kept():
    """A tone in white noise as loud as itself: the noise, measured where the tone is silent,
    loses more than 10 dB; the tone keeps its level within 1 dB; the blocks do not matter."""
    rng = np.random.default_rng(1)
    t = np.arange(SR * 3) / SR
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.3 / np.sqrt(2) * rng.standard_normal(len(t))).astype(np.float32)
    spectrum = denoise.NoiseSpectrum(vad.FRAME)
    assert spectrum.power() is None  # nothing heard yet
    quiet = rng.standard_normal(SR) * 0.3 / np.sqrt(2)
    spectrum.add(quiet[: len(quiet) // vad.FRAME * vad.FRAME].reshape(-1, vad.FRAME))
    noise_power = spectrum.power()
    assert noise_power is not None
    whole = np.concatenate(list(denoise.Denoiser(noise_power).blocks([tone + noise])))
    split = np.concatenate(list(denoise.Denoiser(noise_power).blocks(_blocks(tone + noise, [1000, 1001, 20000]))))
    np.testing.assert_allclose(whole, split, atol=1e-5)
    inner = slice(SR // 10, -SR // 10)
    left = float(np.mean((whole[inner] - tone[inner]) ** 2))
    assert 10 * np.log10(float(np.mean(noise[inner] ** 2)) / left) > 10
    kept = float(np.mean(whole[inner] * tone[inner])) / float(np.mean(tone[inner] ** 2))  # the tone's share
    assert abs(10 * np.log10(kept)) < 1


def _watched(x: np.ndarray) -> timeline.SpeechPass:
    speech = timeline.SpeechPass(EnergyDetector(level=0.1), levels=True)  # level: between noise and voice
    for _ in speech.watch(_blocks(x, list(range(7000, len(x), 7000)))):  # blocks across frames
        pass
    speech.finish("x.wav")
    return speech


def test_the_pauses_give_the_noise_and_only_a_noisy_recording_is_denoised():
    rng = np.random.default_rng(3)
    words = voice(150, 3.0)
    speech = np.concatenate([words, np.zeros(SR * 2, np.float32)] * 3)
    power = float(np.mean(words.astype(np.float64) ** 2))
    level = np.sqrt(power / 10)  # white noise 10 dB below the voice
    noisy = _watched(speech + (level * rng.standard_normal(len(speech))).astype(np.float32))
    measured = noisy.noise()
    assert measured is not None and isinstance(noisy.denoiser(), denoise.Denoiser)
    # A white noise's power is flat: its expected value per bin is the frame's window energy times its variance.
    expected = level**2 * float(np.sum(denoise.window(vad.FRAME) ** 2))
    assert 0.8 < float(np.median(measured[5:-5])) / expected < 1.25
    clean = _watched(speech + (np.sqrt(power / 1e5) * rng.standard_normal(len(speech))).astype(np.float32))
    assert clean.noise() is not None and clean.denoiser() is None  # 50 dB: left as it is
    without = timeline.SpeechPass(EnergyDetector(level=0.1))  # the pass made without levels measures nothing
    for _ in without.watch([speech]):
        pass
    assert without.noise() is None and without.denoiser() is None


@pytest.mark.parametrize("noise_db, denoised", [(10, True), (50, False)])
def test_a_noisy_recordings_windows_are_embedded_denoised(tmp_path, monkeypatch, noise_db, denoised):
    """The timeline embeds a noisy recording's windows with its noise taken out, and says so
    in a note; a clean one's windows are embedded as they are."""
    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector(level=0.1))
    rng = np.random.default_rng(4)
    words = voice(150, 3.0)
    x = np.concatenate([words, np.zeros(SR * 2, np.float32)] * 3)
    x = x + (np.sqrt(float(np.mean(words**2)) / 10 ** (noise_db / 10)) * rng.standard_normal(len(x))).astype(np.float32)
    path = write(tmp_path / "x.wav", x)
    embedder = KeepingEmbedder()
    with Decoded(path) as decoded:
        planned = timeline.plan(decoded, timeline.Params())
        found = timeline.build(decoded, embedder, timeline.Gallery.empty(embedder.dim, 0.8))
    assert (planned.denoiser is not None) is denoised
    assert [n.startswith("noisy recording (speech 1") for n in found.notes] == ([True] if denoised else [])
    raw = list(timeline.cut_windows([audio.load(path).samples], planned.spans))
    assert len(raw) == len(embedder.windows) > 0
    changed = [not np.allclose(a, b, atol=1e-4) for a, b in zip(raw, embedder.windows)]
    assert all(changed) if denoised else not any(changed)


def test_a_recording_in_memory_is_denoised_only_when_noisy():
    """denoise.denoised, what identify and enroll run on each window they embed."""
    rng = np.random.default_rng(5)
    words = voice(150, 3.0)
    speech = np.concatenate([words, np.zeros(SR * 2, np.float32)] * 3)
    power = float(np.mean(words.astype(np.float64) ** 2))
    noisy = (speech + np.sqrt(power / 10) * rng.standard_normal(len(speech))).astype(np.float32)
    out, snr = denoise.denoised(noisy, EnergyDetector(level=0.1))
    assert snr is not None and 7 < snr < 13 and len(out) == len(noisy)
    pauses = slice(int(3.2 * SR), int(4.8 * SR))
    assert np.mean(out[pauses] ** 2) < 0.1 * np.mean(noisy[pauses] ** 2)  # the noise is 10 dB down or more
    clean = (speech + np.sqrt(power / 1e5) * rng.standard_normal(len(speech))).astype(np.float32)
    same, none = denoise.denoised(clean, EnergyDetector(level=0.1))
    assert none is None and same is clean
    # A sound card's DC offset (0.02: -34 dBFS) under a voice at -25 dBFS is not noise: the
    # levels are measured without it, and the recording is left as it came.
    offset = (0.3 * clean + 0.02).astype(np.float32)
    same, none = denoise.denoised(offset, EnergyDetector(level=0.03))
    assert none is None and same is offset
    # Digital silence (a stream's zeros before the call is answered) is not the call's noise:
    # however long, it does not make a noisy recording pass for clean.
    zeros_first = np.concatenate([np.zeros(SR * 10, np.float32), noisy])
    assert denoise.denoised(zeros_first, EnergyDetector(level=0.1))[1] == pytest.approx(snr, abs=1)
    # Under a second of speech heard: the "pauses" may be a voice the VAD missed, not noise.
    burst = np.concatenate([voice(150, 0.8), np.zeros(SR * 3, np.float32)])
    burst = (burst + np.sqrt(power / 10) * rng.standard_normal(len(burst))).astype(np.float32)
    assert denoise.denoised(burst, EnergyDetector(level=0.1))[1] is None


LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "test-other"


@pytest.mark.librispeech
@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech excerpts not found at {LIBRISPEECH}")
def test_identify_names_calls_at_10_db_against_clean_enrollment(tmp_path):
    """Ten speakers enrolled from clean recordings; one other recording of each with white
    noise 10 dB under its speech: identify names most of them, and none wrongly."""
    pytest.importorskip("resemblyzer")
    from speakerdb import SpeakerDB

    rng = np.random.default_rng(0)
    speakers = sorted(p.name for p in LIBRISPEECH.iterdir() if p.is_dir())
    files = {s: sorted((LIBRISPEECH / s).glob("*.flac")) for s in speakers}
    probes = []
    for s in speakers:
        x = audio.load(files[s][5]).samples.astype(np.float64)
        noise = rng.standard_normal(len(x)) * np.sqrt(np.mean(x**2) / 10)
        probes.append(write(tmp_path / f"{s}.wav", (x + noise).astype(np.float32)))
    with SpeakerDB(tmp_path / "db.sqlite", model="resemblyzer") as db:
        for s in speakers:
            db.enroll(s, files[s][:3])
        found = db.identify(probes)
    named = [r.speaker for r in found]
    assert all(n in (None, s) for n, s in zip(named, speakers)), named
    assert sum(n == s for n, s in zip(named, speakers)) >= 4, [(r.speaker, r.score) for r in found]
