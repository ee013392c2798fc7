"""Migrations cannot destroy data: a database written by the 0001 release goes up and down intact.

``tests/data/v0001.sqlite`` was written by the release at schema 0001 (see
scripts/make_db_fixture.py); it must upgrade in every later version.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from speakerdb import SpeakerDB, api
from speakerdb.errors import DatabaseError, SchemaOutdatedError
from speakerdb.storage import governance, schema

FIXTURE = Path(__file__).parent / "data" / "v0001.sqlite"


class _Projection:
    """The fixture's embedder (scripts/make_db_fixture.py): same id and dimension."""

    model_id = "fixture-projection-v1"
    dim = 32

    def embed(self, waveforms):
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((257, self.dim))
        out = []
        for w in waveforms:
            frames = np.lib.stride_tricks.sliding_window_view(w, 512)[::256]
            v = np.log(np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0) + 1e-6) @ basis
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def _rows(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        return {
            "speakers": con.execute(
                "SELECT id, name, created_at, updated_at, metadata, centroid FROM speakers ORDER BY id"
            ).fetchall(),
            "utterances": con.execute(
                "SELECT id, speaker_id, source, duration_s, audio_sha256, embedding, created_at "
                "FROM utterances ORDER BY id"
            ).fetchall(),
            "settings": con.execute(
                "SELECT key, value FROM settings WHERE key != 'database_id' ORDER BY key"
            ).fetchall(),
        }
    finally:
        con.close()


@pytest.fixture
def old_db(tmp_path) -> Path:
    path = tmp_path / "v0001.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def test_upgrade_keeps_every_speaker_utterance_and_embedding_and_downgrade_too(old_db):
    assert api.database_revision(old_db)[0] == "0001"
    before = _rows(old_db)
    assert len(before["speakers"]) == 4 and len(before["utterances"]) == 10
    with pytest.raises(SchemaOutdatedError):
        SpeakerDB(old_db, embedder=_Projection())
    assert api.upgrade_database(old_db) == schema.HEAD_REVISION
    assert _rows(old_db) == before  # ids, names, times, metadata, every byte of every vector
    con = sqlite3.connect(old_db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    tables = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    con.close()
    assert "AUTOINCREMENT" in tables["speakers"]
    # 0005: names unique within a gallery
    for name in (
        "uq_speakers_gallery_id_name",
        "fk_speakers_gallery_id_galleries",
        "fk_utterances_speaker_id_speakers",
        "uq_utterances_speaker_id_audio_sha256",
    ):
        assert name in tables["speakers"] + tables["utterances"], name
    # 0003: the service's keys and audit record, every constraint named
    for name in ("pk_api_keys", "uq_api_keys_gallery_id_name", "uq_api_keys_key_id", "ck_api_keys_scope"):
        assert name in tables["api_keys"], name
    assert "pk_audit" in tables["audit"]

    with SpeakerDB(old_db, embedder=_Projection()) as db:
        assert db.threshold == 0.75 and {s.name for s in db.list()} == {"alice", "bob", "José", "dave"}
        assert db.store.settings()["database_id"]
        assert db.remove("bob") == 3  # foreign keys are on again: the utterances go with him
    con = sqlite3.connect(old_db)
    assert con.execute(
        "SELECT count(*) FROM utterances WHERE speaker_id NOT IN (SELECT id FROM speakers)"
    ).fetchone() == (0,)
    con.close()

    with SpeakerDB(old_db, embedder=_Projection()) as db:  # keys and audit work on the upgraded file
        key = db.create_key("ops", "admin").key
        assert db.authenticate(key).name == "ops"
        assert [(e.operation, e.speaker) for e in db.audit()] == [("remove", "bob"), ("key-create", None)]
    after_remove = _rows(old_db)
    assert api.downgrade_database(old_db, "0002") == "0002"  # 0003 goes back cleanly
    assert _rows(old_db) == after_remove
    con = sqlite3.connect(old_db)
    assert {"api_keys", "audit"}.isdisjoint(r[0] for r in con.execute("SELECT name FROM sqlite_master"))
    con.close()
    assert api.downgrade_database(old_db, "0001") == "0001"
    assert _rows(old_db) == after_remove
    assert api.upgrade_database(old_db) == schema.HEAD_REVISION
    assert _rows(old_db) == after_remove


def test_a_migration_that_would_break_a_reference_is_undone_whole(old_db):
    con = sqlite3.connect(old_db)
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute(
        "INSERT INTO utterances (speaker_id, source, duration_s, audio_sha256, embedding, created_at) "
        "VALUES (999, 'orphan.wav', 1.0, 'ab', x'00', '2026-01-01')"
    )
    con.commit()
    con.close()
    before = _rows(old_db)
    with pytest.raises(DatabaseError, match="broken reference"):
        api.upgrade_database(old_db)
    assert api.database_revision(old_db)[0] == "0001" and _rows(old_db) == before


def test_new_databases_have_an_identity_of_their_own(tmp_path):
    ids = set()
    for k in range(3):
        with SpeakerDB(tmp_path / f"{k}.sqlite", embedder=_Projection()) as db:
            ids.add(db.store.settings()["database_id"])
    assert len(ids) == 3


def test_the_0001_release_database_upgrades_with_every_folded_name_filled(old_db):
    """Revision 0009 fills ``speakers.folded_name`` (what twins and opt-outs look names up by)
    for the rows it finds, from 0001 on: an enrolled 'José' is found as 'JOSÉ' by the index."""
    assert api.upgrade_database(old_db) == schema.HEAD_REVISION
    with contextlib.closing(sqlite3.connect(old_db)) as con:
        rows = dict(con.execute("SELECT name, folded_name FROM speakers"))
        plan = con.execute("EXPLAIN QUERY PLAN SELECT name FROM speakers WHERE gallery_id = 1 AND folded_name = 'x'")
        assert "ix_speakers_gallery_id_folded_name" in " ".join(r[-1] for r in plan)
    assert rows == {"alice": "alice", "bob": "bob", "José": "josé", "dave": "dave"}
    with SpeakerDB(old_db, embedder=_Projection()) as db, db.store.read() as s:
        assert governance.names_folding_as(s, "JOSÉ") == ["José"]
