#!/usr/bin/env python
"""What zeroing an index file before deleting it costs: a removed gallery's, `db encrypt`'s.

    python scripts/bench_erase.py /tmp/bench-erase                      # 100,000 speakers, 512-d
    python scripts/bench_erase.py /tmp/bench-erase --speakers 1000000 --repeats 3

Saves a flat index of N random 512-d unit vectors in DIR (on the disk to measure: a tmpfs
syncs nothing), then, in turns, deletes it as before (unlink) and as now (zeroed, synced,
then unlinked: ``index.remove_files``), saving it again before each. Prints the medians,
with the save's for scale, the CPU and the load average; then what every open spends looking
for files a killed erasure left (``index.finish_erasing``) in a directory of 10 and 10,000
files, against its look for its own temporary files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

import kit

DIM = 512


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/storage.md, "The index is a cache that never lies" (deleting a file)'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--speakers", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)

    from speakerdb.storage import index as index_files  # deferred: --help stays quick

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.speakers, DIM)).astype(np.float32)  # (n, 512)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = index_files.SpeakerIndex.build(np.arange(args.speakers), vectors, DIM, 1)
    path = args.directory / "bench.faiss"
    times: dict[str, list[float]] = {"save": [], "unlink": [], "zero, sync, unlink": []}
    for _ in range(args.repeats):
        for how in ("unlink", "zero, sync, unlink"):
            t = time.perf_counter()
            index.save(path)
            times["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            if how == "unlink":
                path.unlink()
            else:
                index_files.remove_files(path)
            times[how].append(time.perf_counter() - t)
    size = args.speakers * DIM * 4 / 1e6
    print(f"{kit.cpu_name()}; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"index file of {args.speakers:,} x {DIM} float32 (~{size:.0f} MB), medians of {args.repeats}:")
    for what, seconds in times.items():
        print(f"  {what:<22} {statistics.median(seconds) * 1000:9.1f} ms")
    print("at every open, medians of 7 (of 20 calls each):")
    for files in (10, 10_000):
        with tempfile.TemporaryDirectory(dir=args.directory) as d:
            for i in range(files):
                Path(d, f"f{i}.wav").touch()
            looks = {
                "finish_erasing": lambda: index_files.finish_erasing(d),
                "temporary_files": lambda: index_files.temporary_files(Path(d, "db.sqlite.faiss")),
            }
            for what, call in looks.items():
                runs = [timeit.timeit(call, number=20) / 20 for _ in range(7)]
                print(f"  {what:<16} {files:>6,} files {statistics.median(runs) * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
