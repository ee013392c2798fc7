"""Speaker segmentation: who of up to three local speakers is active, frame by frame.

The model is pyannote's ``segmentation-3.0`` (MIT licence, CNRS), an optional file the user
gives (``--segmentation PATH`` or ``SPEAKERDB_SEGMENTATION``; a Hugging Face id is looked
up in the local hub cache only, never fetched). Its architecture, PyanNet, is written here in
torch so that pyannote.audio is not needed:

    10 s of 16 kHz audio -> SincNet (80 parametric sinc band-pass filters, stride 10, then two
    convolutions, each stage max-pooled by 3 and instance-normalised) -> 4-layer bidirectional
    LSTM (128 per direction) -> 2 linear layers of 128 (leaky ReLU) -> 7 classes, log-softmax

one output frame every 270 samples (16.9 ms), 589 frames per 10 s chunk. The 7 classes are
the "powerset" of three local speakers with at most two at once: nobody, {1}, {2}, {3},
{1,2}, {1,3}, {2,3}. Local speakers are numbered per chunk: speaker 1 of one chunk need not
be speaker 1 of the next.

The checkpoint is a PyTorch-Lightning file that pickles pyannote.audio objects besides the
weights. It is read with a restricted unpickler: only torch's tensor rebuilding, an
``OrderedDict`` and plain builtins are resolved; every other class becomes an inert stub that
keeps its arguments and never runs code, so a crafted file cannot execute anything. A plain
``state_dict`` saved with ``torch.save`` loads the same way.
"""

from __future__ import annotations

import builtins
import collections
import io
import itertools
import math
import os
import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from .. import config
from ..audio.decode import SAMPLE_RATE
from ..errors import ModelLoadError, first_line

if TYPE_CHECKING:  # torch is imported only when a model is loaded
    import torch

CHUNK_S = 10.0  # s: the model's training chunk length
CHUNK = int(CHUNK_S * SAMPLE_RATE)  # samples
FRAME_STEP = 270  # samples between output frames (10 * 3 * 3 * 3)
RECEPTIVE_FIELD = 991  # samples each output frame sees
FRAME_STEP_S = FRAME_STEP / SAMPLE_RATE
LOCAL_SPEAKERS = 3
BATCH = 8  # chunks per forward pass: the LSTM costs less per chunk in a batch (5 MB of audio)
#: Powerset classes -> active local speakers (pyannote's order: by size, then lexicographic).
POWERSET = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2))
#: The file name a Hugging Face repository of the model keeps its weights under.
HUB_FILE = "pytorch_model.bin"
DEFAULT_HUB_ID = "pyannote/segmentation-3.0"


def frames_in(samples: int) -> int:
    """Output frames of a chunk of ``samples`` samples (no padding anywhere)."""
    n = (samples - 251) // 10 + 1
    for k in (3, 5, 3, 5, 3):  # pool, conv, pool, conv, pool
        n = (n - k) // (3 if k == 3 else 1) + 1
    return max(0, n)


# ---- the restricted unpickler ----------------------------------------------------------------
class _Inert:
    """What any class the loader does not know becomes: it keeps what it was built with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _allowed() -> dict[tuple[str, str], Any]:
    import torch  # deferred: torch is heavy to import
    import torch._utils  # deferred: torch's tensor rebuilders

    out: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
    }
    for name in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
        out[("torch", f"{name}Storage")] = getattr(torch, f"{name}Storage")
    for name in ("set", "frozenset", "slice", "complex"):  # plain data types only
        out[("builtins", name)] = getattr(builtins, name)
    return out


class _Unpickler(pickle.Unpickler):
    """Resolves only tensor rebuilding and plain containers; everything else is an inert stub."""

    allowed: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is not None:
            return found
        # A fresh stub class per name: it runs no code of the named class (no __reduce__
        # callable, no __setstate__ of its own), whatever the file says.
        return type(name, (_Inert,), {"__module__": "speakerdb.embedding.segmentation.stub"})


def _safe_pickle_module() -> types.ModuleType:
    module = types.ModuleType("speakerdb_safe_pickle")
    _Unpickler.allowed = _allowed()
    module.Unpickler = _Unpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: _Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    module.loads = lambda b, **kw: _Unpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
    module.__dict__["Pickler"] = pickle.Pickler
    return module


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, "torch.Tensor"]:
    """The weights of a segmentation checkpoint (Lightning file or plain state_dict), read
    without running code the file names. Raises ModelLoadError with one line if it cannot."""
    import torch  # deferred: torch is heavy to import

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"segmentation model {str(path)!r}: no such file")
    try:
        loaded = torch.load(str(p), map_location="cpu", pickle_module=_safe_pickle_module(), weights_only=False)
    except Exception as e:
        raise ModelLoadError(
            f"segmentation model {str(path)!r} cannot be read as a PyTorch checkpoint: {first_line(e)}"
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"segmentation model {str(path)!r} holds no state_dict of tensors")
    return dict(state)


# ---- the network -------------------------------------------------------------------------------
def build_network() -> "torch.nn.Module":
    """PyanNet as segmentation-3.0 configures it, with random weights (its state_dict keys are
    the checkpoint's)."""
    import torch  # deferred: torch is heavy to import
    from torch import nn  # deferred: torch is heavy to import
    from torch.nn import functional as F  # deferred: torch is heavy to import

    class SincFilters(nn.Module):
        """80 band-pass filters (40 cosine, 40 sine) of 251 taps from 40 (low, band) pairs."""

        def __init__(self) -> None:
            super().__init__()
            half = 125
            mel = np.linspace(2595 * np.log10(1 + 30 / 700), 2595 * np.log10(1 + 7900 / 700), 41)
            hz = (700 * (10 ** (mel / 2595) - 1)).astype(np.float32)
            self.low_hz_ = nn.Parameter(torch.from_numpy(hz[:-1]).view(-1, 1))
            self.band_hz_ = nn.Parameter(torch.from_numpy(np.diff(hz)).view(-1, 1))
            self.register_buffer("window_", torch.from_numpy(np.hamming(251)[:half]).float())
            self.register_buffer("n_", 2 * math.pi * torch.arange(-half, 0.0).view(1, -1) / SAMPLE_RATE)

        def filters(self) -> torch.Tensor:
            low = 50 + self.low_hz_.abs()
            high = torch.clamp(low + 50 + self.band_hz_.abs(), 50, SAMPLE_RATE / 2)
            band = (high - low)[:, 0]
            arg_low, arg_high = low @ self.n_, high @ self.n_
            scale = (self.n_ / 2).reciprocal() * self.window_
            even = (arg_high.sin() - arg_low.sin()) * scale
            odd = (arg_low.cos() - arg_high.cos()) * scale
            cos = torch.cat([even, 2 * band[:, None], even.flip(1)], 1)
            sin = torch.cat([odd, torch.zeros_like(band[:, None]), -odd.flip(1)], 1)
            taps = torch.cat([cos, sin], 0) / (2 * torch.cat([band, band])[:, None])
            return taps[:, None, :]  # (80, 1, 251)

    class SincEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.filterbank = SincFilters()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv1d(x, self.filterbank.filters(), stride=10)

    class SincNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
            self.conv1d = nn.ModuleList([SincEncoder(), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
            self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
            self.norm1d = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (80, 60, 60)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.wav_norm1d(x)
            for i, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
                x = conv(x)
                if i == 0:
                    x = x.abs()
                x = F.leaky_relu(norm(pool(x)))
            return x

    class PyanNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sincnet = SincNet()
            self.lstm = nn.LSTM(60, 128, num_layers=4, bidirectional=True, batch_first=True)
            self.linear = nn.ModuleList([nn.Linear(256, 128), nn.Linear(128, 128)])
            self.classifier = nn.Linear(128, len(POWERSET))

        def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
            """(batch, 1, samples) -> (batch, frames, 7) log-probabilities."""
            x, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
            for layer in self.linear:
                x = F.leaky_relu(layer(x))
            return F.log_softmax(self.classifier(x), dim=-1)

    return PyanNet()


# ---- the model as the timeline uses it ------------------------------------------------------------
@dataclass(frozen=True)
class Activity:
    """A recording's segmentation, on a grid of ``FRAME_STEP_S`` frames.

    Every chunk's local speakers are followed into the next chunk where the two chunks agree
    on them (their activities coincide over most of the overlap): a chain of such local
    speakers is a *track*, one voice's stretch of speech as the model hears it. A frame takes
    its tracks from the chunk whose centre is nearest. ``tracks`` (frames, 3): the track ids
    active at each frame (-1: none), ``count`` (frames,): how many speak at once (0, 1 or 2),
    the rounded mean over the chunks that cover the frame; ``co_active``: pairs of tracks
    active in one chunk (two voices by the model's account, never one)."""

    tracks: np.ndarray  # (frames, 3) int64
    count: np.ndarray  # (frames,) int64
    n_tracks: int
    co_active: frozenset[tuple[int, int]]

    def time(self, frame: np.ndarray | int) -> np.ndarray:
        """Centre time (s) of frames."""
        return (np.asarray(frame) * FRAME_STEP + RECEPTIVE_FIELD / 2) / SAMPLE_RATE


#: Two chunks' local speakers are one track when, over the chunks' overlap, the frames where
#: both are active are at least this share of the frames where the less active one is.
LINK_AGREEMENT = 0.5
ACTIVE_PROBABILITY: float | None = 0.3
LINK_LEAST_FRAMES = 6  # ~0.1 s of common speech at least


def aggregate(chunks: list[tuple[int, np.ndarray]], n_samples: int | None = None) -> Activity:
    """Chunks' log-probabilities (start sample, (frames, 7)) -> one :class:`Activity`.

    Each chunk's frames are decoded to the most likely powerset class; its local speakers are
    matched to the previous chunk's by the permutation that agrees most over their overlap,
    and a matched pair that agrees well enough (``LINK_AGREEMENT``) continues one track."""
    if not chunks:
        return Activity(np.full((0, LOCAL_SPEAKERS), -1, np.int64), np.zeros(0, np.int64), 0, frozenset())
    per_chunk = max(len(c[1]) for c in chunks)
    last = max(s for s, _ in chunks)
    total = n_samples if n_samples is not None else last + CHUNK
    n_frames = max(1, int(math.ceil(total / FRAME_STEP)))
    table = np.zeros((len(POWERSET), LOCAL_SPEAKERS), bool)
    for k, members in enumerate(POWERSET):
        table[k, list(members)] = True
    count_sum = np.zeros(n_frames)
    count_n = np.zeros(n_frames)
    tracks = np.full((n_frames, LOCAL_SPEAKERS), -1, np.int64)
    owner_dist = np.full(n_frames, np.inf)
    perms = [list(p) for p in itertools.permutations(range(LOCAL_SPEAKERS))]
    previous: tuple[int, np.ndarray, list[int]] | None = None  # offset, activity, track ids
    n_tracks = 0
    co_active: set[tuple[int, int]] = set()
    for start, logp in chunks:
        if ACTIVE_PROBABILITY is None:
            act = table[np.argmax(logp, axis=1)]  # (f, 3)
        else:  # each local speaker's own probability (the classes it is part of)
            act = (np.exp(logp) @ table.astype(np.float64)) >= ACTIVE_PROBABILITY
        off = int(round(start / FRAME_STEP))
        f = min(len(act), n_frames - off)
        if f <= 0:
            continue
        act = act[:f]
        ids = [-1] * LOCAL_SPEAKERS
        if previous is not None:
            p_off, p_act, p_ids = previous
            a, b = off, min(p_off + len(p_act), off + f)
            if b > a:
                mine, theirs = act[: b - a], p_act[a - p_off : b - p_off]
                best = max(perms, key=lambda p: int((mine[:, p] & theirs).sum()))
                for k_prev, k in enumerate(best):  # local speaker k here is k_prev there
                    both = int((mine[:, k] & theirs[:, k_prev]).sum())
                    least = min(int(mine[:, k].sum()), int(theirs[:, k_prev].sum()))
                    if both >= LINK_LEAST_FRAMES and both >= LINK_AGREEMENT * least:
                        ids[k] = p_ids[k_prev]
        for k in range(LOCAL_SPEAKERS):
            if ids[k] < 0 and act[:, k].any():
                ids[k], n_tracks = n_tracks, n_tracks + 1
        present = [ids[k] for k in range(LOCAL_SPEAKERS) if act[:, k].any()]
        co_active.update((x, y) for x in present for y in present if x < y)
        count_sum[off : off + f] += act.sum(axis=1)
        count_n[off : off + f] += 1
        dist = np.abs(np.arange(f) - per_chunk / 2)
        nearer = dist < owner_dist[off : off + f]
        labelled = np.where(act, np.array(ids)[None, :], -1)
        tracks[off : off + f][nearer] = labelled[nearer]
        owner_dist[off : off + f][nearer] = dist[nearer]
        previous = (off, act, ids)
    count = np.zeros(n_frames, np.int64)
    covered = count_n > 0
    count[covered] = np.rint(count_sum[covered] / count_n[covered]).astype(np.int64)
    return Activity(tracks, np.minimum(count, 2), n_tracks, frozenset(co_active))


class Segmenter:
    """A loaded segmentation model. ``source``: what the user named (for messages)."""

    def __init__(self, state: dict[str, "torch.Tensor"], source: str, step_s: float = 5.0) -> None:
        import torch  # deferred: torch is heavy to import

        net = build_network()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelLoadError(
                f"segmentation model {source!r} is not a pyannote segmentation-3.0 checkpoint: {first_line(e)}"
            ) from None
        self.net = net.eval()
        self.source = source
        self.step = int(round(step_s * SAMPLE_RATE))
        self._torch = torch

    def chunk_outputs(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """(start sample, (frames, 7) log-probabilities) per chunk of ``CHUNK`` samples every
        ``step`` samples (the last aligned to the end; a recording shorter than a chunk is
        zero-padded), streaming: at most a batch of chunks and a block of audio are held."""
        buf = np.zeros(0, np.float32)
        start = 0  # sample index of buf[0]
        total = 0
        next_start = 0
        last_done = -1
        pending: list[tuple[int, np.ndarray]] = []
        for block in blocks:
            buf = np.concatenate([buf, np.asarray(block, np.float32)])
            total += len(block)
            while next_start + CHUNK <= total:
                pending.append((next_start, buf[next_start - start : next_start - start + CHUNK].copy()))
                last_done = next_start
                next_start += self.step
                # Keep from the last chunk's start: a tail chunk (aligned to the end) starts after it.
                buf, start = buf[last_done - start :], last_done
                if len(pending) == BATCH:
                    yield from self._run(pending)
                    pending = []
        if total and (last_done < 0 or last_done + CHUNK < total):
            begin = max(0, total - CHUNK)
            tail = buf[begin - start :]
            if len(tail) < CHUNK:
                tail = np.concatenate([tail, np.zeros(CHUNK - len(tail), np.float32)])
            pending.append((begin, tail))
        if pending:
            yield from self._run(pending)

    def _run(self, chunks: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
        torch = self._torch
        threads = torch.get_num_threads()
        # One thread: the LSTM's steps are too small to share, and on a busy machine two
        # threads waiting for each other took several times as long (docs/timeline.md).
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = self.net(torch.from_numpy(np.stack([c for _, c in chunks]))[:, None, :]).numpy()
        finally:
            torch.set_num_threads(threads)
        return [(s, o) for (s, _), o in zip(chunks, out)]

    def activity(self, blocks: Iterable[np.ndarray], n_samples: int | None = None) -> Activity:
        """The recording's :class:`Activity` (see :func:`aggregate`)."""
        return aggregate(list(self.chunk_outputs(blocks)), n_samples)


def resolve(source: str | os.PathLike[str]) -> Path:
    """A local checkpoint file, a folder holding ``pytorch_model.bin``, or a Hugging Face id found
    in the hub cache. The hub itself is never asked: an id not in the cache is one error line at
    once (huggingface_hub retried a dead network for some 25 s first), saying how to get it."""
    p = Path(source).expanduser()
    if p.is_dir():
        p = p / HUB_FILE
    if p.is_file():
        return p
    text = str(source)
    looks_like_path = text.startswith((".", "~")) or text.endswith((".bin", ".ckpt", ".pt"))
    if p.is_absolute() or looks_like_path or text.count("/") != 1:
        raise ModelLoadError(f"segmentation model {text!r}: no such file")
    cache = config.model_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: huggingface_hub is heavy to import

        found = try_to_load_from_cache(text, HUB_FILE, cache_dir=cache)
    except Exception:  # an id the hub library refuses (spaces, ..): a path that is not there
        raise ModelLoadError(f"segmentation model {text!r}: no such file") from None
    if isinstance(found, str):
        return Path(found)
    raise ModelLoadError(
        f"segmentation model {text!r} is neither a file nor in the local Hugging Face cache ({cache}): "
        f"run `speakerdb model download {text}` on this machine if it has network, or "
        f"`speakerdb model download {text} --to DIR` on one that has, copy DIR here and pass --segmentation DIR"
    )


def load(source: str | os.PathLike[str], step_s: float = 5.0) -> Segmenter:
    """A :class:`Segmenter` from a checkpoint path or hub id (see :func:`resolve`)."""
    path = resolve(source)
    return Segmenter(read_state_dict(path), str(source), step_s)
