"""Voice activity detection: where in a recording someone speaks.

The detector is Silero VAD, from the ``silero-vad`` wheel, which ships its ONNX weights
(``silero_vad/data/silero_vad_16k_sequence.onnx``): nothing is downloaded. It is run
with ``onnxruntime`` and numpy only (no torch), block by block, so memory does not grow
with the recording's length. The sequence export computes the same per-frame
probabilities as Silero's streaming model (an LSTM carried over 32 ms frames, each frame
seen with the previous frame's last 4 ms as context), in one ONNX call per block.

Probabilities become speech regions by hysteresis: a region opens when a frame reaches
``threshold`` and closes after ``min_silence_s`` of frames below ``threshold - 0.15``
(Silero's own rule); regions shorter than ``min_speech_s`` are dropped and each region is
widened by ``pad_s`` on both sides (clipped to the recording). Unlike Silero's
``get_speech_timestamps``, which splits a shorter gap between two neighbours' padding, two
regions whose padding would meet (less than ``2 x pad_s`` apart) are joined into one: a
pause splits speech only when it is at least ``min_silence_s`` of quiet frames and
``2 x pad_s`` long, 0.4 s by default (the figures in docs/timeline.md were measured so).

A pass over the start of a recording can be kept (:func:`hear`) and carried on later
(:class:`Resumed`): identify's embedding hears each file's first 30 s window to judge its
noise, and the voice count replays that and runs the model only on the rest of the file.
Either way the probabilities are the same: Silero's do not depend on how the samples are cut
into blocks and calls (bit for bit on the CPU where it was measured; tests/test_hear_once.py
checks it within rounding, which is all the voice count needs).

``webrtcvad`` (installed with the ``resemblyzer`` extra) is the fallback backend,
``backend="webrtc"``: a GMM over 30 ms frames, cruder on noisy speech.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelLoadError
from .decode import SAMPLE_RATE

FRAME = 512  # samples: one Silero frame at 16 kHz (32 ms)
FRAME_S = FRAME / SAMPLE_RATE  # 0.032 s
CONTEXT = 64  # samples of the previous frame the model sees with each frame (4 ms)
#: Frames per ONNX call (16.4 s of audio): few Python round trips, small transient memory.
BLOCK_FRAMES = 512
STATE = 128  # LSTM width of the Silero model

DEFAULT_THRESHOLD = 0.5  # speech probability that opens a region (Silero's default)
HYSTERESIS = 0.15  # a region closes below threshold - HYSTERESIS (Silero's default)
#: A pause shorter than this does not end a region: breaths and stop closures inside a
#: sentence. (A region also runs on over any pause shorter than 2 x DEFAULT_PAD_S: see the
#: module doc.)
DEFAULT_MIN_SILENCE_S = 0.20  # s
DEFAULT_MIN_SPEECH_S = 0.25  # s: shorter bursts are clicks and coughs
#: Seconds added on each side of a region. Silero opens a region once a frame is clearly
#: speech and closes it when the voice fades: the first onset and the last fading sound
#: of a turn (what people annotate as its start and end) lie outside. 0.2 s balanced
#: missed speech against false alarm on the LibriSpeech conversations (docs/timeline.md).
DEFAULT_PAD_S = 0.2  # s

SILERO_INSTALL_HINT = 'pip install silero-vad onnxruntime (or pip install -e ".[timeline]")'
WEBRTC_FRAME = 480  # samples: 30 ms, one of the three frame lengths webrtcvad accepts
WEBRTC_MODE = 3  # 0-3: 3 is the most aggressive at calling noise non-speech
#: onnxruntime queues telemetry events (with a device id and the environment's paths) in
#: ~/.cache/Microsoft/DeveloperTools from the moment it is imported, unless this is set first.
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


@dataclass(frozen=True)
class Region:
    """A stretch of speech, in seconds from the start of the recording."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def silero_model_path() -> Path:
    """Where the ``silero-vad`` wheel keeps its ONNX sequence model (found without importing
    the package, whose ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"voice activity detection needs the silero-vad package: {SILERO_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad_16k_sequence.onnx"
    if not path.is_file():
        raise ModelLoadError(
            f"the silero-vad package has no {path.name} (version 6.2 or later ships it): {SILERO_INSTALL_HINT}"
        )
    return path


def import_onnxruntime():
    """onnxruntime with its telemetry off: speakerdb sends nothing anywhere, and keeps no
    record of its users outside its database."""
    if not os.environ.get(ORT_TELEMETRY_ENV):  # an explicit setting is the user's choice
        os.environ[ORT_TELEMETRY_ENV] = "1"  # read once, when onnxruntime is first imported
    import onnxruntime as ort  # deferred: onnxruntime is heavy to import

    disable = getattr(ort, "disable_telemetry_events", None)  # for an onnxruntime imported earlier
    if disable is not None and os.environ[ORT_TELEMETRY_ENV] != "0":
        disable()
    return ort


_session: Any = None
_session_lock = threading.Lock()


def _silero_session() -> Any:
    """The process's one ONNX session of the Silero model, made at first use. Detectors share
    it: ``InferenceSession.run`` may be called from several threads at once, and each detector
    carries its own LSTM state, so identify's per-file detectors and live sessions no longer
    pay for a session each."""
    global _session
    with _session_lock:
        if _session is not None:
            return _session
        if importlib.util.find_spec("onnxruntime") is None:
            raise ModelLoadError(f"voice activity detection needs onnxruntime: {SILERO_INSTALL_HINT}")
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        # One thread: the model is tiny (a 128-wide LSTM); more threads cost more in
        # synchronisation than they save, and the embedder wants the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the export carries unused initializers; ORT warns about each
        try:
            _session = ort.InferenceSession(
                str(silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except ModelLoadError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"cannot load the Silero VAD model: {e}") from None
        return _session


@dataclass(frozen=True)
class SileroState:
    """A :class:`SileroVAD`'s place in a recording: what it carries from one frame to the next."""

    h: np.ndarray  # (1, 1, STATE) LSTM hidden state
    c: np.ndarray  # (1, 1, STATE) LSTM cell state
    context: np.ndarray  # (CONTEXT,) the last samples of the last whole frame
    pending: np.ndarray  # samples of the frame not yet complete


class SileroVAD:
    """Streaming Silero VAD: feed 16 kHz blocks of any length, read per-frame speech probabilities.

    vad = SileroVAD()
    for block in blocks:
        probs = vad.feed(block)   # (n_frames,) for the whole 32 ms frames completed so far
    probs = vad.flush()           # the last partial frame, zero-padded
    """

    def __init__(self) -> None:
        self.session = _silero_session()
        self.reset()

    def reset(self) -> None:
        """Start a new recording."""
        self._h = np.zeros((1, 1, STATE), np.float32)
        self._c = np.zeros((1, 1, STATE), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def state(self) -> SileroState:
        """Where the detector stands in its recording (its LSTM state, the context and the
        samples of the frame not yet complete), for :meth:`restore` to carry on from."""
        return SileroState(self._h.copy(), self._c.copy(), self._context.copy(), self._pending.copy())

    def restore(self, state: SileroState) -> None:
        """Carry on from ``state``: what :meth:`feed` gives next is what the detector that
        reached it would have given."""
        self._h, self._c = state.h.copy(), state.c.copy()
        self._context, self._pending = state.context.copy(), state.pending.copy()

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities (n_frames,) float32 of the frames that ``samples`` completes."""
        samples = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = len(samples) // FRAME
        self._pending = samples[n * FRAME :]
        return self._run(samples[: n * FRAME].reshape(n, FRAME))

    def flush(self) -> np.ndarray:
        """The last partial frame (zero-padded, as Silero does), if any."""
        if len(self._pending) == 0:
            return np.zeros(0, np.float32)
        frame = np.zeros((1, FRAME), np.float32)
        frame[0, : len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.float32)
        return self._run(frame)

    def _run(self, frames: np.ndarray) -> np.ndarray:
        """(n, FRAME) -> (n,) probabilities, carrying the LSTM state and the context across calls."""
        out = []
        for first in range(0, len(frames), BLOCK_FRAMES):
            block = frames[first : first + BLOCK_FRAMES]  # (b, FRAME)
            contexts = np.empty((len(block), CONTEXT), np.float32)
            contexts[0] = self._context
            contexts[1:] = block[:-1, -CONTEXT:]
            self._context = block[-1, -CONTEXT:].copy()
            probs, self._h, self._c = self.session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": self._h, "c": self._c},
            )
            out.append(np.asarray(probs, np.float32).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class WebrtcVAD:
    """webrtcvad behind the same interface: per-30 ms-frame decisions (0 or 1) as probabilities."""

    frame = WEBRTC_FRAME

    def __init__(self, mode: int = WEBRTC_MODE) -> None:
        if importlib.util.find_spec("webrtcvad") is None:
            raise ModelLoadError('backend "webrtc" needs webrtcvad: pip install -e ".[resemblyzer]"')

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its module imports the deprecated pkg_resources
            import webrtcvad  # deferred: webrtcvad is heavy to import
        self._vad = webrtcvad.Vad(mode)
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        samples = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = len(samples) // self.frame
        self._pending = samples[n * self.frame :]
        pcm = (np.clip(samples[: n * self.frame], -1, 1) * 32767).astype("<i2")
        return np.array(
            [self._vad.is_speech(pcm[i * self.frame : (i + 1) * self.frame].tobytes(), SAMPLE_RATE) for i in range(n)],
            np.float32,
        )

    def flush(self) -> np.ndarray:
        self._pending = np.zeros(0, np.float32)  # under 30 ms: too short to judge
        return np.zeros(0, np.float32)


BACKENDS = ("silero", "webrtc")


def load(backend: str = "silero"):
    """A fresh detector: ``silero`` (default) or ``webrtc``."""
    if backend == "silero":
        return SileroVAD()
    if backend == "webrtc":
        return WebrtcVAD()
    raise InvalidInputError(f"unknown voice activity detector {backend!r}: use {' or '.join(BACKENDS)}")


def frame_samples(detector) -> int:
    """Length of one of ``detector``'s frames in 16 kHz samples."""
    return int(getattr(detector, "frame", FRAME))


def frame_seconds(detector) -> float:
    """Length of one of ``detector``'s frames in seconds."""
    return frame_samples(detector) / SAMPLE_RATE


def probabilities(blocks: Iterable[np.ndarray], detector=None) -> np.ndarray:
    """Per-frame speech probabilities of a whole recording given as 16 kHz blocks: (n_frames,)."""
    detector = detector if detector is not None else SileroVAD()
    detector.reset()
    parts = [detector.feed(b) for b in blocks]
    parts.append(detector.flush())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass(frozen=True)
class Heard:
    """What Silero heard of the first ``n_samples`` samples of a recording, fed from its start
    (:func:`hear`): the probabilities of their whole frames, that of the zero-padded last
    partial frame (what a recording that ends there flushes; empty if none), and the
    detector's state before that flush, from which :class:`Resumed` carries on."""

    n_samples: int
    probs: np.ndarray  # (n_samples // FRAME,) float32
    last: np.ndarray  # (0,) or (1,) float32
    state: SileroState

    def probabilities(self) -> np.ndarray:
        """What :func:`probabilities` gives for these samples as a whole recording."""
        return np.concatenate([self.probs, self.last])


def hear(samples: np.ndarray, detector: SileroVAD | None = None) -> Heard:
    """Silero's pass over ``samples`` (the start of a recording, or all of it, in memory),
    kept so that a later pass over the same recording need not run the model on them again.
    ``detector``: default a new one; reset first."""
    detector = detector if detector is not None else SileroVAD()
    detector.reset()
    samples = np.asarray(samples, np.float32)
    probs = detector.feed(samples)
    state = detector.state()
    probs.flags.writeable = False  # shared by the passes that replay it
    last = detector.flush()
    last.flags.writeable = False
    return Heard(len(samples), probs, last, state)


class Resumed:
    """A Silero detector for a recording whose first samples were already heard (:class:`Heard`):
    their probabilities are given back as those samples are fed again, and the model runs
    only on what follows them, carrying on (``detector``) from the state it had reached.
    Fed the same recording, it gives what an uninterrupted pass of Silero gives."""

    frame = FRAME

    def __init__(self, heard: Heard, detector: SileroVAD) -> None:
        self.heard = heard
        self.detector = detector
        self.reset()

    def reset(self) -> None:
        """Start the recording again (the part already heard is replayed again)."""
        self._fed = 0  # samples fed since the start
        self._live = False  # past what was heard: the model runs

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities (n_frames,) float32 of the frames that ``samples`` completes."""
        if self._live:
            return self.detector.feed(samples)
        heard, start = self.heard, self._fed
        self._fed += len(samples)
        if self._fed <= heard.n_samples:
            return heard.probs[start // FRAME : self._fed // FRAME]
        self._live = True
        self.detector.restore(heard.state)
        return np.concatenate([heard.probs[start // FRAME :], self.detector.feed(samples[heard.n_samples - start :])])

    def flush(self) -> np.ndarray:
        """The last partial frame (zero-padded), if any."""
        if self._live:
            return self.detector.flush()
        if self._fed != self.heard.n_samples:  # shorter than what was heard: not the same recording
            raise ValueError(f"a recording of {self._fed} samples, not the {self.heard.n_samples} heard before")
        return self.heard.last


def regions(
    probs: Sequence[float] | np.ndarray,
    *,
    frame_s: float = FRAME_S,
    duration_s: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_silence_s: float = DEFAULT_MIN_SILENCE_S,
    min_speech_s: float = DEFAULT_MIN_SPEECH_S,
    pad_s: float = DEFAULT_PAD_S,
) -> list[Region]:
    """Speech regions from per-frame probabilities (hysteresis, minimum lengths, padding; see module doc)."""
    tracker = RegionTracker(
        frame_s=frame_s, threshold=threshold, min_silence_s=min_silence_s, min_speech_s=min_speech_s, pad_s=pad_s
    )
    tracker.feed(probs)
    return tracker.regions(duration_s)


class RegionTracker:
    """The speech regions of frames that arrive block by block: after each :meth:`feed`,
    :meth:`regions` gives what :func:`regions` gives over all the frames so far, for the work
    of the new frames alone (a live session: an hour of speech that never pauses is scanned
    once, not once per block).

    It keeps the hysteresis state of the last frame, the raw regions that still wait for the
    next one (padding never crosses into the next region, so a region's end waits for its
    successor's start) and the regions made of them; :meth:`forget` lets go of those the
    caller has settled.
    """

    def __init__(
        self,
        *,
        frame_s: float = FRAME_S,
        threshold: float = DEFAULT_THRESHOLD,
        min_silence_s: float = DEFAULT_MIN_SILENCE_S,
        min_speech_s: float = DEFAULT_MIN_SPEECH_S,
        pad_s: float = DEFAULT_PAD_S,
    ) -> None:
        self.frame_s, self.threshold = frame_s, threshold
        self.min_silence_s, self.min_speech_s, self.pad_s = min_silence_s, min_speech_s, pad_s
        self.off = max(threshold - HYSTERESIS, 0.01)
        self.n_frames = 0  # frames fed
        self._start: int | None = None  # first frame of the raw region open at the last frame
        self._last_speech = -1  # its last frame at or above ``off``
        self._waiting: tuple[float, float] | None = None  # a closed raw region waiting for the next one
        self._out: list[Region] = []  # regions of the raw regions folded in; the last may still grow

    def feed(self, probs: Sequence[float] | np.ndarray) -> None:
        """Take the next frames' probabilities."""
        probs = np.asarray(probs, np.float64)
        start, last_speech, fs = self._start, self._last_speech, self.frame_s
        for i, p in enumerate(probs.tolist(), self.n_frames):
            if start is None:
                if p >= self.threshold:
                    start, last_speech = i, i
            elif p >= self.off:
                last_speech = i
            elif (i - last_speech) * fs >= self.min_silence_s:
                self._close(start * fs, (last_speech + 1) * fs)
                start = None
        self.n_frames += len(probs)
        self._start, self._last_speech = start, last_speech
        following = self._open_raw()  # long enough: it only grows, so it counts for good
        if self._waiting is not None and following is not None:
            self._fold(self._out, *self._waiting, following[0], None)
            self._waiting = None

    def regions(self, duration_s: float | None = None) -> list[Region]:
        """The regions of all the frames fed, as :func:`regions` finds them (those let go by
        :meth:`forget` aside); ``duration_s``: the audio's length (default: the frames')."""
        end_of_audio = duration_s if duration_s is not None else self.n_frames * self.frame_s
        out = list(self._out)
        rest = [r for r in (self._waiting, self._open_raw()) if r is not None]
        for k, (a, b) in enumerate(rest):
            self._fold(out, a, b, rest[k + 1][0] if k + 1 < len(rest) else None, end_of_audio)
        return out

    def forget(self, until_s: float) -> None:
        """Let go of the regions that end by ``until_s`` (settled by the caller), all but the
        last: a later region's start is measured from its end."""
        drop = 0
        while drop < len(self._out) - 1 and self._out[drop].end <= until_s:
            drop += 1
        del self._out[:drop]

    def _open_raw(self) -> tuple[float, float] | None:
        """The raw region open at the last frame, if it is already long enough to count."""
        if self._start is None:
            return None
        a, b = self._start * self.frame_s, (self._last_speech + 1) * self.frame_s
        return (a, b) if b - a >= self.min_speech_s else None

    def _close(self, a: float, b: float) -> None:
        """A raw region has closed: the one waiting is folded in (its successor's start is
        known), and this one waits in its place; shorter bursts are dropped."""
        if b - a < self.min_speech_s:
            return
        if self._waiting is not None:
            self._fold(self._out, *self._waiting, a, None)
        self._waiting = (a, b)

    def _fold(self, out: list[Region], a: float, b: float, following: float | None, end_of_audio: float | None) -> None:
        """Add the raw region ``a``-``b`` to ``out``: padded, never past the midpoint to the
        ``following`` raw region nor past ``end_of_audio``, joined to the last region if its
        padding meets it."""
        lo = max(0.0, a - self.pad_s, out[-1].end if out else 0.0)
        hi = b + self.pad_s
        if end_of_audio is not None:
            hi = min(end_of_audio, hi)
        if following is not None:
            hi = min(hi, (b + following) / 2)  # padding never crosses into the next region
        if out and lo <= out[-1].end:
            out[-1] = Region(out[-1].start, hi)
        else:
            out.append(Region(lo, hi))
