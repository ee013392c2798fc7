"""The schema exists only through Alembic: fresh databases at head, old ones told to upgrade, newer ones refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, FakeEmbedder
from speakerdb import SpeakerDB, api
from speakerdb.errors import DatabaseError, SchemaOutdatedError, SchemaTooNewError
from speakerdb.storage import schema


def _tables(path):
    con = sqlite3.connect(path)
    try:
        return {
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        }
    finally:
        con.close()


def test_head_constant_matches_alembic_scripts():
    assert schema.HEAD_REVISION == schema.head_revision()


def test_new_database_is_created_at_head_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "dir" / "new.sqlite"
    SpeakerDB(path, embedder=FakeEmbedder()).close()
    assert {"speakers", "utterances", "settings", "alembic_version"} <= _tables(path)
    assert api.database_revision(path) == (schema.HEAD_REVISION, schema.HEAD_REVISION)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("PRAGMA page_size").fetchone() == (schema.PAGE_SIZE,)
    con.close()


def test_models_match_the_migrations(tmp_path):
    """The ORM models and the Alembic revisions describe the same schema (no autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from speakerdb.storage import store

    path = tmp_path / "db.sqlite"
    SpeakerDB(path, embedder=FakeEmbedder()).close()
    engine = store.open_engine(path)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_then_upgrade_again(tmp_path, voices):
    path = tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", voices["alice"][:1])
    assert api.downgrade_database(path, "base") is None
    assert _tables(path) == {"alembic_version"}
    with pytest.raises(SchemaOutdatedError, match="speakerdb db upgrade"):
        SpeakerDB(path, embedder=FakeEmbedder())
    assert api.upgrade_database(path) == schema.HEAD_REVISION
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        assert db.list() == []
        db.enroll("alice", voices["alice"][:1])


def _database_after(tmp_path, sql: str):
    """A new database with ``sql`` run on it behind speakerdb's back."""
    path = tmp_path / "db.sqlite"
    SpeakerDB(path, embedder=FakeEmbedder()).close()
    con = sqlite3.connect(path)
    con.execute(sql)
    con.commit()
    con.close()
    return path


def test_older_revision_is_told_to_upgrade(tmp_path):
    path = _database_after(tmp_path, "DELETE FROM alembic_version")
    with pytest.raises(SchemaOutdatedError) as err:
        SpeakerDB(path, embedder=FakeEmbedder())
    assert str(path) in str(err.value) and "speakerdb db upgrade" in str(err.value)


def test_newer_revision_is_refused(tmp_path):
    path = _database_after(tmp_path, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(SchemaTooNewError, match="newer speakerdb"):
        SpeakerDB(path, embedder=FakeEmbedder())


def test_other_sqlite_files_and_garbage_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="not a speakerdb database"):
        SpeakerDB(other, embedder=FakeEmbedder())
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(DatabaseError):
        SpeakerDB(garbage, embedder=FakeEmbedder())


@pytest.mark.slow
def test_non_editable_install_creates_databases(tmp_path):
    """A wheel carries migrations/ inside the package: a database can be created from it."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = wheel_dir.glob("speakerdb-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "speakerdb" / "migrations" / "versions" / "0001_initial.py").is_file()
    code = (
        "import speakerdb, sys; from speakerdb import api; from speakerdb.storage import schema;"
        "assert speakerdb.__file__.startswith(sys.argv[1]), speakerdb.__file__;"
        "from speakerdb import SpeakerDB; SpeakerDB(sys.argv[2]).close();"
        "print(api.database_revision(sys.argv[2])[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(site), str(tmp_path / "w.sqlite")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == schema.HEAD_REVISION
