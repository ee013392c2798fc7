"""Keeps the FAISS index in step with the store it caches, and never trusts it over the store.

The store records every change to a speaker's centroid itself (``speaker_changes``,
written by triggers in the same transaction; see store.py): the generation it reached,
the speaker id, and a random nonce. An index remembers the database it was built from
(``database_id``), the generation it is at, and that record's nonce. So:

- **catching up** is replaying the records after the index's generation: look up the
  current centroids of the speakers they name, in the same snapshot, and add or drop
  them. An out-of-order, interrupted or crashed update costs a replay, never a rebuild.
- an index is **used** only if it belongs to this database, is not ahead of it, and the
  store's record at its generation carries its nonce (a restored backup that was written
  to again reaches the same generation by another history). Anything else, and a missing
  or damaged file of any shape, is rebuilt from the store.
- a file must also **prove** that it matches the store before it is used: its digests
  (index.py), a sample of its vectors equal to the store's centroids, and, once caught
  up, the count and sums of its live labels equal to those of the store's speakers (a
  zeroed alive flag hides a speaker from every search, and no digest in the file can
  cover flags that are zeroed in place). A file that fails is deleted with a warning and
  rebuilt, so the damage does not outlive it.
- an **encrypted database** leaves no vector in the clear in any file: a process that
  opened it unencrypted and finds it encrypted by another since (``db encrypt`` on another
  node) erases its plain index files at once and refuses (:meth:`IndexKeeper.erase_plain`);
  one restarted with the key erases the plain file it finds and builds a sealed one.
- **one snapshot per answer**: :meth:`IndexKeeper.snapshot` yields a read transaction
  and the index at exactly its generation, so names are resolved at the generation that
  was searched; rebuilding and saving happen outside any read transaction.
- **after a commit** (:meth:`IndexKeeper.after_commit`, called by the store), positions
  of removed or re-centred speakers are zeroed in the file in place: the removed vectors
  leave the disk at once and a new speaker costs nothing. Any failure there deletes the
  cache files and warns in one line; the commit stands and is reported.

The file is a snapshot that a process saves again once it lags ``SAVE_AFTER_CHANGES``
records behind its own index (:meth:`IndexKeeper.maintain`: at close, and between a
service's requests), under the index lock (never waiting for it: another process is saving).
Records older than both the file and the last ``KEEP_CHANGES`` are pruned then.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from ..errors import EncryptedSinceOpenedError, SpeakerDBError
from . import index as index_files
from . import store
from .index import IndexFileError, IndexFileGone, SpeakerIndex, write_lock

log = logging.getLogger("speakerdb")

REBUILD_ATTEMPTS = 3  # builds outside a read transaction before one is built inside it
SAVE_AFTER_CHANGES = 1_000  # records a loaded file may lag before a reader saves a new one
KEEP_CHANGES = 10_000  # records kept behind the file, for processes whose index is older


class IndexKeeper:
    """The index of one store: in memory for this process, on disk for all of them."""

    def __init__(self, db: store.Store, path: Path, family: Callable[[], list[Path]] | None = None) -> None:
        """``family``: the index files of the database's other galleries here (erased with
        this one if the database is encrypted under this process, :meth:`erase_plain`)."""
        self.store = db
        self.path = path
        self._family = family or (lambda: [])
        self._index: SpeakerIndex | None = None
        db.on_commit.append(self.after_commit)
        db.on_encrypted.append(self.erase_plain)
        self.heal()

    # ---- reading ----------------------------------------------------------------------------
    def available(self) -> bool:
        """Whether a search needs no build: an index is in memory, or a file is there to load."""
        return self._index is not None or index_files.file_identity(self.path) is not None

    @contextmanager
    def snapshot(self) -> Iterator[tuple[Any, SpeakerIndex]]:
        """A read session and the index at exactly that session's generation."""
        index = self._index if self._index is not None else self._load()
        rebuilt = False
        for attempt in range(REBUILD_ATTEMPTS):
            with self.store.read() as s:
                settings = store.get_settings(s)
                if not self.store.codec.encrypted:
                    _refuse_if_encrypted(s, settings, index)
                caught_up = self._caught_up(s, settings, index)
                if caught_up is None and attempt == REBUILD_ATTEMPTS - 1:
                    # Writers kept changing identity or pruning under us: build in this snapshot.
                    caught_up = self._build(s, settings)
                if caught_up is not None:
                    self._index = caught_up
                    _apply_search_params(caught_up, settings)
                    yield s, caught_up
                    break
                # Read the truth in this snapshot, build outside it: a long build inside a
                # read transaction would hold back every checkpoint (and remove's scrub).
                state = self._state(s, settings)
            index = self._build(None, settings, state)
            rebuilt = True
        assert caught_up is not None  # the last attempt builds in its own snapshot, or raised
        if rebuilt:  # the build cost far more than the save: keep it for the next process at once
            self._save(caught_up, wait=0.0)
        else:
            # Another process (another node of a server database) removed or re-centred
            # speakers: this machine's file must not keep their old vectors either.
            header = SpeakerIndex.read_header(self.path)
            if header is not None and header["scrubbed_to"] < caught_up.generation:
                self._scrub(caught_up.generation, "could not be brought up to date")
        # A file that merely lags is saved by maintain(), after the answer (at close, or by
        # the service between requests): a 2 GB write never delays an identify.

    def maintain(self) -> None:
        """Save this process's index if the file lags it by SAVE_AFTER_CHANGES records or more,
        or is missing; prune the records no index needs then. Cheap when there is nothing
        to do (one header read); never raises."""
        index = self._index
        if index is None:
            return
        header = SpeakerIndex.read_header(self.path)
        if (
            header is not None
            and header["database_id"] == index.database_id
            and index.generation - header["generation"] < SAVE_AFTER_CHANGES
        ):
            return
        self._save(index, wait=0.0)

    def current(self) -> SpeakerIndex:
        """The index at the store's generation now (for callers that need no snapshot)."""
        with self.snapshot() as (_, index):
            return index

    def _caught_up(self, s, settings: dict[str, Any], index: SpeakerIndex | None) -> SpeakerIndex | None:
        """``index`` brought to this snapshot's generation by replay, or None if it cannot be trusted."""
        if index is None or index.database_id != settings.get("database_id"):
            return None
        target = store.generation(s)
        if index.generation > target:
            return None  # ahead of the store: from a database restored from an older backup
        if index.generation > 0 and store.change_nonce(s, index.generation) != index.nonce:
            return None  # another history reached this generation (or its record was pruned)
        if index.generation == 0 and len(index):
            return None
        records = store.changes_between(s, index.generation, target) if index.generation < target else []
        if len(records) != target - index.generation:
            return None  # a gap: records pruned past this index
        if index is self._index or index.file_identity is None:
            return _replay(s, index, records, target)  # built by this process from the store
        try:
            why = _disproof(s, index, records, target)
        except (SQLAlchemyError, SpeakerDBError):
            raise  # the store failed, not the file: the rebuild would fail the same way
        except Exception as e:  # anything else while checking is the file's doing
            why = f"could not be checked ({type(e).__name__}: {e})"
        if why is None:
            return index
        self._discard(index.file_identity, why)
        return None

    def _discard(self, identity: tuple[int, ...] | None, why: str | None) -> None:
        """Warn that the index file is damaged and delete it, unless it changed since it was read.
        ``why`` None: it is not damaged but plain, left from before ``db encrypt`` (said at info level).

        Under the lock, without waiting: a writer at work is replacing or zeroing it, and
        the next reader checks its work. Never raises."""
        note = ""
        try:
            with write_lock(self.path, timeout=0.0):
                if identity is not None and index_files.file_identity(self.path) == identity:
                    index_files.erase(self.path)
        except Exception as e:
            note = f" (not deleted: {_reason(e)})"
        if why is None:
            # The expected aftermath of `db encrypt` on another machine, not damage.
            log.info(
                "index %s is an unencrypted index of a database encrypted since it was written: "
                "erased it (zeroed, then deleted); rebuilding it sealed from the database%s",
                self.path,
                note,
            )
        else:
            log.warning("index %s is damaged: %s; rebuilding it from the database%s", self.path, why, note)

    def erase_plain(self) -> None:
        """Another process encrypted the database after this one opened it without its key:
        forget the index in memory, and erase (zeroed, then deleted, under the lock) this
        index's file and its galleries' here unless sealed, since they hold the voiceprints in
        the clear; a sealed file (a process with the key wrote it) stays. The store calls
        this (``on_encrypted``) before it refuses. Never raises."""
        self._index = None
        for path in dict.fromkeys([self.path, *self._family()]):
            debris = [Path(f"{path}.log"), *index_files.temporary_files(path)]
            if not any(os.path.lexists(p) for p in [path, *debris]):
                continue
            try:
                with write_lock(path):
                    header = SpeakerIndex.read_header(path)
                    if header is not None and header.get("encryption"):
                        for p in debris:  # a killed writer's, sealed or not: no writer is at work
                            index_files.erase(p)
                        continue
                    left = index_files.remove_files(path)
            except Exception as e:  # a lock held for long, I/O errors: the refusal still follows
                left = [_reason(e)]
            tail = f"; could not delete {', '.join(left)}" if left else ""
            log.warning(
                "index %s held voiceprints in the clear and another process encrypted the database "
                "since this one opened it: erased it (zeroed, then deleted)%s; restart this process with the key",
                path,
                tail,
            )

    # ---- after a commit, and at every open ------------------------------------------------
    def after_commit(self, before: int, after: int) -> None:
        """Zero in the file the positions of the speakers changed up to generation ``after``.

        Called by the store after each commit that changed centroids. The in-memory index
        needs nothing: the next snapshot replays the records. Never raises: any failure
        deletes the cache files (they are rebuilt from the store when next needed) and
        logs one warning; the commit stands.
        """
        self._scrub(after, "could not be updated after the commit")

    def heal(self) -> None:
        """Finish what a killed process left undone; cheap when nothing is owed.

        A writer killed between its commit and the zeroing left removed vectors in the
        file (its scrubbed-to generation is behind the store); a writer killed while
        saving left a temporary file, a full copy of the centroids; one killed while erasing
        left a file part zeroed (of any gallery of the directory); format-2 speakerdb left
        a change log holding vectors; an index of another database may sit at this path.
        Each is dealt with here, at every open, before anything is read.
        """
        # What a process killed while erasing left, a removed gallery's too, which nothing else opens.
        index_files.finish_erasing(self.path.parent)
        debris = self._debris()
        if not debris and not self._index_file_present():
            return
        header = SpeakerIndex.read_header(self.path)
        with self.store.read() as s:
            generation, database_id = store.generation(s), store.get_settings(s).get("database_id")
        if (
            not debris
            and header is not None
            and header["database_id"] == database_id
            and header["scrubbed_to"] >= generation
        ):
            return
        self._scrub(generation, "could not be healed")

    def _scrub(self, upto: int, failure: str) -> None:
        """Under the lock: delete debris, then zero the positions changed by records after the
        file's scrubbed-to generation up to ``upto``. Failures delete the cache files.

        Nothing on disk, nothing to do: no lock is taken (a save that starts after this
        commit zeroes what it finds changed since its snapshot, see _write_locked)."""
        if not self._debris() and not self._index_file_present():
            return
        try:
            with write_lock(self.path):
                for p in self._debris():
                    index_files.erase(p)  # no writer is active: we hold the lock
                header = SpeakerIndex.read_header(self.path)
                if header is None:
                    if self._index_file_present():
                        raise IndexFileError("damaged, of another format, or not a file")
                    return
                with self.store.read() as s:
                    if header["database_id"] != store.get_settings(s).get("database_id"):
                        raise IndexFileError("belongs to another database")
                    records = store.changes_between(s, header["scrubbed_to"], upto)
                if header["scrubbed_to"] > upto:
                    raise IndexFileError("it is ahead of the database (restored from an older copy?)")
                if len(records) != upto - header["scrubbed_to"]:
                    raise IndexFileError("the change records it needs were pruned")
                ids = np.unique(np.asarray([r[1] for r in records], np.int64))
                SpeakerIndex.kill_in_file(self.path, ids, upto, self.store.codec)
        except Exception as e:  # disk full, I/O errors, damage, a directory or link in the way, lock timeout
            self._drop_files(f"{failure} ({_reason(e)})")

    def _debris(self) -> list[Path]:
        """What a killed writer or an older speakerdb left beside the index: temporary files
        (full copies of the centroids) and a format-2 change log (vectors too)."""
        log_file = Path(f"{self.path}.log")
        return ([log_file] if log_file.exists() or log_file.is_symlink() else []) + index_files.temporary_files(
            self.path
        )

    def _index_file_present(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    # ---- admin ------------------------------------------------------------------------------
    def rebuild(self) -> SpeakerIndex:
        """Rebuild the index from the store and save it, whatever the files hold now.

        Raises IndexFileError if the file cannot be written (the lock's holder is named).
        """
        with self.store.read() as s:
            settings = store.get_settings(s)
            state = self._state(s, settings)
        self._index = self._build(None, settings, state)
        with self.snapshot() as (_, index):  # catches up with writes made during the build
            pass
        with write_lock(self.path):
            index_files.remove_files(self.path)
            self._write_locked(index)
        return index

    # ---- internals --------------------------------------------------------------------------
    @staticmethod
    def _state(s, settings: dict[str, Any]) -> tuple:
        """What a build needs from one snapshot: ids, centroids, identity, generation, nonce."""
        ids, vectors = store.centroids(s)
        generation = store.generation(s)
        return ids, vectors, settings.get("database_id"), generation, store.change_nonce(s, generation)

    @staticmethod
    def _build(s, settings: dict[str, Any], state: tuple | None = None) -> SpeakerIndex:
        """An index of the snapshot's speakers (``state`` read from it earlier, or read from ``s`` now)."""
        ids, vectors, database_id, generation, nonce = state if state is not None else IndexKeeper._state(s, settings)
        dim = int(settings.get("dim") or (vectors.shape[1] if vectors.size else 1))
        index = SpeakerIndex.build(ids, vectors, dim, generation, settings.get("index"))
        index.database_id, index.nonce = database_id, nonce
        return index

    def _load(self) -> SpeakerIndex | None:
        """The index in the file, or None if there is none or it is damaged (then deleted, with
        a warning), or plain when the database is encrypted (deleted: ``db encrypt`` ran since).
        A sealed file while this process opened the database unencrypted: EncryptedSinceOpenedError."""
        identity = index_files.file_identity(self.path)
        if identity is None:
            return None
        try:
            return SpeakerIndex.load(self.path, self.store.codec)
        except IndexFileGone:  # erased (a removed gallery, another reader's discard) or replaced: no damage
            log.info("index %s was removed or replaced while this process read it; rebuilding it", self.path)
            return None
        except Exception as e:  # IndexFileError, and whatever else a damaged file may cause
            why = _reason(e).removeprefix(f"{self.path}: ")
        header = SpeakerIndex.read_header(self.path)
        if header is not None and bool(header.get("encryption")) != self.store.codec.encrypted:
            if header["database_id"] == self.store.settings().get("database_id"):
                if not self.store.codec.encrypted:  # sealed by a process with the key: it stays
                    raise self.store.encrypted_since_opened()
                self._discard(identity, None)
                return None
        self._discard(identity, why)
        return None

    def _save(self, index: SpeakerIndex, wait: float) -> None:
        """Save ``index`` unless the file is as new already; never raises (the file is a cache).

        A save that fails before its rename leaves the old file, still a valid snapshot:
        nothing to undo (a read-only directory, a full disk: the in-memory index answers).
        """
        try:
            with write_lock(self.path, timeout=wait):
                self._write_locked(index)
        except Exception as e:
            log.debug("index %s not saved: %s", self.path, _reason(e))

    def _write_locked(self, index: SpeakerIndex) -> None:
        """Write the file (lock held), then zero what changed while it was being written.

        A removal committed after ``index``'s snapshot found the lock taken or the old
        file: either way its vector must not survive in the new file. If that fails, or the
        change records it needs were pruned meanwhile, the new file is deleted. Nothing is
        written for a gallery that was removed (and what was written while it was being
        removed is deleted), nor for an index whose own change record was pruned, which
        every reader would refuse: such a file would keep vectors that the store no longer
        holds, where nobody would ever read and delete it.
        """
        with self.store.read() as s:
            ours = self._own_gallery(s)
            pruned = index.generation > 0 and store.change_nonce(s, index.generation) != index.nonce
        if not ours:
            self._gone()
            return
        if pruned:
            log.debug("index %s not saved: the change records behind it were pruned", self.path)
            return
        header = SpeakerIndex.read_header(self.path)
        if (
            header is not None
            and header["database_id"] == index.database_id
            and header["generation"] >= index.generation
            and (header.get("encryption") or {}).get("dek_id") == self.store.codec.dek_id  # sealed as it must be
        ):
            # As new already, if it is of this history: a file ahead of the store or from
            # another history at that generation would otherwise stay, rebuilt by every reader.
            with self.store.read() as s:
                if header["generation"] <= store.generation(s) and (
                    header["generation"] == 0 or store.change_nonce(s, header["generation"]) == header["nonce"]
                ):
                    return
        if not self.store.data_key_current():
            # Encrypted or rotated by another process since this one opened the database:
            # a file sealed with the old key, or not at all, must not be written.
            raise IndexFileError("the database's data key changed since this process opened it")
        for tmp in index_files.temporary_files(self.path):
            index_files.erase(tmp)
        index.save(self.path, self.store.codec)
        try:
            with self.store.read() as s:
                now = store.generation(s)
                later = store.changes_between(s, index.generation, now)
                ours = self._own_gallery(s)
            if not ours:
                self._gone()  # removed while this file was being written
                return
            if len(later) != now - index.generation:
                # pruned by another gallery's save: the removals among them cannot be found
                raise IndexFileError("the change records it needs were pruned")
            SpeakerIndex.kill_in_file(
                self.path, np.unique(np.asarray([r[1] for r in later], np.int64)), now, self.store.codec
            )
        except Exception as e:
            self._drop_files(f"could not be brought up to date after saving ({_reason(e)})")
            return
        floor = min(index.generation, now - KEEP_CHANGES)
        if floor > 0:
            # A save inside a change (enroll's voice check) must not commit the change's audit record.
            with store.unaudited(), self.store.write() as s:
                store.prune_changes(s, floor)

    def _own_gallery(self, s) -> bool:
        """Whether this keeper's gallery still exists, under its name and id."""
        return store.gallery_id(s, self.store.gallery) == self.store.gallery_id

    def _gone(self) -> None:
        """The gallery was removed: forget its index and erase its files, the lock file too
        (held here)."""
        self._index = None
        left = index_files.remove_files(self.path) + index_files.remove_lock(self.path)
        if left:
            log.warning("index %s of a removed gallery: could not delete %s", self.path, ", ".join(left))

    def drop_files(self) -> list[str]:
        """Delete the index file and its debris (under the lock): before its vectors are sealed
        anew, so no copy sealed otherwise (or not at all) outlives the change. Returns what
        could not be deleted."""
        with write_lock(self.path):
            self._index = None
            return index_files.remove_files(self.path)

    def _drop_files(self, why: str) -> None:
        left = index_files.remove_files(self.path)
        tail = f"; could not delete {', '.join(left)}" if left else ""
        log.warning("index %s %s: deleted it, it is rebuilt from the database when next needed%s", self.path, why, tail)


SAMPLE_CHECKS = 64  # live positions of a loaded file compared byte for byte with the store


def erase_files(path: Path) -> list[str]:
    """Erase the index files at ``path`` (zeroed, then deleted) of a removed gallery (or one
    whose id is given anew) under the index lock, so that a process saving them finishes
    first, then the lock file itself; returns what could not be deleted. No lock is taken
    when there is nothing: a save that starts later checks that its gallery still exists.
    If another process holds the lock past its timeout, they are deleted without it, and
    not zeroed (never written while that process may be writing), said in one warning; that
    process deletes the lock file when it finds the gallery gone. What killed erasures left
    in the directory is finished first."""
    index_files.finish_erasing(path.parent)
    if not (
        os.path.lexists(path)
        or os.path.lexists(f"{path}.log")
        or os.path.lexists(f"{path}.lock")
        or index_files.temporary_files(path)
    ):
        return []
    try:
        with write_lock(path):
            return index_files.remove_files(path) + index_files.remove_lock(path)
    except IndexFileError as e:
        log.warning("index %s deleted without its lock, so not zeroed: %s", path, _reason(e))
        return index_files.remove_files(path, zero=False)


def _refuse_if_encrypted(s, settings: dict[str, Any], index: SpeakerIndex | None) -> None:
    """For a process that opened the database unencrypted: EncryptedSinceOpenedError if
    another has encrypted it since (the store then erases the plain files, :meth:`IndexKeeper.erase_plain`).
    One small read, and only once the generation moved past ``index`` (``db encrypt``
    seals every centroid anew, which moves it): nothing more per request while nothing changes."""
    if index is not None and index.generation == int(settings.get("generation") or 0):
        return
    if store.data_key_id(s) is not None:
        raise EncryptedSinceOpenedError("the database was encrypted since this process opened it")


def _replay(s, index: SpeakerIndex, records: list[tuple[int, int, str, int]], target: int) -> SpeakerIndex:
    """``index`` brought to generation ``target`` by the change ``records`` that follow it."""
    if not records:
        return index
    touched = sorted({speaker_id for _, speaker_id, _, _ in records})
    present = store.centroids_of(s, touched)
    index.remove(np.asarray([i for i in touched if i not in present], np.int64))
    if present:
        index.add(np.fromiter(present, np.int64, len(present)), np.stack(list(present.values())))
    index.generation, index.nonce = target, records[-1][3]
    return index


def _disproof(s, index: SpeakerIndex, records: list[tuple[int, int, str, int]], target: int) -> str | None:
    """Why the index loaded from a file does not match the store, or None if it does
    (then it has been caught up to ``target``)."""
    touched = {speaker_id for _, speaker_id, _, _ in records}
    if not _sample_matches(s, index, touched):
        return "its vectors differ from the database's centroids"
    _replay(s, index, records, target)
    # What the file says alive and dead, against the store: a count and two sums that the
    # database computes over its smallest index, only when a process first reads the file.
    if store.id_digest(index.labels[index.alive]) != store.speaker_id_digest(s):
        return "the speakers it holds differ from the database's"
    return None


def _sample_matches(s, index: SpeakerIndex, touched: set[int]) -> bool:
    """Whether a random sample of the file's live vectors equals the store's centroids
    (speakers changed since the file was written are left out: the replay handles them)."""
    live = np.flatnonzero(index.alive)
    if not len(live):
        return True
    rng = np.random.default_rng()
    sample = rng.choice(live, size=min(SAMPLE_CHECKS, len(live)), replace=False)
    pairs = [(int(p), int(index.labels[p])) for p in sample if int(index.labels[p]) not in touched]
    truth = store.centroids_of(s, [i for _, i in pairs])
    stored = index._stored_vectors()
    return all(i in truth and np.array_equal(stored[p], truth[i]) for p, i in pairs)


def _apply_search_params(index: SpeakerIndex, settings: dict[str, Any]) -> None:
    # efSearch is a search-time setting: the stored one applies at once, without a rebuild.
    ef_search = (settings.get("index") or {}).get("hnsw_ef_search")
    if ef_search is not None:
        index.params["hnsw_ef_search"] = int(ef_search)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e.strerror or e}"
    return str(e) or type(e).__name__
