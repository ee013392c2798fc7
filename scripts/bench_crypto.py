#!/usr/bin/env python
"""The cost of encryption at rest: enroll, identify and opening, encrypted against plain.

    python scripts/bench_crypto.py                          # 100,000 speakers, 512-d
    python scripts/bench_crypto.py --speakers 1000000 --dir /big/disk --repeats 3

Bulk-fills two databases with the same synthetic speakers (kit.fill_database: one random
unit vector each, one utterance), one plain and one encrypted (SPEAKERDB_KEY_FILE), lets
each write its index file, then measures, interleaved (A B, B A, ...), medians:

* open: a new process opens the database, loads the index file (sealed: its vectors are
  opened in memory) and answers one identify (kit.fresh_identify): the whole process, and
  the first identify alone (index load included);
* enroll: one new speaker, one utterance, through ``SpeakerDB.enroll`` (the model is a
  stub, so the ratio shows the storage side only: a real model adds the same embedding
  time to both), in a process that holds the index (a service), and, a few times, before
  it holds one (a one-shot command: enroll's voice check then reads every centroid);
* identify: one query through ``SpeakerDB.identify`` (same stub);
* once each: ``db encrypt`` of a copy of the plain database, ``key rotate`` (re-wrap) and
  ``key rotate --reencrypt``.

Ratios are encrypted / plain in the same run. Prints the CPU and the load average.
``--approximate-above`` above ``--speakers`` keeps both indexes exact (no HNSW graph to
build at a million: the sealed part of a file, its vectors, is the same either way).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import kit


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/performance.md, "Encryption at rest"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--speakers", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per database (open)")
    p.add_argument("--calls", type=int, default=40, help="enrolls and identifies per database")
    p.add_argument("--cold-calls", type=int, default=3, help="enrolls per database before the index is loaded")
    p.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temporary directory)")
    p.add_argument(
        "--reuse", type=Path, default=None, help="keep the databases in this directory, and use those already there"
    )
    p.add_argument("--skip-convert", action="store_true", help="leave out db encrypt and key rotate")
    p.add_argument(
        "--approximate-above",
        type=int,
        default=None,
        help="the index setting of both databases (default: speakerdb's; above N an exact index takes no graph build)",
    )
    args = p.parse_args()

    from speakerdb import SpeakerDB, api  # deferred: --help stays quick

    work = args.reuse or Path(tempfile.mkdtemp(dir=args.dir))
    work.mkdir(parents=True, exist_ok=True)
    try:
        key_file = work / "db.key"
        if not key_file.exists():
            api.new_key_file(key_file)
        key = api.KeySource(file=str(key_file))
        paths = {"plain": work / "plain.sqlite", "encrypted": work / "encrypted.sqlite"}
        for name, path in paths.items():
            if path.exists() and args.reuse:
                continue
            kit.log(f"filling {name} with {args.speakers:,} speakers")
            kit.fill_database(path, args.speakers, dim=args.dim, key=key if name == "encrypted" else None)
            if args.approximate_above is not None:
                with SpeakerDB(path, key=key if name == "encrypted" else None) as db:
                    db.set_index_params(approximate_above=args.approximate_above)
        envs = {"plain": {}, "encrypted": {"SPEAKERDB_KEY_FILE": str(key_file)}}
        rng = np.random.default_rng(1)
        query = kit.unit_vectors(rng, 1, args.dim)[0]
        for name, path in paths.items():  # the first open builds and saves the index file
            kit.fresh_identify(path, [("?", query)], args.dim, envs[name])

        kit.log("open: fresh processes")
        process: dict[str, list[float]] = {n: [] for n in paths}
        first: dict[str, list[float]] = {n: [] for n in paths}
        for i in range(args.repeats):
            for name in list(paths) if i % 2 == 0 else list(reversed(paths)):
                result = kit.fresh_identify(paths[name], [("?", query)], args.dim, envs[name])
                process[name].append(result["process_s"])
                first[name].append(result["queries"][0]["seconds"])

        kit.log("enroll and identify: one process per database")
        # With --reuse, this run's speakers are new ones: their names, audio and voices too.
        run = time.strftime("%Y%m%d%H%M%S")
        rows = args.calls + 20
        stubs = {n: kit.StubEmbedder(args.dim, rows, seed=int(run) % 2**31, model_id=kit.FILL_MODEL_ID) for n in paths}
        dbs = {n: SpeakerDB(paths[n], embedder=stubs[n], key=key if n == "encrypted" else None) for n in paths}
        counter = {n: 0 for n in paths}

        def enroll(name: str) -> None:
            counter[name] += 1
            stubs[name].next = None
            dbs[name].enroll(f"new-{run}-{counter[name]:05d}", [kit.stub_clip(int(run) * 1000 + counter[name])])

        def identify(name: str) -> None:
            stubs[name].next = query
            dbs[name].identify([kit.stub_clip()], top_k=5, threshold=0.5)

        # Before any search the process holds no index: enroll's voice check then scores every
        # stored centroid (search.nearest_without_index), opening each one when sealed.
        cold_s = kit.interleaved({n: (lambda n=n: enroll(n)) for n in paths}, args.cold_calls, warmup=False)
        identify_s = kit.interleaved({n: (lambda n=n: identify(n)) for n in paths}, args.calls)  # loads the index
        enroll_s = kit.interleaved({n: (lambda n=n: enroll(n)) for n in paths}, args.calls)
        for db in dbs.values():
            db.close()

        rows = []
        for what, samples, unit in (
            ("open: new process, index load, one identify", process, "s"),
            ("open: first identify (index load included)", first, "s"),
            ("enroll one speaker (index in memory: a service)", enroll_s, "ms"),
            ("identify one query", identify_s, "ms"),
            ("enroll one speaker, no index in memory yet (a one-shot command)", cold_s, "ms"),
        ):
            scale = 1000.0 if unit == "ms" else 1.0
            plain = statistics.median(samples["plain"])
            sealed = statistics.median(samples["encrypted"])
            rows.append([what, f"{plain * scale:.3g} {unit}", f"{sealed * scale:.3g} {unit}", f"{sealed / plain:.3f}"])

        if not args.skip_convert:
            copy = work / "convert.sqlite"
            shutil.copy(paths["plain"], copy)
            start = time.perf_counter()
            api.encrypt_database(copy, key)
            rows.append(
                ["db encrypt (one transaction, index rewritten)", "", f"{time.perf_counter() - start:.3g} s", ""]
            )
            new_key = work / "new.key"
            api.new_key_file(new_key)
            start = time.perf_counter()
            api.rotate_key(copy, api.KeySource(file=str(new_key)), key=key)
            rows.append(["key rotate (re-wrap)", "", f"{(time.perf_counter() - start) * 1000:.3g} ms", ""])
            start = time.perf_counter()
            api.rotate_key(copy, reencrypt=True, key=api.KeySource(file=str(new_key)))
            rows.append(["key rotate --reencrypt", "", f"{time.perf_counter() - start:.3g} s", ""])

        sizes = {n: Path(f"{p}.faiss").stat().st_size / 2**20 for n, p in paths.items()}
        kit.print_table(
            f"{args.speakers:,} speakers, {args.dim}-d; {kit.cpu_name()}; load {kit.load_average():.2f}; "
            f"medians of {args.repeats} processes / {args.calls} calls; index file "
            f"{sizes['plain']:.0f} MiB plain, {sizes['encrypted']:.0f} MiB sealed",
            ["", "plain", "encrypted", "ratio"],
            rows,
        )
    finally:
        if args.reuse is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
