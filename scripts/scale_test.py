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
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (its query and latency helpers: the same measurement as its FAISS rows)

DIM = 512
BATCH = 20_000  # rows per bulk insert

QUERY_SCRIPT = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from speakerdb import SpeakerDB
from speakerdb.audio import decode as audio
path, queries = sys.argv[1], json.load(sys.stdin)

class Stub:
    model_id, dim = "scale-stub", int(sys.argv[2]) if len(sys.argv) > 2 else 512
    def __init__(self):
        self.next = None
    def embed(self, waves):
        return np.asarray([self.next], dtype=np.float32)

stub = Stub()
db = SpeakerDB(path, embedder=stub)
clip = audio.Audio("query", np.full(16000, 0.1, np.float32))
out = []
for i, (name, vector) in enumerate(queries):
    stub.next = np.asarray(vector, np.float32)
    t = time.perf_counter()
    [r] = db.identify([clip], top_k=5, threshold=0.5)
    out.append({"expected": name, "got": r.speaker, "score": r.score, "seconds": time.perf_counter() - t})
print(json.dumps({"process_s": time.perf_counter() - t0, "queries": out}))
"""


def fill(path: Path, n: int, seed: int = 0, draw=None) -> None:
    """Bulk-fill ``path`` with ``n`` speakers; ``draw(rng, k)`` gives (k, dim) unit vectors
    (default: uniform 512-d)."""
    from sqlalchemy import insert

    from speakerdb import SpeakerDB
    from speakerdb.storage import store

    SpeakerDB(path).close()  # creates the schema and default settings
    db = store.Store(path)
    rng = np.random.default_rng(seed)
    now = store.utcnow()
    done = 0
    t0 = time.perf_counter()
    while done < n:
        k = min(BATCH, n - done)
        if draw is None:
            vectors = rng.standard_normal((k, DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # (k, DIM) unit rows
        else:
            vectors = draw(rng, k)
        with db.write() as s:
            ids = range(done + 1, done + k + 1)
            s.execute(insert(store.Speaker), [
                {"id": i, "name": f"speaker-{i:07d}", "created_at": now, "updated_at": now, "meta": {},
                 "centroid": store.to_blob(v)} for i, v in zip(ids, vectors)
            ])
            s.execute(insert(store.Utterance), [
                {"speaker_id": i, "source": f"synthetic/{i}.flac", "duration_s": 8.0,
                 "audio_sha256": f"{i:064x}", "embedding": store.to_blob(v), "created_at": now}
                for i, v in zip(ids, vectors)
            ])
            if done == 0:
                store.set_setting(s, "model_id", "scale-stub")
                store.set_setting(s, "dim", int(vectors.shape[1]))
            # (the schema's triggers record each new speaker and bump the generation)
        done += k
        print(f"  {done:,} speakers ({done / (time.perf_counter() - t0):,.0f}/s)", file=sys.stderr)
    db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path)
    p.add_argument("--speakers", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=5, help="identifies in the fresh process")
    p.add_argument("--recall-queries", type=int, default=1000, help="queries of each kind for recall@1")
    p.add_argument("--ef-search", default="256,512,1024,2048", help="efSearch values to measure recall at")
    p.add_argument("--vectors", choices=["uniform", "speaker-like"], default="uniform")
    p.add_argument("--fitted", type=Path, help="scripts/speaker_like.py's parameters (for --vectors speaker-like)")
    p.add_argument("--reuse", action="store_true",
                   help="keep DIR's database and index from an earlier run with the same --speakers (no fill, no build)")
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    path = args.directory / "scale.sqlite"
    index_file = Path(f"{path}.faiss")
    reuse = args.reuse and path.exists() and index_file.exists()
    if not reuse:
        for stale in args.directory.glob("scale.sqlite*"):
            stale.unlink()

    from speakerdb import SpeakerDB
    from speakerdb.storage import store

    params = None
    if args.vectors == "speaker-like":
        import speaker_like

        if args.fitted is None:
            raise SystemExit("--vectors speaker-like needs --fitted (python scripts/speaker_like.py DATA fitted.npz)")
        params = speaker_like.load(args.fitted)
    dim = len(params["mean"]) if params is not None else DIM
    t = time.perf_counter()
    if not reuse:
        fill(path, args.speakers, draw=None if params is None else (lambda rng, k: speaker_like.speakers(params, k, rng)))
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
                q = sp.centroid_vector() + bench.QUERY_NOISE_SIGMA * rng.standard_normal(DIM).astype(np.float32)
            else:
                q = speaker_like.recordings(params, sp.centroid_vector()[None], rng)[0]
            queries.append([sp.name, (q / np.linalg.norm(q)).tolist()])
    done = subprocess.run([sys.executable, "-c", QUERY_SCRIPT, str(path), str(dim)], input=json.dumps(queries),
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    correct = sum(q["expected"] == q["got"] for q in result["queries"])
    first, *rest = [q["seconds"] for q in result["queries"]]
    print(f"| {args.speakers:,} speakers, {args.vectors} {dim}-d vectors | value |\n|---|---|")
    if reuse:
        print(f"| database and index from an earlier run (--reuse) | {path.stat().st_size / 1e9:.2f} GB, "
              f"{index_file.stat().st_size / 1e9:.2f} GB ({kind}), loaded in {index_s:.1f} s |")
    else:
        print(f"| fill the database (bulk inserts) | {fill_s:.1f} s, {path.stat().st_size / 1e9:.2f} GB |")
        print(f"| build the index once ({kind}) | {index_s:.1f} s, {index_file.stat().st_size / 1e9:.2f} GB |")
    print(f"| fresh process: imports, open, all {len(queries)} identifies | {result['process_s']:.2f} s |")
    print(f"| first identify (loads the index file) | {first:.2f} s |")
    if rest:
        print(f"| later identifies, median | {np.median(rest) * 1e3:.1f} ms |")
    print(f"| right speaker at rank 1 (queries at cosine ~0.8 to it; stored efSearch {stored_ef}) "
          f"| {correct} of {len(queries)} |")
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
    import faiss

    vectors = index._stored_vectors()  # (n_positions, dim) view of what the index holds
    rng = np.random.default_rng(2)
    if params is None:
        noisy, sources = bench.noisy_copies(rng, vectors, n_queries)
        strangers = bench.random_unit_vectors(rng, n_queries, vectors.shape[1])
    else:
        import speaker_like

        sources = rng.choice(len(vectors), n_queries, replace=False)
        noisy = speaker_like.recordings(params, vectors[sources], rng)
        strangers = speaker_like.recordings(params, speaker_like.speakers(params, n_queries, rng), rng)
    kinds = {"noisy": noisy, "random": strangers}
    exact = {}  # exact top-1 speaker id per query, by kind
    for name, q in kinds.items():
        _, positions = faiss.knn(q, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)  # (n_queries, 1)
        exact[name] = index.labels[positions[:, 0]]
    print(f"  exact top-1 is the noisy query's source for "
          f"{np.mean(exact['noisy'] == index.labels[sources]):.4f} of queries", file=sys.stderr)
    rows = []
    for ef in ef_values:
        index.params["hnsw_ef_search"] = ef
        recalls = [float(np.mean(index.search(q, 1)[1][:, 0] == exact[name])) for name, q in kinds.items()]
        ms = np.asarray(bench.search_latencies(index, noisy[:200])) * 1e3
        rows.append(f"| {ef} | {recalls[0]:.4f} | {recalls[1]:.4f} | {np.median(ms):.2f} ms ({np.percentile(ms, 95):.2f} ms) |")
        print("  " + rows[-1], file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
