#!/usr/bin/env python
"""What AS-norm costs identify at scale (issue 16 item 5).

    python scripts/bench_norm.py /tmp/bench-norm [--speakers 10000] [--cohort 251] [--repeats 200]

1. Fills DIR/norm.sqlite with N speakers (scripts/kit.py's bulk fill: random 512-d
   unit vectors, the tables and blobs enrollment writes); the model is a stub that returns
   the vector it is told to, so the figures are the database's cost, not the network's.
2. identify of one clip, top 5, against a copy of the database without normalisation and
   against the database with AS-norm (a cohort of random unit vectors, top-N 100), call
   by call in turn (paired): medians of each, and the median of the paired differences.
3. The one-off costs: the first identify after turning normalisation on (every
   speaker's cohort statistics computed once), and the first identify after one more
   enrollment (the statistics catch up by replaying that one change record).

Say which CPU it ran on when quoting it (printed), and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

import kit

DIM = 512


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/accuracy.md, "Score normalisation (AS-norm)" (what it costs identify)'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--cohort", type=int, default=251)
    parser.add_argument("--top-n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=200, help="identify calls per block")
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (0: FAISS's default). One query gains nothing from more, and on "
        "a loaded machine OpenMP's waiting made one 10,000-speaker search 24-40 ms instead of 1.1 ms",
    )
    args = parser.parse_args()
    if args.faiss_threads:
        import faiss  # deferred: loads its OpenMP runtime; --help stays quick

        faiss.omp_set_num_threads(args.faiss_threads)

    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.audio import decode as audio
    from speakerdb.scoring import norm
    from speakerdb.storage import store

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "norm.sqlite"
    for p in args.dir.glob("norm*.sqlite*"):
        p.unlink()
    kit.fill_database(path, args.speakers, dim=DIM)
    rng = np.random.default_rng(1)
    stub = kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID)
    plain_path = args.dir / "norm-plain.sqlite"
    with SpeakerDB(path, embedder=stub) as db:  # fold the write-ahead log in, then copy the file
        db.store.checkpoint()
    shutil.copyfile(path, plain_path)
    normed, plain = SpeakerDB(path, embedder=stub), SpeakerDB(plain_path, embedder=stub)
    clip = kit.stub_clip()
    with plain.store.read() as s:
        _, centroids = store.centroids(s)
    queries = centroids[rng.integers(0, len(centroids), args.repeats)] + 0.05 * kit.unit_vectors(rng, args.repeats, DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cohort = norm.CohortVectors(
        stub.model_id,
        kit.unit_vectors(rng, args.cohort, DIM),
        [f"cohort/{i}" for i in range(args.cohort)],
        [f"c{i:063x}" for i in range(args.cohort)],
    )

    cpu: dict[int, list[float]] = {id(plain): [], id(normed): []}
    # The voice count (a VAD pass per file) is the same on both sides and only adds noise.
    quiet = {"count_voices": False} if "count_voices" in inspect.signature(SpeakerDB.identify).parameters else {}

    def timed(db, q) -> float:
        """Wall seconds of one identify; its CPU seconds (this thread) go to ``cpu``. On a
        loaded machine CPU time moves far less with the load than wall time does."""
        stub.next = q
        t, c = time.perf_counter(), time.thread_time()
        db.identify([clip], top_k=5, **quiet)
        cpu[id(db)].append(time.thread_time() - c)
        return time.perf_counter() - t

    timed(plain, queries[0])  # builds each index (not measured)
    timed(normed, queries[0])
    normed.set_norm(cohort, top_n=args.top_n)
    first_on = timed(normed, queries[0])  # every speaker's statistics, once
    # Paired, interleaved calls (raw, AS-norm, raw, AS-norm...): on a loaded machine the
    # load drifts between blocks by more than the difference measured.
    raw_t, norm_t = [], []
    cpu[id(plain)].clear()
    cpu[id(normed)].clear()
    for q in queries:
        raw_t.append(timed(plain, q))
        norm_t.append(timed(normed, q))
    diffs = [b - a for a, b in zip(raw_t, norm_t)]
    raw_cpu, norm_cpu = cpu[id(plain)][: len(queries)], cpu[id(normed)][: len(queries)]
    cpu_diffs = [b - a for a, b in zip(raw_cpu, norm_cpu)]
    stub.next = kit.unit_vectors(rng, 1, DIM)[0]
    normed.enroll("one-more", [audio.Audio("one-more.flac", np.full(16_000, 0.2, np.float32))])
    stats = normed._norm_stats
    before = (stats.rebuilds, stats.replayed)
    replay = timed(normed, queries[0])
    after = (stats.rebuilds, stats.replayed)
    plain.close()
    normed.close()

    raw, normed_ms = statistics.median(raw_t), statistics.median(norm_t)
    print(
        f"CPU: {kit.cpu_name()}; load average {kit.load_average():.1f}; {args.speakers:,} speakers, {DIM}-d, "
        f"cohort {args.cohort}, top-N {args.top_n}, {args.repeats} paired identify calls, "
        f"FAISS threads {args.faiss_threads or 'default'}"
    )
    print("| identify, one clip, top 5 | median ms, wall | median ms, CPU of the thread |")
    print("|---|---|---|")
    print(f"| raw scores | {raw * 1e3:.2f} | {statistics.median(raw_cpu) * 1e3:.2f} |")
    print(f"| AS-norm | {normed_ms * 1e3:.2f} | {statistics.median(norm_cpu) * 1e3:.2f} |")
    print(
        f"| AS-norm minus raw, median of paired differences | {statistics.median(diffs) * 1e3:+.2f} | "
        f"{statistics.median(cpu_diffs) * 1e3:+.2f} |"
    )
    print(f"| first identify after `norm --cohort` (statistics of every speaker) | {first_on * 1e3:.1f} |")
    print(
        f"| first identify after one more enrollment (statistics: {after[1] - before[1]} replayed, "
        f"{after[0] - before[0]} rebuilt) | {replay * 1e3:.2f} |"
    )


if __name__ == "__main__":
    main()
