#!/usr/bin/env python
"""What the index cache costs at scale: catch-up by replay, a fresh process's first answer, a write.

    python scripts/bench_index.py /tmp/bench-index                    # a million speakers (~10 min)
    python scripts/bench_index.py /tmp/bench-index --speakers 100000  # a minute
    python scripts/bench_index.py /tmp/bench-index --reuse            # same database and index again

1. Fills DIR/scale.sqlite with N speakers (scripts/kit.py's bulk fill: random
   512-d unit vectors, the same tables and blobs as enrollment writes) and builds the
   index file once. ``--kind flat`` (default) keeps exact search, so that the build is
   seconds; ``--kind hnsw`` builds the graph (~17 min at a million on 2 cores) and then
   measures what replay costs on a graph, where each added vector is inserted into it.
2. For each number of changes K (``--changes 1,100,10000``): a process holding the index
   in memory; another imports K new speakers (one transaction, K change records); then
   the first process's catch-up (replay of the K records), and a fresh process's first
   identify (imports, open, index file load and check, replay of K, search).
3. One enrollment and one removal through ``SpeakerDB`` (the model stubbed out): the
   time spent on the index after the commit (``IndexKeeper.after_commit``: nothing for a
   new speaker, zeroing one position in place for a removal) and in all.

Prints a table; medians where repeated. Say which CPU it ran on when quoting it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import kit

DIM = 512


def fresh_first_identify(db_path: Path, query: np.ndarray) -> tuple[float, float]:
    """(whole process, first identify) seconds of a new process answering one query."""
    result = kit.fresh_identify(db_path, [("?", query)], DIM)
    return result["process_s"], result["queries"][0]["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, 'docs/storage.md, "The index is a cache that never lies" (at a million speakers)'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--speakers", type=int, default=1_000_000)
    p.add_argument("--changes", default="1,100,10000")
    p.add_argument("--kind", choices=["flat", "hnsw"], default="flat")
    p.add_argument("--reuse", action="store_true", help="keep DIR's database and index from an earlier run")
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    db_path = args.directory / "scale.sqlite"

    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.audio import decode as audio
    from speakerdb.storage import indexkeeper, store
    from speakerdb.storage.indexkeeper import IndexKeeper

    # Catch-up rows time the replay alone: no reader saves the file here (saving is its own row).
    save_every, indexkeeper.SAVE_AFTER_CHANGES = indexkeeper.SAVE_AFTER_CHANGES, 1 << 62

    rows: list[tuple[str, str]] = []
    if not (args.reuse and db_path.exists()):
        for stale in args.directory.glob("scale.sqlite*"):
            stale.unlink()
        t = time.perf_counter()
        kit.fill_database(db_path, args.speakers, dim=DIM)
        rows.append(
            ("fill the database (bulk inserts, change records by the triggers)", f"{time.perf_counter() - t:.1f} s")
        )
        with SpeakerDB(db_path) as db:
            db.set_index_params(
                approximate_above=100 * args.speakers if args.kind == "flat" else min(200_000, args.speakers - 1)
            )
            t = time.perf_counter()
            db.rebuild_index()
            rows.append(
                (
                    f"build and save the index once ({args.kind})",
                    f"{time.perf_counter() - t:.1f} s, {Path(f'{db_path}.faiss').stat().st_size / 1e9:.2f} GB",
                )
            )
    rng = np.random.default_rng(7)
    query = kit.unit_vectors(rng, 1, DIM)[0]
    process_s, first_s = fresh_first_identify(db_path, query)
    rows.append(
        (
            "fresh process, index file current: first identify (load, check, search)",
            f"{first_s:.2f} s (process {process_s:.2f} s)",
        )
    )

    for k in [int(x) for x in args.changes.split(",")]:
        holder = SpeakerDB(db_path, embedder=kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID))
        holder.indexer.current()  # this process's index, in memory, at the store's generation
        prefix = f"new{k}-{time.time_ns()}"
        g = kit.write_gallery(
            args.directory / f"changes-{k}.gallery",
            [(f"{prefix}-{i}", v) for i, v in enumerate(kit.unit_vectors(rng, k, DIM))],
            model_id=kit.FILL_MODEL_ID,
        )
        with SpeakerDB(db_path, embedder=kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID)) as writer:
            writer.import_gallery(g)
        t = time.perf_counter()
        with holder.indexer.snapshot() as (_, index):
            pass
        catch_up = time.perf_counter() - t
        process_s, first_s = fresh_first_identify(db_path, query)
        rows.append(
            (f"after {k:,} change(s): catch-up of an index held in memory (replay)", f"{catch_up * 1e3:.1f} ms")
        )
        if k == max(int(x) for x in args.changes.split(",")):
            t = time.perf_counter()
            holder.indexer._save(index, wait=10.0)
            rows.append(
                (
                    f"save the caught-up index file (a reader does this every {save_every:,} changes)",
                    f"{time.perf_counter() - t:.2f} s",
                )
            )
        holder.close()
        rows.append(
            (
                f"after {k:,} change(s): fresh process, first identify (load + replay)",
                f"{first_s:.2f} s (process {process_s:.2f} s)",
            )
        )

    # One write of each kind, the index's share timed by wrapping after_commit.
    spent: list[float] = []
    real = IndexKeeper.after_commit

    def timed(self, before, after):
        t0 = time.perf_counter()
        real(self, before, after)
        spent.append(time.perf_counter() - t0)

    IndexKeeper.after_commit = timed
    stub = kit.StubEmbedder(DIM, model_id=kit.FILL_MODEL_ID)
    enroll_total, enroll_index, remove_total, remove_index = [], [], [], []
    with SpeakerDB(db_path, embedder=stub) as db:
        with db.store.read() as s:  # speakers of the bulk fill, which the index file holds
            picks = rng.choice(np.arange(1, args.speakers + 1), size=50, replace=False).tolist()
            victims = [sp.name for sp in store.speakers_by_id(s, picks).values()][:5]
        for victim in victims:
            stub.next = kit.unit_vectors(rng, 1, DIM)[0]
            name = f"bench-enroll-{time.time_ns()}"
            t = time.perf_counter()
            db.enroll(name, [audio.Audio(f"{name}.flac", rng.standard_normal(16_000).astype(np.float32) * 0.1)])
            enroll_total.append(time.perf_counter() - t)
            enroll_index.append(spent[-1])
            t = time.perf_counter()
            db.remove(victim)
            remove_total.append(time.perf_counter() - t)
            remove_index.append(spent[-1])
    IndexKeeper.after_commit = real
    med = statistics.median
    rows.append(
        (
            "enroll one new speaker: on the index / in all (model stubbed)",
            f"{med(enroll_index) * 1e3:.1f} ms / {med(enroll_total) * 1e3:.1f} ms",
        )
    )
    rows.append(
        (
            "remove one speaker: on the index (zeroed in place) / in all (with the WAL scrub)",
            f"{med(remove_index) * 1e3:.1f} ms / {med(remove_total) * 1e3:.1f} ms",
        )
    )

    kit.print_table(
        f"{args.speakers:,} speakers, {args.kind} index, {kit.cpu_name()}, Python {platform.python_version()}",
        ["measurement", "value"],
        rows,
    )


if __name__ == "__main__":
    main()
