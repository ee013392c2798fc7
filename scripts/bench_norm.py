#!/usr/bin/env python
"""What AS-norm costs identify at scale (issue 16 item 5).

    python scripts/bench_norm.py /tmp/bench-norm [--speakers 10000] [--cohort 251] [--repeats 200]

1. Fills DIR/norm.sqlite with N speakers (scripts/scale_test.py's bulk fill: random 512-d
   unit vectors, the tables and blobs enrollment writes); the model is a stub that returns
   the vector it is told to, so the figures are the database's cost, not the network's.
2. identify of one clip, top 5, in alternating blocks: raw scores, then AS-norm (a cohort
   of random unit vectors, top-N 100), then raw, then AS-norm again. Medians per block;
   the row is the median over both blocks of each kind, and the difference.
3. The one-off costs: the first identify after turning normalisation on (every
   speaker's cohort statistics computed once), and the first identify after one more
   enrollment (the statistics catch up by replaying that one change record).

Say which CPU it ran on when quoting it (printed), and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scale_test  # noqa: E402  (its bulk fill)
from bench_index import cpu_name  # noqa: E402

DIM = scale_test.DIM


class Stub:
    """Returns the vector it is told to."""

    model_id, dim = "scale-stub", DIM

    def __init__(self) -> None:
        self.next = np.zeros(DIM, np.float32)

    def embed(self, waveforms):
        return np.asarray([self.next] * len(waveforms), dtype=np.float32)


def unit(rng, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--cohort", type=int, default=251)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=200, help="identify calls per block")
    args = parser.parse_args()

    from speakerdb import SpeakerDB, audio, norm

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "norm.sqlite"
    for p in args.dir.glob("norm.sqlite*"):
        p.unlink()
    scale_test.fill(path, args.speakers)
    rng = np.random.default_rng(1)
    stub = Stub()
    db = SpeakerDB(path, embedder=stub)
    clip = audio.Audio("query", np.full(16_000, 0.1, np.float32))
    with db.store.read() as s:
        from speakerdb import store

        _, centroids = store.centroids(s)
    queries = centroids[rng.integers(0, len(centroids), args.repeats)] + 0.05 * unit(rng, args.repeats)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cohort = norm.CohortVectors(Stub.model_id, unit(rng, args.cohort), [f"cohort/{i}" for i in range(args.cohort)],
                                [f"{i:064x}" for i in range(args.cohort)])

    def block() -> float:
        times = []
        for q in queries:
            stub.next = q
            t = time.perf_counter()
            db.identify([clip], top_k=5)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    db.identify([clip])  # builds the index (not measured)
    medians: dict[str, list[float]] = {"raw": [], "as-norm": []}
    first_on = replay = 0.0
    for round_ in range(2):
        medians["raw"].append(block())
        db.set_norm(cohort, top_n=args.top_n)
        stub.next = queries[0]
        t = time.perf_counter()
        db.identify([clip])
        if round_ == 0:
            first_on = time.perf_counter() - t
        medians["as-norm"].append(block())
        if round_ == 0:
            stub.next = unit(rng, 1)[0]
            db.enroll("one-more", [audio.Audio("one-more.flac", np.full(16_000, 0.2, np.float32))])
            stub.next = queries[0]
            t = time.perf_counter()
            db.identify([clip])
            replay = time.perf_counter() - t
        db.set_norm_off()
    db.close()

    raw, normed = statistics.median(medians["raw"]), statistics.median(medians["as-norm"])
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.1f}; {args.speakers:,} speakers, {DIM}-d, "
          f"cohort {args.cohort}, top-N {args.top_n}, {args.repeats} identify calls per block, 2 blocks each")
    print("| identify, one clip, top 5 | median ms |")
    print("|---|---|")
    print(f"| raw scores | {raw * 1e3:.2f} (blocks {', '.join(f'{m * 1e3:.2f}' for m in medians['raw'])}) |")
    print(f"| AS-norm | {normed * 1e3:.2f} (blocks {', '.join(f'{m * 1e3:.2f}' for m in medians['as-norm'])}) |")
    print(f"| AS-norm minus raw | {(normed - raw) * 1e3:+.2f} |")
    print(f"| first identify after `norm --cohort` (statistics of every speaker) | {first_on * 1e3:.1f} |")
    print(f"| first identify after one more enrollment (replay of 1 record) | {replay * 1e3:.2f} |")


if __name__ == "__main__":
    main()
