"""Issue 21, PostgreSQL: secrets of a database URL never shown (item 2), a held write lock
fails in bounded time naming its holder (item 8), U+0000 refused alike on both databases
(item 17c).

Runs against the session's real PostgreSQL (tests/pgserver.py) and skips where none starts.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, voice
from speakerdb import SpeakerDB, api
from speakerdb.audio import decode as audio
from speakerdb.cli import cli
from speakerdb.errors import DatabaseBusyError, DatabaseError, GalleryError, InvalidInputError, SpeakerDBError
from speakerdb.service import responses
from speakerdb.storage import store

SECRET = "S3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "index"))


def clip(source: str = "clip.wav", seed: int = 0, f0: float = 200.0) -> audio.Audio:
    return audio.Audio(source, voice(f0, 2.0, seed=seed).astype(np.float32))


def cli_run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounded(call, seconds: float = 30.0):
    """Run ``call`` in a thread; return what it raised (None if nothing). Fails the test if it
    is still waiting after ``seconds``: a wait for ever is the bug these tests look for."""
    outcome: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            call()
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds:g} s")
    return outcome["error"]


# ---- item 2: secrets in URLs ------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u@h/db?password={SECRET}",
        f"postgresql://u@h/db?sslpassword={SECRET}&sslmode=require",
        f"postgresql://u@h/db?passfile=/etc/{SECRET}&sslkey=/keys/{SECRET}.key",
        f"postgres://u@h:5432/db?PassWord={SECRET}",
        f"postgresql://u@h/db?pass%77ord={SECRET}",
        f"postgresql://u@h/db?password={SECRET}&password={SECRET}2",
        f"postgresql://u:p@{SECRET}@h/db",  # an unescaped "@" in the password
        f"postgresql://u:{SECRET}@h1:5432,h2:5433/db?password={SECRET}",  # several hosts: SQLAlchemy cannot parse it
        f"postgresql://u:{SECRET}@h:port/db?password={SECRET}",  # not a number
        f"postgresql+psycopg://u@[::1]:5/db?sslpassword={SECRET}",
    ],
)
def test_display_url_hides_every_secret_a_libpq_url_can_hold(url):
    shown = store.display_url(url)
    assert SECRET not in shown and "***" in shown
    assert "u" in shown and "db" in shown  # still says which database


def test_display_url_keeps_what_is_not_secret():
    assert (
        store.display_url("postgresql://u@h:5/db?sslmode=require&application_name=x")
        == "postgresql://u@h:5/db?sslmode=require&application_name=x"
    )
    assert store.display_url("postgresql://u:pw@h/db?password=pw") == "postgresql://u:***@h/db?password=***"


def test_redact_masks_secrets_echoed_in_an_error_text():
    url = f"postgresql://u@h/db?password={SECRET}"
    text = f"failed: password={SECRET} sslpassword='{SECRET} x' at {url}\nsecond line"
    shown = store.redact(text, url)
    assert SECRET not in shown and "\n" not in shown and "second line" not in shown


def test_info_never_shows_a_password_given_in_the_url(pg_url):
    url = with_query(pg_url, f"password={SECRET}&sslpassword={SECRET}&passfile=/nonexistent/{SECRET}")
    db = SpeakerDB(url, embedder=FakeEmbedder())
    try:
        db.enroll("bob", [clip()])
        assert SECRET not in json.dumps(db.info().to_dict()) and SECRET not in str(db.db_path)
    finally:
        db.close()
    for args in (["info"], ["info", "--json"], ["db", "current"]):
        result = cli_run("--db", url, *args)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output, result.output
        assert "***" in result.output or args == ["db", "current"]  # which prints no URL


def _secret_urls(pg_url: str) -> dict[str, str]:
    base, database = pg_url.rsplit("/", 1)
    host_port = base.split("@", 1)[1]
    return {
        "refused port": f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/{database}?password={SECRET}",
        "no such database": f"{base}/nodb_{database}?password={SECRET}&sslpassword={SECRET}",
        "no such role": f"postgresql://nobody@{host_port}/{database}?password={SECRET}",
        "bad option": f"{pg_url}?password={SECRET}&sslmode=bogus",
        "unknown option": f"{pg_url}?password={SECRET}&PassWord={SECRET}",
        "port not a number": f"postgresql://postgres:{SECRET}@127.0.0.1:port/{database}?password={SECRET}",
        "several hosts": f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{database}",
        "@ in password": f"postgresql://postgres:x@{SECRET}@{host_port}/{database}",
        "ssl required": f"{pg_url}?password={SECRET}&sslkey=/keys/{SECRET}&sslmode=require",
    }


def test_connection_errors_never_show_a_url_secret(pg_url):
    SpeakerDB(pg_url).close()  # a speakerdb database, so that only the URL's faults remain
    for why, url in _secret_urls(pg_url).items():
        with pytest.raises(SpeakerDBError) as caught:
            SpeakerDB(url, embedder=FakeEmbedder()).close()
        message = str(caught.value)
        assert SECRET not in message and "\n" not in message, (why, message)
        with pytest.raises(SpeakerDBError) as caught:
            api.database_revision(url)
        assert SECRET not in str(caught.value) and "\n" not in str(caught.value), (why, str(caught.value))
        result = cli_run("--db", url, "info")
        assert result.exit_code == 1 and SECRET not in result.output, (why, result.output)
        assert len(result.output.strip().splitlines()) == 1, (why, result.output)


@pytest.fixture
def password_role(pg_admin):
    """A role that must give its password (scram-sha-256 from 127.0.0.1), on the session's server."""
    role = f"pw_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        try:
            rules = hba.read_text()
            hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + rules)
        except OSError as e:
            pytest.skip(f"cannot change the server's pg_hba.conf here: {e}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
        conn.execute("SELECT pg_reload_conf()")
    base, database = pg_admin.rsplit("/", 1)
    url = f"postgresql://{role}@{base.split('@', 1)[1]}/{database}"
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous: wait until the rule is in force
        try:
            psycopg.connect(with_query(url, "password=wrong"), connect_timeout=2).close()
        except psycopg.OperationalError as e:
            if "password authentication failed" in str(e):
                break
        if time.monotonic() > deadline:
            pytest.skip("the server did not take the password rule")
        time.sleep(0.1)
    yield url
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        hba.write_text(rules)
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_wrong_password_is_reported_without_it(password_role):
    role = password_role.split("://")[1].split("@")[0]
    for url in (
        with_query(password_role, f"password={SECRET}"),
        password_role.replace(f"://{role}@", f"://{role}:{SECRET}@"),
    ):
        with pytest.raises(DatabaseError) as caught:
            SpeakerDB(url).close()
        message = str(caught.value)
        assert "password authentication failed" in message and SECRET not in message and "\n" not in message
        result = cli_run("--db", url, "info")
        assert (
            result.exit_code == 1 and SECRET not in result.output and "password authentication failed" in result.output
        )


# ---- item 8: a held lock ----------------------------------------------------------------------
@pytest.fixture
def enrolled(pg_url, monkeypatch):
    """A server database with bob enrolled; writers wait 1 s for a lock."""
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 1.0)
    db = SpeakerDB(pg_url, embedder=FakeEmbedder())
    db.enroll("bob", [clip()])
    db.close()
    return pg_url


def test_a_held_generation_lock_fails_enroll_remove_threshold_naming_the_holder(enrolled):
    holder = psycopg.connect(enrolled, application_name="the-holder")
    holder.execute("SELECT value FROM settings WHERE key = 'generation' FOR UPDATE")
    pid = holder.info.backend_pid
    db = SpeakerDB(enrolled, embedder=FakeEmbedder())
    try:
        for name, call in (
            ("enroll", lambda: db.enroll("carol", [clip(seed=3, f0=300.0)])),
            ("remove", lambda: db.remove("bob")),
            ("threshold", lambda: db.set_threshold(0.5)),
        ):
            started = time.monotonic()
            error = bounded(call)
            assert isinstance(error, DatabaseBusyError), (name, error)
            assert time.monotonic() - started < 15
            message = str(error)
            assert f"server process {pid}" in message and "'the-holder'" in message, message
            assert "in a transaction since" in message and "idle in transaction" in message, message
            assert "\n" not in message
        for args in (["threshold", "0.5"], ["remove", "bob", "--yes"]):
            result = cli_run("--db", enrolled, *args)
            assert result.exit_code == 1, result.output
            assert f"server process {pid}" in result.output and "'the-holder'" in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1, result.output
        holder.rollback()
        db.set_threshold(0.5)  # free again: writes go through
        assert [s.name for s in db.list()] == ["bob"]
    finally:
        holder.close()
        db.close()


def test_speakerdb_sessions_are_named_and_time_out_when_idle_in_a_transaction(enrolled, monkeypatch):
    db = SpeakerDB(enrolled, embedder=FakeEmbedder())
    try:
        with db.store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1s"
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() != "0"
            assert (
                conn.exec_driver_sql("SELECT current_setting('application_name')").scalar()
                == f"speakerdb pid {os.getpid()}"
            )
        with db.store.write():  # this process holds the lock: another writer names it
            other = SpeakerDB(enrolled, embedder=FakeEmbedder())
            try:
                error = bounded(lambda: other.set_threshold(0.5))
            finally:
                other.close()
        assert isinstance(error, DatabaseBusyError) and f"'speakerdb pid {os.getpid()}'" in str(error), error
    finally:
        db.close()


HOLDER = """
import sys, time
from speakerdb import SpeakerDB
from speakerdb.storage import store
store.IDLE_IN_TRANSACTION_TIMEOUT_S = 5
db = SpeakerDB(sys.argv[1])
with db.store.write():
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_stopped_writer_holds_the_lock_only_until_the_server_ends_its_session(enrolled, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    db = SpeakerDB(enrolled, embedder=FakeEmbedder())  # opened first: the first try must fall within the 5 s
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, enrolled], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        os.kill(child.pid, signal.SIGSTOP)  # as a writer stopped by its operator, or hung
        error = bounded(lambda: db.set_threshold(0.5))
        assert isinstance(error, DatabaseBusyError) and f"pid {child.pid}" in str(error), error
        deadline = time.monotonic() + 20
        while True:  # within the idle timeout (5 s) the server ends the stopped session
            error = bounded(lambda: db.set_threshold(0.5))
            if error is None:
                break
            assert isinstance(error, DatabaseBusyError), error
            assert time.monotonic() < deadline, "the stopped writer's lock was never released"
        assert db.threshold == 0.5
    finally:
        child.kill()
        child.wait()
        db.close()


def test_the_service_answers_503_when_the_database_is_busy():
    answer = responses.from_library(DatabaseBusyError("database x: the write lock is held"), {})
    assert answer.status == 503 and answer.code == "database_busy"


# ---- item 17c: U+0000 ---------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    return str(tmp_path / "nul.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _nul_gallery(tmp_path: Path) -> Path:
    """A gallery whose one utterance's source holds U+0000, as an SQLite database before this
    check could export it."""
    made = tmp_path / "made.sqlite"
    db = SpeakerDB(made, embedder=FakeEmbedder())
    db.enroll("bob", [clip("a.wav")])
    db.close()
    with sqlite3.connect(made) as conn:
        conn.execute("UPDATE utterances SET source = 'a' || char(0) || 'b.wav'")
    db = SpeakerDB(made, embedder=FakeEmbedder())
    try:
        db.export(tmp_path / "nul.gallery")
    finally:
        db.close()
    return tmp_path / "nul.gallery"


def test_nul_in_sources_and_metadata_is_refused_alike_on_both_databases(target, tmp_path):
    gallery = _nul_gallery(tmp_path)
    db = SpeakerDB(target, embedder=FakeEmbedder())
    try:
        with pytest.raises(InvalidInputError, match=r"U\+0000 \(NUL\)"):
            db.enroll("bob", [clip("a\x00b.wav")])
        with pytest.raises(InvalidInputError, match=r"metadata value .* U\+0000 \(NUL\)"):
            db.enroll("bob", [clip()], metadata={"note": "x\x00y"})
        with pytest.raises(InvalidInputError, match=r"metadata key .* U\+0000 \(NUL\)"):
            db.enroll("bob", [clip()], metadata={"k\x00": 1})
        with pytest.raises(GalleryError, match=r"source of an utterance of speaker 'bob' holds U\+0000 \(NUL\)"):
            db.import_gallery(gallery)
        assert db.list() == []  # nothing was written
        db.enroll("bob", [clip()], metadata={"note": "fine"})  # and the database still works
    finally:
        db.close()


def test_a_copy_refuses_a_source_holding_nul(pg_url, tmp_path):
    source = tmp_path / "src.sqlite"
    db = SpeakerDB(source, embedder=FakeEmbedder())
    db.enroll("bob", [clip()])
    db.close()
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE utterances SET source = 'a' || char(0) || 'b.wav'")
    with pytest.raises(DatabaseError, match=r"utterances row 1 source holds U\+0000 \(NUL\).*nothing was written"):
        api.copy_database(source, pg_url)
