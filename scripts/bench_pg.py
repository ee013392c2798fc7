#!/usr/bin/env python
"""PostgreSQL against SQLite: enroll and identify latency, what keeping a node in step
costs per request, and the throughput of two services against one.

    python scripts/bench_pg.py                      # starts its own PostgreSQL (tests/pgserver.py)
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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

DIM = 256
CLIP = None


class Stub:
    model_id, dim = "bench-stub", DIM

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def embed(self, waveforms):
        v = self.rng.standard_normal((len(waveforms), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def clip(k: int):
    from speakerdb.audio import decode as audio

    rng = np.random.default_rng(k)
    return audio.Audio(f"r{k}.flac", (0.1 * rng.standard_normal(16_000)).astype(np.float32))


def fill(target: str, n: int, workdir: Path) -> None:
    from speakerdb import SpeakerDB
    from speakerdb.storage import gallery

    rng = np.random.default_rng(1)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    speakers = [gallery.GallerySpeaker(f"s{i}", None, None, {}, [gallery.GalleryUtterance(f"s{i}.flac", 5.0, f"{i:064x}", None, v[i])])
                for i in range(n)]
    path = workdir / "fill.gallery"
    gallery.write(path, gallery.Gallery("bench-stub", None, DIM, speakers), "bench")
    with SpeakerDB(target, embedder=Stub()) as db:
        db.import_gallery(path)


def median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def identify_loop(target: str, seconds: float, seed: int, out) -> None:
    import os

    os.environ["SPEAKERDB_INDEX_DIR"] = tempfile.mkdtemp()  # each service its own cache
    from speakerdb import SpeakerDB

    with SpeakerDB(target, embedder=Stub(seed)) as db:
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


def measure(name: str, target: str, other_target: str, args, workdir: Path) -> list[str]:
    from speakerdb import SpeakerDB

    fill(target, args.speakers, workdir)
    rows = []
    with SpeakerDB(target, embedder=Stub(1)) as db, SpeakerDB(other_target, embedder=Stub(2)) as other:
        db.identify([clip(0)])
        rows.append((f"enroll one new speaker ({name})", f"{median_ms(lambda i: db.enroll(f'new{i}', [clip(10_000 + i)]), 50):.1f} ms"))
        rows.append((f"identify one recording ({name})", f"{median_ms(lambda i: db.identify([clip(i)]), 200):.2f} ms"))

        def idle(i):
            with db.indexer.snapshot():
                pass

        rows.append((f"keeping in step, nothing changed: a snapshot and its checks ({name})", f"{median_ms(idle, 200):.2f} ms"))

        def after_other_node_wrote(i):
            other.enroll(f"other{i}", [clip(20_000 + i)])  # untimed below: only the reader's catch-up
            t = time.perf_counter()
            with db.indexer.snapshot():
                pass
            return time.perf_counter() - t

        catch = [after_other_node_wrote(i) for i in range(30)]
        rows.append((f"keeping in step after another node enrolled one speaker: the replay ({name})",
                     f"{statistics.median(catch) * 1e3:.2f} ms"))
    one = throughput(target, 1, args.seconds)
    two = throughput(target, 2, args.seconds)
    rows.append((f"identify throughput, one service / two services on one database ({name})",
                 f"{one:.0f} / {two:.0f} requests/s ({two / one:.2f} x)"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", help="admin URL of a PostgreSQL server (default: start one)")
    p.add_argument("--speakers", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    import os

    from pgserver import new_database, start_for_tests

    workdir = Path(tempfile.mkdtemp())
    os.environ["SPEAKERDB_INDEX_DIR"] = str(workdir / "index")
    server = None
    admin = args.pg
    if admin is None:
        admin, server = start_for_tests()
    try:
        pg = new_database(admin)
        sqlite = str(workdir / "bench.sqlite")
        rows = measure("SQLite", sqlite, sqlite, args, workdir) + measure("PostgreSQL", pg, pg, args, workdir)
    finally:
        if server is not None:
            server.stop()
    from bench_index import cpu_name, print_table

    print_table(f"{args.speakers:,} speakers, {DIM}-d, model stubbed, {os.cpu_count()} cores, {cpu_name()}", rows)


if __name__ == "__main__":
    main()
