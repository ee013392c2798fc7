"""The index is a cache that never lies: identity, replay, healing, damage, links, races, modes.

Each test here is a case in which an earlier speakerdb believed its index over the
database (issue 11): an index of another or an earlier database, a full disk, a kill
between commit and index write, a stopped writer holding the lock, damaged files, planted
links, and a row id reused between a search and its names.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeEmbedder, assert_index_agrees_with_store, voice, write
from speakerdb import SpeakerDB, api
from speakerdb.storage import gallery, paths, store
from speakerdb.storage import index as index_module
from speakerdb.storage.index import MAGIC, SpeakerIndex

F0 = {"alice": 210.0, "bob": 110.0, "carol": 310.0, "mallory": 150.0, "dave": 400.0}


@pytest.fixture
def clips(tmp_path) -> dict[str, list[Path]]:
    out = {}
    for name, f0 in F0.items():
        (tmp_path / "audio").mkdir(exist_ok=True)
        out[name] = [write(tmp_path / "audio" / f"{name}{k}.wav", voice(f0, 2.0, seed=k)) for k in range(3)]
    return out


def _open(path: Path) -> SpeakerDB:
    return SpeakerDB(path, embedder=FakeEmbedder())


def _answer(path: Path, clip: Path) -> str | None:
    """What a fresh process answers for ``clip``."""
    with _open(path) as db:
        return db.identify([clip])[0].speaker


def _secrets(db: SpeakerDB, name: str) -> list[bytes]:
    """The speaker's centroid and utterance embeddings, as stored."""
    with db.store.read() as s:
        speaker = store.speaker_by_name(s, name)
        return [speaker.centroid] + [u.embedding for u in speaker.utterances]


def _files_holding(directory: Path, secrets: list[bytes]) -> list[str]:
    """Every file under ``directory`` (temporary files included) that holds one of ``secrets``."""
    found = []
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if any(v in data for v in secrets):
                found.append(p.name)
    return found


def _cli(db: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speakerdb", "--db", str(db), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


# ---- 1. an index of another or an earlier database is never used ----------------------------
def test_index_of_a_deleted_database_at_the_same_path_is_not_used(tmp_path, clips):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("mallory", clips["mallory"][:2])
        assert db.identify([clips["mallory"][2]])[0].speaker == "mallory"  # writes db.sqlite.faiss
    for p in tmp_path.glob("db.sqlite*"):
        if p.name != "db.sqlite.faiss":
            p.unlink()  # start over: the index file stays behind, as nothing says to delete it
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])  # same counters as the deleted database had
    assert _answer(path, clips["mallory"][2]) is None  # not "alice" with mallory's score
    assert _answer(path, clips["alice"][2]) == "alice"
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


def test_restored_backup_next_to_a_newer_index_is_rebuilt(tmp_path, clips):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
    backup = tmp_path / "backup.sqlite"
    shutil.copy(path, backup)  # closed: the WAL was checkpointed into the file
    with _open(path) as db:
        db.remove("bob")
        db.enroll("mallory", clips["mallory"][:2])
        assert db.identify([clips["mallory"][2]])[0].speaker == "mallory"  # index file at this history
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, path)  # restore
    with _open(path) as db:  # write until the counters meet the index's again
        db.enroll("carol", clips["carol"][:2])
        db.enroll("dave", clips["dave"][:2])
    assert _answer(path, clips["mallory"][2]) is None  # mallory exists only in the later history
    assert _answer(path, clips["bob"][2]) == "bob"
    assert _answer(path, clips["carol"][2]) == "carol"
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


def test_downgrade_to_base_and_upgrade_makes_a_new_database(tmp_path, clips):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("mallory", clips["mallory"][:2])
        assert db.identify([clips["mallory"][2]])[0].speaker == "mallory"
        first_id = db.store.settings()["database_id"]
    api.downgrade_database(path, "base")
    api.upgrade_database(path)
    with _open(path) as db:
        assert db.store.settings()["database_id"] != first_id
        db.enroll("alice", clips["alice"][:2])
    assert _answer(path, clips["mallory"][2]) is None
    assert _answer(path, clips["alice"][2]) == "alice"


# ---- 2. disk full: the commit stands, and the removed vectors leave every file --------------
def _gallery_of(tmp_path: Path, name: str, vectors: np.ndarray, model_id: str = "disk-full-test") -> Path:
    speakers = [
        gallery.GallerySpeaker(
            f"{name}{i}" if len(vectors) > 1 else name,
            None,
            None,
            {},
            [gallery.GalleryUtterance(f"{name}{i}.wav", 2.0, f"{i:064x}"[-64:], None, v)],
        )
        for i, v in enumerate(vectors)
    ]
    out = tmp_path / f"{name}-{len(vectors)}.gallery"
    gallery.write(out, gallery.Gallery(model_id, None, vectors.shape[1], speakers), "test")
    return out


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(directory).free
    with open(directory / "filler", "wb") as f:
        f.write(b"\xff" * max(free - leave, 0))


@pytest.mark.parametrize("operation", ["remove", "replace", "merge"])
def test_disk_full_after_the_commit(tmp_path, small_disk, operation):
    rng = np.random.default_rng(0)
    n, dim = 6000, 128  # an index of ~3.2 MB, more than the disk has left
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = small_disk / "db.sqlite"
    with SpeakerDB(path) as db:
        db.import_gallery(_gallery_of(tmp_path, "s", vectors, "disk-full-test"))
        db.indexer.current()  # the index file holds every speaker
        victim = "s7"
        secrets = _secrets(db, victim)
    assert {"db.sqlite", "db.sqlite.faiss"} <= set(_files_holding(small_disk, secrets))  # positive control
    incoming = rng.standard_normal((1, dim)).astype(np.float32)
    incoming /= np.linalg.norm(incoming)
    replacement = _gallery_of(tmp_path, victim, incoming, "disk-full-test")
    _fill(small_disk, leave=1536 * 1024)
    if operation == "remove":
        done = _cli(path, "remove", victim, "--yes")
    else:
        done = _cli(path, "import", str(replacement), "--on-conflict", operation)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 1
    (small_disk / "filler").unlink()
    with SpeakerDB(path) as db:
        names = {s.name for s in db.list()}
        assert len(names) == (n - 1 if operation == "remove" else n)  # what was committed stands
        if operation == "merge":
            assert db.show(victim).n_utterances == 2
    if operation != "merge":  # merge keeps the speaker: only remove and replace delete vectors
        assert _files_holding(small_disk, secrets) == []
    assert_index_agrees_with_store(path)


# ---- 3. a kill between the commit and the index write is healed by the next command --------
KILL_AFTER_COMMIT = """
import os, signal, sys
from speakerdb import SpeakerDB
from speakerdb.storage import indexkeeper
indexkeeper.IndexKeeper.after_commit = lambda self, before, after: os.kill(os.getpid(), signal.SIGKILL)
SpeakerDB(sys.argv[1]).remove(sys.argv[2])
"""


@pytest.mark.parametrize(
    "next_command", [["list"], ["info"], ["show", "alice"], ["threshold"], ["export", "out.gallery"]]
)
def test_kill_between_commit_and_index_write_is_healed(tmp_path, clips, next_command):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        db.identify([clips["bob"][2]])
        secrets = _secrets(db, "bob")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMIT, str(path), "bob"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert "db.sqlite.faiss" in _files_holding(tmp_path, secrets)  # the kill came before the zeroing
    # A writer killed while saving the index left a full copy of it behind, too.
    shutil.copy(f"{path}.faiss", f"{path}.faiss.k3x9z1ab.tmp")
    done = subprocess.run(
        [sys.executable, "-m", "speakerdb", "--db", str(path), *next_command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert _files_holding(tmp_path, secrets) == []
    assert not list(tmp_path.glob("*.tmp"))
    assert _answer(path, clips["bob"][2]) != "bob"
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


# ---- 4. a stopped writer holding the lock blocks no one for long ----------------------------
HOLD_LOCK_AND_STOP = """
import os, signal, sys
from speakerdb.storage.index import write_lock
with write_lock(sys.argv[1]):
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_stopped_index_writer_and_the_lock_timeout(tmp_path, clips, monkeypatch, caplog):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        db.identify([clips["bob"][2]])
        secrets = _secrets(db, "bob")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_AND_STOP, f"{path}.faiss"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(index_module, "LOCK_TIMEOUT_S", 1.0)
        t0 = time.monotonic()
        assert _answer(path, clips["alice"][2]) == "alice"  # readers need no lock
        assert time.monotonic() - t0 < 5
        with _open(path) as db, caplog.at_level("WARNING", logger="speakerdb"):
            t0 = time.monotonic()
            db.enroll("carol", clips["carol"][:2])
            assert db.remove("bob") == 2
            assert time.monotonic() - t0 < 10
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(f"pid {holder.pid}" in w for w in warnings), warnings
        assert _files_holding(tmp_path, secrets) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _answer(path, clips["carol"][2]) == "carol"
    assert _answer(path, clips["bob"][2]) is None
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


# ---- 5. damaged files of any shape mean a rebuild, never a traceback ------------------------
def _with_header(data: bytes, change) -> bytes:
    header_len, scrubbed = struct.unpack_from("<IQ", data, len(MAGIC))
    start = len(MAGIC) + 12
    header = json.loads(data[start : start + header_len])
    new = change(header)
    encoded = new if isinstance(new, bytes) else json.dumps(new).encode()
    return MAGIC + struct.pack("<IQ", len(encoded), scrubbed) + encoded + data[start + header_len :]


def _set(key, value):
    return lambda data: _with_header(data, lambda h: {**h, key: value})


def _drop(key):
    return lambda data: _with_header(data, lambda h: {k: v for k, v in h.items() if k != key})


DAMAGE = {
    "no generation": _drop("generation"),
    "no database id": _drop("database_id"),
    "header is a list": lambda d: _with_header(d, lambda h: list(h.items())),
    "header is a number": lambda d: _with_header(d, lambda h: 7),
    "generation a string": _set("generation", "3"),
    "generation a float": _set("generation", 3.0),
    "generation a boolean": _set("generation", True),
    "generation negative": _set("generation", -1),
    "database id a number": _set("database_id", 12345),
    "positions past the end": _set("positions", 10**9),
    "dimension zero": _set("dim", 0),
    "unknown kind": _set("kind", "ivf"),
    "params a list": _set("params", [1, 2]),
    "params of strings": _set("params", {"hnsw_m": "32"}),
    "max label wrong": _set("max_label", 1),
    "header not JSON": lambda d: _with_header(d, lambda h: b'{"format": 3, "gen'),
    "header not UTF-8": lambda d: _with_header(d, lambda h: b"\xff\xfe\x00{}"),
    "header length huge": lambda d: d[: len(MAGIC)] + struct.pack("<I", 0xFFFFFFFF) + d[len(MAGIC) + 4 :],
    "scrubbed behind generation": lambda d: d[: len(MAGIC) + 4] + struct.pack("<Q", 0) + d[len(MAGIC) + 12 :],
    "wrong magic": lambda d: b"X" + d[1:],
    "truncated": lambda d: d[:40],
    "empty": lambda d: b"",
    "payload garbage": lambda d: d[:-200] + os.urandom(200) if len(d) > 400 else d[:-20] + b"\x00" * 20,
}


def _positions_alive_7(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = SpeakerIndex.read_header(path)
    start = len(data) - header["payload_bytes"] - header["positions"]
    data[start] = 7
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        *DAMAGE,
        "alive flag 7",
        "index a directory",
        "lock a directory",
        "old change log a directory",
        "old change log garbage",
    ],
)
def test_damaged_index_files_mean_a_rebuild(tmp_path, clips, damage):
    path = tmp_path / "db.sqlite"
    index_path = Path(f"{path}.faiss")
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        db.identify([clips["bob"][2]])
    if damage in DAMAGE:
        index_path.write_bytes(DAMAGE[damage](index_path.read_bytes()))
    elif damage == "alive flag 7":
        _positions_alive_7(index_path)
    elif damage == "index a directory":
        index_path.unlink()
        index_path.mkdir()
    elif damage == "lock a directory":
        Path(f"{index_path}.lock").unlink()
        Path(f"{index_path}.lock").mkdir()
    elif damage == "old change log a directory":
        Path(f"{index_path}.log").mkdir()
    else:
        Path(f"{index_path}.log").write_bytes(b"CHG1\x10\x00\x00\x00[1, 2, 3]" + os.urandom(64))
    assert _answer(path, clips["bob"][2]) == "bob"
    with _open(path) as db:
        secrets = _secrets(db, "bob")
        db.enroll("carol", clips["carol"][:2])
        assert db.remove("bob") == 2
    assert _answer(path, clips["carol"][2]) == "carol"
    assert _answer(path, clips["bob"][2]) is None
    assert _files_holding(tmp_path, secrets) == []
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


def test_a_file_erased_while_read_is_no_damage_but_zeros_in_place_are(tmp_path, clips, monkeypatch, caplog):
    """Another process erases the index file (a removed gallery, a damaged file discarded) once
    this one has opened it: renamed aside, then zeroed, the reader reads zeros. It rebuilds
    and says so at info level, not that the file is damaged; the same zeros in the file
    still at its name are damage, and warned of."""
    path = tmp_path / "db.sqlite"
    index_path = Path(f"{path}.faiss")
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        db.identify([clips["bob"][2]])
    real_read = SpeakerIndex._read
    zero_in_place = False

    def read(cls, f, size, codec):
        if zero_in_place:
            index_path.write_bytes(bytes(size))
        else:
            index_module.erase(index_path)
        return real_read(f, size, codec)

    monkeypatch.setattr(SpeakerIndex, "_read", classmethod(read))
    with caplog.at_level("INFO", logger="speakerdb"):
        assert _answer(path, clips["bob"][2]) == "bob"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    assert any("removed or replaced while this process read it" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert index_path.exists()  # rebuilt and saved
    zero_in_place = True
    with caplog.at_level("INFO", logger="speakerdb"):
        assert _answer(path, clips["bob"][2]) == "bob"
    assert any("is damaged" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# ---- 6. nothing is written through a planted link -------------------------------------------
@pytest.mark.parametrize(
    "planted",
    ["db.sqlite.faiss", "db.sqlite.faiss.lock", "db.sqlite.faiss.log", "db.sqlite.faiss.a1b2c3d4.tmp", "dangling log"],
)
def test_links_planted_beside_the_database_are_never_written_through(tmp_path, clips, planted):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
    target = tmp_path / "victim-file"
    target.write_bytes(b"precious")
    link = tmp_path / ("db.sqlite.faiss.log" if planted == "dangling log" else planted)
    link.unlink(missing_ok=True)
    link.symlink_to(tmp_path / "nowhere" if planted == "dangling log" else target)
    with _open(path) as db:
        db.enroll("bob", clips["bob"][:2])
        assert db.identify([clips["bob"][2]])[0].speaker == "bob"
        db.enroll("carol", clips["carol"][:2])
        db.remove("alice")
    assert target.read_bytes() == b"precious" and stat.S_IMODE(target.stat().st_mode) != 0o777
    assert not (tmp_path / "nowhere").exists()
    assert _answer(path, clips["carol"][2]) == "carol"


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_database_files_reached_through_links_are_refused(tmp_path, suffix):
    from speakerdb.errors import DatabaseError

    path = tmp_path / "db.sqlite"
    if suffix:
        _open(path).close()
    real = tmp_path / "elsewhere"
    real.write_bytes(b"")
    link = Path(f"{path}{suffix}")
    link.unlink(missing_ok=True)
    link.symlink_to(real)
    with pytest.raises(DatabaseError, match="symbolic link"):
        _open(path)
    assert real.read_bytes() == b""


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_refused_link_at_a_new_database_is_left_where_it_was(tmp_path, suffix):
    # A dangling link makes the database look new; the clean-up of a failed creation deleted
    # the link itself, which speakerdb had not made.
    from speakerdb.errors import DatabaseError

    path = tmp_path / "new" / "db.sqlite"
    path.parent.mkdir()
    link = Path(f"{path}{suffix}")
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DatabaseError, match="symbolic link"):
        _open(path)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_private_databases_log_planted_by_another_user_is_refused(tmp_path, clips, suffix):
    # In a directory others may write to, another user can make DB-wal before SQLite does:
    # SQLite would write the vectors into a file that user owns (it changes the owner only
    # when running as root, which this test is; the refusal comes before SQLite opens it).
    from speakerdb.errors import DatabaseError

    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
    planted = Path(f"{path}{suffix}")
    planted.write_bytes(b"")
    os.chown(planted, 65534, 65534)
    with pytest.raises(DatabaseError, match="belongs to another user"):
        _open(path)
    assert planted.stat().st_uid == 65534 and planted.read_bytes() == b""
    os.chmod(path, 0o640)  # a database its owner shares: other users' processes make these files too
    with _open(path) as db:
        assert db.identify([clips["alice"][2]])[0].speaker == "alice"


# ---- 7. one snapshot per answer: a removed speaker's score never lands on another name ----
def test_identify_names_the_speaker_it_scored_despite_a_concurrent_remove_and_enroll(tmp_path, clips, monkeypatch):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("bob", clips["bob"][:2])
        db.enroll("mallory", clips["mallory"][:2])  # the newest speaker
        carol_centroid = np.asarray(FakeEmbedder().embed([voice(F0["carol"], 2.0, seed=0)])[0], np.float32)
        real_search = SpeakerIndex.search
        raced = []

        def search_then_race(self, queries, k):
            out = real_search(self, queries, k)
            if not raced:  # another process, between the search and the names
                raced.append(True)
                con = sqlite3.connect(path)
                con.execute("DELETE FROM speakers WHERE name = 'mallory'")
                con.execute(
                    "INSERT INTO speakers (name, created_at, updated_at, metadata, centroid) "
                    "VALUES ('carol', '2026-01-01', '2026-01-01', '{}', ?)",
                    (store.to_blob(carol_centroid),),
                )
                con.commit()
                con.close()
            return out

        monkeypatch.setattr(SpeakerIndex, "search", search_then_race)
        [result] = db.identify([clips["mallory"][2]])
    assert raced and result.speaker == "mallory"  # the state when the answer was computed
    assert [c.speaker for c in result.candidates][:1] == ["mallory"]
    monkeypatch.undo()
    con = sqlite3.connect(path)
    ids = dict(con.execute("SELECT name, id FROM speakers"))
    con.close()
    assert ids["carol"] > ids["bob"] + 1  # mallory's id was not handed on
    assert _answer(path, clips["mallory"][2]) is None


# ---- 8. every file speakerdb writes is private --------------------------------------------
@pytest.fixture
def restore_umask():
    """The process's umask as it was before the test (a test that sets one leaves it to the next)."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def test_every_file_is_created_owner_only(tmp_path, clips, restore_umask):
    os.umask(0o022)
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        db.enroll("alice", clips["alice"][:2])
        db.identify([clips["alice"][2]])
        db.export(tmp_path / "out.gallery")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("db.sqlite*")}
    modes["out.gallery"] = stat.S_IMODE((tmp_path / "out.gallery").stat().st_mode)
    assert {
        "db.sqlite",
        "db.sqlite-wal",
        "db.sqlite-shm",
        "db.sqlite.faiss",
        "db.sqlite.faiss.lock",
        "out.gallery",
    } <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}


def test_under_a_umask_of_000_the_directories_made_for_a_database_are_owner_only(tmp_path, clips, monkeypatch):
    # A world-writable directory would let another user plant the next -wal file, owned by
    # them, into which SQLite then writes the voiceprints.
    old = os.umask(0)
    try:
        path = tmp_path / "new" / "team" / "db.sqlite"
        with _open(path) as db:
            db.enroll("alice", clips["alice"][:2])
            db.identify([clips["alice"][2]])
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        made = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new", tmp_path / "new" / "team")}
        index_made = paths.make_parents(tmp_path / "idx" / "cache" / "x")  # as a server database's index does
    finally:
        os.umask(old)
    made.update({p: stat.S_IMODE(p.stat().st_mode) for p in index_made})
    assert {"db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "db.sqlite.faiss"} <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}
    assert len(index_made) == 2 and {str(p): mode for p, mode in made.items() if mode != 0o700} == {}


# ---- 9. replay instead of rebuild -----------------------------------------------------------
def test_a_behind_index_catches_up_by_replay_not_rebuild(tmp_path, clips, monkeypatch):
    path = tmp_path / "db.sqlite"
    with _open(path) as db:
        for name in ("alice", "bob"):
            db.enroll(name, clips[name][:2])
        db.identify([clips["bob"][2]])
    with _open(path) as db:  # out of order, interrupted, crashed: the file is simply behind
        db.enroll("carol", clips["carol"][:2])
        db.remove("alice")
        db.rename("bob", "robert")
    builds = []
    real_build = SpeakerIndex.build.__func__
    monkeypatch.setattr(
        SpeakerIndex, "build", classmethod(lambda cls, *a, **k: builds.append(1) or real_build(cls, *a, **k))
    )
    with _open(path) as db:
        assert db.identify([clips["bob"][2]])[0].speaker == "robert"
        assert db.identify([clips["carol"][2]])[0].speaker == "carol"
        assert db.identify([clips["alice"][2]])[0].speaker is None
    assert builds == []


def test_records_no_index_needs_are_pruned_and_an_index_older_than_them_is_rebuilt(tmp_path, clips, monkeypatch):
    from speakerdb.storage import indexkeeper

    monkeypatch.setattr(indexkeeper, "SAVE_AFTER_CHANGES", 4)
    monkeypatch.setattr(indexkeeper, "KEEP_CHANGES", 2)
    path = tmp_path / "db.sqlite"
    old_reader = _open(path)
    old_reader.enroll("alice", clips["alice"][:1])
    assert old_reader.identify([clips["alice"][2]])[0].speaker == "alice"  # in memory at an early generation
    with _open(path) as db:
        for name in ["bob", "carol", "dave", "mallory"]:
            db.enroll(name, clips[name][:2])
        db.remove("alice")
        assert db.identify([clips["bob"][2]])[0].speaker == "bob"  # lags >= 4: saved at close, then pruned
        with db.store.read() as s:  # the database's, which the records carry (info's is the gallery's)
            generation = store.generation(s)
    con = sqlite3.connect(path)
    kept = [g for (g,) in con.execute("SELECT generation FROM speaker_changes ORDER BY generation")]
    con.close()
    assert kept and kept[0] == generation - 2 and kept[-1] == generation
    # The old reader's index is behind the oldest record: it cannot replay, so it rebuilds.
    assert old_reader.identify([clips["alice"][2]])[0].speaker is None
    assert old_reader.identify([clips["mallory"][2]])[0].speaker == "mallory"
    old_reader.close()


def test_an_index_saved_after_its_change_records_were_pruned_keeps_no_removed_vector(tmp_path, clips, monkeypatch):
    """A process whose index is older than every record kept saves it where the file was
    deleted (as a damaged one is): the removals since cannot be found to zero them, so it
    writes nothing rather than a file that holds them."""
    from speakerdb.storage import indexkeeper

    monkeypatch.setattr(indexkeeper, "SAVE_AFTER_CHANGES", 4)
    monkeypatch.setattr(indexkeeper, "KEEP_CHANGES", 2)
    path = tmp_path / "db.sqlite"
    old_reader = _open(path)
    old_reader.enroll("alice", clips["alice"][:1])
    assert old_reader.identify([clips["alice"][2]])[0].speaker == "alice"  # in memory at an early generation
    secrets, index_path = _secrets(old_reader, "alice"), old_reader.index_path
    with _open(path) as db:
        db.remove("alice")
        for name in ["bob", "carol", "dave", "mallory"]:
            db.enroll(name, clips[name][:2])
        assert db.identify([clips["bob"][2]])[0].speaker == "bob"  # saved at close, alice's record pruned
    index_module.remove_files(index_path)
    old_reader.close()  # its index is saved: the file is missing
    files = [p for p in tmp_path.glob(f"{index_path.name}*") if p.is_file()]
    assert not [p.name for p in files if any(s in p.read_bytes() for s in secrets)]
    assert _answer(path, clips["alice"][2]) is None and _answer(path, clips["bob"][2]) == "bob"
