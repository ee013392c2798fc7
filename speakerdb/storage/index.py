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

    PATH   b"SPEAKERDB-INDEX\\n" | u32 header length | u64 scrubbed-to generation
           | header (JSON) | labels (int64) | alive (uint8) | [block table]
           | FAISS serialisation, whose last n x dim float32 are the vectors

The index of an encrypted database (format 5) seals those vectors where they lie, by
blocks of ``crypto.INDEX_BLOCK`` positions (AES-GCM under a key derived from the data key
and a random salt per file, the block's number and labels as associated data); the block
table holds each block's nonce and tag, and the header's ``encryption`` the data key's
number and the salt. Loading opens them in memory; zeroing in place opens a block, zeroes
the position and seals the block again under a new nonce. Format 4 is the plain file.

The header names the database the file belongs to (``database_id``), the generation of
the store's change record it was built at and that record's nonce, and whether the
vectors lie last in the file (``vectors_in_place``). It carries sha256 digests of itself
(``header_sha256``), of the labels (``labels_sha256``) and of the FAISS serialisation up
to its vectors (``payload_sha256``). The alive flags and the vectors have none, since
they are zeroed in place; a reader checks them against each other (a live vector has
norm 1, a dead one is zero) and against the store (a sample of the vectors, and the
count and sums of the live labels: indexkeeper.py).

The file is a snapshot: readers load it and replay the store's change records that
follow it (indexkeeper.py). When a speaker is removed or re-centred, its position is
zeroed in place (vector and alive flag): no rewrite of a 2 GB file, no free space
needed, and the removed vector leaves the disk at once; the fixed-width "scrubbed-to"
field then records the generation up to which that was done, so that a process killed
between its commit and the zeroing is healed by the next one to open the database.
Files are replaced by rename, so a reader never sees half of one; files are opened
without following links and created 0600. A file that is deleted is zeroed first
(:func:`erase`), so that its vectors do not stay in the freed blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from cryptography.exceptions import InvalidTag

from ..errors import SpeakerDBError
from . import atomic, crypto

log = logging.getLogger("speakerdb")
MAGIC = b"SPEAKERDB-INDEX\n"
FORMAT_VERSION = 4  # 4: header and section digests
SEALED_FORMAT_VERSION = 5  # 5: format 4 with its vectors sealed (an encrypted database)
MAX_HEADER_BYTES = 1 << 20  # a header longer than this is damage, not an index
LOCK_TIMEOUT_S = 10.0  # how long a writer waits for another process's index write
HNSW_REBUILD_DEAD_FRACTION = 0.10
SMALL_SEARCH_VECTORS = 1_000_000  # stored vectors x queries below which one thread searches

#: Stored in the database's settings ("index") when it is created.
DEFAULT_PARAMS: dict[str, Any] = {
    "approximate_above": 200_000,  # speakers; at 200k a flat search takes ~30 ms on 2 cores
    "hnsw_m": 32,  # graph degree: 16 gave recall@1 0.83 on 512-d random vectors, 32 gave 0.99
    "hnsw_ef_construction": 80,
    # Candidates kept per search. Recall@1 against exact search, queries at cosine ~0.8 to
    # an enrolled vector (scripts/scale_test.py, 1,000 queries): at 100k speakers 1.000
    # from 256 up; at 1M 0.707 (256), 0.886 (512), 0.977-0.988 (1024), 0.997-0.999
    # (2048: 32-38 ms per query against ~190 ms exact; two draws of queries).
    # Search-time only: `speakerdb index --ef-search N`.
    "hnsw_ef_search": 2048,
}


class IndexFileError(Exception):
    """The index file is missing, unreadable or not for this store (callers rebuild it)."""


class IndexLockTimeout(IndexFileError):
    """Another process held the index lock for longer than the timeout."""


class IndexFileGone(IndexFileError):
    """The index file was removed (erased) or replaced while it was being read: not damage."""


def _open_nofollow(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symbolic link at ``path`` (ELOOP) and anything but a regular file."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def write_lock(path: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Serialise index writes between processes (an advisory lock on PATH.lock).

    Waits at most ``timeout`` seconds (default LOCK_TIMEOUT_S; 0: one try), then raises IndexLockTimeout naming
    the process that holds it (the holder writes its pid and program into the file). A lock
    file that its holder deleted (:func:`remove_lock`) is not taken: the one at its name is.
    Readers need no lock: files are replaced by rename. Where fcntl does not exist
    (Windows) writes are not serialised, which costs at worst a needless rebuild.
    """
    try:
        import fcntl  # POSIX only: imported where a lock is taken
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return

    lock_path = f"{path}.lock"
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = _open_nofollow(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise IndexFileError(f"index lock {lock_path} cannot be opened: {e.strerror or e}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
                        raise IndexLockTimeout(
                            f"index lock {lock_path} held for over {timeout:g} s by {holder}"
                        ) from None
                    time.sleep(0.02)
            # The holder before us may have deleted the file (remove_lock: a removed gallery's):
            # a lock on a file no longer at its name excludes nobody, so take the one there now.
            try:
                taken = _still_at(fd, lock_path)
            except OSError as e:
                raise IndexFileError(f"index lock {lock_path} cannot be checked: {e.strerror or e}") from None
            # Retried for a second past the timeout at most (0 too): a file system whose
            # inode numbers do not hold still must not loop for ever.
            if not taken and time.monotonic() >= deadline + 1.0:
                raise IndexLockTimeout(f"index lock {lock_path} kept being deleted for over {timeout:g} s")
        except BaseException:
            os.close(fd)
            raise
        if taken:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            # The program, not its arguments: a command line may name a speaker (enroll "Jane Doe").
            os.pwrite(fd, f"pid {os.getpid()} ({Path(sys.argv[0]).name[:100] if sys.argv else 'python'})".encode(), 0)
        except OSError:
            pass  # a full disk: the holder's name is a courtesy, the lock still works
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_lock(path: str | Path) -> list[str]:
    """Delete the lock file of the index at ``path``, which the caller holds (a removed
    gallery's: it names a process and its program). Safe for the others: one waiting for it
    finds, once it has it, that the file is no longer at its name, and takes a new one
    (:func:`write_lock`). Returns what could not be deleted."""
    lock = Path(f"{path}.lock")
    try:
        lock.unlink(missing_ok=True)
    except OSError as e:  # a directory in the way: remove_files deletes it
        return [f"{lock} ({e.strerror or e})"]
    return []


def _still_at(fd: int, path: str | Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not renamed, deleted or replaced).
    Other errors than a missing file are raised."""
    st = os.fstat(fd)
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)


def temporary_files(path: str | Path) -> list[Path]:
    """Temporary files of index writes (atomic.replace names them PATH.XXXX.tmp)."""
    path = Path(path)
    return [p for p in path.parent.glob(f"{path.name}.*.tmp") if p.name.count(".") >= 2]


def remove_files(path: str | Path, zero: bool = True) -> list[str]:
    """Delete the index file, its temporary files and a change log of format 2; returns
    what could not be deleted. Each is zeroed first (:func:`erase`) unless ``zero`` is false;
    the caller holds the write lock. What killed erasures left in the directory is finished
    first (:func:`finish_erasing`). Needs no free space, and removes links, not their targets."""
    finish_erasing(Path(path).parent)
    left = []
    lock = Path(f"{path}.lock")
    # A lock file stays: only its holder deletes it (remove_lock), and only a removed
    # gallery's; a directory or a link where it should be is damage, and goes.
    odd_lock = [lock] if lock.is_symlink() or lock.is_dir() else []
    for p in [Path(path), Path(f"{path}.log"), *temporary_files(path), *odd_lock]:
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif zero:
                erase(p)
            else:
                p.unlink(missing_ok=True)
        except OSError as e:
            left.append(f"{p} ({e.strerror or e})")
    return left


#: What :func:`erase` renames a file to (PATH.<16 hex digits>.erasing) before zeroing it.
ERASING = re.compile(r".+\.[0-9a-f]{16}\.erasing")


def erase(path: str | Path) -> None:
    """Zero, sync and delete the index file or debris at ``path`` (:func:`atomic.erase`): its
    vectors do not stay in the freed blocks. A link, or a file that another name links to,
    is only unlinked, never written through.

    The caller holds the write lock, so no writer is at work on the file. The index file is
    first renamed to PATH.<random>.erasing: a reader opening the index then finds none and
    rebuilds; a reader that opened it before finds zeros, and, since the file is no longer
    at its name, takes them for an erasure, not damage (:meth:`SpeakerIndex.load`), and
    rebuilds. A kill while zeroing leaves that name, which the next erase or open of any
    index in the directory finishes (:func:`finish_erasing`): the file may be a removed
    gallery's, which nothing opens again.
    """
    path = Path(path)
    aside = None
    if not (path.name.endswith(".tmp") or ERASING.fullmatch(path.name)):
        aside = path.with_name(f"{path.name}.{os.urandom(8).hex()}.erasing")
    atomic.erase(path, aside)


def erasing_files(directory: str | Path) -> list[Path]:
    """Files in ``directory`` that :func:`erase` renamed aside and a killed process left, of any index."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [Path(directory, name) for name in names if ERASING.fullmatch(name)]


def finish_erasing(directory: str | Path) -> None:
    """Zero and delete what a process killed while erasing left in ``directory`` (any index's,
    a removed gallery's included). Needs no lock: nothing but an erase writes such a file,
    and two zeroing it at once write the same zeros. Never raises."""
    for p in erasing_files(directory):
        try:
            erase(p)
        except OSError as e:  # another user's file in a shared directory: theirs to delete
            log.debug("%s not deleted: %s", p, e.strerror or e)


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
        import faiss  # deferred: faiss is heavy to import

        self.dim = dim
        self.generation = generation  # the store's change record this index is at
        self.nonce: int | None = None  # that record's nonce (None at generation 0)
        self.database_id: str | None = None  # the database it was built from
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
        self.file_identity: tuple[int, ...] | None = None  # the file it was loaded from, if it was

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

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace the vectors (n, dim) of speakers ``ids`` (n,)."""
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self.remove(ids)
        self._faiss.add(vectors)
        self.labels = np.concatenate([self.labels, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])

    def remove(self, ids: np.ndarray) -> None:
        """Forget speakers ``ids`` (absent ids are ignored); their stored vectors are zeroed."""
        if len(ids) == 0 or len(self.labels) == 0:
            return
        # One vectorised pass (~10 ms at a million positions) instead of an id -> position
        # dict, which took 0.6 s to build there before the first change could be applied.
        dead = np.flatnonzero(np.isin(self.labels, np.asarray(ids, np.int64)) & self.alive)
        if not len(dead):
            return
        self.alive[dead] = False
        self._stored_vectors()[dead] = 0.0

    def _stored_vectors(self) -> np.ndarray:
        """A writable (n_positions, dim) view of the vectors inside the FAISS index."""
        import faiss  # deferred: faiss is heavy to import

        flat = self._faiss.storage if self.kind == "hnsw" else self._faiss
        flat = faiss.downcast_index(flat)
        n = flat.ntotal
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (q, dim) -> scores (q, k') float32, speaker ids (q, k') int64.

        k' = min(k, len(self)). An approximate search can find fewer than k' live
        speakers for a query; the rest of its row is id -1 with score -inf.
        """
        import faiss  # deferred: faiss is heavy to import

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        params = None
        if self.n_dead:
            bits = np.packbits(self.alive, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self.alive), faiss.swig_ptr(bits))
            params = (
                faiss.SearchParametersHNSW(sel=selector)
                if self.kind == "hnsw"
                else faiss.SearchParameters(sel=selector)
            )
        if self.kind == "hnsw":
            if params is None:
                params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(self.params["hnsw_ef_search"]), k)
        # A small search on OpenMP's whole pool loses: on a busy 2-core machine one query
        # over 10,000 speakers took 24-40 ms on two threads against 1.1 ms on one.
        threads = faiss.omp_get_max_threads()
        small = len(self.labels) * len(queries) < SMALL_SEARCH_VECTORS
        if small:
            faiss.omp_set_num_threads(1)
        try:
            scores, positions = self._faiss.search(queries, k, params=params)  # (q, k), (q, k)
        finally:
            if small:
                faiss.omp_set_num_threads(threads)
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
    def save(self, path: str | Path, codec: crypto.Codec = crypto.PLAIN) -> None:
        """Write the index file atomically (temporary 0600 file, fsync, rename over ``path``).

        Renaming replaces a link at ``path`` instead of writing through it. With an
        encrypting ``codec`` the vectors are sealed (format 5).
        """
        import faiss  # deferred: faiss is heavy to import

        index = self.compacted() if self.should_compact() else self
        path = Path(path)
        n = len(index.labels)
        payload = faiss.serialize_index(index._faiss)  # (n_bytes,) uint8
        vector_bytes = n * index.dim * 4
        # FAISS writes a flat index's vectors last (for HNSW: its flat storage, last):
        # check it byte for byte rather than trust it, so that zeroing in place hits them.
        tail = payload[len(payload) - vector_bytes :] if vector_bytes else payload[:0]
        in_place = n > 0 and tail.tobytes() == np.ascontiguousarray(index._stored_vectors()).tobytes()
        labels = index.labels.astype("<i8").tobytes()
        before_vectors = payload[: len(payload) - (vector_bytes if in_place else 0)]
        sealed: dict[str, Any] | None = None
        table = b""
        if codec.encrypted:
            if not in_place:
                raise IndexFileError(f"{path}: this FAISS layout keeps its vectors elsewhere: it cannot be sealed")
            salt = os.urandom(16)
            table = _seal_vectors(codec.index_key(salt), salt, payload, labels, n, index.dim)
            sealed = {"dek_id": codec.dek_id, "salt": salt.hex(), "block": crypto.INDEX_BLOCK}
        header = {
            "format": SEALED_FORMAT_VERSION if sealed else FORMAT_VERSION,
            "database_id": index.database_id,
            "generation": index.generation,
            "nonce": index.nonce,
            "kind": index.kind,
            "params": index.params,
            "dim": index.dim,
            "positions": n,
            "max_label": int(index.labels.max()) if n else -1,
            "payload_bytes": len(payload),
            "vectors_in_place": bool(in_place),
            "labels_sha256": hashlib.sha256(labels).hexdigest(),
            "payload_sha256": hashlib.sha256(before_vectors).hexdigest(),
        }
        if sealed is not None:
            header["encryption"] = sealed
        header["header_sha256"] = _header_digest(header)
        encoded = json.dumps(header).encode()
        with atomic.replace(path) as f:
            f.write(MAGIC + struct.pack("<IQ", len(encoded), index.generation) + encoded)
            f.write(labels)
            f.write(index.alive.astype(np.uint8).tobytes())
            f.write(table)
            f.write(payload.tobytes())
        if index is not self:
            self.__dict__.update(index.__dict__)

    @staticmethod
    def read_header(path: str | Path) -> dict[str, Any] | None:
        """The validated header of an index file, or None if there is no usable one."""
        return _with_header(path)

    @staticmethod
    def file_info(path: str | Path) -> dict[str, Any] | None:
        """The validated header of an index file plus ``speakers`` (its live positions) and ``bytes``, or None."""

        def count_alive(f: BinaryIO, header: dict[str, Any], start: int, size: int) -> dict[str, Any]:
            f.seek(start + 8 * header["positions"])
            alive = np.fromfile(f, dtype=np.uint8, count=header["positions"])
            return {**header, "speakers": int(np.count_nonzero(alive)), "bytes": size}

        return _with_header(path, count_alive)

    @classmethod
    def load(cls, path: str | Path, codec: crypto.Codec = crypto.PLAIN) -> "SpeakerIndex":
        """Read an index file; raises IndexFileError if it is missing, damaged or of another format,
        or sealed when ``codec`` does not encrypt (and plain when it does); IndexFileGone if it
        is missing, or failed to load and is no longer at ``path`` (erased or replaced meanwhile).

        The loaded index's ``file_identity`` names the file it was read from (see :func:`file_identity`).
        """
        path = Path(path)
        # Streamed from the file into FAISS: reading it whole first (bytes, then FAISS's
        # own copy) took 8-15 s and 6.9 GB of memory for a million speakers, this 1.8 s
        # and the index's own 2.3 GB.
        try:
            fd = _open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            raise IndexFileGone(f"{path}: removed") from None
        except OSError as e:
            raise IndexFileError(f"{path}: {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            try:
                st = os.fstat(f.fileno())
                index = cls._read(f, st.st_size, codec)
            except Exception as e:
                # erase() renames a file before zeroing it: zeros read from a file that is
                # still at its name are damage, from one that is not, an erasure.
                if not _still_at(f.fileno(), path):
                    raise IndexFileGone(f"{path}: removed or replaced while it was read") from None
                if isinstance(e, IndexFileError):
                    raise IndexFileError(f"{path}: {e}") from None
                # FAISS RuntimeError on truncated payloads, numpy on short reads, anything else
                raise IndexFileError(f"{path}: damaged ({type(e).__name__})") from None
        index.file_identity = _identity(st)
        return index

    @classmethod
    def _read(cls, f: BinaryIO, size: int, codec: crypto.Codec = crypto.PLAIN) -> "SpeakerIndex":
        """The index in the open file ``f`` of ``size`` bytes, every part checked that can be."""
        import faiss  # deferred: faiss is heavy to import

        header, _ = _read_header(f, size)
        n, dim, kind = header["positions"], header["dim"], header["kind"]
        sealed = header.get("encryption")
        if bool(sealed) != codec.encrypted:
            raise IndexFileError(
                "sealed, for an encrypted database" if sealed else "not sealed, and the database is encrypted"
            )
        raw_labels = f.read(8 * n)
        alive = np.fromfile(f, dtype=np.uint8, count=n)  # (n,)
        table = f.read(_table_bytes(header))
        if len(raw_labels) != 8 * n or len(alive) != n or not np.isin(alive, (0, 1)).all():
            raise IndexFileError("labels damaged or truncated")
        if hashlib.sha256(raw_labels).hexdigest() != header["labels_sha256"]:
            raise IndexFileError("labels damaged (digest differs)")
        labels = np.frombuffer(raw_labels, dtype="<i8").astype(np.int64)  # (n,)
        # The digest runs over what FAISS reads, as it reads it: no second pass over the file.
        digest = hashlib.sha256()
        unhashed = 4 * n * dim if header["vectors_in_place"] else 0
        left = [header["payload_bytes"] - unhashed]

        def read(size: int) -> bytes:
            data = f.read(size)
            take = min(len(data), left[0])
            if take > 0:
                digest.update(memoryview(data)[:take])
                left[0] -= take
            return data

        faiss_index = faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 24))
        if left[0] or f.tell() != size or digest.hexdigest() != header["payload_sha256"]:
            raise IndexFileError("FAISS payload damaged (digest differs)")
        # What the header says must be what FAISS read: a flat payload under "hnsw" would
        # fail in every search instead of here.
        expected = faiss.IndexHNSWFlat if kind == "hnsw" else faiss.IndexFlatIP
        flat = faiss.downcast_index(faiss_index.storage) if type(faiss_index) is faiss.IndexHNSWFlat else faiss_index
        if (
            type(faiss_index) is not expected
            or type(flat) is not faiss.IndexFlatIP
            or faiss_index.d != dim
            or flat.d != dim
            or faiss_index.ntotal != n
            or flat.ntotal != n
            or faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT
            or (kind == "hnsw" and faiss_index.hnsw.levels.size() != n)
        ):
            raise IndexFileError(
                f"header ({kind}, {dim} dimensions, {n} positions) does not match its contents "
                f"({type(faiss_index).__name__}, {faiss_index.d} dimensions, {faiss_index.ntotal} vectors)"
            )
        live_labels = labels[alive.astype(bool)]
        if len(np.unique(live_labels)) != len(live_labels) or (n and int(labels.max()) != header["max_label"]):
            raise IndexFileError("header does not match its contents")
        index = cls(dim, header["generation"], header["params"], kind, faiss_index, labels, alive.astype(bool))
        index.nonce, index.database_id = header["nonce"], header["database_id"]
        stored = index._stored_vectors()  # (n, dim)
        if header["vectors_in_place"]:
            # kill_in_file zeroes vectors where this flag says they are: check that they are there.
            for pos in {0, n - 1}:
                f.seek(size - 4 * n * dim + 4 * dim * pos)
                if f.read(4 * dim) != stored[pos].tobytes():
                    raise IndexFileError("vectors are not where the header says")
        if sealed:
            salt = bytes.fromhex(sealed["salt"])
            try:
                key = codec.index_key(salt, sealed["dek_id"])
            except SpeakerDBError as e:  # a data key this database does not hold
                raise IndexFileError(str(e)) from None
            _open_vectors(key, salt, stored, raw_labels, table)
        # Every live vector is a centroid, of norm 1, and every dead one was zeroed: damage
        # inside the vectors or the alive flags shows here (0.3 s at a million speakers);
        # the caller also compares a sample and the live labels with the store.
        with np.errstate(over="ignore", invalid="ignore"):  # garbage bytes are no cause for a warning
            norms = np.linalg.norm(stored[index.alive], axis=1)  # (n_alive,)
        if len(norms) and not np.all(np.abs(norms - 1.0) < 1e-3):
            raise IndexFileError("vectors or alive flags damaged (a live vector is not of norm 1)")
        if np.any(stored[~index.alive]):
            raise IndexFileError("vectors or alive flags damaged (a dead vector is not zero)")
        return index

    @staticmethod
    def kill_in_file(path: str | Path, ids: np.ndarray, scrubbed_to: int, codec: crypto.Codec = crypto.PLAIN) -> int:
        """Zero, in the file itself, the vectors and alive flags of speakers ``ids``, then
        record that the file is scrubbed up to generation ``scrubbed_to``. In a sealed file
        (``codec`` holds its data key) each block holding such a position is opened, zeroed
        there and sealed again under a new nonce.

        The caller holds the write lock. Needs no free space and leaves a file that loads
        as the same snapshot with those positions dead; a reader's replay of the change
        records removes or re-adds them anyway. Returns the live positions zeroed (0 if
        there is no file); raises IndexFileError where the file cannot be changed in place
        or its labels are damaged (the caller deletes it).
        """
        try:
            fd = _open_nofollow(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise IndexFileError(f"{path}: {e.strerror or e}") from None
        with os.fdopen(fd, "r+b") as f:
            size = os.fstat(fd).st_size
            header, start = _read_header(f, size)
            n, dim = header["positions"], header["dim"]
            ids = np.asarray(ids, np.int64)
            hit = match = np.zeros(0, np.int64)
            if n and len(ids) and (ids <= header["max_label"]).any():  # ids are never reused:
                raw_labels = f.read(8 * n)  # a newer speaker is not in the file
                if hashlib.sha256(raw_labels).hexdigest() != header["labels_sha256"]:
                    # a removed speaker's position could not be found: the caller deletes the file
                    raise IndexFileError(f"{path}: labels damaged (digest differs)")
                labels = np.frombuffer(raw_labels, dtype="<i8")
                alive = np.fromfile(f, dtype=np.uint8, count=n)
                match = np.flatnonzero(np.isin(labels, ids))
                hit = match[alive[match] != 0]
            if len(match) and not header["vectors_in_place"]:
                raise IndexFileError(f"{path}: this FAISS layout cannot be changed in place")
            vectors_at = size - n * dim * 4
            zeros = bytes(4 * dim)
            if header.get("encryption") and len(match):
                _kill_sealed(fd, header, codec, start, vectors_at, raw_labels, match)
            # Dead positions of these speakers too: a damaged alive flag must not keep a vector.
            for pos in match:
                if not header.get("encryption"):
                    os.pwrite(fd, zeros, vectors_at + int(pos) * 4 * dim)
                os.pwrite(fd, b"\0", start + 8 * n + int(pos))
            if len(match):
                os.fsync(fd)  # the zeros reach the disk before the file says they are there
            if scrubbed_to > header["scrubbed_to"]:
                # Not synced on its own: if this write were lost, the next open would zero
                # the same positions again, which changes nothing.
                os.pwrite(fd, struct.pack("<Q", scrubbed_to), len(MAGIC) + 4)
                if len(match):
                    os.fsync(fd)
            return len(hit)


def _table_bytes(header: dict[str, Any]) -> int:
    """Bytes of a sealed file's block table (0 for a plain file)."""
    sealed = header.get("encryption")
    if not sealed:
        return 0
    return -(-header["positions"] // sealed["block"]) * crypto.INDEX_ENTRY_BYTES


def _blocks(n: int, block: int) -> Iterator[tuple[int, int, int]]:
    for b, lo in enumerate(range(0, n, block)):
        yield b, lo, min(n, lo + block)


def _seal_vectors(key: Any, salt: bytes, payload: np.ndarray, labels: bytes, n: int, dim: int) -> bytes:
    """Seal the last n x dim float32 of ``payload`` (uint8, changed in place) by blocks; returns the block table."""
    at = len(payload) - 4 * n * dim
    table = bytearray()
    for b, lo, hi in _blocks(n, crypto.INDEX_BLOCK):
        nonce = os.urandom(crypto.NONCE_BYTES)
        span = slice(at + 4 * dim * lo, at + 4 * dim * hi)
        sealed = key.encrypt(nonce, payload[span].tobytes(), crypto.index_aad(salt, b, labels[8 * lo : 8 * hi]))
        payload[span] = np.frombuffer(sealed, np.uint8, len(sealed) - crypto.TAG_BYTES)
        table += nonce + sealed[-crypto.TAG_BYTES :]
    return bytes(table)


def _open_vectors(key: Any, salt: bytes, stored: np.ndarray, labels: bytes, table: bytes) -> None:
    """Open the sealed vectors ``stored`` (n, dim), as FAISS read them, in place. Many blocks are
    opened on two threads: AES-GCM lets go of the GIL, so both cores decrypt (measured in
    docs/performance.md, "Encryption at rest")."""
    n = len(stored)
    e = crypto.INDEX_ENTRY_BYTES
    if len(table) != -(-n // crypto.INDEX_BLOCK) * e:
        raise IndexFileError("block table damaged or truncated")

    def open_block(block: tuple[int, int, int]) -> None:
        b, lo, hi = block
        entry = table[b * e : (b + 1) * e]
        try:
            plain = key.decrypt(
                entry[: crypto.NONCE_BYTES],
                stored[lo:hi].tobytes() + entry[crypto.NONCE_BYTES :],
                crypto.index_aad(salt, b, labels[8 * lo : 8 * hi]),
            )
        except InvalidTag:
            raise IndexFileError(f"sealed vectors damaged or not this database's (block {b})") from None
        stored[lo:hi] = np.frombuffer(plain, np.float32).reshape(hi - lo, -1)  # disjoint rows per block

    blocks = list(_blocks(n, crypto.INDEX_BLOCK))
    if len(blocks) < OPEN_THREADS_FROM_BLOCKS:
        for block in blocks:
            open_block(block)
        return
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="speakerdb-open") as pool:
        for _ in pool.map(open_block, blocks):
            pass


#: Sealed blocks (of crypto.INDEX_BLOCK vectors) from which they are opened on two threads.
OPEN_THREADS_FROM_BLOCKS = 64


def _kill_sealed(
    fd: int,
    header: dict[str, Any],
    codec: crypto.Codec,
    start: int,
    vectors_at: int,
    labels: bytes,
    positions: np.ndarray,
) -> None:
    """Zero ``positions`` of a sealed file: open each block they are in, zero them, seal it again."""
    n, dim, sealed = header["positions"], header["dim"], header["encryption"]
    salt = bytes.fromhex(sealed["salt"])
    try:
        key = codec.index_key(salt, sealed["dek_id"])
    except SpeakerDBError as e:
        raise IndexFileError(str(e)) from None
    if not codec.encrypted or key is None:
        raise IndexFileError("sealed, and this database is not encrypted")
    table_at = start + 9 * n
    entry_bytes, width = crypto.INDEX_ENTRY_BYTES, 4 * dim
    for b in np.unique(np.asarray(positions) // sealed["block"]):
        b = int(b)
        lo, hi = b * sealed["block"], min(n, (b + 1) * sealed["block"])
        entry = os.pread(fd, entry_bytes, table_at + b * entry_bytes)
        body = os.pread(fd, (hi - lo) * width, vectors_at + lo * width)
        aad = crypto.index_aad(salt, b, labels[8 * lo : 8 * hi])
        try:
            plain = bytearray(key.decrypt(entry[: crypto.NONCE_BYTES], body + entry[crypto.NONCE_BYTES :], aad))
        except InvalidTag:
            raise IndexFileError(f"sealed vectors damaged (block {b})") from None
        for pos in positions[(positions >= lo) & (positions < hi)]:
            at = (int(pos) - lo) * width
            plain[at : at + width] = bytes(width)
        nonce = os.urandom(crypto.NONCE_BYTES)
        again = key.encrypt(nonce, bytes(plain), aad)
        os.pwrite(fd, again[: -crypto.TAG_BYTES], vectors_at + lo * width)
        os.pwrite(fd, nonce + again[-crypto.TAG_BYTES :], table_at + b * entry_bytes)


def _with_header(path: str | Path, then=None) -> Any:
    """Open an index file without following links and validate its header; returns the
    header, or ``then(file, header, offset after it, file size)``; None for no usable file."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, start = _read_header(f, size)
            return header if then is None else then(f, header, start, size)
    except (OSError, ValueError, IndexFileError):
        return None


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "database_id": (str, type(None)),
    "generation": (int,),
    "nonce": (int, type(None)),
    "kind": (str,),
    "params": (dict,),
    "dim": (int,),
    "positions": (int,),
    "max_label": (int,),
    "payload_bytes": (int,),
    "vectors_in_place": (bool,),
    "labels_sha256": (str,),
    "payload_sha256": (str,),
}


def _header_digest(header: dict[str, Any]) -> str:
    """sha256 of a header without its own digest, in one canonical JSON form."""
    fields = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_identity(path: str | Path) -> tuple[int, ...] | None:
    """What tells the file now at ``path`` (not followed if a link) from any other, or None if there is none.

    A file changed in place (kill_in_file) or replaced (save) no longer has the identity it had.
    """
    try:
        return _identity(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


def _read_header(f: BinaryIO, file_size: int) -> tuple[dict[str, Any], int]:
    """The validated header at the start of an open index file and the offset after it.

    Any damage of any shape (bad magic, a length past the end, JSON that is not an object,
    a missing key, a value of the wrong type or range, sizes that do not add up to the
    file's) raises IndexFileError: the caller rebuilds, never crashes.
    """
    head = f.read(len(MAGIC) + 12)
    if len(head) < len(MAGIC) + 12 or not head.startswith(MAGIC):
        raise IndexFileError("not a speakerdb index")
    header_len, scrubbed_to = struct.unpack_from("<IQ", head, len(MAGIC))
    if header_len > MAX_HEADER_BYTES:
        raise IndexFileError("header too long")
    try:
        header = json.loads(f.read(header_len))
    except (ValueError, UnicodeDecodeError):
        raise IndexFileError("header is not JSON") from None
    if not isinstance(header, dict):
        raise IndexFileError("header is not an object")
    if header.get("format") not in (FORMAT_VERSION, SEALED_FORMAT_VERSION):
        raise IndexFileError(f"index format {header.get('format')!r} is not {FORMAT_VERSION}")
    if header.pop("header_sha256", None) != _header_digest(header):
        raise IndexFileError("header damaged (digest differs)")
    for key, types in _HEADER_TYPES.items():
        value = header.get(key, ...)
        # bool is an int in Python: refuse it where a number is meant
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise IndexFileError(f"header field {key} is missing or of the wrong type")
    sealed = header.get("encryption")
    if (header["format"] == SEALED_FORMAT_VERSION) != isinstance(sealed, dict) or (
        sealed is not None
        and not (
            isinstance(sealed, dict)
            and isinstance(sealed.get("dek_id"), int)
            and isinstance(sealed.get("salt"), str)
            and re.fullmatch(r"[0-9a-f]{32}", sealed["salt"])
            and sealed.get("block") == crypto.INDEX_BLOCK
        )
    ):
        raise IndexFileError("header field encryption is missing or of the wrong type")
    start = len(MAGIC) + 12 + header_len
    n, dim = header["positions"], header["dim"]
    if (
        header["kind"] not in ("flat", "hnsw")
        or not 0 < dim <= 65_536
        or n < 0
        or header["generation"] < 0
        or scrubbed_to < header["generation"]
        or header["payload_bytes"] < 4 * dim * n
        or (header["vectors_in_place"] and n == 0)
        or start + 9 * n + _table_bytes(header) + header["payload_bytes"] != file_size
        or not set(DEFAULT_PARAMS) <= set(header["params"])
        # FAISS keeps them in C ints: a larger one would overflow in a later build or search
        or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
            for k, v in header["params"].items()
        )
    ):
        raise IndexFileError("header values out of range or sizes do not match the file")
    header["scrubbed_to"] = scrubbed_to
    return header, start
