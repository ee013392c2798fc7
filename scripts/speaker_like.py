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

`scale_test.py --vectors speaker-like` and `bench_nodes.py` use it beside uniform vectors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CROP_S = 6.0  # seconds of each recording embedded
SHRINK = 0.1  # covariance shrinkage towards its diagonal: 261 centroids in 256 dimensions


def fit(data_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """Embed the excerpts with GE2E and save the fitted parameters to ``out`` (.npz)."""
    from speakerdb.audio import decode as audio
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


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def speakers(params: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit centroids drawn from the fitted between-speaker distribution."""
    chol = np.linalg.cholesky(params["between"] + 1e-9 * np.eye(len(params["mean"])))
    out = np.empty((n, len(params["mean"])), np.float32)
    for start in range(0, n, 100_000):
        k = min(100_000, n - start)
        v = params["mean"] + rng.standard_normal((k, len(params["mean"]))) @ chol.T
        out[start : start + k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def recordings(params: dict[str, np.ndarray], centroids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new recording of each speaker in ``centroids``: (q, dim) float32 unit vectors."""
    chol = np.linalg.cholesky(params["within"] + 1e-9 * np.eye(centroids.shape[1]))
    v = centroids + rng.standard_normal(centroids.shape) @ chol.T
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    p = fit(Path(sys.argv[1]), Path(sys.argv[2]))
    rng = np.random.default_rng(0)
    c = speakers(p, 2000, rng)
    q = recordings(p, c[:500], rng)
    own = np.sum(q * c[:500], axis=1)
    others = (c[:500] @ c[500:].T).ravel()
    print(f"fitted on {int(p['n_speakers'])} speakers; drawn: recording-to-own-centroid cosine median "
          f"{np.median(own):.3f}, between speakers median {np.median(others):.3f} (p99 {np.percentile(others, 99):.3f})")
