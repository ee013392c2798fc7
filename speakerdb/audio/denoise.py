"""Spectral subtraction: a recording's steady noise, measured in its pauses, taken out of its speech.

A speaker embedding of noisy speech carries the noise with it: at 10 dB the windows of one
speaker scatter with the level of his speech over the noise, and the clustering finds two
voices where there is one. The noise of a call or a room is steady enough to be measured in
the pauses the VAD finds (:class:`NoiseSpectrum`) and subtracted, bin by bin, from each frame of
the speech before it is embedded (:class:`Denoiser`). See docs/timeline.md for what it buys.

Frames are the VAD's (512 samples for Silero), windowed by a square-root Hann window, which
at half-frame hops sums to one: a frame with no noise in it comes back unchanged.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from . import vad

#: Times the noise power taken from each bin: more than once, because the noise of one frame
#: scatters around its mean and what is left of it still speaks for the noise.
OVER_SUBTRACTION = 3.0
#: The least power gain of a bin (-17 dB): a bin the noise fills is lowered, not emptied, which
#: would leave holes of isolated tones ("musical noise") that the embedding would hear.
GAIN_FLOOR = 0.02
#: Pause frames needed before the noise is trusted (about 0.5 s of Silero frames).
MIN_NOISE_FRAMES = 16
#: Speech frames needed before a recording is judged (about 1 s of Silero frames): where the
#: VAD hears almost no speech, the "pauses" may be the voice it missed, not noise.
MIN_SPEECH_FRAMES = 31
#: A VAD frame below this probability is a pause (speech: the VAD's own threshold).
PAUSE_PROBABILITY = 0.2
#: A recording whose speech stands less than this above its pauses is noisy (dB).
NOISY_SNR_DB = 15.0
#: A frame quieter than this (its power about its mean, in dB of full scale) is digital
#: silence. Before the first frame that is not, it is left out of the levels and the noise:
#: a stream's zeros before a call is answered are not the call's line, and would call its
#: noise 100 dB under the speech. Later silent frames count: gaps that a recorder or a
#: line's silence suppression zeroed are the recording's own pauses.
SILENT_DB = -90.0
#: The most samples the denoiser works on at once (4.1 s at 16 kHz): a longer block, a whole
#: recording handed over in memory, is taken a piece at a time, its spectra never all held.
MAX_BLOCK = 65_536


def window(frame: int) -> np.ndarray:
    """The analysis and synthesis window of ``frame`` samples: square-root periodic Hann."""
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame))


def power_spectra(frames: np.ndarray) -> np.ndarray:
    """(k, frame) samples -> (k, frame // 2 + 1) power spectra, windowed as the denoiser windows."""
    frames = np.asarray(frames, np.float64)
    return np.abs(np.fft.rfft(frames * window(frames.shape[1]), axis=1)) ** 2


class NoiseSpectrum:
    """The mean power spectrum of the pause frames it is given, frame by frame as they come."""

    def __init__(self, frame: int) -> None:
        if frame < 2 or frame % 2:
            raise ValueError(f"frame must be an even number of samples, not {frame}")
        self.frame = frame
        self.count = 0
        self._sum = np.zeros(frame // 2 + 1)

    def add(self, frames: np.ndarray) -> None:
        """Add (k, frame) samples of pause."""
        if len(frames):
            self._sum += power_spectra(frames).sum(axis=0)
            self.count += len(frames)

    def power(self) -> np.ndarray | None:
        """The mean power per bin, (frame // 2 + 1,); None under MIN_NOISE_FRAMES frames."""
        return self._sum / self.count if self.count >= MIN_NOISE_FRAMES else None


class Denoiser:
    """Takes ``noise`` (a :meth:`NoiseSpectrum.power`) out of a stream of blocks of any length.

    for block in Denoiser(noise).blocks(blocks): ...   # as many samples out as in

    Each half-overlapping frame keeps, per bin, the share of its power above ``over`` times the
    noise's, and never less than ``floor`` of it; memory is one block of at most MAX_BLOCK
    samples, whatever the stream and its blocks.
    """

    def __init__(self, noise: np.ndarray, *, over: float = OVER_SUBTRACTION, floor: float = GAIN_FLOOR) -> None:
        self.noise = over * np.asarray(noise, np.float64)
        self.floor = floor
        self.frame = 2 * (len(self.noise) - 1)
        self.hop = self.frame // 2
        self.window = window(self.frame)

    def samples(self, samples: np.ndarray) -> np.ndarray:
        """``samples`` (a recording, or a window of one, in memory) denoised: float32, as many."""
        return np.concatenate([np.zeros(0, np.float32), *self.blocks([samples])])

    def blocks(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The denoised stream: float32 blocks, as many samples in all as ``blocks`` holds."""
        hop = self.hop
        pending = np.zeros(hop)  # a half frame of silence first: every sample then lies in two frames
        tail = np.zeros(hop)  # the second half of the last frame's output, awaiting the next frame
        skip, left = hop, 0  # output samples to drop (the silence), samples still owed
        for block in blocks:
            for piece in range(0, len(block), MAX_BLOCK):
                part = np.asarray(block[piece : piece + MAX_BLOCK], np.float64)
                left += len(part)
                out, pending, tail = self._frames(np.concatenate([pending, part]), tail)
                drop = min(skip, len(out))
                out, skip = out[drop:], skip - drop
                left -= len(out)
                if len(out):
                    yield out.astype(np.float32)
        out, _, _ = self._frames(np.concatenate([pending, np.zeros(self.frame)]), tail)
        out = out[skip:][:left]
        if len(out):
            yield out.astype(np.float32)

    def _frames(self, samples: np.ndarray, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every whole frame of ``samples`` denoised and overlap-added: (finished output, the
        samples left for the next frame, the new tail)."""
        n, hop = self.frame, self.hop
        k = (len(samples) - n) // hop + 1 if len(samples) >= n else 0
        if k == 0:
            return np.zeros(0), samples, tail
        frames = np.lib.stride_tricks.sliding_window_view(samples, n)[::hop][:k] * self.window
        spectra = np.fft.rfft(frames, axis=1)
        power = np.abs(spectra) ** 2
        gain = np.sqrt(np.maximum(1.0 - self.noise / np.maximum(power, 1e-20), self.floor))
        shaped = np.fft.irfft(spectra * gain, n=n, axis=1) * self.window  # (k, n)
        out = np.zeros((k + 1) * hop)
        out[:hop] += tail
        out[: k * hop] += shaped[:, :hop].ravel()
        out[hop : (k + 1) * hop] += shaped[:, hop:].ravel()
        return out[: k * hop], samples[k * hop :], out[k * hop :]


class NoiseMeter:
    """How far a recording's speech stands above its pauses, and the noise of those pauses,
    from its VAD frames and their probabilities, given as they come (:meth:`watch` pairs a
    stream's samples with the probabilities the VAD gave them, which may lag behind).

    ``keep_frames``: the levels of only the last so many frames are kept, to twice as many
    between trims (a live session waiting for speech: memory stays flat through any
    silence, and the judgement reads the latest levels); default all.
    """

    def __init__(self, frame: int, keep_frames: int | None = None) -> None:
        self.pauses = NoiseSpectrum(frame)
        self.frame = frame
        self.keep_frames = keep_frames
        self._energy: list[np.ndarray] | None = []  # power per frame; None once levels are let go
        self._probs: list[np.ndarray] = []
        self._rest = np.zeros(0, np.float32)  # samples of the frame not yet complete
        self._unjudged = np.zeros((0, frame), np.float32)  # frames whose probability is yet to come
        self._judged = np.zeros(0, np.float32)  # probabilities whose frames are yet to come
        self._snr_db: float | None = None  # what snr_db() said when the levels were let go
        self._begun = False  # a frame louder than digital silence has come

    def watch(self, block: np.ndarray, probs: np.ndarray) -> None:
        """The stream's next ``block`` of samples and the VAD probabilities it gave for it (for
        the frames it completed, which may include earlier samples)."""
        samples = np.concatenate([self._rest, np.asarray(block, np.float32)])
        whole = len(samples) // self.frame * self.frame
        self._rest = samples[whole:]
        self._unjudged = np.concatenate([self._unjudged, samples[:whole].reshape(-1, self.frame)])
        self._judged = np.concatenate([self._judged, np.asarray(probs, np.float32)])
        n = min(len(self._unjudged), len(self._judged))
        self.add(self._unjudged[:n], self._judged[:n])
        self._unjudged, self._judged = self._unjudged[n:], self._judged[n:]

    def add(self, frames: np.ndarray, probs: np.ndarray) -> None:
        """(k, frame) samples and their (k,) VAD probabilities."""
        frames, probs = np.asarray(frames, np.float64), np.asarray(probs)
        power = frames.var(axis=1)  # about the frame's mean: a DC offset is not noise
        if not self._begun:  # the stream's leading digital silence is left out
            loud = np.flatnonzero(power >= 10 ** (SILENT_DB / 10))
            if not len(loud):
                return
            self._begun = True
            frames, probs, power = frames[loud[0] :], probs[loud[0] :], power[loud[0] :]
        if self._energy is not None:
            self._energy.append(power)
            self._probs.append(probs)
            held = sum(len(e) for e in self._energy)
            if self.keep_frames is not None and held > 2 * self.keep_frames:  # trimmed now and then, not per call
                self._energy = [np.concatenate(self._energy)[-self.keep_frames :]]
                self._probs = [np.concatenate(self._probs)[-self.keep_frames :]]
        self.pauses.add(frames[probs < PAUSE_PROBABILITY])

    def let_levels_go(self) -> None:
        """Keep only the pauses' noise from now on, its memory flat however long the stream
        (a live session, once it has judged its noise); :meth:`snr_db` keeps its last answer."""
        self._snr_db, self._energy, self._probs = self.snr_db(), None, []

    def snr_db(self) -> float | None:
        """The median power of the frames the VAD calls speech (at its own threshold or above)
        over that of the frames it calls pause (below PAUSE_PROBABILITY), in dB, each frame's
        power taken about its mean (a sound card's DC offset would otherwise pass for noise),
        leading digital silence left out (SILENT_DB); None without a pause or with fewer than
        MIN_SPEECH_FRAMES frames of speech."""
        if self._energy is None:
            return self._snr_db
        energy = np.concatenate(self._energy) if self._energy else np.zeros(0)
        probs = np.concatenate(self._probs) if self._probs else np.zeros(0)
        speech, pause = energy[probs >= vad.DEFAULT_THRESHOLD], energy[probs < PAUSE_PROBABILITY]
        if len(speech) < MIN_SPEECH_FRAMES or not len(pause):
            return None
        return float(10 * np.log10(max(float(np.median(speech)), 1e-20) / max(float(np.median(pause)), 1e-20)))

    def noisy(self) -> tuple[float, np.ndarray] | None:
        """(snr_db, the pauses' mean power spectrum) of a noisy recording (speech less than
        NOISY_SNR_DB above the pauses) whose noise could be measured; None otherwise."""
        snr, noise = self.snr_db(), self.pauses.power()
        if snr is None or noise is None or snr >= NOISY_SNR_DB:
            return None
        return snr, noise


def denoised(samples: np.ndarray, detector=None, *, heard: vad.Heard | None = None) -> tuple[np.ndarray, float | None]:
    """``samples`` (a recording, or a window of one, in memory) with their noise taken out if
    they are noisy, and how far their speech stood above the pauses then (None: left as they
    were). ``detector``: a VAD (default Silero), reset first. ``heard``: Silero's pass over
    ``samples`` already made (:func:`speakerdb.audio.vad.hear`), used instead of a detector."""
    if heard is not None:
        if heard.n_samples != len(samples):
            raise ValueError(f"heard {heard.n_samples} samples, not these {len(samples)}")
        frame, probs = vad.FRAME, heard.probabilities()
    else:
        detector = detector if detector is not None else vad.SileroVAD()
        frame, probs = vad.frame_samples(detector), vad.probabilities([samples], detector)
    meter = NoiseMeter(frame)
    meter.watch(samples, probs)
    noisy = meter.noisy()
    if noisy is None:
        return samples, None
    return Denoiser(noisy[1]).samples(samples), noisy[0]
