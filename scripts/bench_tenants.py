#!/usr/bin/env python
"""What galleries (tenants) cost the calls that read the database (issue 27 item 5).

    python scripts/bench_tenants.py /tmp/bench-tenants [--speakers 300] [--repeats 40]

1. Fills DIR/tenants.sqlite with N speakers (scripts/kit.py's bulk fill); the model is a
   stub, so the figures are the database's cost, not the network's.
2. Opens it twice: as the default gallery, where the ORM scopes every query to the gallery
   (storage/store.py, ``_scope_query``), and with that scoping off (sessions that see every
   gallery: what the queries were before galleries existed; the same rows here).
3. identify of 20 clips, list and info on each, interleaved call by call (kit.interleaved):
   medians, and the ratio scoped / unscoped.

Say which CPU it ran on when quoting it (printed), and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import kit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/storage.md, "Tenants" (what the scoping costs)'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("--speakers", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=40, help="calls of each kind on each side")
    args = parser.parse_args()

    from speakerdb import SpeakerDB  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "tenants.sqlite"
    if path.exists():
        path.unlink()
    kit.fill_database(path, args.speakers)
    clips = [kit.stub_clip(k) for k in range(20)]
    scoped = SpeakerDB(path, embedder=kit.StubEmbedder(model_id=kit.FILL_MODEL_ID))
    unscoped = SpeakerDB(path, embedder=kit.StubEmbedder(model_id=kit.FILL_MODEL_ID))
    unscoped.store._info = lambda every_gallery: {}  # type: ignore[method-assign]  # sees every gallery
    rows = []
    try:
        for what, call in (
            ("identify, 20 clips", lambda db: db.identify(clips)),
            ("list", lambda db: db.list()),
            ("info", lambda db: db.info()),
        ):
            runs = {"scoped": functools.partial(call, scoped), "unscoped": functools.partial(call, unscoped)}
            times = kit.interleaved(runs, args.repeats)
            a, b = statistics.median(times["scoped"]), statistics.median(times["unscoped"])
            rows.append((what, f"{a * 1e3:.2f} ms", f"{b * 1e3:.2f} ms", f"{a / b:.3f}"))
    finally:
        scoped.close()
        unscoped.close()
    kit.print_table(
        f"{args.speakers:,} speakers; {kit.cpu_name()}; load {kit.load_average():.1f}; medians of {args.repeats}",
        ["call", "scoped (galleries)", "unscoped (before)", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
