#!/usr/bin/env python
"""PostgreSQL against SQLite: enroll and identify latency, what keeping a node in step
costs per request, and the throughput of two services against one.

    python scripts/bench_pg.py                      # starts its own PostgreSQL (python tests/pgserver.py)
    python scripts/bench_pg.py --pg postgresql://postgres@127.0.0.1:5432/postgres --speakers 20000

The model is stubbed (each recording's vector is drawn at random): this measures the
store and the index, not the network (scripts/bench.py and bench_service.py measure
that). Each database is filled with ``--speakers`` speakers by a gallery import first.

- enroll: one new speaker, one recording (the write transaction, its change record, the
  index's after-commit step), median of 50;
- identify: one recording against the gallery, median of 200;
- keeping in step: a request when nothing changed (the snapshot, the generation check),
  and after another node enrolled one speaker (the replay), medians;
- throughput: identify requests per second from one process, and from two processes
  (two services) on the same database, each for ``--seconds``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import kit

DIM = 256


def stub(seed: int = 0) -> kit.StubEmbedder:
    """The model, stubbed: each recording a random unit vector (a new voice)."""
    return kit.StubEmbedder(DIM, seed=seed)


def clip(k: int):
    """The k-th recording (its samples never reach a model)."""
    return kit.stub_clip(k)


def fill(target: str, n: int, workdir: Path) -> None:
    """``n`` speakers into ``target`` by one gallery import."""
    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )

    vectors = kit.unit_vectors(np.random.default_rng(1), n, DIM)
    path = kit.write_gallery(workdir / "fill.gallery", [(f"s{i}", v) for i, v in enumerate(vectors)])
    with SpeakerDB(target, embedder=stub()) as db:
        db.import_gallery(path)


median_ms = kit.median_ms


def identify_loop(target: str, seconds: float, seed: int, out) -> None:
    """One service's loop (a child process): identify requests back to back for ``seconds``."""
    # SpeakerDB reads the variable when it opens: each service its own index cache.
    os.environ["SPEAKERDB_INDEX_DIR"] = tempfile.mkdtemp()
    from speakerdb import SpeakerDB  # deferred: imported after the variable is set

    with SpeakerDB(target, embedder=stub(seed)) as db:
        db.identify([clip(0)])  # load the index first
        done, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            db.identify([clip(done)])
            done += 1
    out.put(done)


def throughput(target: str, processes: int, seconds: float) -> float:
    q = mp.Queue()
    procs = [mp.Process(target=identify_loop, args=(target, seconds, k, q)) for k in range(processes)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def measure(name: str, target: str, other_target: str, args, workdir: Path) -> list[tuple[str, str]]:
    """The table's rows for one database."""
    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )

    fill(target, args.speakers, workdir)
    rows = []
    with SpeakerDB(target, embedder=stub(1)) as db, SpeakerDB(other_target, embedder=stub(2)) as other:
        db.identify([clip(0)])
        rows.append(
            (
                f"enroll one new speaker ({name})",
                f"{median_ms(lambda i: db.enroll(f'new{i}', [clip(10_000 + i)]), 50):.1f} ms",
            )
        )
        rows.append((f"identify one recording ({name})", f"{median_ms(lambda i: db.identify([clip(i)]), 200):.2f} ms"))

        def idle(i):
            with db.indexer.snapshot():
                pass

        rows.append(
            (f"keeping in step, nothing changed: a snapshot and its checks ({name})", f"{median_ms(idle, 200):.2f} ms")
        )

        def after_other_node_wrote(i):
            other.enroll(f"other{i}", [clip(20_000 + i)])  # untimed below: only the reader's catch-up
            t = time.perf_counter()
            with db.indexer.snapshot():
                pass
            return time.perf_counter() - t

        catch = [after_other_node_wrote(i) for i in range(30)]
        rows.append(
            (
                f"keeping in step after another node enrolled one speaker: the replay ({name})",
                f"{statistics.median(catch) * 1e3:.2f} ms",
            )
        )
    one = throughput(target, 1, args.seconds)
    two = throughput(target, 2, args.seconds)
    rows.append(
        (
            f"identify throughput, one service / two services on one database ({name})",
            f"{one:.0f} / {two:.0f} requests/s ({two / one:.2f} x)",
        )
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            'docs/several-machines.md, "Choosing the search: index snapshots against pgvector" '
            "(what keeping in step costs)",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pg", help="admin URL of a PostgreSQL server (default: start one, python tests/pgserver.py)")
    p.add_argument("--speakers", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp())
    os.environ["SPEAKERDB_INDEX_DIR"] = str(workdir / "index")
    with kit.postgres(args.pg) as admin:
        pg = kit.new_pg_database(admin)
        sqlite = str(workdir / "bench.sqlite")
        rows = measure("SQLite", sqlite, sqlite, args, workdir) + measure("PostgreSQL", pg, pg, args, workdir)
    kit.print_table(
        f"{args.speakers:,} speakers, {DIM}-d, model stubbed, {kit.cpu_name()}", ["measurement", "value"], rows
    )


if __name__ == "__main__":
    main()
