"""Shared fixtures: offline environment, generated voices, a fake embedder and a tiny real checkpoint.

Nothing here touches the network: HF_HUB_OFFLINE is set before any test runs, and the
WavLM checkpoint is built from a WavLMConfig with random weights (fixed seed), saved with
save_pretrained() and loaded through the same code path users take.
"""

from __future__ import annotations

import os
from pathlib import Path

# One thread per pool, in this process and in the commands the tests start (set before
# numpy and torch start their pools; an explicit setting wins). The tests' models are
# tiny, where starting and synchronising threads costs more than it saves, and on a
# 2-core machine torch's OpenMP pool, the BLAS pools and whatever else runs fought over
# the cores (issue 17: one GE2E test took 315 s inside the suite, 47-70 s alone).
# tests/test_threads.py sets its own counts to check the ones speakerdb chooses.
for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from builders import build_random_checkpoint  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SR = 16_000  # Hz


def voice(f0: float, seconds: float = 2.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A synthetic voiced signal: harmonics of f0 with slight vibrato and a noise floor. (n,) float32"""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr  # (n,) seconds
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * (4 + seed % 3) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / sr
    x = sum(np.sin(h * phase) / h for h in range(1, 9))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t + seed) ** 2  # syllable-like loudness
    signal = 0.25 * x * envelope + 0.005 * rng.standard_normal(len(t))
    return signal.astype(np.float32)


# Vowel formants (F1, F2, F3 in Hz) that speech() glides between.
_VOWELS = np.array(
    [
        (730, 1090, 2440),
        (270, 2290, 3010),
        (300, 870, 2240),
        (530, 1840, 2480),
        (570, 840, 2410),
        (660, 1720, 2410),
        (440, 1020, 2240),
        (490, 1350, 1690),
    ],
    dtype=float,
)


def speech(f0: float, seconds: float = 4.0, seed: int = 0, tract: float = 1.0, sr: int = SR) -> np.ndarray:
    """Generated speech that Silero's VAD takes for speech (voice() it does not): syllables of a
    fricative burst and a voiced vowel gliding between formant targets, with pauses between
    phrases. ``tract`` scales the formants (a longer or shorter vocal tract). (n,) float32"""
    from scipy.signal import lfilter  # deferred: scipy is heavy and only some tests make speech

    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    pitch, formants = np.full(n, float(f0)), np.tile(_VOWELS[0] * tract, (n, 1))
    voiced, hiss = np.zeros(n), np.zeros(n)
    t, base = 0, float(f0)
    while t < n:
        if rng.random() < 0.1:  # a pause between phrases
            t += int(rng.uniform(0.15, 0.35) * sr)
            base = f0 * rng.uniform(0.95, 1.1)
            continue
        c, v, g = (int(rng.uniform(lo, hi) * sr) for lo, hi in ((0.04, 0.09), (0.12, 0.26), (0.01, 0.05)))
        span = slice(t, min(t + c + v + g, n))
        m = span.stop - span.start
        pitch[span] = base * (1 + rng.uniform(-0.12, 0.12) * np.linspace(-1, 1, m))
        a, b = _VOWELS[rng.integers(len(_VOWELS))], _VOWELS[rng.integers(len(_VOWELS))]
        w = np.linspace(0, 1, m)[:, None]
        formants[span] = (a * (1 - w) + b * w) * tract
        envelope = np.zeros(c + v + g)
        envelope[c : c + v] = np.sin(np.linspace(0, np.pi, v)) ** 0.6
        voiced[span] = envelope[:m]
        burst = np.zeros(c + v + g)
        burst[:c] = np.hanning(c) * rng.uniform(0.2, 0.6)
        hiss[span] = burst[:m]
        t, base = t + c + v + g, base * rng.uniform(0.97, 1.02)
    # Glottal pulses (Rosenberg's shape) at the pitch, through three resonators block by block.
    frac = np.cumsum(pitch / sr) % 1.0
    opening, closing = 0.4, 0.6
    pulse = np.where(
        frac < opening,
        0.5 * (1 - np.cos(np.pi * frac / opening)),
        np.where(frac < closing, np.cos(np.pi / 2 * (frac - opening) / (closing - opening)), 0.0),
    )
    source = np.diff(pulse, prepend=0.0) * voiced
    out, state = np.zeros(n), [np.zeros(2) for _ in range(3)]
    for s in range(0, n, 80):
        block = source[s : s + 80]
        for j, bandwidth in enumerate((90.0, 110.0, 170.0)):
            r, theta = np.exp(-np.pi * bandwidth / sr), 2 * np.pi * formants[s, j] / sr
            block, state[j] = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], block, zi=state[j])
        out[s : s + 80] = block
    out = 0.6 * out / max(np.max(np.abs(out)), 1e-9)
    out += lfilter([1, -0.95], [1], rng.standard_normal(n)) * hiss * 0.25 + 0.002 * rng.standard_normal(n)
    return (0.7 * out / np.max(np.abs(out))).astype(np.float32)


def write(path: Path, samples: np.ndarray, sr: int = SR, **kwargs) -> Path:
    sf.write(str(path), samples, sr, **kwargs)
    return path


def assert_index_agrees_with_store(db_path: Path, **open_kwargs) -> None:
    """What a fresh process searches equals the store: the file (if any) is a snapshot of
    this database no newer than it, and the index caught up from it holds exactly every
    speaker's centroid."""
    from speakerdb import SpeakerDB
    from speakerdb.storage import store
    from speakerdb.storage.index import SpeakerIndex

    with SpeakerDB(db_path, **open_kwargs) as db:
        header = SpeakerIndex.read_header(db.index_path)
        with db.indexer.snapshot() as (s, index):
            ids, vectors = store.centroids(s)
            settings = store.get_settings(s)
            assert index.generation == store.generation(s)
        if header is not None:
            assert header["database_id"] == settings["database_id"] and header["generation"] <= index.generation
        live = np.flatnonzero(index.alive)
        order = np.argsort(index.labels[live])
        np.testing.assert_array_equal(index.labels[live][order], ids)  # store.centroids is in id order
        if len(ids):
            np.testing.assert_array_equal(index._stored_vectors()[live][order], vectors)


class EnergyDetector:
    """A stand-in VAD for generated tones (Silero is trained on speech and hears none in
    them): a 32 ms frame is speech when its RMS is above ``level``."""

    def __init__(self, level: float = 0.01) -> None:
        from speakerdb.audio import vad

        self.frame = vad.FRAME
        self.level = level
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._pending, samples])
        n = len(x) // self.frame
        self._pending = x[n * self.frame :]
        frames = x[: n * self.frame].reshape(n, self.frame)
        return (np.sqrt(np.mean(frames**2, axis=1)) > self.level).astype(np.float32)

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32)


class FakeEmbedder:
    """Deterministic, model-free embedder for fast API tests.

    The vector is the log energy in 32 frequency bands (50 Hz - 4 kHz), mean-removed and
    L2-normalised: voices with different pitch land far apart, and the same voice saying
    something else lands close. ``calls`` counts embed() calls.
    """

    dim = 32

    def __init__(self, model_id: str = "fake-spectral-v1") -> None:
        self.model_id = model_id
        self.calls = 0

    def embed(self, waveforms) -> np.ndarray:
        self.calls += 1
        edges = np.geomspace(50, 4000, self.dim + 1)  # Hz
        out = []
        for w in waveforms:
            spectrum = np.abs(np.fft.rfft(w)) ** 2  # (n//2+1,)
            freqs = np.fft.rfftfreq(len(w), 1 / SR)
            bands = np.array([spectrum[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges, edges[1:])])
            v = np.log(bands + 1e-6)
            v -= v.mean()
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


class KeepingEmbedder(FakeEmbedder):
    """A FakeEmbedder that keeps every window it embeds: ``windows`` in order, and
    ``by_vector`` from the bytes of the vector it gave each one."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[np.ndarray] = []
        self.by_vector: dict[bytes, np.ndarray] = {}

    def embed(self, waveforms) -> np.ndarray:
        vectors = super().embed(waveforms)
        for v, w in zip(vectors, waveforms):
            self.windows.append(np.asarray(w))
            self.by_vector[v.tobytes()] = self.windows[-1]
        return vectors


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test may read or write the user's real speakerdb home."""
    monkeypatch.setenv("SPEAKERDB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPEAKERDB_DB", raising=False)
    monkeypatch.delenv("SPEAKERDB_MODEL", raising=False)
    monkeypatch.delenv("SPEAKERDB_GALLERY", raising=False)
    monkeypatch.delenv("SPEAKERDB_SEGMENTATION", raising=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight WavLMForXVector saved with save_pretrained (tests/builders.py)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-wavlm"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_checkpoint):
    from speakerdb.embedding.models import load_embedder

    return load_embedder(str(tiny_checkpoint))


@pytest.fixture
def voices(tmp_path) -> dict[str, list[Path]]:
    """Three speakers with two 2-second recordings each, plus one unseen recording each."""
    files: dict[str, list[Path]] = {}
    for name, f0 in [("alice", 210.0), ("bob", 110.0), ("carol", 310.0)]:
        files[name] = [write(tmp_path / f"{name}{k}.wav", voice(f0, 2.0, seed=k)) for k in range(3)]
    return files


@pytest.fixture
def fake_db(tmp_path):
    from speakerdb import SpeakerDB

    db = SpeakerDB(tmp_path / "fake.sqlite", embedder=FakeEmbedder())
    yield db
    db.close()


@pytest.fixture(scope="session")
def pg_admin():
    """The URL of a real PostgreSQL server's ``postgres`` database (tests/pgserver.py), or a skip."""
    from pgserver import PostgresUnavailable, start_for_tests

    try:
        url, server = start_for_tests()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL server could be started here: {e}")
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def pg_url(pg_admin) -> str:
    """A new, empty database on that server."""
    from pgserver import new_database

    return new_database(pg_admin)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path, monkeypatch) -> str | Path:
    """A new database of each kind (PostgreSQL: skipped where no server starts). A test module
    may define its own ``target`` instead."""
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "index"))
    if request.param == "sqlite":
        return tmp_path / "db.sqlite"
    return request.getfixturevalue("pg_url")
