#!/usr/bin/env python
"""A database of N speakers (default 1,000,000), then identify against it from a fresh process.

    python scripts/scale_test.py /tmp/scale --speakers 1000000      # ~30 min on 2 cores, ~8 GB disk
    python scripts/scale_test.py /tmp/scale --speakers 20000        # a minute
    python scripts/scale_test.py /tmp/scale --reuse                 # again, on the same files
    python scripts/scale_test.py /tmp/scale --vectors speaker-like --fitted fitted.npz

``--vectors uniform`` (default) draws random 512-d unit vectors, the worst case for a graph
index; ``--vectors speaker-like`` draws from the distribution that scripts/speaker_like.py
fitted to real GE2E embeddings (256-d), with queries that are new recordings of enrolled
speakers (the fitted within-speaker spread). Report both.

1. Fills DIR/scale.sqlite with N speakers of one utterance each (random 512-d unit
   vectors; SQLAlchemy Core bulk inserts, the same tables and blobs as enrollment writes).
2. Builds the index once (`SpeakerDB.rebuild_index`): HNSW above the database's
   `approximate_above` (200,000 by default), exact below. Timed.
3. In a fresh process: opens the database, identifies a query that is a noisy copy
   (cosine ~0.8) of a known speaker's vector, and checks that the answer is that
   speaker and that the index file was loaded, not rebuilt (its mtime is unchanged).
   Repeated for several speakers; prints open and query times.
4. Recall@1 of the approximate index against exact search, on ``--recall-queries``
   noisy copies of enrolled vectors (cosine ~0.8: a new recording of an enrolled
   speaker) and as many random unit vectors (nobody enrolled), at each efSearch of
   ``--ef-search`` (a search-time setting: one graph serves every value), with the
   one-query latency of each.

The embedding model is left out (a stub returns the query vector): this measures the
database, not the network, whose cost is in scripts/bench.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import kit

DIM = 512


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__,
            "docs/performance.md (a million speakers) and docs/several-machines.md "
            "(a million speakers of speaker-like vectors)",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--speakers", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=5, help="identifies in the fresh process")
    p.add_argument("--recall-queries", type=int, default=1000, help="queries of each kind for recall@1")
    p.add_argument("--ef-search", default="256,512,1024,2048", help="efSearch values to measure recall at")
    p.add_argument("--vectors", choices=["uniform", "speaker-like"], default="uniform")
    p.add_argument("--fitted", type=Path, help="scripts/speaker_like.py's parameters (for --vectors speaker-like)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep DIR's database and index from an earlier run with the same --speakers (no fill, no build)",
    )
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    path = args.directory / "scale.sqlite"
    index_file = Path(f"{path}.faiss")
    reuse = args.reuse and path.exists() and index_file.exists()
    if not reuse:
        for stale in args.directory.glob("scale.sqlite*"):
            stale.unlink()

    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.storage import store

    params = None
    if args.vectors == "speaker-like":
        if args.fitted is None:
            raise SystemExit("--vectors speaker-like needs --fitted (python scripts/speaker_like.py DATA fitted.npz)")
        params = kit.load_speaker_like(args.fitted)
    dim = len(params["mean"]) if params is not None else DIM
    t = time.perf_counter()
    if not reuse:
        kit.fill_database(
            path,
            args.speakers,
            dim=DIM,
            draw=None if params is None else (lambda rng, k: kit.speaker_like_speakers(params, k, rng)),
        )
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    with SpeakerDB(path) as db:
        if not reuse:
            db.rebuild_index()
        index = db.indexer.current()  # with --reuse: the file, loaded (a rebuild would change its mtime)
        kind = index.kind
        stored_ef = db.index_params["hnsw_ef_search"]
    index_s = time.perf_counter() - t
    recall_rows = recall_sweep(index, args.recall_queries, [int(e) for e in args.ef_search.split(",")], params)
    del index
    mtime = index_file.stat().st_mtime_ns

    rng = np.random.default_rng(1)
    picks = rng.choice(np.arange(1, args.speakers + 1), size=args.queries, replace=False)
    queries = []
    with store.Store(path).read() as s:
        for i in picks:
            sp = store.speaker_by_name(s, f"speaker-{i:07d}")
            if params is None:
                q = sp.centroid_vector() + kit.QUERY_NOISE_SIGMA * rng.standard_normal(DIM).astype(np.float32)
            else:
                q = kit.speaker_like_recordings(params, sp.centroid_vector()[None], rng)[0]
            queries.append((sp.name, q / np.linalg.norm(q)))
    result = kit.fresh_identify(path, queries, dim)
    correct = sum(q["expected"] == q["got"] for q in result["queries"])
    first, *rest = [q["seconds"] for q in result["queries"]]
    print(f"{kit.cpu_name()}\n")
    print(f"| {args.speakers:,} speakers, {args.vectors} {dim}-d vectors | value |\n|---|---|")
    if reuse:
        print(
            f"| database and index from an earlier run (--reuse) | {path.stat().st_size / 1e9:.2f} GB, "
            f"{index_file.stat().st_size / 1e9:.2f} GB ({kind}), loaded in {index_s:.1f} s |"
        )
    else:
        print(f"| fill the database (bulk inserts) | {fill_s:.1f} s, {path.stat().st_size / 1e9:.2f} GB |")
        print(f"| build the index once ({kind}) | {index_s:.1f} s, {index_file.stat().st_size / 1e9:.2f} GB |")
    print(
        f"| fresh process, start to exit: imports, open, all {len(queries)} identifies | {result['process_s']:.2f} s |"
    )
    print(f"| first identify (loads the index file) | {first:.2f} s |")
    if rest:
        print(f"| later identifies, median | {np.median(rest) * 1e3:.1f} ms |")
    print(
        f"| right speaker at rank 1 (queries at cosine ~0.8 to it; stored efSearch {stored_ef}) "
        f"| {correct} of {len(queries)} |"
    )
    print(f"| index rebuilt on open? | {'no' if index_file.stat().st_mtime_ns == mtime else 'YES'} |")
    print()
    print("| efSearch | recall@1, noisy copies | recall@1, random queries | one query, median (p95) |")
    print("|---|---|---|---|")
    for row in recall_rows:
        print(row)


def recall_sweep(index, n_queries: int, ef_values: list[int], params=None) -> list[str]:
    """Table rows: recall@1 of ``index`` against exact search, and latency, at each efSearch.

    Queries: new recordings of enrolled speakers (uniform vectors: noisy copies at cosine
    ~0.8; speaker-like: the fitted within-speaker spread) and as many of nobody enrolled.
    """
    import faiss  # deferred: loads its OpenMP runtime; --help stays quick

    vectors = index._stored_vectors()  # (n_positions, dim) view of what the index holds
    rng = np.random.default_rng(2)
    if params is None:
        noisy, sources = kit.noisy_copies(rng, vectors, n_queries)
        strangers = kit.unit_vectors(rng, n_queries, vectors.shape[1])
    else:
        sources = rng.choice(len(vectors), n_queries, replace=False)
        noisy = kit.speaker_like_recordings(params, vectors[sources], rng)
        strangers = kit.speaker_like_recordings(params, kit.speaker_like_speakers(params, n_queries, rng), rng)
    kinds = {"noisy": noisy, "random": strangers}
    exact = {}  # exact top-1 speaker id per query, by kind
    for name, q in kinds.items():
        _, positions = faiss.knn(q, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)  # (n_queries, 1)
        exact[name] = index.labels[positions[:, 0]]
    print(
        f"  exact top-1 is the noisy query's source for "
        f"{np.mean(exact['noisy'] == index.labels[sources]):.4f} of queries",
        file=sys.stderr,
    )
    rows = []
    for ef in ef_values:
        index.params["hnsw_ef_search"] = ef
        recalls = [float(np.mean(index.search(q, 1)[1][:, 0] == exact[name])) for name, q in kinds.items()]
        ms = np.asarray(kit.search_latencies(index, noisy[:200])) * 1e3
        rows.append(
            f"| {ef} | {recalls[0]:.4f} | {recalls[1]:.4f} | {np.median(ms):.2f} ms ({np.percentile(ms, 95):.2f} ms) |"
        )
        print("  " + rows[-1], file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
