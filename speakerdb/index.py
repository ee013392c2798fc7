"""The FAISS inner-product index over speaker centroids: a cache of the store.

Vectors are L2-normalised, so inner product is cosine similarity. Up to
``approximate_above`` speakers the index is exact (``IndexFlatIP``); above it, an HNSW
graph (``IndexHNSWFlat``) answers several times faster, with a recall@1 measured by
``scripts/scale_test.py`` and ``scripts/bench.py``. The parameters live in the database's
settings (``speakerdb index``).

FAISS positions map to speaker ids through ``labels``; a speaker whose centroid changes
or who is removed leaves a dead position behind (its vector zeroed at once, so no
removed embedding stays in memory or on disk) that searches skip with an ID selector.
Dead positions are compacted away when the file is rewritten (flat) or when they exceed
a tenth of the index (HNSW, whose graph must then be rebuilt).

On disk::

    PATH      b"SPEAKERDB-INDEX\\n" | u32 header length | header (JSON) | labels (int64)
              | alive (uint8) | FAISS serialisation
    PATH.log  appended change records: b"CHG1" | u32 header length | header (JSON)
              | upserted vectors (float32)

The header records the store generation the file was built from, and each change record
the generation it brings the index to. A write appends one small record instead of
rewriting the whole file (2 GB at a million speakers); the log is folded into the file
every ``LOG_COMPACT_RECORDS`` records, and at once after a removal (deletion means the
removed vectors leave the files too). Readers get the file plus the log records that
follow it in sequence; anything else (missing, torn, stale) is rebuilt from SQLite by the
caller. Files are replaced by rename, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from . import atomic

MAGIC = b"SPEAKERDB-INDEX\n"
RECORD_MAGIC = b"CHG1"
FORMAT_VERSION = 2
LOG_COMPACT_RECORDS = 256  # change records before the log is folded into the file
HNSW_REBUILD_DEAD_FRACTION = 0.10

#: Stored in the database's settings ("index") when it is created.
DEFAULT_PARAMS: dict[str, Any] = {
    "approximate_above": 200_000,  # speakers; at 200k a flat search takes ~30 ms on 2 cores
    "hnsw_m": 32,  # graph degree: 16 gave recall@1 0.83 on 512-d random vectors, 32 gave 0.99
    "hnsw_ef_construction": 80,
    # Candidates kept per search. Recall@1 against exact search, queries at cosine ~0.8 to
    # an enrolled vector (scripts/scale_test.py, 1,000 queries): at 100k speakers 1.000
    # from 256 up; at 1M 0.707 (256), 0.886 (512), 0.977-0.988 (1024), 0.997-0.999
    # (2048: 32-38 ms per query against ~190 ms exact; two draws of queries). Search-time only: `speakerdb index --ef-search N`.
    "hnsw_ef_search": 2048,
}


@contextmanager
def write_lock(path: str | Path) -> Iterator[None]:
    """Serialise index rewrites between processes (an advisory lock on PATH.lock).

    Readers need no lock: files are replaced by rename and log records are checked. Where
    fcntl does not exist (Windows) writes are not serialised, which costs at worst a
    needless rebuild.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(f"{path}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class IndexFileError(Exception):
    """The index file is missing, unreadable or not for this store (callers rebuild it)."""


class SpeakerIndex:
    """Inner-product search over (speaker id, centroid) pairs: exact, or HNSW when large."""

    def __init__(
        self,
        dim: int,
        generation: int = 0,
        params: dict[str, Any] | None = None,
        kind: str = "flat",
        _faiss_index=None,
        _labels: np.ndarray | None = None,
        _alive: np.ndarray | None = None,
    ) -> None:
        import faiss

        self.dim = dim
        self.generation = generation
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.kind = kind
        if _faiss_index is None:
            if kind == "hnsw":
                _faiss_index = faiss.IndexHNSWFlat(dim, int(self.params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
                _faiss_index.hnsw.efConstruction = int(self.params["hnsw_ef_construction"])
            else:
                _faiss_index = faiss.IndexFlatIP(dim)
        self._faiss = _faiss_index
        self.labels = np.zeros(0, np.int64) if _labels is None else _labels  # (n_positions,) speaker ids
        self.alive = np.zeros(0, bool) if _alive is None else _alive  # (n_positions,)
        self._positions: dict[int, int] | None = None  # speaker id -> live position, built when first needed

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, dim: int, generation: int, params: dict[str, Any] | None = None
    ) -> "SpeakerIndex":
        """An index holding ``vectors`` (n, dim) under speaker ``ids`` (n,); HNSW above the size limit."""
        merged = {**DEFAULT_PARAMS, **(params or {})}
        kind = "hnsw" if len(ids) > int(merged["approximate_above"]) else "flat"
        index = cls(dim, generation, merged, kind)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(np.count_nonzero(self.alive))

    @property
    def n_dead(self) -> int:
        return len(self.labels) - len(self)

    @property
    def _position(self) -> dict[int, int]:
        """Speaker id -> live position. Only writes need it: a loaded index that only
        searches never builds it (0.6 s at a million speakers)."""
        if self._positions is None:
            self._positions = {int(self.labels[i]): int(i) for i in np.flatnonzero(self.alive)}
        return self._positions

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace the vectors (n, dim) of speakers ``ids`` (n,)."""
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self.remove(ids)
        start = len(self.labels)
        self._faiss.add(vectors)
        self.labels = np.concatenate([self.labels, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        self._position.update({int(i): start + k for k, i in enumerate(ids)})

    def remove(self, ids: np.ndarray) -> None:
        """Forget speakers ``ids`` (absent ids are ignored); their stored vectors are zeroed."""
        dead = [self._position.pop(int(i)) for i in ids if int(i) in self._position]
        if not dead:
            return
        self.alive[dead] = False
        self._stored_vectors()[dead] = 0.0

    def _stored_vectors(self) -> np.ndarray:
        """A writable (n_positions, dim) view of the vectors inside the FAISS index."""
        import faiss

        flat = self._faiss.storage if self.kind == "hnsw" else self._faiss
        flat = faiss.downcast_index(flat)
        n = flat.ntotal
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (q, dim) -> scores (q, k') float32, speaker ids (q, k') int64.

        k' = min(k, len(self)). An approximate search can find fewer than k' live
        speakers for a query; the rest of its row is id -1 with score -inf.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        params = None
        if self.n_dead:
            bits = np.packbits(self.alive, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self.alive), faiss.swig_ptr(bits))
            params = faiss.SearchParametersHNSW(sel=selector) if self.kind == "hnsw" else faiss.SearchParameters(sel=selector)
        if self.kind == "hnsw":
            if params is None:
                params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(self.params["hnsw_ef_search"]), k)
        scores, positions = self._faiss.search(queries, k, params=params)  # (q, k), (q, k)
        ids = np.where(positions >= 0, self.labels[np.maximum(positions, 0)], -1)
        scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids

    def compacted(self) -> "SpeakerIndex":
        """The same speakers without dead positions (rebuilds an HNSW graph: slow when large)."""
        live = np.flatnonzero(self.alive)
        vectors = self._stored_vectors()[live].copy()
        return SpeakerIndex.build(self.labels[live], vectors, self.dim, self.generation, self.params)

    def should_compact(self) -> bool:
        if self.kind == "flat":
            return self.n_dead > 0  # cheap, and keeps files minimal
        return self.n_dead > HNSW_REBUILD_DEAD_FRACTION * max(len(self.labels), 1)

    # ---- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index file atomically (temporary file, fsync, rename) and drop the change log."""
        import faiss

        index = self.compacted() if self.should_compact() else self
        path = Path(path)
        header = json.dumps(
            {
                "format": FORMAT_VERSION,
                "kind": index.kind,
                "params": index.params,
                "dim": index.dim,
                "generation": index.generation,
                "positions": len(index.labels),
                "count": len(index),
            }
        ).encode()
        payload = faiss.serialize_index(index._faiss)  # (n_bytes,) uint8
        with atomic.replace(path) as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(index.labels.astype("<i8").tobytes())
            f.write(index.alive.astype(np.uint8).tobytes())
            f.write(payload.tobytes())
        Path(f"{path}.log").unlink(missing_ok=True)
        if index is not self:
            self.__dict__.update(index.__dict__)

    @staticmethod
    def read_header(path: str | Path) -> dict[str, Any] | None:
        """The header of an index file, or None if there is no readable one."""
        try:
            with open(path, "rb") as f:
                return _read_header(f)
        except (OSError, ValueError):
            return None

    @classmethod
    def file_generation(cls, path: str | Path) -> int | None:
        """The generation the file plus its change log bring the index to (None: no usable file)."""
        header = cls.read_header(path)
        if header is None or header.get("format") != FORMAT_VERSION:
            return None
        generation = int(header["generation"])
        for record, _ in _read_log(Path(f"{path}.log"), generation, header["dim"], with_vectors=False):
            generation = record["generation"]
        return generation

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerIndex":
        """Read an index file and replay its change log; raises IndexFileError if the file is unusable."""
        import faiss

        path = Path(path)
        # Streamed from the file into FAISS: reading it whole first (bytes, then FAISS's
        # own copy) took 8-15 s and 6.9 GB of memory for a million speakers, this 1.8 s
        # and the index's own 2.3 GB.
        try:
            f = open(path, "rb")
        except OSError as e:
            raise IndexFileError(f"{path}: {e.strerror or e}") from None
        with f:
            try:
                header = _read_header(f)
                if header is None:
                    raise IndexFileError(f"{path}: not a speakerdb index")
                if header.get("format") != FORMAT_VERSION:
                    raise IndexFileError(f"{path}: index format {header.get('format')} unknown")
                n = int(header["positions"])
                labels = np.fromfile(f, dtype="<i8", count=n).astype(np.int64)  # (n,)
                alive = np.fromfile(f, dtype=np.uint8, count=n).astype(bool)  # (n,)
                if len(labels) != n or len(alive) != n:
                    raise IndexFileError(f"{path}: truncated")
                faiss_index = faiss.read_index(faiss.PyCallbackIOReader(f.read, 1 << 24))
            except IndexFileError:
                raise
            except Exception as e:  # json errors, FAISS RuntimeError on truncated payloads
                raise IndexFileError(f"{path}: damaged ({e})") from None
        if faiss_index.d != header["dim"] or faiss_index.ntotal != n or int(alive.sum()) != header["count"]:
            raise IndexFileError(f"{path}: header does not match its contents")
        index = cls(int(header["dim"]), int(header["generation"]), header["params"], header["kind"], faiss_index, labels, alive)
        for record, vectors in _read_log(Path(f"{path}.log"), index.generation, index.dim, with_vectors=True):
            index.remove(np.asarray(record["remove"], np.int64))
            index.add(np.asarray(record["upsert"], np.int64), vectors)
            index.generation = record["generation"]
        return index

    @staticmethod
    def append_change(
        path: str | Path, generation: int, upserted: dict[int, np.ndarray], removed: set[int], dim: int
    ) -> int:
        """Append one change record (bringing the index to ``generation``); returns the records in the log."""
        log = Path(f"{path}.log")
        ids = list(upserted)
        header = json.dumps({"generation": generation, "upsert": ids, "remove": sorted(removed)}).encode()
        vectors = np.stack([upserted[i] for i in ids]).astype("<f4") if ids else np.zeros((0, dim), "<f4")
        with open(log, "ab") as f:
            f.write(RECORD_MAGIC + struct.pack("<I", len(header)) + header + vectors.tobytes())
            f.flush()
            os.fsync(f.fileno())
        header_now = SpeakerIndex.read_header(path)
        base = int(header_now["generation"]) if header_now else generation
        return sum(1 for _ in _read_log(log, base, dim, with_vectors=False))


def _read_header(f: BinaryIO) -> dict[str, Any] | None:
    """The JSON header at the start of an open index file; None if the file is not one.

    Leaves ``f`` at the first byte after the header. Malformed JSON raises ValueError.
    """
    head = f.read(len(MAGIC) + 4)
    if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
        return None
    (header_len,) = struct.unpack_from("<I", head, len(MAGIC))
    return json.loads(f.read(header_len))


def _read_log(log: Path, base_generation: int, dim: int, with_vectors: bool) -> Iterator[tuple[dict, np.ndarray | None]]:
    """The change records that follow ``base_generation`` one generation at a time.

    Stops at the first record out of sequence, torn (a writer killed mid-append) or
    damaged: what follows it cannot be trusted, and the caller sees an index older than
    the store and rebuilds.
    """
    try:
        f = open(log, "rb")
    except OSError:
        return
    with f:
        expected = base_generation + 1
        while True:
            head = f.read(len(RECORD_MAGIC) + 4)
            if len(head) < len(RECORD_MAGIC) + 4 or not head.startswith(RECORD_MAGIC):
                return
            (header_len,) = struct.unpack_from("<I", head, len(RECORD_MAGIC))
            try:
                record = json.loads(f.read(header_len))
                n_bytes = 4 * dim * len(record["upsert"])
            except (ValueError, KeyError, TypeError):
                return
            if record.get("generation") != expected:
                if record.get("generation", expected) < expected:  # from before the file: skip
                    f.seek(n_bytes, os.SEEK_CUR)
                    continue
                return
            if with_vectors:
                raw = f.read(n_bytes)
                if len(raw) != n_bytes:
                    return
                vectors = np.frombuffer(raw, dtype="<f4").reshape(-1, dim).astype(np.float32)
            else:
                here = f.tell()
                if f.seek(0, os.SEEK_END) < here + n_bytes:
                    return
                f.seek(here + n_bytes)
                vectors = None
            yield record, vectors
            expected += 1
