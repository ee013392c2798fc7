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
import hashlib
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from speakerdb import SpeakerDB
from speakerdb.storage import gallery


def synthetic_gallery(path: Path, n_speakers: int, per_speaker: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    speakers = []
    for i in range(n_speakers):
        vectors = rng.standard_normal((per_speaker, dim)).astype(np.float32)  # (per_speaker, dim)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        utts = [
            gallery.GalleryUtterance(f"spk{i}/utt{j}.flac", 8.0, hashlib.sha256(f"{i}/{j}".encode()).hexdigest(), None, v)
            for j, v in enumerate(vectors)
        ]
        speakers.append(gallery.GallerySpeaker(f"speaker-{i:06d}", None, None, {"site": "bench"}, utts))
    gallery.write(path, gallery.Gallery("synthetic-bench", None, dim, speakers), "bench")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speakers", type=int, default=1000)
    p.add_argument("--per-speaker", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed_file = tmp / "seed.gallery"
        synthetic_gallery(seed_file, args.speakers, args.per_speaker, args.dim)
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

    n_utt = args.speakers * args.per_speaker
    raw = n_utt * args.dim * 4
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| gallery of {args.speakers} speakers x {args.per_speaker} utterances, {args.dim}-d | value |")
    print("|---|---|")
    print(f"| gallery file size | {size / 1e6:.2f} MB ({size / raw:.3f} x the raw float32 embeddings) |")
    print(f"| source database file | {db_size / 1e6:.2f} MB |")
    print(f"| export, median of {args.repeats} | {statistics.median(export_s):.2f} s |")
    print(f"| import into an empty database, median of {args.repeats} | {statistics.median(import_s):.2f} s |")
    print(f"| peak RSS of this process | {peak_mib:.0f} MiB |")


if __name__ == "__main__":
    main()
