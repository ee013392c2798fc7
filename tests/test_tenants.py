"""Galleries (tenants): several separate sets of speakers in one database (issue 27 item 5).

Each gallery has its own speakers, thresholds, normalisation, keys, audit record and index
file; nothing of one is seen from another, on SQLite and on PostgreSQL alike. Old databases
keep working: what they held is the default gallery.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, api
from speakerdb.errors import GalleryExistsError, GalleryNotFoundError, InvalidInputError, SpeakerNotFoundError
from speakerdb.storage import index as index_files
from speakerdb.storage import indexkeeper, schema, store
from speakerdb.storage.index import SpeakerIndex

FIXTURE = Path(__file__).parent / "data" / "v0001.sqlite"
F0 = {"alice": 210.0, "bob": 110.0, "carol": 310.0}


@pytest.fixture
def clips(tmp_path) -> dict[str, list[Path]]:
    return {
        name: [write(tmp_path / f"{name}{k}.wav", voice(f0, 1.5, seed=k)) for k in range(3)] for name, f0 in F0.items()
    }


def _names(results) -> list[str | None]:
    return [r.speaker for r in results]


def test_an_empty_gallery_is_named_in_the_error_that_says_so(tmp_path, clips):
    """identify in an empty gallery said "no speakers are enrolled in FILE", as if the database
    held none, while its default gallery held some."""
    from speakerdb.errors import EmptyDatabaseError

    with SpeakerDB(tmp_path / "g.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2])
        db.create_gallery("acme")
        with pytest.raises(EmptyDatabaseError, match=r"no speakers are enrolled in gallery 'acme' of .*g\.sqlite: "):
            db.for_gallery("acme").identify([clips["alice"][2]])


def test_two_galleries_hold_the_same_name_apart_and_never_answer_for_each_other(target, clips, tmp_path):
    with SpeakerDB(target, embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:2])
        a.create_gallery("acme")
        with pytest.raises(GalleryExistsError):
            a.create_gallery("acme")
        for twin in ("ACME", "Default"):  # one letter's case apart: a typo waiting to send data astray
            with pytest.raises(GalleryExistsError, match="only in case"):
                a.create_gallery(twin)
        with pytest.raises(InvalidInputError, match="empty gallery name"):  # --gallery "$TENANT", unset
            SpeakerDB(target, embedder=FakeEmbedder(), gallery="")
        b = a.for_gallery("acme")
        # The same name in both, of another voice in B; a speaker only B has.
        b.enroll("alice", clips["bob"][:2])
        b.enroll("carol", clips["carol"][:2])
        assert [s.name for s in a.list()] == ["alice"] and [s.name for s in b.list()] == ["alice", "carol"]
        assert a.info().n_speakers == 1 and a.info().n_utterances == 2 and b.info().n_utterances == 4
        # Identify in A never names B's speakers, whatever the voice.
        for voice_of in ("bob", "carol"):
            found = a.identify([clips[voice_of][2]], top_k=5)[0]
            assert {c.speaker for c in found.candidates} == {"alice"}
        assert _names(b.identify([clips["carol"][2], clips["bob"][2]])) == ["carol", "alice"]
        with pytest.raises(SpeakerNotFoundError):
            a.show("carol")
        assert a.verify("alice", clips["alice"][2]).accepted and b.verify("alice", clips["bob"][2]).accepted
        # Thresholds are each gallery's own.
        b.set_threshold(0.5)
        assert (a.threshold, b.threshold) == (pytest.approx(0.86), 0.5)
        # Each has its own index file, holding its own speakers only.
        assert a.index_path != b.index_path
        with b.store.read() as s:
            b_ids = {sp.id for sp in store.speakers_by_name(s)}
        a.rebuild_index(), b.rebuild_index()
        assert set(SpeakerIndex.load(a.index_path).labels) & b_ids == set()
        assert set(SpeakerIndex.load(b.index_path).labels) == b_ids
        # Removing B's alice leaves A's.
        b.remove("alice")
        assert [s.name for s in a.list()] == ["alice"] and [s.name for s in b.list()] == ["carol"]
        b.close()
    # Opened by name, in a new process's way.
    with SpeakerDB(target, embedder=FakeEmbedder(), gallery="acme") as b:
        assert [s.name for s in b.list()] == ["carol"] and b.threshold == 0.5 and b.gallery == "acme"
    with pytest.raises(GalleryNotFoundError, match="no gallery named 'nope'"):
        SpeakerDB(target, embedder=FakeEmbedder(), gallery="nope")


def test_normalisation_keys_and_audit_are_each_gallerys_own(target, clips, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(10):
        write(cohort / f"c{i}.wav", voice(140.0 + 17 * i, 1.0, seed=50 + i))
    with SpeakerDB(target, embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:2])
        a.create_gallery("acme")
        with a.for_gallery("acme") as b:
            b.enroll("bob", clips["bob"][:2])
            b.set_norm(cohort, top_n=5)
            assert b.norm_settings is not None and b.threshold_scale == "as-norm"
            assert a.norm_settings is None and a.threshold_scale == "cosine" and a.cohort_vectors() is None
            assert b.identify([clips["bob"][2]])[0].score != a.identify([clips["alice"][2]])[0].score
            # Keys: a key of one gallery is nobody in the other; the same key name may be in both.
            key_a = a.create_key("ops", "admin").key
            key_b = b.create_key("ops", "read").key
            assert a.authenticate(key_a).name == "ops" and a.authenticate(key_b) is None
            assert b.authenticate(key_b).scope == "read" and b.authenticate(key_a) is None
            assert [k.scope for k in a.list_keys()] == ["admin"] and [k.scope for k in b.list_keys()] == ["read"]
            with b.audited_as("ops"):
                b.rename("bob", "robert")
            assert [e.operation for e in b.audit()] == ["enroll", "norm", "key-create", "rename"]
            # acme's making is no record of default's, nor are acme's changes
            assert [e.operation for e in a.audit()] == ["enroll", "key-create"]
            b.set_norm_off()
            assert [e.operation for e in b.audit()][-1] == "norm" and len(a.audit()) == 2
            assert b.cohort_vectors() is None


def test_a_gallerys_generation_moves_with_its_own_changes_only(target, clips):
    """info's generation is the gallery's own count: a caller of gallery A must not see how often
    gallery B changes. The database's generation, which the indexes replay, counts both."""

    def generations(db: SpeakerDB) -> tuple[int, int]:
        with db.store.read() as s:
            return db.info().generation, store.generation(s)

    with SpeakerDB(target, embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:1])
        a.create_gallery("beta")
        with a.for_gallery("beta") as b:
            a_at, database_at = generations(a)
            b_at = b.info().generation
            b.enroll("bob", clips["bob"][:1])
            b.enroll("bob", clips["bob"][1:2])  # re-centred
            b.enroll("carol", clips["carol"][:1])
            b.remove("carol")
            moved = generations(a)[1] - database_at
            assert moved >= 4 and generations(a) == (a_at, database_at + moved)  # B's changes: not A's
            assert b.info().generation == b_at + moved  # each of B's changes counted
            a.enroll("alice", clips["alice"][1:2])
            a.remove("alice")
            a_moved = generations(a)[0] - a_at
            assert a_moved >= 2 and generations(a) == (a_at + a_moved, database_at + moved + a_moved)
            assert b.info().generation == b_at + moved
            # The caches keyed by the database's generation still follow every change.
            assert [r.speaker for r in b.identify([clips["bob"][2]])] == ["bob"] and a.list() == []


def test_galleries_made_and_removed_are_in_no_gallerys_audit_but_the_administrators(target, clips, tmp_path):
    """The default gallery's admin keys read its audit record (GET /v1/audit), but no key may make
    or remove galleries: the records that name the other tenants are read with `galleries audit`,
    on the database's machine, only."""
    with SpeakerDB(target, embedder=FakeEmbedder()) as a:
        a.create_key("ops", "admin")
        a.create_gallery("acme")
        a.create_gallery("beta")
        with a.for_gallery("acme") as b:
            b.create_key("ops", "admin")
            for db in (a, b):
                shown = json.dumps([e.to_dict() for e in db.audit()])
                assert "acme" not in shown and "beta" not in shown, shown
        a.remove_gallery("beta")
        assert [e.operation for e in a.audit()] == ["key-create"]
        assert [e.operation for e in a.audit(limit=1)] == ["key-create"]  # the newest of its own, not beta's removal
        lifecycle = [(e.operation, e.detail) for e in a.gallery_audit()]
        assert lifecycle == [
            ("gallery-create", {"gallery": "acme"}),
            ("gallery-create", {"gallery": "beta"}),
            ("gallery-remove", {"gallery": "beta"}),
        ]
        assert {e.key_name for e in a.gallery_audit()} == {api.local_actor()}  # made here, not by a key
        with a.for_gallery("acme") as b:
            assert [(e.operation, e.detail) for e in b.gallery_audit(limit=1)] == [lifecycle[-1]]
    from speakerdb.cli import cli

    runner = CliRunner()
    shown = runner.invoke(cli, ["--db", str(target), "audit", "--json"], catch_exceptions=False)
    assert shown.exit_code == 0 and "gallery-" not in shown.output, shown.output
    shown = runner.invoke(cli, ["--db", str(target), "galleries", "audit", "--json"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert [e["operation"] for e in json.loads(shown.output)] == ["gallery-create"] * 2 + ["gallery-remove"]
    refused = runner.invoke(cli, ["--server", "http://127.0.0.1:9", "galleries", "audit"])
    assert refused.exit_code != 0 and "galleries audit" in refused.output


def test_removing_a_gallery_erases_it_and_its_index(tmp_path, clips):
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:2])
        a.create_gallery("acme")
        with a.for_gallery("acme") as b:
            b.enroll("bob", clips["bob"][:2])
            b.create_key("acme-ops", "admin")
            b.rebuild_index()
            index_path = b.index_path
            with b.store.read() as s:
                vectors = [u.embedding for u in store.speaker_by_name(s, "bob").utterances]
            with pytest.raises(InvalidInputError, match="works in"):
                b.remove_gallery("acme")
        assert index_path.exists()
        with pytest.raises(InvalidInputError, match="default gallery cannot be removed"):
            a.remove_gallery("default")
        gone = a.remove_gallery("acme")
        assert (gone.name, gone.n_speakers, gone.n_keys) == ("acme", 1, 1)
        assert [g.name for g in a.list_galleries()] == ["default"] and [s.name for s in a.list()] == ["alice"]
        assert not index_path.exists()
        with pytest.raises(GalleryNotFoundError):
            a.remove_gallery("acme")
    wal = Path(f"{path}-wal")
    data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert not any(v in data for v in vectors)  # the embeddings are gone from the files
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM settings WHERE key LIKE 'gallery/%'").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
    con.close()


def _centroids(db: SpeakerDB) -> list[bytes]:
    """The gallery's centroids as float32 bytes: what its index file holds."""
    with db.store.read() as s:
        _, centroids = store.centroids(s)
    return [np.asarray(v, "<f4").tobytes() for v in centroids]


def _holding(directory: Path, needles: list[bytes]) -> list[str]:
    """The files under ``directory`` holding any of ``needles``."""
    files = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    return [p.name for p in files if any(n in p.read_bytes() for n in needles)]


def _index_files(index_path: Path) -> list[str]:
    """The index file of a gallery, its temporary files and log (its lock file holds no vector)."""
    return sorted(p.name for p in index_path.parent.glob(f"{index_path.name}*") if not p.name.endswith(".lock"))


def test_a_process_that_had_a_removed_gallery_open_writes_no_index_file_for_it(tmp_path, clips):
    """A second worker saves its index of the gallery after another process removed it."""
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as admin:
        admin.create_gallery("acme")
        worker = SpeakerDB(path, embedder=FakeEmbedder(), gallery="acme")
        worker.enroll("bob", clips["bob"][:2])
        assert worker.identify([clips["bob"][2]])[0].speaker == "bob"  # its index, in memory and on disk
        needles, index_path = _centroids(worker), worker.index_path
        assert _index_files(index_path) == [index_path.name]
        admin.remove_gallery("acme")
        assert _index_files(index_path) == []
        worker.close()  # saves its index, whose file is missing
    assert _index_files(index_path) == []
    assert _holding(tmp_path, needles) == []


def test_a_gallery_removed_while_another_process_saves_its_index_leaves_no_file(tmp_path, clips, monkeypatch, caplog):
    """The removal commits while the other process holds the index lock, between its check
    and its write: the removal waits for the lock, the writer finds the gallery gone."""
    path = tmp_path / "db.sqlite"
    admin = SpeakerDB(path, embedder=FakeEmbedder())
    admin.create_gallery("acme")
    worker = SpeakerDB(path, embedder=FakeEmbedder(), gallery="acme")
    worker.enroll("bob", clips["bob"][:2])
    assert worker.identify([clips["bob"][2]])[0].speaker == "bob"  # the file is written
    worker.enroll("carol", clips["carol"][:2])
    assert worker.identify([clips["carol"][2]])[0].speaker == "carol"  # in memory, ahead of the file
    needles, index_path = _centroids(worker), worker.index_path
    assert _index_files(index_path) == [index_path.name]
    monkeypatch.setattr(indexkeeper, "SAVE_AFTER_CHANGES", 1)  # the file lags enough to be saved

    # The removal runs on its own thread; the writer goes on once the removal has committed
    # and either asked for the index lock, or deleted the files without it, or returned.
    ready = threading.Event()

    def remove_gallery() -> None:
        try:
            admin.remove_gallery("acme")
        finally:
            ready.set()

    removal = threading.Thread(target=remove_gallery)
    real_lock, real_remove, real_save = index_files.write_lock, index_files.remove_files, SpeakerIndex.save

    def lock(p, *args, **kwargs):
        if threading.current_thread() is removal:
            ready.set()
        return real_lock(p, *args, **kwargs)

    def remove(p, *args, **kwargs):
        left = real_remove(p, *args, **kwargs)
        if threading.current_thread() is removal:
            ready.set()
        return left

    def save(self, p, *args, **kwargs):
        if Path(p) == index_path and not removal.is_alive() and not ready.is_set():
            removal.start()
            assert ready.wait(30)
        return real_save(self, p, *args, **kwargs)

    monkeypatch.setattr(index_files, "write_lock", lock)
    monkeypatch.setattr(indexkeeper, "write_lock", lock)
    monkeypatch.setattr(index_files, "remove_files", remove)
    monkeypatch.setattr(SpeakerIndex, "save", save)
    worker.maintain_index()  # saves under the lock: check, write, then zero what changed meanwhile
    removal.join(30)
    assert not removal.is_alive() and [g.name for g in admin.list_galleries()] == ["default"]
    assert "without its lock" not in caplog.text  # the removal waited for the lock, not past it
    assert _index_files(index_path) == []
    worker.close()
    admin.close()
    assert _index_files(index_path) == [] and _holding(tmp_path, needles) == []


def test_a_removed_gallerys_lock_file_goes_with_it(tmp_path, clips):
    """The lock file names a process and its command (a person's name, at times): removing the
    gallery deletes it, and a process that had the gallery open leaves none when it closes."""
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as admin:
        admin.create_gallery("acme")
        worker = SpeakerDB(path, embedder=FakeEmbedder(), gallery="acme")
        worker.enroll("bob", clips["bob"][:2])
        assert worker.identify([clips["bob"][2]])[0].speaker == "bob"  # saves the file, under its lock
        index_path = worker.index_path
        assert Path(f"{index_path}.lock").exists()
        admin.remove_gallery("acme")
        assert sorted(p.name for p in tmp_path.glob(f"{index_path.name}*")) == []
        worker.close()  # its save finds the gallery gone: it takes the lock, writes nothing, deletes it
    assert sorted(p.name for p in tmp_path.glob(f"{index_path.name}*")) == []


class _Killed(BaseException):
    """A kill, where the test makes it happen."""


def test_a_kill_while_erasing_a_removed_gallerys_index_is_finished_by_the_next_open(tmp_path, clips, monkeypatch):
    """The removal is killed after renaming the file aside, before its zeros: nothing opens that
    gallery again, so the next open of any gallery in the directory zeroes and deletes it."""
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as admin:
        admin.create_gallery("acme")
        with admin.for_gallery("acme") as b:
            b.enroll("bob", clips["bob"][:2])
            b.rebuild_index()
            needles, index_path = _centroids(b), b.index_path
        real_pwrite = os.pwrite

        def pwrite(fd, data, offset):
            if offset == 0 and not any(data):  # the erase's first zeros
                raise _Killed
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)
        with pytest.raises(_Killed):
            admin.remove_gallery("acme")
        monkeypatch.undo()
    left = [p for p in _holding(tmp_path, needles) if p.startswith(index_path.name)]
    assert left and not index_path.exists()  # renamed aside, its vectors still there
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:  # another gallery's open
        assert [g.name for g in db.list_galleries()] == ["default"]
    assert [p for p in _holding(tmp_path, needles) if ".faiss" in p] == []
    assert [p.name for p in tmp_path.glob(f"{index_path.name}.*") if not p.name.endswith(".lock")] == []


def test_a_new_gallery_given_a_removed_ones_id_never_loads_its_file(tmp_path, clips):
    """Gallery ids come back after a downgrade below revision 0005 and an upgrade (and in a
    restored backup): a file left at the id is erased when the new gallery is made."""
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.create_gallery("old")
        with db.for_gallery("old") as old:
            old.enroll("bob", clips["bob"][:2])
            old.rebuild_index()
            needles, index_path, kept = _centroids(old), old.index_path, old.index_path.read_bytes()
        db.remove_gallery("old")
    index_path.write_bytes(kept)  # as a deletion that failed, or a backup's copy, leaves it
    index_path.chmod(0o600)
    assert api.downgrade_database(path, "0004") == "0004"
    assert api.upgrade_database(path) == schema.HEAD_REVISION
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.create_gallery("new")
        with db.for_gallery("new") as new:
            assert new.index_path == index_path  # the same id
            assert _index_files(index_path) == [] and _holding(tmp_path, needles) == []
            assert new.list() == []


def test_an_old_database_is_the_default_gallery_after_the_upgrade(tmp_path):
    from test_migrations import _Projection

    old = tmp_path / "v0001.sqlite"
    shutil.copy(FIXTURE, old)
    assert api.upgrade_database(old) == schema.HEAD_REVISION
    con = sqlite3.connect(old)
    assert con.execute("SELECT id, name FROM galleries").fetchall() == [(1, "default")]
    assert set(con.execute("SELECT DISTINCT gallery_id FROM speakers").fetchall()) == {(1,)}
    con.close()
    with SpeakerDB(old, embedder=_Projection()) as db:
        assert db.gallery == "default" and db.threshold == 0.75
        with db.store.read() as s:  # from the upgrade on, its own count: never back from what it showed
            assert db.info().generation == store.generation(s)
        assert {s.name for s in db.list()} == {"alice", "bob", "José", "dave"}
        db.create_gallery("second")
        assert [(g.name, g.n_speakers) for g in db.list_galleries()] == [("default", 4), ("second", 0)]
        with db.for_gallery("second") as other:
            assert other.list() == [] and other.threshold == 0.75  # the model's and the database's
    # Down again only once the other galleries are gone: nothing is merged or lost silently.
    with pytest.raises(Exception, match="remove them first"):
        api.downgrade_database(old, "0004")
    with SpeakerDB(old, embedder=_Projection()) as db:
        db.remove_gallery("second")
    assert api.downgrade_database(old, "0004") == "0004"
    assert api.upgrade_database(old) == schema.HEAD_REVISION


def test_the_upgrade_keeps_ids_from_being_reused(tmp_path, clips):
    """AUTOINCREMENT's counter survives the copy of ``speakers`` that SQLite needs."""
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        for name in ("alice", "bob", "carol"):
            db.enroll(name, clips[name][:1])
        db.remove("carol")  # the newest id, 3
    assert api.downgrade_database(path, "0004") == "0004"
    assert api.upgrade_database(path) == schema.HEAD_REVISION
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("carol", clips["carol"][:1])
        with db.store.read() as s:
            assert store.speaker_by_name(s, "carol").id == 4
    con = sqlite3.connect(path)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    con.close()
    assert {"speakers_record_insert", "speakers_record_delete", "speakers_record_recentre"} <= names


def test_the_command_line_works_in_the_gallery_it_is_told(tmp_path, clips, monkeypatch):
    monkeypatch.setattr(api, "SpeakerDB", _fake_model(api.SpeakerDB))
    from speakerdb.cli import cli

    runner = CliRunner()
    db = str(tmp_path / "cli.sqlite")

    def run(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(cli, ["--db", db, *args], env=env, catch_exceptions=False)

    assert run("enroll", "alice", str(clips["alice"][0])).exit_code == 0
    missing = run("--gallery", "acme", "list")
    assert missing.exit_code == 1 and "no gallery named 'acme'" in missing.output
    assert run("galleries", "create", "acme").exit_code == 0
    assert run("galleries", "create", "bad/name").exit_code == 1
    assert run("--gallery", "acme", "enroll", "bob", str(clips["bob"][0])).exit_code == 0
    assert run("list", "--gallery", "acme", "--json").output.count('"name"') == 1
    assert json.loads(run("list", "--json", env={"SPEAKERDB_GALLERY": "acme"}).output)[0]["name"] == "bob"
    assert json.loads(run("list", "--json").output)[0]["name"] == "alice"
    listed = json.loads(run("galleries", "list", "--json").output)
    assert [(g["name"], g["n_speakers"]) for g in listed] == [("default", 1), ("acme", 1)]
    assert run("--gallery", "acme", "info", "--json").output.count('"gallery": "acme"') == 1
    assert run("galleries", "remove", "acme", "--yes").exit_code == 0
    assert [g["name"] for g in json.loads(run("galleries", "list", "--json").output)] == ["default"]


def _fake_model(cls):
    class FakeModelDB(cls):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["embedder"] = FakeEmbedder()
            super().__init__(*args, **kwargs)

    return FakeModelDB


def test_rows_written_in_one_gallery_carry_its_id(tmp_path, clips):
    """The scoping is the store's: a session of gallery B adds B's rows and sees no other."""
    with SpeakerDB(tmp_path / "db.sqlite", embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:1])
        a.create_gallery("acme")
        with a.for_gallery("acme") as b:
            b.enroll("alice", clips["bob"][:1])
            with b.store.read() as s:
                assert {sp.gallery_id for sp in store.speakers_by_name(s)} == {b.store.gallery_id}
                assert store.counts(s) == (1, 1)
                ids, _ = store.centroids(s)
                assert len(ids) == 1 and store.speaker_id_digest(s)[0] == 1
            with a.store.read(every_gallery=True) as s:
                assert len(store.speakers_by_name(s)) == 2


def test_a_cohort_of_another_gallerys_enrolled_recording_is_no_refusal_and_no_clue(target, clips, tmp_path):
    """Utterances have no gallery column of their own: a query of utterances alone (the cohort's
    check for enrolled audio) sees its gallery's only. It read every gallery's, so an admin of A
    uploading a cohort learned which recordings B had enrolled (and was refused them)."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    files = [write(cohort / f"c{i}.wav", voice(140.0 + 17 * i, 1.0, seed=50 + i)) for i in range(10)]
    with SpeakerDB(target, embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:2])
        a.create_gallery("acme")
        with a.for_gallery("acme") as b:
            b.enroll("secret", [files[3]])  # B enrolls one of the recordings A will use as its cohort
            change = a.set_norm(cohort, top_n=5, screen_enrolled=False)
            assert change.norm is not None and change.norm.count == 10
            with b.store.read() as s:  # and the store's own query, in B: B's utterance only
                secret = store.speaker_by_name(s, "secret")
                assert s.scalars(select(store.Utterance.speaker_id)).all() == [secret.id]
            with pytest.raises(InvalidInputError, match="enrolled speakers' utterances"):
                b.set_norm(cohort, top_n=5, screen_enrolled=False)  # in its own gallery it is refused


# ---- the service: /v1/galleries/{gallery}/..., keys that reach their own gallery only -------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_checkpoint):
    """One worker over a database with galleries acme and beta, an admin key in each and in the default."""
    from test_server import Server

    d = tmp_path_factory.mktemp("tenants-served")
    db_path = d / "served.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        keys = {"default": db.create_key("ops", "admin").key}
        for name in ("acme", "beta"):
            db.create_gallery(name)
            with db.for_gallery(name) as g:
                keys[name] = g.create_key("ops", "admin").key  # the same key name in every gallery
    srv = Server(db_path, tiny_checkpoint, d / "server.log")
    srv.keys = keys
    srv.start()
    yield srv
    assert srv.stop() in (0, -15)
    assert "Traceback" not in srv.log.read_text()


def test_the_service_answers_each_gallery_under_its_prefix_and_keys_reach_their_own_only(served, tmp_path):
    from speakerdb.service.client import Client

    clip = {n: write(tmp_path / f"{n}.wav", voice(f0, 1.5, seed=3)) for n, f0 in F0.items()}
    default = Client(served.url, served.keys["default"], retries=0)
    acme = Client(served.url, served.keys["acme"], retries=0, gallery="acme")
    beta = Client(served.url, served.keys["beta"], retries=0, gallery="beta")
    default.enroll("alice", [clip["alice"]])
    acme.enroll("alice", [clip["bob"]])  # the same name, another voice
    acme.enroll("carol", [clip["carol"]])
    acme_at, beta_at = acme.info().generation, beta.info().generation
    beta.enroll("bob", [clip["bob"]])
    assert acme.info().generation == acme_at and beta.info().generation > beta_at  # beta's change, not acme's
    assert [s.name for s in acme.list()] == ["alice", "carol"] and [s.name for s in default.list()] == ["alice"]
    assert [r.speaker for r in acme.identify([clip["carol"], clip["bob"]])] == ["carol", "alice"]
    assert {c.speaker for c in default.identify([clip["carol"]], top_k=5)[0].candidates} == {"alice"}
    acme.set_threshold(0.5)
    assert acme.threshold == 0.5 and default.threshold != 0.5 and acme.info().gallery == "acme"
    assert acme.info().n_speakers == 2 and default.info().n_speakers == 1

    # acme's key probing beta (which exists, and holds bob) and nope (which does not): the same 404.
    answers = {}
    for gallery in ("beta", "nope"):
        for name in ("bob", "zed"):
            status, _, doc = served.call("GET", f"/v1/galleries/{gallery}/speakers/{name}", key=served.keys["acme"])
            answers[gallery, name] = (status, doc["error"]["code"], doc["error"]["message"].replace(gallery, "G"))
        for method, path in (("GET", "/speakers"), ("GET", "/audit"), ("PUT", "/threshold"), ("GET", "/keys")):
            body = {"threshold": 0.1} if method == "PUT" else None
            status, _, doc = served.call(method, f"/v1/galleries/{gallery}{path}", key=served.keys["acme"], body=body)
            answers[gallery, path] = (status, doc["error"]["code"], doc["error"]["message"].replace(gallery, "G"))
        # An upload is refused before its body is stored, in the same words.
        status, _, doc = served.call(
            "POST", f"/v1/galleries/{gallery}/identify", key=served.keys["acme"], files=[("files", "x.wav", b"x")]
        )
        answers[gallery, "identify"] = (status, doc["error"]["code"], doc["error"]["message"].replace(gallery, "G"))
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[:2] == (404, "gallery_not_found")
    assert beta.threshold != 0.1 and [s.name for s in beta.list()] == ["bob"]  # nothing reached beta
    # Nor the default gallery's plain routes, nor the default gallery's key another's.
    assert served.call("GET", "/v1/speakers/alice", key=served.keys["acme"])[0] == 404
    assert served.call("GET", "/v1/galleries/acme/speakers/carol", key=served.keys["default"])[0] == 404
    assert served.call("GET", "/v1/galleries/acme/speakers/carol", key=served.keys["acme"])[0] == 200
    # Each gallery's audit record holds its own changes; the default's admin key reads no other gallery's name.
    assert {e.speaker for e in acme.audit() if e.operation == "enroll"} == {"alice", "carol"}
    assert {e.speaker for e in default.audit() if e.operation == "enroll"} == {"alice"}
    status, _, doc = served.call("GET", "/v1/audit", key=served.keys["default"])
    assert status == 200 and "acme" not in json.dumps(doc) and "beta" not in json.dumps(doc), doc
    # The metrics name routes by their templates, one per mount.
    metrics = served.call("GET", "/metrics")[2]
    metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
    assert 'endpoint="/v1/galleries/{gallery}/identify"' in metrics and 'endpoint="/v1/identify"' in metrics
    assert 'endpoint="/identify"' not in metrics


def test_a_model_bound_in_one_gallery_brings_its_starting_threshold_to_all(tmp_path, clips):
    class OwnScale(FakeEmbedder):
        default_threshold = 0.6  # as GE2E brings its own

    with SpeakerDB(tmp_path / "db.sqlite", embedder=OwnScale()) as a:
        a.create_gallery("acme")
        a.create_gallery("chosen")
        with a.for_gallery("chosen") as c:
            c.set_threshold(0.7)
        with a.for_gallery("acme") as b:
            b.enroll("alice", clips["alice"][:1])  # binds the model: the database's, for every gallery
            assert b.threshold == 0.6
        assert a.threshold == 0.6
        with a.for_gallery("chosen") as c:
            assert c.threshold == 0.7
        a.create_gallery("later")
        with a.for_gallery("later") as d:
            assert d.threshold == 0.6


def test_a_copy_of_a_database_keeps_its_galleries(tmp_path, clips):
    with SpeakerDB(tmp_path / "a.sqlite", embedder=FakeEmbedder()) as a:
        a.enroll("alice", clips["alice"][:1])
        a.create_gallery("acme")
        with a.for_gallery("acme") as b:
            b.enroll("alice", clips["bob"][:1])
            b.set_threshold(0.5)
        made = {g.name: g.created_at for g in a.list_galleries()}
    time.sleep(1.1)  # a copy's own date would differ from the source's by the second
    summary = api.copy_database(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    assert summary.rows["galleries"] == 2  # the default gallery counts, as the copy says
    with SpeakerDB(tmp_path / "b.sqlite", embedder=FakeEmbedder(), gallery="acme") as b:
        assert [s.name for s in b.list()] == ["alice"] and b.threshold == 0.5
        assert b.identify([clips["bob"][2]])[0].speaker == "alice"
        assert [g.name for g in b.list_galleries()] == ["default", "acme"]
        assert {g.name: g.created_at for g in b.list_galleries()} == made  # the default's date too
        b.create_gallery("new")  # ids continue after the copied ones


def test_a_copy_keeps_every_gallerys_generation_from_going_back(target, clips, tmp_path):
    """A client keeps what it read while its gallery's generation is unchanged (info). A copy
    started the default gallery's count again from its speakers (the other galleries' rows,
    copied, went on from theirs): a client of the default gallery could then read a number it
    had seen before the copy, over other speakers, and keep a stale list."""
    source = tmp_path / "source.sqlite"
    with SpeakerDB(source, embedder=FakeEmbedder()) as db:
        db.create_gallery("acme")
        db.enroll("alice", clips["alice"][:1])
        db.enroll("alice", clips["alice"][1:2])
        db.enroll("bob", clips["bob"][:1])
        db.remove("alice")  # one speaker left, after four changes
        with db.for_gallery("acme") as acme:
            acme.enroll("carol", clips["carol"][:1])
            before = {"default": db.info().generation, "acme": acme.info().generation}
    api.copy_database(source, target)
    with SpeakerDB(target, embedder=FakeEmbedder()) as db, db.for_gallery("acme") as acme:
        after = {"default": db.info().generation, "acme": acme.info().generation}
        assert all(after[g] >= before[g] for g in before), (before, after)
        db.enroll("dora", clips["alice"][2:3])
        assert db.info().generation == after["default"] + 1 and acme.info().generation == after["acme"]


def test_identify_requests_are_batched_with_their_own_gallerys_only():
    """The service answers identify requests waiting together in one call: of one gallery only."""
    from speakerdb.service.lanes import GALLERY, IdentifyBatches

    batches = IdentifyBatches(max_files=8)
    token = GALLERY.set("acme")  # as the route's key check sets it for /v1/galleries/acme/identify
    acme = batches.add(["a.wav"], 5, None)
    GALLERY.reset(token)
    first, second = batches.add(["b.wav"], 5, None), batches.add(["c.wav"], 5, None)
    calls = []

    class Recording:
        def identify(self, files, **_):
            calls.append(list(files))
            return [f"answer to {f}" for f in files]

    assert batches.run(Recording(), first) == ["answer to b.wav"]
    assert batches.run(Recording(), second) == ["answer to c.wav"] and batches.run(Recording(), acme)
    assert calls == [["b.wav", "c.wav"], ["a.wav"]]


def test_a_gallerys_speaker_probes_read_no_whole_gallery(tmp_path, clips):
    """enroll asks whether a gallery holds more than a few thousand speakers, and an encrypted
    database the next speaker id: neither may sort or scan the gallery's rows (at a million
    speakers each cost 50-100 ms of every enroll)."""
    from sqlalchemy import event

    with SpeakerDB(tmp_path / "db.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:1])
        seen: list[tuple[str, object]] = []
        engine = db.store.engine

        def note(conn, cursor, statement, parameters, context, executemany):
            seen.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", note)
        try:
            with db.store.write() as s:
                assert store.more_speakers_than(s, 0) and not store.more_speakers_than(s, 1)
                bob = store.Speaker(name="bob", centroid=b"", meta={})
                s.add(bob)
                store._ensure_id(s, bob)
                s.expunge(bob)  # given an id, never inserted
        finally:
            event.remove(engine, "before_cursor_execute", note)
        raw = sqlite3.connect(tmp_path / "db.sqlite")
        plans = {
            statement: " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters))
            for statement, parameters in seen
            if statement.lstrip().upper().startswith("SELECT")
        }
        raw.close()
    assert plans and not [p for p in plans.values() if "TEMP B-TREE" in p], plans
    [max_id] = [p for q, p in plans.items() if "max(" in q.lower()]
    assert "gallery_id" not in max_id, max_id  # the primary key's last row, not a scan of the gallery
