"""Keeps the FAISS index files in step with the SQLite store they cache.

Every write transaction produces a :class:`Change` (which centroids were added or
replaced, which speakers removed, and the store generation it committed). After the
commit :meth:`IndexKeeper.apply` brings the index files from generation g-1 to g:

- additions and updates append one record to the change log (cheap at any size);
- a removal rewrites the index file, so the removed vectors leave the disk at once;
- anything else (the files are at another generation because another process wrote in
  between, or are missing or damaged) rebuilds them from SQLite.

Readers call :meth:`IndexKeeper.current`, which returns the in-memory index if it is at
the store's generation, else the files' (file plus log) if they are, else a rebuild.
Writes happen under the index write lock and never replace newer files with older ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .index import LOG_COMPACT_RECORDS, IndexFileError, SpeakerIndex, write_lock


@dataclass
class Change:
    """What one write transaction did to the centroids."""

    upserted: dict[int, np.ndarray] = field(default_factory=dict)  # speaker id -> (dim,) centroid
    removed: set[int] = field(default_factory=set)
    generation: int = 0  # the store generation after the transaction


class IndexKeeper:
    """The index of one store: in memory for this process, on disk for all of them."""

    def __init__(self, db: store.Store, path: Path) -> None:
        self.store = db
        self.path = path
        self._index: SpeakerIndex | None = None

    def current(self) -> SpeakerIndex:
        """The index at the store's generation: in memory, from the files, or rebuilt."""
        with self.store.read() as s:
            settings = store.get_settings(s)
            generation = int(settings.get("generation", 0))
            index = self._index if self._index is not None and self._index.generation == generation else None
            if index is None and SpeakerIndex.file_generation(self.path) == generation:
                index = self._load()
            if index is None or index.generation != generation:
                index = self._build(s)
                with write_lock(self.path):
                    self._save(index)
        # efSearch is a search-time setting: the stored one applies at once, without a rebuild.
        ef_search = (settings.get("index") or {}).get("hnsw_ef_search")
        if ef_search is not None:
            index.params["hnsw_ef_search"] = int(ef_search)
        self._index = index
        return index

    def apply(self, change: Change) -> None:
        """Bring the index files from generation g-1 to g with this change, or rebuild them.

        Holds the index write lock throughout, so it must not call :meth:`current`
        (flock is per open file: taking it twice in one process would deadlock).
        """
        previous = change.generation - 1
        with write_lock(self.path):
            on_file = SpeakerIndex.file_generation(self.path)
            in_memory = self._index if self._index is not None and self._index.generation == previous else None
            if on_file == previous and not change.removed:
                if in_memory is not None:
                    _apply(in_memory, change)
                records = SpeakerIndex.append_change(self.path, change.generation, change.upserted, set(), self._dim())
                if records >= LOG_COMPACT_RECORDS:
                    (in_memory or SpeakerIndex.load(self.path)).save(self.path)
                return
            if in_memory is None and on_file == previous:
                in_memory = self._load()
            if in_memory is not None and in_memory.generation == previous:
                _apply(in_memory, change)
                self._save(in_memory)
                return
            # Another process wrote in between, or there was no usable file: start afresh.
            with self.store.read() as s:
                self._save(self._build(s))

    def rebuild(self) -> SpeakerIndex:
        """Rebuild the index files from SQLite, whatever they hold now."""
        with self.store.read() as s:
            index = self._build(s)
        with write_lock(self.path):
            self.path.unlink(missing_ok=True)
            Path(f"{self.path}.log").unlink(missing_ok=True)
            self._save(index)
        return index

    def _load(self) -> SpeakerIndex | None:
        try:
            return SpeakerIndex.load(self.path)
        except IndexFileError:
            return None

    def _dim(self) -> int:
        return int(self.store.settings().get("dim") or 0)

    def _build(self, s) -> SpeakerIndex:
        settings = store.get_settings(s)
        ids, vectors = store.centroids(s)
        dim = int(settings.get("dim") or (vectors.shape[1] if vectors.size else 1))
        return SpeakerIndex.build(ids, vectors, dim, int(settings.get("generation", 0)), settings.get("index"))

    def _save(self, index: SpeakerIndex) -> None:
        """Keep ``index`` in memory and on disk, unless the files already hold a newer one.

        Callers hold the index write lock, so the check and the rename cannot interleave
        with another process's: the files never go back to an older generation.
        """
        self._index = index
        on_disk = SpeakerIndex.file_generation(self.path)
        if on_disk is not None and on_disk >= index.generation:
            return
        try:
            index.save(self.path)
        except OSError:
            # A read-only directory: the in-memory index still answers this process, and
            # SQLite, the truth, is unaffected. The next writable run saves it.
            pass


def _apply(index: SpeakerIndex, change: Change) -> None:
    index.remove(np.fromiter(change.removed, dtype=np.int64, count=len(change.removed)))
    if change.upserted:
        index.add(
            np.fromiter(change.upserted, dtype=np.int64, count=len(change.upserted)),
            np.stack(list(change.upserted.values())),
        )
    index.generation = change.generation
