#!/usr/bin/env python
"""What refusing case twins costs enrolling a new speaker.

    python scripts/bench_twin_check.py /tmp/bench-twins [--speakers 100000] [--repeats 40]

1. Fills DIR/twins.sqlite with N speakers (scripts/kit.py's bulk fill: random 512-d unit
   vectors); the model is a stub that returns a vector it is given, so the figures are the
   database's cost, not the network's: a real enrollment spends far longer embedding audio.
2. Enrolls new speakers (one 1 s clip each, a vector of their own), in turn with the twin
   check (a lookup of the folded name in the index on ``speakers.folded_name``, before the
   model and again under the write lock) and without it (``governance.twin_of`` replaced by
   one that finds nothing: the code before the check). Run this script of an earlier commit
   with that commit's package for the check as it was then (every name read and folded).
   Medians of wall and thread-CPU time of ``enroll``, and the ratio to ``without``.
3. ``twin_of`` on its own, in a read transaction.

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
        description=kit.describe(__doc__, 'docs/governance.md, "Cost of the twin check"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--speakers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=40, help="enrollments per mode")
    args = parser.parse_args()
    import faiss  # deferred: loads its OpenMP runtime; --help stays quick

    faiss.omp_set_num_threads(1)
    from speakerdb import SpeakerDB  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    from speakerdb.storage import governance

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "twins.sqlite"
    for p in args.dir.glob("twins*.sqlite*"):
        p.unlink()
    kit.fill_database(path, args.speakers, dim=DIM)
    rng = np.random.default_rng(1)
    stub = kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID)
    checked = governance.twin_of
    modes = {"with the twin check": checked, "without (before)": lambda *a, **k: None}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    clip = kit.stub_clip()
    with SpeakerDB(path, embedder=stub) as db:
        stub.next = kit.unit_vectors(rng, 1, DIM)[0]
        db.enroll("warm-up", [clip], new=True)  # builds the index (not measured)
        for i in range(args.repeats):  # interleaved: on a loaded machine the load drifts
            for mode, twin_of in modes.items() if i % 2 == 0 else reversed(list(modes.items())):
                governance.twin_of = twin_of  # type: ignore[assignment]
                stub.next = kit.unit_vectors(rng, 1, DIM)[0]
                t, c = time.perf_counter(), time.thread_time()
                db.enroll(f"New Person {i} {mode}", [clip], new=True)
                cpu[mode].append(time.thread_time() - c)
                wall[mode].append(time.perf_counter() - t)
        governance.twin_of = checked
        alone = []
        for _ in range(args.repeats):
            with db.store.read() as s:
                c = time.thread_time()
                checked(s, "new  PERSON")
                alone.append(time.thread_time() - c)

    print(
        f"CPU: {kit.cpu_name()}; load average {kit.load_average():.1f}; {args.speakers:,} speakers, {DIM}-d, "
        f"{args.repeats} enrollments of a new speaker per mode, interleaved"
    )
    print("| enroll a new speaker, one clip | median ms, wall | ratio | median ms, CPU of the thread | ratio |")
    print("|---|---|---|---|---|")
    base_w, base_c = statistics.median(wall["without (before)"]), statistics.median(cpu["without (before)"])
    for mode in modes:
        w, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"| {mode} | {w * 1e3:.1f} | {w / base_w:.2f} | {c * 1e3:.1f} | {c / base_c:.2f} |")
    print(f"| twin_of alone | | | {statistics.median(alone) * 1e3:.1f} | |")


if __name__ == "__main__":
    main()
