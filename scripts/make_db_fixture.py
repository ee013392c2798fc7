#!/usr/bin/env python
"""Write tests/data/v0001.sqlite: a database as written by the release at schema revision 0001.

Kept as a fixture (like tests/data/v1.gallery) so that every later migration is tested
upgrading a real database of that release, with every speaker, utterance and embedding
intact. It was made once, with the code of commit 79ed7b1, by:

    python scripts/make_db_fixture.py tests/data/v0001.sqlite

(re-running it on later code writes a database at the newer revision instead). The
embedder is a fixed random projection of the audio's spectrum: 32-d, deterministic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import kit
from speakerdb import SpeakerDB
from speakerdb.audio.decode import Audio

DIM = 32
SR = 16_000  # Hz


class _Projection:
    """The fixture's embedder (tests/test_migrations.py keeps the same one to read it back)."""

    model_id = "fixture-projection-v1"
    dim = DIM

    def embed(self, waveforms):
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((257, DIM))
        out = []
        for w in waveforms:
            frames = np.lib.stride_tricks.sliding_window_view(w, 512)[::256]  # (n, 512)
            spectrum = np.log(np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0) + 1e-6)  # (257,)
            v = spectrum @ basis
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def main(out: Path) -> None:
    rng = np.random.default_rng(1)
    out.unlink(missing_ok=True)
    with SpeakerDB(out, embedder=_Projection()) as db:
        for k, (name, f0) in enumerate([("alice", 210.0), ("bob", 110.0), ("carol", 310.0), ("José", 150.0)]):
            clips = []
            for j in range(3):
                t = np.arange(int(1.5 * SR)) / SR
                x = sum(np.sin(2 * np.pi * h * f0 * (1 + 0.01 * j) * t) / h for h in range(1, 6))
                x = 0.2 * x + 0.01 * rng.standard_normal(len(t))
                clips.append(Audio(f"{name}{j}.wav", x.astype(np.float32)))
            db.enroll(name, clips, metadata={"team": "red" if k % 2 else "blue"})
        db.remove("carol")  # a gap in the ids, as real databases have
        db.enroll(
            "dave", [Audio("dave0.wav", (0.2 * np.sin(2 * np.pi * 95 * np.arange(SR * 2) / SR)).astype(np.float32))]
        )
        db.set_threshold(0.75)
    Path(f"{out}.faiss").unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, "no table; tests/data/v0001.sqlite, which tests/test_migrations.py upgrades (docs/development.md)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="the database file to write (replaced)")
    main(parser.parse_args().out)
