#!/usr/bin/env python
"""Speaker-like vectors: a generator fitted to real speaker embeddings, for scale tests.

Uniform random unit vectors are the worst case for a graph index and unlike speakers:
real embeddings (GE2E's are non-negative, L2-normalised) fill a narrow cone around a mean
direction, with speakers spread along a few hundred correlated directions and each
speaker's recordings spread around its centroid. This fits that shape to the GE2E
embeddings of the LibriSpeech excerpts kept outside the repository and draws as many
speakers as asked:

    python scripts/speaker_like.py ../shared/data/librispeech fitted.npz   # fit (a few minutes)

- speakers: centroid = mean + L_b z, z ~ N(0, I), then L2-normalised, where the mean and
  the between-speaker covariance (L_b L_b^T, shrunk towards its diagonal) are those of the
  speakers' centroids (test-other's 10, from 10 recordings each, and train-clean-100's
  251 single recordings);
- recordings of an enrolled speaker (queries): centroid + L_w z, normalised, where the
  within-speaker covariance is that of test-other's recordings around their speakers'
  centroids (each recording cropped to its first CROP_S seconds, as a probe would be).

`scale_test.py --vectors speaker-like` and `bench_nodes.py` draw from it (scripts/kit.py's
``speaker_like_speakers`` and ``speaker_like_recordings``) beside uniform vectors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import kit

CROP_S = 6.0  # seconds of each recording embedded
SHRINK = 0.1  # covariance shrinkage towards its diagonal: 261 centroids in 256 dimensions


def fit(data_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """Embed the excerpts with GE2E and save the fitted parameters to ``out`` (.npz)."""
    from speakerdb.audio import (
        decode as audio,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.embedding import pipeline
    from speakerdb.embedding.models import load_embedder

    embedder = load_embedder("resemblyzer")

    def embed(path: Path) -> np.ndarray:
        clip = audio.load(path)
        samples = clip.samples[: int(CROP_S * 16_000)]
        return pipeline.embed_clip(audio.Audio(path.name, samples), embedder).vector

    centroids, residuals = [], []
    for speaker in sorted((data_dir / "test-other").iterdir()):
        vectors = np.stack([embed(p) for p in sorted(speaker.glob("*.flac"))])  # (10, 256)
        c = vectors.mean(axis=0)
        centroids.append(c / np.linalg.norm(c))
        residuals.append(vectors - c)
        print(f"  {speaker.name}: {len(vectors)} recordings", file=sys.stderr)
    for path in sorted((data_dir / "train-clean-100").rglob("*.flac")):
        centroids.append(embed(path))
    centroids = np.stack(centroids).astype(np.float64)
    residuals = np.concatenate(residuals).astype(np.float64)
    params = {
        "mean": centroids.mean(axis=0),
        "between": _shrunk(np.cov(centroids, rowvar=False)),
        "within": _shrunk(residuals.T @ residuals / max(len(residuals) - len(centroids[:10]), 1)),
        "n_speakers": np.array(len(centroids)),
    }
    np.savez(out, **params)
    return params


def _shrunk(cov: np.ndarray) -> np.ndarray:
    return (1 - SHRINK) * cov + SHRINK * np.diag(np.diag(cov))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            'docs/several-machines.md, "Choosing the search: index snapshots against '
            'pgvector" (the speaker-like rows of bench_nodes.py and scale_test.py)',
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dir", type=Path, help="LibriSpeech excerpts holding test-other/ and train-clean-100/")
    parser.add_argument("out", type=Path, help="the fitted parameters to write (.npz)")
    args = parser.parse_args()
    p = fit(args.data_dir, args.out)
    rng = np.random.default_rng(0)
    c = kit.speaker_like_speakers(p, 2000, rng)
    q = kit.speaker_like_recordings(p, c[:500], rng)
    own = np.sum(q * c[:500], axis=1)
    others = (c[:500] @ c[500:].T).ravel()
    print(
        f"fitted on {int(p['n_speakers'])} speakers; drawn: recording-to-own-centroid cosine median "
        f"{np.median(own):.3f}, between speakers median {np.median(others):.3f} (p99 {np.percentile(others, 99):.3f})"
    )


if __name__ == "__main__":
    main()
