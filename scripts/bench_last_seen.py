#!/usr/bin/env python
"""What recording last_seen costs identify (issue 27 item 2).

    python scripts/bench_last_seen.py /tmp/bench-seen [--speakers 10000] [--repeats 300]

1. Fills DIR/seen.sqlite with N speakers (scripts/kit.py's bulk fill: random 512-d unit
   vectors); the model is a stub that returns the vector it is told to, so the figures are
   the database's cost, not the network's: the worst case for any overhead, since a real
   identify spends tens of milliseconds more embedding the audio.
2. identify of one clip, top 5, a query near a random enrolled speaker (so the decision
   names someone), on three facades of the same file, call by call in turn:
   ``off`` (last_seen not noted at all: the code before issue 27), ``batched`` (the
   default: names kept in memory, one UPDATE at most every governance.SEEN_FLUSH_S) and
   ``every call`` (the flush interval set to 0: one write transaction per identify, what
   batching avoids). Medians of wall and thread-CPU time, and the ratio to ``off``.
3. One flush of the batched names on its own (the write a minute costs).

Say which CPU it ran on when quoting it (printed), and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import kit

DIM = 512


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/governance.md, "Cost of last_seen"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--speakers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=300, help="identify calls per mode")
    args = parser.parse_args()
    import faiss  # deferred: loads its OpenMP runtime; --help stays quick

    faiss.omp_set_num_threads(1)  # one query gains nothing from more (see bench_norm.py)
    from speakerdb import SpeakerDB  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    from speakerdb.storage import store

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "seen.sqlite"
    for p in args.dir.glob("seen*.sqlite*"):
        p.unlink()
    kit.fill_database(path, args.speakers, dim=DIM)
    rng = np.random.default_rng(1)
    stub = kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID)
    dbs = {mode: SpeakerDB(path, embedder=stub) for mode in ("off", "batched", "every call")}
    dbs["off"].note_seen = lambda names: None  # type: ignore[method-assign]  # as before issue 27
    dbs["every call"]._seen.flush_s = 0.0
    clip = kit.stub_clip()
    with dbs["off"].store.read() as s:
        _, centroids = store.centroids(s)
    queries = centroids[rng.integers(0, len(centroids), args.repeats)] + 0.02 * kit.unit_vectors(rng, args.repeats, DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    wall: dict[str, list[float]] = {m: [] for m in dbs}
    cpu: dict[str, list[float]] = {m: [] for m in dbs}
    named = 0
    for db in dbs.values():  # builds each index (not measured)
        stub.next = queries[0]
        db.identify([clip], count_voices=False)
    for q in queries:  # interleaved: on a loaded machine the load drifts by more than the differences
        for mode, db in dbs.items():
            stub.next = q
            t, c = time.perf_counter(), time.thread_time()
            [r] = db.identify([clip], top_k=5, count_voices=False)
            cpu[mode].append(time.thread_time() - c)
            wall[mode].append(time.perf_counter() - t)
            named += r.speaker is not None
    waiting = len(dbs["batched"]._seen._names)
    t = time.perf_counter()
    dbs["batched"].flush_seen()
    flush_s = time.perf_counter() - t
    for db in dbs.values():
        db.close()

    print(
        f"CPU: {kit.cpu_name()}; load average {kit.load_average():.1f}; {args.speakers:,} speakers, {DIM}-d, "
        f"{args.repeats} identify calls per mode, interleaved; {named} of {3 * args.repeats} named a speaker"
    )
    print("| identify, one clip, top 5 | median ms, wall | ratio to off | median ms, CPU of the thread | ratio |")
    print("|---|---|---|---|---|")
    off_w, off_c = statistics.median(wall["off"]), statistics.median(cpu["off"])
    for mode in dbs:
        w, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"| {mode} | {w * 1e3:.2f} | {w / off_w:.3f} | {c * 1e3:.2f} | {c / off_c:.3f} |")
    print(f"| one flush of the batched names ({waiting} speakers, one UPDATE) | {flush_s * 1e3:.1f} | | | |")


if __name__ == "__main__":
    main()
