"""The FAISS inner-product index over speaker centroids: a cache of the store.

Vectors are L2-normalised, so inner product is cosine similarity. FAISS ids are the
speakers' primary keys. The file on disk is a small header followed by FAISS's own
serialisation::

    b"SPEAKERDB-INDEX\\n" | u32 little-endian header length | header (JSON) | faiss bytes

The header records the store generation the index was built from; a file whose
generation differs from the store's is stale and gets rebuilt. Files are written to a
temporary name and renamed over the old one, so a reader sees the old or the new index,
never half of one.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

MAGIC = b"SPEAKERDB-INDEX\n"
FORMAT_VERSION = 1


@contextmanager
def write_lock(path: str | Path) -> Iterator[None]:
    """Serialise index rewrites between processes (an advisory lock on PATH.lock).

    Readers need no lock: files are replaced by rename. Where fcntl does not exist
    (Windows) rewrites are not serialised, which costs at worst a needless rebuild.
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
    """Exact inner-product search over (speaker id, centroid) pairs."""

    def __init__(self, dim: int, generation: int = 0, _faiss_index=None) -> None:
        import faiss

        self.dim = dim
        self.generation = generation
        self._index = _faiss_index or faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, generation: int) -> "SpeakerIndex":
        """An index holding ``vectors`` (n, dim) under ``ids`` (n,)."""
        index = cls(dim, generation)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) ids with (n, dim) vectors; ids must not be present yet."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (absent ids are ignored)."""
        if len(ids):
            self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (q, dim) -> scores (q, k') float32, ids (q, k') int64.

        k' = min(k, len(self)): no -1 placeholders are returned.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self._index.search(queries, k)  # (q, k), (q, k)
        return scores, ids

    def save(self, path: str | Path) -> None:
        """Write atomically: a temporary file in the same directory, fsync, then rename."""
        import faiss

        path = Path(path)
        header = json.dumps(
            {"format": FORMAT_VERSION, "dim": self.dim, "generation": self.generation, "count": len(self)}
        ).encode()
        payload = faiss.serialize_index(self._index)  # (n_bytes,) uint8
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(payload.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def peek_generation(path: str | Path) -> int | None:
        """The generation recorded in an index file's header, or None if there is no readable one."""
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC) + 4)
                if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
                    return None
                (header_len,) = struct.unpack_from("<I", head, len(MAGIC))
                return int(json.loads(f.read(header_len))["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerIndex":
        """Read an index file; raises IndexFileError if it is missing or damaged."""
        import faiss

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise IndexFileError(f"{path}: {e.strerror or e}") from None
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise IndexFileError(f"{path}: not a speakerdb index")
        (header_len,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        try:
            header = json.loads(data[start : start + header_len])
            if header.get("format") != FORMAT_VERSION:
                raise IndexFileError(f"{path}: index format {header.get('format')} unknown")
            payload = np.frombuffer(data, dtype=np.uint8, offset=start + header_len)
            faiss_index = faiss.deserialize_index(payload)
        except IndexFileError:
            raise
        except Exception as e:  # json errors, FAISS RuntimeError on truncated payloads
            raise IndexFileError(f"{path}: damaged ({e})") from None
        if faiss_index.d != header["dim"] or faiss_index.ntotal != header["count"]:
            raise IndexFileError(f"{path}: header does not match its contents")
        return cls(int(header["dim"]), int(header["generation"]), faiss_index)
