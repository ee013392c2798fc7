#!/usr/bin/env python
"""Search and enrollment without the model: the FAISS index by size, and enrollment with a stub embedder.

    python scripts/bench_search.py                  # 1k, 100k and 1M speakers; 10,000 enrollments
    python scripts/bench_search.py --quick          # 1k and 100k; 2,000 enrollments (a minute or two)
    python scripts/bench_search.py --full-scale     # adds an HNSW graph of 1M speakers (~10 min more)

* the FAISS index (``SpeakerIndex``): one-query search latency at 1k, 100k and 1M speakers
  (exact), an HNSW graph at 100k (build time, latency, recall@1 against exact search; at
  1M too with --full-scale), and saving and loading the 1M exact index;
* enrollment without embedding (kit.StubEmbedder): ``SpeakerDB.enroll`` calls per second
  for 10,000 new speakers, and importing a gallery of 10,000 speakers.

Random 512-d unit vectors stand in for speaker centroids. No torch, no checkpoint:
bench.py runs this script for its ``faiss`` and ``enroll`` rows and prints them in its
table. The Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import kit
from kit import Row, latency_row, timing_row

SEED = 1234  # of the random vectors, so every run searches the same index
FAISS_DIM = 512  # the WavLM x-vector dimension
SEARCH_K = 5  # candidates per query, as `speakerdb identify` asks by default
LATENCY_QUERIES = 200  # one-query searches timed per index
RECALL_QUERIES = 1_000  # queries of each kind for recall@1
ENROLL_SPEAKERS, ENROLL_SPEAKERS_QUICK = 10_000, 2_000


@dataclass
class Settings:
    """What the measurements share."""

    scratch: Path  # deleted at the end
    repeats: int
    quick: bool = False  # 1k and 100k speakers only, fewer enrollments
    full_scale: bool = False  # also the HNSW graph of 1M speakers (~10 min)


def bench_faiss(ctx: Settings) -> list[Row]:
    """Search latency of :class:`SpeakerIndex` by size, exact and HNSW, with HNSW's recall@1.

    Real centroids cluster, which changes no exact search and makes HNSW's job, if
    anything, harder to predict: the recall here is a guide, not a promise. Recall@1 is
    the fraction of queries whose top speaker is the exact search's.
    """
    from speakerdb.storage.index import (
        SpeakerIndex,  # deferred: loads FAISS; --help stays quick
    )

    sizes = [1_000, 100_000] + ([1_000_000] if ctx.full_scale or not ctx.quick else [])
    hnsw_sizes = [100_000] + ([1_000_000] if ctx.full_scale else [])
    rng = np.random.default_rng(SEED)
    kit.log(f"faiss: drawing {max(sizes):,} random {FAISS_DIM}-d unit vectors")
    vectors = kit.unit_vectors(rng, max(sizes), FAISS_DIM)  # smaller sizes use its first rows
    ids = np.arange(1, max(sizes) + 1, dtype=np.int64)
    exact = {"approximate_above": 10**9}
    rows: list[Row] = []
    for n in sizes:
        noisy, sources = kit.noisy_copies(rng, vectors[:n], RECALL_QUERIES)
        random_queries = kit.unit_vectors(rng, RECALL_QUERIES, FAISS_DIM)
        start = time.perf_counter()
        flat = SpeakerIndex.build(ids[:n], vectors[:n], FAISS_DIM, 0, params=exact)
        build_s = time.perf_counter() - start
        assert flat.kind == "flat"
        kit.log(f"faiss {n:,}: exact search, {LATENCY_QUERIES} one-query searches")
        rows.append(
            latency_row(
                f"faiss {n:,} speakers: exact (flat) search, 1 query, k={SEARCH_K}",
                kit.search_latencies(flat, noisy[:LATENCY_QUERIES], SEARCH_K),
                note=f"built in {build_s:.2f} s",
            )
        )
        if n in hnsw_sizes:
            rows += hnsw_rows(ids[:n], vectors[:n], flat, noisy, sources, random_queries)
        if n == 1_000_000:
            rows += save_load_rows(ctx, flat)
        del flat
        gc.collect()
    if not ctx.full_scale:
        rows.append(
            Row(
                "faiss 1,000,000 speakers: HNSW",
                float("nan"),
                "ms",
                "skipped: building the graph takes ~10 min on 2 cores; run with --full-scale",
            )
        )
    return rows


def hnsw_rows(
    ids: np.ndarray, vectors: np.ndarray, flat: Any, noisy: np.ndarray, sources: np.ndarray, random_queries: np.ndarray
) -> list[Row]:
    """Build time, latency and recall@1 (against ``flat``) of an HNSW index over the same vectors."""
    from speakerdb.storage.index import (
        SpeakerIndex,  # deferred: loads FAISS; --help stays quick
    )

    n = len(ids)
    label = f"faiss {n:,} speakers: HNSW"
    kit.log(f"{label}: building the graph")
    start = time.perf_counter()
    hnsw = SpeakerIndex.build(ids, vectors, FAISS_DIM, 0, params={"approximate_above": 0})
    build_s = time.perf_counter() - start
    assert hnsw.kind == "hnsw"
    p = hnsw.params
    setting = f"M={p['hnsw_m']}, efConstruction={p['hnsw_ef_construction']}, efSearch={p['hnsw_ef_search']}"
    random_ms = np.median(kit.search_latencies(hnsw, random_queries[:LATENCY_QUERIES], SEARCH_K)) * 1e3
    rows = [
        Row(f"{label} build (`SpeakerIndex.build`, approximate_above=0)", build_s, "s", f"{setting}; one run"),
        latency_row(
            f"{label} search, 1 query, k={SEARCH_K}",
            kit.search_latencies(hnsw, noisy[:LATENCY_QUERIES], SEARCH_K),
            note=f"noisy copies of enrolled vectors; random queries: median {random_ms:.3f} ms",
        ),
    ]
    for kind, queries in (
        ("noisy copies of enrolled vectors (cosine ~0.8)", noisy),
        ("random queries", random_queries),
    ):
        _, exact_top = flat.search(queries, 1)  # (q, 1)
        _, approx_top = hnsw.search(queries, 1)
        recall = float(np.mean(exact_top[:, 0] == approx_top[:, 0]))
        note = f"{len(queries)} queries, top-1 against exact search"
        if queries is noisy:  # the exact search should find the source itself
            note += f"; exact top-1 is the source for {np.mean(exact_top[:, 0] == ids[sources]):.4f}"
        rows.append(Row(f"{label} recall@1, {kind}", recall, "recall", note))
    return rows


def save_load_rows(ctx: Settings, index: Any) -> list[Row]:
    """``SpeakerIndex.save`` (with its fsync) and ``SpeakerIndex.load`` of ``index``, in the scratch directory."""
    from speakerdb.storage.index import (
        SpeakerIndex,  # deferred: loads FAISS; --help stays quick
    )

    path = ctx.scratch / "bench.faiss"
    repeats = min(ctx.repeats, 3)  # each writes and reads a 2 GB file
    kit.log(f"faiss {len(index):,}: {repeats} x save and load")
    times = kit.interleaved(
        {"save": lambda: index.save(path), "load": lambda: SpeakerIndex.load(path)}, repeats, warmup=False
    )
    size = f"{path.stat().st_size / 2**30:.2f} GiB file"
    path.unlink()
    return [
        timing_row(f"faiss {len(index):,} speakers: exact index `SpeakerIndex.save`", times["save"], note=size),
        timing_row(
            f"faiss {len(index):,} speakers: exact index `SpeakerIndex.load`",
            times["load"],
            note="page cache warm: the file was just written",
        ),
    ]


def bench_enroll(ctx: Settings) -> list[Row]:
    """Enrollment without the model: ``SpeakerDB.enroll`` per new speaker, and a gallery import."""
    from speakerdb.api import (  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
        DB_FILENAME,
        SpeakerDB,
    )
    from speakerdb.audio.decode import Audio

    n = ENROLL_SPEAKERS_QUICK if ctx.quick else ENROLL_SPEAKERS
    quick = " (--quick)" if ctx.quick else ""
    stub = kit.StubEmbedder(FAISS_DIM, rows=n, seed=SEED)
    waves = [kit.voice(120, 1.0, seed=SEED + 200 + i) for i in range(8)]  # every speaker is new: few will do
    kit.log(f"enroll: {n:,} speakers, one enroll() call each, stub embedder")
    marks = [time.perf_counter()]  # a timestamp every tenth of the run: does it slow down as it grows?
    with SpeakerDB(ctx.scratch / "enroll" / DB_FILENAME, embedder=stub) as db:
        for i in range(n):
            db.enroll(f"spk{i:05d}", [Audio(f"spk{i:05d}.wav", waves[i % len(waves)])])
            if (i + 1) % (n // 10) == 0:
                marks.append(time.perf_counter())
        enrolled = db.info().to_dict()
    total = marks[-1] - marks[0]
    tenth = np.diff(marks)
    rows = [
        Row(
            f"enroll {n:,} new speakers{quick}: `SpeakerDB.enroll` calls per second, stub embedder",
            n / total,
            "/s",
            f"{total:.1f} s in all, one 1 s clip each; first tenth {n / 10 / tenth[0]:,.0f} /s, "
            f"last tenth {n / 10 / tenth[-1]:,.0f} /s; one run",
        )
    ]

    # The same number of speakers arriving at once, as a gallery of one utterance each.
    path = ctx.scratch / "bench.gallery"
    start = time.perf_counter()
    kit.write_gallery(path, [(f"gal{i:05d}", stub.table[i]) for i in range(n)], model_id=stub.model_id)
    write_s = time.perf_counter() - start
    kit.log(f"enroll: importing a gallery of {n:,} speakers")
    with SpeakerDB(ctx.scratch / "import" / DB_FILENAME, embedder=stub) as db:
        start = time.perf_counter()
        summary = db.import_gallery(path)
        import_s = time.perf_counter() - start
    rows.append(
        Row(
            f"enroll {n:,} speakers{quick}: `SpeakerDB.import_gallery` of {n:,} speakers x 1 utterance",
            import_s,
            "s",
            f"{n / import_s:,.0f} speakers/s; writing the gallery took {write_s:.2f} s; one run",
            ok=len(summary.created) == n,
        )
    )
    counts = {k: v for k, v in enrolled.items() if "speaker" in k or "utterance" in k}
    if counts and max(counts.values()) != n:  # every enroll() must have created its speaker
        rows[0].ok = False
        rows[0].note += f"; database counts {counts}"
    return rows


def bench_process(parts: Sequence[str]) -> list[Row]:
    """This process's peak memory, at the end: VmHWM, which (unlike ru_maxrss) starts afresh at exec."""
    peak = kit.status_mib("VmHWM")
    return [
        Row(
            f"{' and '.join(parts)}: peak RSS of the process (VmHWM)",
            kit.peak_rss_mib() if math.isnan(peak) else peak,
            "MiB",
            "with 1M speakers, the FAISS vectors: 2 GB, twice while loading an index file" if "faiss" in parts else "",
        )
    ]


#: The measurements, in the order they run and are printed; ``--only`` names them without ``bench_``.
BENCHMARKS: dict[str, Callable[[Settings], list[Row]]] = {"faiss": bench_faiss, "enroll": bench_enroll}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=kit.describe(
            __doc__, "docs/performance.md (the FAISS and enrollment rows of its table, through bench.py)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repeats", type=int, help="timed runs of the index save and load (default: 5, or 3 with --quick; at most 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="FAISS at 1k and 100k speakers only (unless --full-scale), 2,000 enrollments",
    )
    parser.add_argument(
        "--full-scale",
        action="store_true",
        help="also build and measure an HNSW index of 1M speakers (~10 min on 2 cores)",
    )
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}: use {', '.join(BENCHMARKS)}")
    repeats = args.repeats or (3 if args.quick else 5)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="speakerdb-bench-search-") as tmp:
        ctx = Settings(Path(tmp), repeats, quick=args.quick, full_scale=args.full_scale)
        for name in only:
            rows += BENCHMARKS[name](ctx)
        rows += bench_process(only)
    print(f"speakerdb search and enrollment, model stubbed; {kit.cpu_name()}\n")
    print(kit.rows_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    failed = [r.name for r in rows if not r.ok]
    if failed:
        kit.log(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
