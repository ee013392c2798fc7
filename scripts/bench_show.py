#!/usr/bin/env python
"""What a long audit trail costs `show`: following one speaker's names back through it.

    python scripts/bench_show.py /tmp/bench-show [--records 100000] [--repeats 9]

1. Makes DIR/show.sqlite with two speakers (a stub model that returns a vector it is given,
   so the figures are the database's cost), renames one of them (``dave`` -> ``Dave``), and
   adds N audit records of other people removed or expired, as a retention policy leaves
   them (one per speaker expired).
2. Times ``show("Dave")``, whose audit follows the name back through the renames: medians of
   wall and thread-CPU time. Run this script with an earlier commit's package on PYTHONPATH
   for the figures as they were then.

Say which CPU it ran on when quoting it (printed), and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from pathlib import Path

import numpy as np

import kit

DIM = 512


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/governance.md, "What is held about a person"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--records", type=int, default=100_000, help="removal and expiry records of other people")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    from speakerdb import SpeakerDB  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "show.sqlite"
    for p in args.dir.glob("show.sqlite*"):
        p.unlink()
    rng = np.random.default_rng(0)
    stub = kit.StubEmbedder(DIM)
    with SpeakerDB(path, embedder=stub) as db, db.audited_as("bench"):
        for k, name in enumerate(("alice", "dave")):
            stub.next = kit.unit_vectors(rng, 1, DIM)[0]
            db.enroll(name, [kit.stub_clip(k)], new=True)
        db.rename("dave", "Dave")
    with sqlite3.connect(path) as c:
        c.executemany(
            "INSERT INTO audit (time, key_name, operation, speaker, gallery_id) "
            "VALUES (datetime('now'), 'bench', ?, ?, 1)",
            (("remove" if i % 2 else "expire", f"person {i}") for i in range(args.records)),
        )
    wall, cpu = [], []
    with SpeakerDB(path, embedder=stub) as db:
        trail = db.show("Dave").audit  # opens the database (not measured)
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.thread_time()
            db.show("Dave")
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
    kit.log(f"{kit.cpu_name()}, load average {kit.load_average():.1f}")
    print(
        f"show with {args.records:,} other records: wall {statistics.median(wall) * 1e3:.1f} ms, "
        f"CPU {statistics.median(cpu) * 1e3:.1f} ms (medians of {args.repeats}); its audit holds {len(trail)} records"
    )


if __name__ == "__main__":
    main()
