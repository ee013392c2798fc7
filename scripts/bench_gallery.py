#!/usr/bin/env python
"""Gallery size and export/import times for a synthetic database.

    python scripts/bench_gallery.py                     # 1,000 speakers x 5 utterances, 512-d
    python scripts/bench_gallery.py --speakers 200 --repeats 1

Builds a database of random unit-vector "utterances" (no model needed: import takes
embeddings as they are), then times `SpeakerDB.export` of all of it and
`SpeakerDB.import_gallery` into an empty database, median of --repeats runs each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import kit
from speakerdb import SpeakerDB


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/storage.md, "Galleries: moving speakers between databases"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--speakers", type=int, default=1000)
    p.add_argument("--per-speaker", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rng = np.random.default_rng(0)
        seed_file = kit.write_gallery(
            tmp / "seed.gallery",
            [(f"speaker-{i:06d}", kit.unit_vectors(rng, args.per_speaker, args.dim)) for i in range(args.speakers)],
            model_id="synthetic-bench",
            metadata={"site": "bench"},
        )
        source = SpeakerDB(tmp / "source.sqlite")
        source.import_gallery(seed_file)

        export_s, import_s, size = [], [], 0
        for r in range(args.repeats):
            out = tmp / f"export{r}.gallery"
            t0 = time.perf_counter()
            size = source.export(out).size_bytes
            export_s.append(time.perf_counter() - t0)
            with SpeakerDB(tmp / f"target{r}.sqlite") as target:
                t0 = time.perf_counter()
                target.import_gallery(out)
                import_s.append(time.perf_counter() - t0)
        source.close()
        db_size = (tmp / "source.sqlite").stat().st_size

    raw = args.speakers * args.per_speaker * args.dim * 4
    kit.print_table(
        f"gallery of {args.speakers} speakers x {args.per_speaker} utterances, {args.dim}-d; {kit.cpu_name()}",
        ["measurement", "value"],
        [
            ("gallery file size", f"{size / 1e6:.2f} MB ({size / raw:.3f} x the raw float32 embeddings)"),
            ("source database file", f"{db_size / 1e6:.2f} MB"),
            (f"export, median of {args.repeats}", f"{statistics.median(export_s):.2f} s"),
            (f"import into an empty database, median of {args.repeats}", f"{statistics.median(import_s):.2f} s"),
            ("peak RSS of this process", f"{kit.peak_rss_mib():.0f} MiB"),
        ],
    )


if __name__ == "__main__":
    main()
