"""Governance of voiceprints (issue 27 items 1-3, 6): consent, retention (last_seen, expire),
opt-out, and what ``show`` gives about a person; through the API, the CLI and a real service.

The API and CLI tests use the model-free FakeEmbedder (the CLI's model loader is pointed at
it); the service test runs one real uvicorn process with the tiny WavLM checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event, insert, text
from sqlalchemy import inspect as sa_inspect

from conftest import FakeEmbedder, assert_index_agrees_with_store, voice, write
from speakerdb import SpeakerDB, api
from speakerdb.cli import cli
from speakerdb.errors import (
    ConflictError,
    ConsentRequiredError,
    InvalidInputError,
    OptedOutError,
    SpeakerExistsError,
    SpeakerNotFoundError,
)
from speakerdb.results import SpeakerInfo
from speakerdb.storage import gallery, governance, migrate, schema, store

YEAR = timedelta(days=365)


class Clock:
    """A settable clock: ``SpeakerDB(clock=...)`` at a simulated date (from the real one: rows
    written by parts that go by the system clock, such as created_at, agree with it at first)."""

    def __init__(self) -> None:
        self.now = datetime.utcnow().replace(microsecond=0) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gov-clips")
    return {
        name: write(d / f"{name}.wav", voice(f0, 2.0, seed=seed))
        for name, f0, seed in [("alice", 210.0, 0), ("alice2", 212.0, 1), ("bob", 110.0, 0), ("carol", 310.0, 0)]
    }


def _db(path: Path, clock: Clock | None = None) -> SpeakerDB:
    return SpeakerDB(path, embedder=FakeEmbedder(), clock=clock)


@contextlib.contextmanager
def legacy_twins():
    """Enroll and rename as before names that differ only in case or spacing were refused: the
    twins that a database made then may hold, and that must keep working."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(governance, "twin_of", lambda *a, **k: None, raising=False)
        yield


# ---- consent ----------------------------------------------------------------------------------
def test_consent_is_recorded_required_by_policy_and_travels_in_galleries(tmp_path, clips):
    clock = Clock()
    with _db(tmp_path / "a.sqlite", clock) as db:
        assert db.policy().to_dict() == {"require_consent": False, "expire_after": "never", "expire_after_s": None}
        db.enroll("bob", [clips["bob"]])  # no policy yet: no consent needed
        assert db.show("bob").consent is None
        assert db.set_policy(require_consent=True).require_consent
        with pytest.raises(ConsentRequiredError, match="requires consent") as e:
            db.enroll("alice", [clips["alice"]])
        assert e.value.code == "consent_required"
        with pytest.raises(ConsentRequiredError):
            db.enroll("bob", [clips["alice2"]])  # bob has no consent on record either
        assert [s.name for s in db.list()] == ["bob"] and db.show("bob").n_utterances == 1  # nothing written
        with pytest.raises(InvalidInputError):
            db.enroll("alice", [clips["alice"]], consent="   ")
        db.enroll("alice", [clips["alice"]], consent="signed form CF-118, 2026-12-01")
        db.enroll("alice", [clips["alice2"]])  # consent already on record: adding needs none
        info = db.show("alice")
        assert info.consent is not None and info.consent.text == "signed form CF-118, 2026-12-01"
        # made on this machine, not through the service: recorded as its operating-system user
        assert info.consent.recorded_at == clock.now and info.consent.recorded_by == api.local_actor()
        assert info.to_dict()["consent"]["recorded_at"] == clock.now.isoformat() + "Z"
        # the refused enrollments recorded nothing
        me = api.local_actor()
        trail = [(a.operation, a.speaker, a.key_name) for a in db.audit()]
        assert trail == [("enroll", "bob", me), ("policy", None, me), ("enroll", "alice", me), ("enroll", "alice", me)]
        with db.audited_as("ops"):
            db.enroll("carol", [clips["carol"]], consent="signed form CF-119")
        with db.audited_as(None):  # a service that needs no key
            db.optout("carol")
        assert [(a.operation, a.key_name) for a in db.audit()][4:] == [("enroll", "ops"), ("optout", None)]
        db.export(tmp_path / "g.gallery", ["alice"])
        db.export(tmp_path / "bob.gallery", ["bob"])
    with _db(tmp_path / "b.sqlite") as other:
        other.set_policy(require_consent=True)
        with pytest.raises(ConsentRequiredError, match="bob"):
            other.import_gallery(tmp_path / "bob.gallery")
        other.import_gallery(tmp_path / "g.gallery")
        assert other.show("alice").consent == info.consent


def test_an_import_that_replaces_a_consented_speaker_needs_consent_of_its_own(tmp_path, clips):
    """A replace deletes the speaker and its consent: the import's speaker is a new enrollment
    and, where consent is required, must carry one. It passed on the consent it deleted, and
    left a speaker with none in a gallery that requires it. A merge keeps the consent."""
    with _db(tmp_path / "src.sqlite") as src:
        src.enroll("carol", [clips["carol"]])  # no consent where it came from
        src.export(tmp_path / "carol.gallery")
    with _db(tmp_path / "dst.sqlite") as db:
        db.set_policy(require_consent=True)
        db.enroll("carol", [clips["alice"]], consent="signed form CF-9")
        with pytest.raises(ConsentRequiredError, match="carol"):
            db.import_gallery(tmp_path / "carol.gallery", on_conflict="replace")
        assert db.show("carol").consent.text == "signed form CF-9" and db.show("carol").n_utterances == 1
        db.import_gallery(tmp_path / "carol.gallery", on_conflict="merge")
        assert db.show("carol").consent.text == "signed form CF-9" and db.show("carol").n_utterances == 2


def test_policy_durations():
    assert governance.parse_duration("3y") == 3 * 365 * 86_400
    assert governance.parse_duration("180d") == 180 * 86_400
    assert governance.parse_duration("12h") == 43_200
    assert governance.parse_duration("never") is None
    assert governance.format_duration(governance.parse_duration("2w")) == "2w"
    for bad in ("3", "0d", "-1d", "3 months", "1e3d", "999999y"):
        with pytest.raises(InvalidInputError):
            governance.parse_duration(bad)
    for zero in ("0s", "0d", "00y"):  # well formed: what is wrong is that it is zero
        with pytest.raises(InvalidInputError, match="is zero, which is not allowed") as e:
            governance.parse_duration(zero)
        assert "whole number" not in str(e.value)


# ---- retention --------------------------------------------------------------------------------
def test_last_seen_is_written_in_batches_and_expiry_runs_at_a_simulated_date(tmp_path, clips):
    clock = Clock()
    start = clock.now
    path = tmp_path / "r.sqlite"
    with _db(path, clock) as db:
        db.enroll("alice", [clips["alice"]])
        db.enroll("bob", [clips["bob"]])
        db.set_policy(expire_after="3y")
        clock.now += 2 * YEAR
        db._seen.flush_s = 3600.0  # one write an hour: none during this test
        assert [r.speaker for r in db.identify([clips["alice2"]], count_voices=False)] == ["alice"]
        assert db.verify("alice", clips["alice2"]).accepted
        with SpeakerDB(path, embedder=FakeEmbedder()) as reader:  # another process sees no write yet
            assert reader.show("alice").last_seen is None
        assert db.show("alice").last_seen == clock.now  # this process knows what it noted
    with SpeakerDB(path, embedder=FakeEmbedder()) as reader:  # written at close
        assert reader.show("alice").last_seen == start + 2 * YEAR
        assert reader.show("bob").last_seen is None

    clock.now = start + 3 * YEAR + timedelta(days=1)  # bob: enrolled 3 years and a day ago; alice: seen 1 year ago
    with _db(path, clock) as db:
        preview = db.expire(dry_run=True)
        assert preview.expired == ["bob"] and preview.dry_run and preview.erasure is None
        assert [s.name for s in db.list()] == ["alice", "bob"]
        centroid = _centroid(path, "bob")
        done = db.expire()
        assert done.expired == ["bob"] and done.utterances == 1 and done.cutoff == start + timedelta(days=1)
        assert done.erasure is not None and any("write-ahead log" in x for x in done.erasure.erased)
        assert [s.name for s in db.list()] == ["alice"]
        [record] = [a for a in db.audit() if a.operation == "expire"]
        assert record.speaker == "bob" and record.time == clock.now and record.detail["utterances"] == 1
        clock.now = start + 5 * YEAR + timedelta(days=1)
        assert db.expire().expired == ["alice"]
        db.set_policy(expire_after="never")
        assert db.expire().cutoff is None
    for f in (path, Path(f"{path}-wal")):  # the same erasure as remove: no byte of bob's centroid left
        assert not f.exists() or centroid not in f.read_bytes()
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


def test_an_expiry_preview_does_not_wait_for_a_writer(tmp_path, clips):
    """``expire --dry-run`` only reads: another process's open write transaction (an enrollment,
    a service's request) does not hold it up for the busy timeout."""
    clock = Clock()
    path = tmp_path / "busy.sqlite"
    with _db(path, clock) as db:
        db.enroll("bob", [clips["bob"]])
        db.set_policy(expire_after="1y")
    clock.now += 2 * YEAR
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
    try:
        with _db(path, clock) as db:
            answer: list = []
            preview = threading.Thread(target=lambda: answer.append(db.expire(dry_run=True)), daemon=True)
            preview.start()
            preview.join(timeout=10)
            assert not preview.is_alive(), "the preview waited for the writer's lock"
            assert answer[0].expired == ["bob"] and answer[0].dry_run
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def _centroid(path: Path, name: str) -> bytes:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT centroid FROM speakers WHERE name = ?", (name,)).fetchone()[0]
    finally:
        con.close()


# ---- opt-out ----------------------------------------------------------------------------------
def test_optout_keeps_only_keyed_hashes_refuses_the_person_and_an_admin_overrides(tmp_path, clips):
    path = tmp_path / "o.sqlite"
    with _db(path) as db:
        with db.audited_as("ops"):  # as the service records changes: audit rows that name her
            db.enroll("Alice Smith", [clips["alice"]], external_id="C-4411")
            db.rename("Alice Smith", "Alice S")
            db.rename("Alice S", "Alice Smith")
        db.enroll("bob", [clips["bob"]])
        result = db.optout("Alice Smith")
        assert result.removed and result.utterances == 1 and result.external_id and result.erasure is not None
        with pytest.raises(SpeakerNotFoundError):
            db.show("Alice Smith")
        for name, ext in [("alice  SMITH", None), ("carol", "C-4411")]:  # the folded name; the external id
            with pytest.raises(OptedOutError, match="opted out") as e:
                db.enroll(name, [clips["alice2"]], external_id=ext)
            assert e.value.code == "opted_out"
        db.optout("dave", external_id="D-1")  # never enrolled: the opt-out is kept all the same
        with pytest.raises(OptedOutError):
            db.enroll("dave", [clips["carol"]])
        listed = db.optouts()
        assert listed.count == 2 and len(listed.dates) == 2 and set(listed.to_dict()) == {"count", "dates"}
        con = sqlite3.connect(path)
        try:
            dump = "\n".join(con.iterdump())
        finally:
            con.close()
        assert "Alice Smith" not in dump and "C-4411" not in dump and "D-1" not in dump and "dave" not in dump
        # Her enroll record, and both names of each rename ("Alice S" too), name a marker instead.
        assert dump.count("opted-out:") == 5 and "Alice S" not in dump
        db.enroll("carol", [clips["carol"]], external_id="C-4411", override_optout=True)
        assert db.optouts().count == 1  # the override lifted the matching opt-out
        assert [a.operation for a in db.audit() if a.operation.startswith("optout")] == [
            "optout",
            "optout",
            "optout-override",
        ]
        db.enroll("alice smith", [clips["alice2"]])  # name and id were one opt-out: lifted with it


def test_an_optout_scrubs_every_name_the_speaker_had_from_the_audit(tmp_path, clips):
    """The scrub replaced the current name only: a speaker enrolled as 'A. Smith', renamed
    'Alice S' then 'Alice Smith' and opted out left 'A. Smith' and 'Alice S' in the audit
    (enroll records, the renames' own). Her earlier names go too, followed back through the
    rename records; other people who held one of her names before or after her keep theirs."""
    path = tmp_path / "r.sqlite"
    with _db(path) as db:
        with db.audited_as("ops"):
            db.enroll("A. Smith", [clips["carol"]])  # someone else, removed before she came
            db.remove("A. Smith")
            db.enroll("A. Smith", [clips["alice"]])
            db.rename("A. Smith", "Alice S")
            db.enroll("Alice S", [clips["alice2"]])
            db.rename("Alice S", "Alice Smith")
            db.enroll("Alice S", [clips["bob"]], new=True)  # someone else, after she left the name
            db.enroll("carol", [clips["carol"]])
        assert db.optout("Alice Smith").removed
        trail = [(a.operation, a.speaker, a.detail) for a in db.audit()]
        assert trail[:2] == [
            ("enroll", "A. Smith", {"files": 1, "new": False, "consent": False, "override_optout": False}),
            ("remove", "A. Smith", None),
        ]
        trail = trail[2:]
        assert not any("A. Smith" in json.dumps(t) or "Alice Smith" in json.dumps(t) for t in trail), trail
        marker = trail[0][1]
        assert marker.startswith("opted-out:")
        assert trail == [
            ("enroll", marker, {"files": 1, "new": False, "consent": False, "override_optout": False}),
            ("rename", marker, {"new": marker}),
            ("enroll", marker, {"files": 1, "new": False, "consent": False, "override_optout": False}),
            ("rename", marker, {"new": marker}),
            ("enroll", "Alice S", {"files": 1, "new": True, "consent": False, "override_optout": False}),
            ("enroll", "carol", {"files": 1, "new": False, "consent": False, "override_optout": False}),
            ("optout", None, {"removed": True, "utterances": 2}),
        ]
        assert {s.name for s in db.list()} == {"Alice S", "carol"}


def test_show_gives_the_audit_records_of_this_speaker_under_every_name_it_had(tmp_path, clips):
    """`show` (and GET /v1/speakers/{name}) gave the records naming the current name only: a
    speaker renamed 'dave' -> 'Dave' showed none of its own (its enrollment and the rename name
    'dave'), and one enrolled under a name another person held before showed that person's.
    It follows the renames back as an opt-out does, and stops where the name was last free."""
    path = tmp_path / "s.sqlite"
    with _db(path) as db:
        with db.audited_as("ops"):
            db.enroll("alice", [clips["carol"]])  # someone else, who then takes another name
            db.rename("alice", "alicia")
            db.enroll("alice", [clips["alice"]], new=True)
            db.enroll("dave", [clips["bob"]])
            db.rename("dave", "Dave")
            db.enroll("Dave", [clips["alice2"]])

        def trail(name: str) -> list[tuple[str, str | None]]:
            return [(a.operation, a.speaker) for a in db.show(name).audit]

        assert trail("Dave") == [("enroll", "dave"), ("rename", "dave"), ("enroll", "Dave")]
        assert trail("alice") == [("enroll", "alice")]
        assert trail("alicia") == [("enroll", "alice"), ("rename", "alice")]
        assert len(db.audit(speaker="alice")) == 3  # `audit --speaker` still names the name alone


def test_show_reads_only_the_removals_of_the_names_it_follows(tmp_path, clips):
    """A gallery with a long retention history holds a record per speaker removed or expired;
    reading them all to follow one speaker's names made `show` take seconds at 100,000. Only
    those of the names a history can reach are read."""
    path = tmp_path / "s.sqlite"
    with _db(path) as db:
        with db.audited_as("ops"):
            db.enroll("dave", [clips["bob"]])
            db.rename("dave", "Dave")
    with sqlite3.connect(path) as c:
        c.executemany(
            "INSERT INTO audit (time, key_name, operation, speaker, gallery_id) "
            "VALUES (datetime('now'), 'ops', ?, ?, 1)",
            [("remove" if i % 2 else "expire", f"person {i}") for i in range(300)],
        )
    loaded: list[int] = []

    def on_load(record, _context) -> None:
        loaded.append(record.id)

    with _db(path) as db:
        event.listen(store.AuditRecord, "load", on_load)
        try:
            assert [(a.operation, a.speaker) for a in db.show("Dave").audit] == [("enroll", "dave"), ("rename", "dave")]
        finally:
            event.remove(store.AuditRecord, "load", on_load)
    assert len(loaded) < 10, len(loaded)


def _long_trail(tmp_path: Path, clips) -> Path:
    """A database where 'Dave' was someone else's name (removed), then dave's, renamed 'Dave',
    among 300 removal and expiry records of other people."""
    path = tmp_path / "s.sqlite"
    with _db(path) as db:
        with db.audited_as("ops"):
            db.enroll("Dave", [clips["carol"]])  # someone else, removed before he came
            db.remove("Dave")
            db.enroll("dave", [clips["bob"]])
            db.rename("dave", "Dave")
            db.enroll("Dave", [clips["alice2"]])
            db.enroll("carol", [clips["carol"]])
    with sqlite3.connect(path) as c:
        c.executemany(
            "INSERT INTO audit (time, key_name, operation, speaker, gallery_id) "
            "VALUES (datetime('now'), 'ops', ?, ?, 1)",
            [("remove" if i % 2 else "expire", f"person {i}") for i in range(300)],
        )
    return path


def _statements_on_audit(db: SpeakerDB, call) -> list[tuple[str, Any]]:
    """The statements ``call()`` runs that read the audit table."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit" in statement:
            seen.append((statement, parameters))

    event.listen(db.store.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(db.store.engine, "before_cursor_execute", record)
    return seen


def test_show_reads_a_speakers_audit_records_in_one_query_on_their_names(tmp_path, clips):
    """`show` read the audit table three times: the renames, the removals of the names they
    reach, then its records among those names' by spans of ids. The removals that end an
    earlier holder's span are among the records naming those names: one query for them all
    gives the same records."""
    path = _long_trail(tmp_path, clips)
    with _db(path) as db:
        shown: list[Any] = []
        statements = _statements_on_audit(db, lambda: shown.extend(db.show("Dave").audit))
        assert [(a.operation, a.speaker) for a in shown] == [("enroll", "dave"), ("rename", "dave"), ("enroll", "Dave")]
        assert len(statements) == 2, statements


def test_show_and_audit_speaker_find_the_records_by_index_whatever_the_size_of_the_audit(tmp_path, clips):
    """The audit had no index on the speaker nor on the operation: `show` scanned the table
    twice (the renames, then the records of the names it follows) and `audit --speaker` once,
    linear in the records of other people (27 ms of CPU at 100,000). Revision 0010 indexes it by
    (gallery, speaker, id) and (gallery, operation): each of their queries searches one of them."""
    path = _long_trail(tmp_path, clips)
    with _db(path) as db:
        statements = _statements_on_audit(db, lambda: db.show("Dave"))
        statements += _statements_on_audit(db, lambda: db.audit(speaker="Dave"))
    assert len(statements) == 3
    con = sqlite3.connect(path)
    try:
        for statement, parameters in statements:
            plan = " ".join(r[-1] for r in con.execute(f"EXPLAIN QUERY PLAN {statement}", parameters))
            used = {"ix_audit_gallery_id_speaker_id", "ix_audit_gallery_id_operation"}
            assert any(f"USING INDEX {ix} " in plan for ix in used) and "SCAN audit" not in plan, (statement, plan)
    finally:
        con.close()


def test_an_optout_removes_the_speaker_it_refuses_whatever_the_case_or_by_external_id(tmp_path, clips):
    """The opt-out compares names folded (case, spacing) and external ids; the removal looked
    for the exact name only. 'alice  smith' opting out left 'Alice Smith' enrolled and named by
    identify (while enrolling into her was refused), and so did an opt-out by customer number."""
    with _db(tmp_path / "f.sqlite") as db:
        with db.audited_as("ops"):
            db.enroll("Alice Smith", [clips["alice"]])
        db.enroll("bob", [clips["bob"]], external_id="C-7")
        db.enroll("carol", [clips["carol"]])
        result = db.optout("alice  SMITH")
        assert result.removed and result.utterances == 1
        assert [s.name for s in db.list()] == ["bob", "carol"]
        assert "Alice Smith" not in json.dumps([a.to_dict() for a in db.audit()])
        assert db.optout("Robert", external_id="C-7").removed  # the customer number names bob
        assert [s.name for s in db.list()] == ["carol"]
        [found] = db.identify([clips["alice2"]], count_voices=False)
        assert found.speaker in (None, "carol")
        # Two enrolled speakers one name apart only in case: which one is meant is not guessed.
        db.enroll("dave", [clips["alice"]])
        with legacy_twins():
            db.enroll("Dave", [clips["alice2"]], new=True)
        with pytest.raises(ConflictError, match="names 2 enrolled speakers"):
            db.optout("DAVE")
        assert db.optouts().count == 2 and {s.name for s in db.list()} == {"carol", "dave", "Dave"}


def test_a_rename_to_an_opted_out_name_is_refused_as_an_enrollment_is(tmp_path, clips):
    """A rename made a speaker of an opted-out person's name, and wrote the name into the audit
    record, with no override: what enroll refuses."""
    with _db(tmp_path / "r.sqlite") as db:
        db.optout("Alice Smith")
        db.enroll("tmp", [clips["alice"]])
        with db.audited_as("ops"), pytest.raises(OptedOutError, match="opted out") as e:
            db.rename("tmp", "alice smith")
        assert e.value.code == "opted_out"
        assert [s.name for s in db.list()] == ["tmp"]
        assert "smith" not in json.dumps([a.to_dict() for a in db.audit()]).lower()
        db.rename("tmp", "carol")  # any other name is free


def test_a_name_that_differs_from_a_speakers_only_in_case_or_spacing_is_refused(tmp_path, clips):
    """`dave` beside `Dave` split one person's voiceprint in two, and an opt-out could then tell
    neither apart (conflict). Creating one (enroll, rename, import) is refused and names the
    spelling enrolled, whatever the import's --on-conflict; adding to the exact name still works,
    and a database that holds twins already keeps working."""
    with _db(tmp_path / "t.sqlite") as db:
        db.enroll("Dave", [clips["alice"]])
        db.enroll("Alice Smith", [clips["carol"]])
        db.enroll("bob", [clips["bob"]])
        for name, new in [("dave", False), ("DAVE", True), ("alice  SMITH", False)]:
            with pytest.raises(SpeakerExistsError, match=r"would be a twin of existing '(Dave|Alice Smith)'") as e:
                db.enroll(name, [clips["alice2"]], new=new)
            assert e.value.code == "speaker_exists" and "nothing written" in str(e.value)
        assert "use 'Dave'" in str(pytest.raises(SpeakerExistsError, db.enroll, "dave", [clips["alice2"]]).value)
        with pytest.raises(
            SpeakerExistsError, match="cannot rename 'bob': speaker 'dave' would be a twin of existing 'Dave'"
        ):
            db.rename("bob", "dave")
        assert {s.name: s.n_utterances for s in db.list()} == {"Alice Smith": 1, "Dave": 1, "bob": 1}  # nothing written
        assert [(a.operation, a.speaker) for a in db.audit()] == [("enroll", n) for n in ("Dave", "Alice Smith", "bob")]
        assert db.enroll("Dave", [clips["alice2"]]).n_utterances == 2  # the exact name: added to
        db.rename("Dave", "DAVE")  # a speaker may change the case of its own name
        db.rename("DAVE", "Dave")
        db.export(tmp_path / "dave.gallery", ["Dave"])
        with legacy_twins():  # what a database made before this may hold
            db.enroll("erin", [clips["alice"]])
            db.enroll("Erin", [clips["alice2"]], new=True)
            db.export(tmp_path / "erins.gallery", ["erin", "Erin"])
        assert db.enroll("Erin", [clips["bob"]]).n_utterances == 2
        with pytest.raises(SpeakerExistsError, match="'ERIN' would be a twin of existing 'Erin'"):
            db.rename("erin", "ERIN")  # the other twin's spelling, not its own
        db.rename("erin", "Erin Jones")  # how twins are told apart
        assert db.identify([clips["carol"]], count_voices=False)[0].speaker == "Alice Smith"

    with _db(tmp_path / "i.sqlite") as db:
        db.enroll("dave", [clips["bob"]])
        for mode in ("fail", "skip", "replace", "merge"):
            for dry_run in (True, False):
                with pytest.raises(SpeakerExistsError, match=r"'Dave' \(twin of 'dave'\); nothing was imported"):
                    db.import_gallery(tmp_path / "dave.gallery", on_conflict=mode, dry_run=dry_run)
        assert {s.name: s.n_utterances for s in db.list()} == {"dave": 1}
        with pytest.raises(
            SpeakerExistsError, match=r"1 speaker\(s\) .* twins .*: '(erin|Erin)' \(twin of '(Erin|erin)'\)"
        ):
            db.import_gallery(tmp_path / "erins.gallery")  # twins of one another in the file
        assert [s.name for s in db.list()] == ["dave"]
    with _db(tmp_path / "j.sqlite") as db:
        with legacy_twins():
            db.enroll("erin", [clips["alice"]])
            db.enroll("Erin", [clips["carol"]], new=True)
        summary = db.import_gallery(tmp_path / "erins.gallery", on_conflict="merge")  # each its own exact name
        assert summary.merged == ["erin", "Erin"] and summary.created == []


def test_the_policy_and_the_optouts_belong_to_a_gallery(tmp_path, clips):
    with _db(tmp_path / "t.sqlite") as db:
        db.create_gallery("acme")
        db.set_policy(require_consent=True, expire_after="1y")
        db.optout("alice")
        with db.for_gallery("acme") as acme:
            assert acme.policy().require_consent is False and acme.policy().expire_after == "never"
            acme.enroll("alice", [clips["alice"]])  # neither the consent rule nor the opt-out of default
            assert acme.optouts().count == 0 and acme.optout("alice").removed
            assert acme.optouts().count == 1
        assert db.optouts().count == 1
        with db.for_gallery("acme") as acme:
            acme.enroll("bob", [clips["bob"]])
        db.enroll("carol", [clips["carol"]], consent="form")
        assert db.expire_every_gallery()["default"].expired == []  # carol is new, acme keeps speakers
        with db.for_gallery("acme") as acme:
            acme.set_policy(expire_after="1s")
        time.sleep(1.1)
        done = db.expire_every_gallery()
        assert done["acme"].expired == ["bob"] and done["default"].expired == []
        db.remove_gallery("acme")  # its opt-outs go with it
        with db.store.read(every_gallery=True) as s:
            assert len(governance.optout_dates(s)) == 1


# ---- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def run(tmp_path, monkeypatch):
    import speakerdb.api

    monkeypatch.setattr(speakerdb.api, "load_embedder", lambda *a, **k: FakeEmbedder())
    runner = CliRunner()
    db_path = tmp_path / "cli.sqlite"
    with SpeakerDB(db_path, embedder=FakeEmbedder()):
        pass  # binds nothing; the CLI's first enroll binds the fake model

    def invoke(*args: object, code: int = 0):
        result = runner.invoke(cli, ["--db", str(db_path), "--model", "fake", *map(str, args)], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_an_optout_leaves_no_case_twin_or_shared_external_id_enrolled(tmp_path, clips, run):
    """`optout dave` removed `dave` only, then refused to enroll `Dave` (names compare folded)
    while leaving `Dave` enrolled and named by identify. Whoever an opt-out refuses to enroll
    must not stay enrolled: naming several speakers, it writes nothing and says which, through
    the API and the CLI alike (exit 1, conflict); once the others are told apart it goes ahead."""
    with _db(tmp_path / "twins.sqlite") as db:
        db.enroll("dave", [clips["alice"]])
        with legacy_twins():
            db.enroll("Dave", [clips["alice2"]], new=True)
        db.enroll("bob", [clips["bob"]], external_id="C-7")
        db.enroll("Robert", [clips["carol"]], external_id="C-7", new=True)
        for name in ("dave", "Dave", "bob"):  # the exact name too: it says nothing of the twin
            with pytest.raises(ConflictError, match="names 2 enrolled speakers.*rename or remove") as e:
                db.optout(name)
            assert e.value.code == "conflict"
        assert db.optouts().count == 0 and len(db.list()) == 4
        db.rename("Dave", "Dave Jones")  # another person: told apart by name
        assert db.optout("dave").removed
        assert {s.name for s in db.list()} == {"Dave Jones", "bob", "Robert"}
        with pytest.raises(OptedOutError):
            db.enroll("Dave", [clips["alice2"]])
        db.remove("Robert")
        assert db.optout("bob").removed and [s.name for s in db.list()] == ["Dave Jones"]

    run("enroll", "erin", clips["alice"])
    with legacy_twins():
        run("enroll", "Erin", clips["alice2"], "--new")
    refused = run("optout", "erin", "--yes", "--json", code=1)
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "conflict" and "'Erin', 'erin'" in error["message"]
    assert [s["name"] for s in json.loads(run("list", "--json").stdout)] == ["Erin", "erin"]


def test_the_cli_refuses_a_twin_name_in_one_line_and_writes_nothing(tmp_path, clips, run):
    """As the library: enroll, rename and import that would make `dave` beside `Dave` (exit 1)."""
    run("enroll", "Dave", clips["alice"])
    run("enroll", "bob", clips["bob"])
    refused = run("enroll", "dave", clips["alice2"], code=1)
    assert [line for line in refused.stderr.splitlines() if not line.startswith("warning: ")] == [
        "Error: speaker 'dave' would be a twin of existing 'Dave' (names differ only in case or spacing); "
        "use 'Dave', or a name that tells another person apart; nothing written"
    ]
    error = json.loads(run("enroll", "DAVE", clips["alice2"], "--new", "--json", code=1).stdout)["error"]
    assert error["code"] == "speaker_exists" and "twin of existing 'Dave'" in error["message"]
    error = json.loads(run("rename", "bob", "dave", "--json", code=1).stdout)["error"]
    assert error["code"] == "speaker_exists" and "cannot rename 'bob'" in error["message"]
    with _db(tmp_path / "src.sqlite") as src:
        src.enroll("dave", [clips["carol"]])
        src.export(tmp_path / "dave.gallery")
    error = json.loads(run("import", tmp_path / "dave.gallery", "--on-conflict", "skip", "--json", code=1).stdout)
    assert error["error"]["code"] == "speaker_exists" and "'dave' (twin of 'Dave')" in error["error"]["message"]
    listed = json.loads(run("list", "--json").stdout)
    assert {s["name"]: s["n_utterances"] for s in listed} == {"Dave": 1, "bob": 1}
    # the two enrollments made, and nothing of the refused changes
    assert [(a["operation"], a["speaker"]) for a in json.loads(run("audit", "--json").stdout)] == [
        ("enroll", "Dave"),
        ("enroll", "bob"),
    ]


def test_an_optout_follows_back_a_rename_made_on_the_command_line(tmp_path, clips, run):
    """The scrub follows a person's earlier names back through the rename records, and a rename
    made with the CLI wrote none: `Alice S`, enrolled through the service and renamed on the
    command line, stayed in the audit after `Alice Smith` opted out. The rename is recorded as
    local:<user>, `speakerdb audit` shows it, and after the opt-out no table holds either name."""
    db_path = tmp_path / "cli.sqlite"
    with _db(db_path) as db, db.audited_as("ops"):
        db.enroll("Alice S", [clips["alice"]])  # as the service does, for key ops
    run("enroll", "bob", clips["bob"])
    run("rename", "Alice S", "Alice Smith")
    [*_, entry] = json.loads(run("audit", "--json").stdout)
    assert (entry["operation"], entry["speaker"], entry["detail"]) == ("rename", "Alice S", {"new": "Alice Smith"})
    assert entry["key_name"].startswith("local:") and entry["key_name"] == api.local_actor()
    assert f"{api.local_actor()}  rename      Alice S" in run("audit").stdout
    run("optout", "Alice Smith", "--yes")
    assert [s["name"] for s in json.loads(run("list", "--json").stdout)] == ["bob"]
    with contextlib.closing(sqlite3.connect(db_path)) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                held = [
                    v
                    for v in row
                    if (isinstance(v, str) and "Alice S" in v) or (isinstance(v, bytes) and b"Alice S" in v)
                ]
                assert not held, (table, row)
        operations = [r[0] for r in con.execute("SELECT operation FROM audit ORDER BY id")]
    assert operations == ["enroll", "enroll", "rename", "optout"]  # bob's enroll, local:<user>'s too


def test_keys_made_from_python_are_recorded_as_every_other_change_is(tmp_path):
    """create_key and revoke_key without an actor name who makes the change, as enroll does:
    local:<user> from a program, the key inside audited_as (as the service runs them)."""
    with _db(tmp_path / "keys.sqlite") as db:
        db.create_key("ops", "admin")
        with db.audited_as("ops"):
            db.create_key("reader", "read")
            db.revoke_key("reader")
        db.revoke_key("ops", actor="someone")
        assert [(e.key_name, e.operation) for e in db.audit()] == [
            (api.local_actor(), "key-create"),
            ("ops", "key-create"),
            ("ops", "key-revoke"),
            ("someone", "key-revoke"),
        ]


def test_every_change_made_on_the_command_line_is_in_the_audit_and_an_optout_scrubs_it(tmp_path, clips, run):
    """Only changes made through the service (and renames, governance records) were recorded:
    who enrolled, removed or imported whom on the command line, or moved the threshold, left no
    trace. Each is one record as local:<user>, with the service's operation and details; a
    refused enrollment leaves none; an opt-out scrubs the person's name from these records too."""
    me = api.local_actor()

    def trail() -> list[tuple[str, str, str | None, Any]]:
        return [
            (a["key_name"], a["operation"], a["speaker"], a["detail"])
            for a in json.loads(run("audit", "--json").stdout)
        ]

    def enrolled(n: int, new: bool = False) -> dict[str, Any]:
        return {"files": n, "new": new, "consent": False, "override_optout": False}

    run("enroll", "Alice Smith", clips["alice"], clips["alice2"])
    run("enroll", "bob", clips["bob"])
    before = trail()
    assert run("enroll", "bob", clips["carol"], "--new", code=1).stderr  # refused: nothing recorded
    assert trail() == before
    folders = tmp_path / "folders"
    for name, f0 in [("dora", 150.0), ("erin", 260.0)]:
        (folders / name).mkdir(parents=True)
        write(folders / name / "1.wav", voice(f0, 2.0, seed=3))
    run("enroll", "--each-folder", folders)
    run("threshold", "0.8")
    with _db(tmp_path / "src.sqlite") as src:
        src.enroll("carol", [clips["carol"]])
        src.export(tmp_path / "carol.gallery")
    run("import", tmp_path / "carol.gallery", "--dry-run")  # writes nothing: no record
    run("import", tmp_path / "carol.gallery")
    run("remove", "carol", "dora", "--yes")
    gallery = str(tmp_path / "carol.gallery")
    made = trail()
    assert made == [
        (me, "enroll", "Alice Smith", enrolled(2)),
        (me, "enroll", "bob", enrolled(1)),
        (me, "enroll", "dora", enrolled(1)),
        (me, "enroll", "erin", enrolled(1)),
        (me, "threshold", None, {"threshold": 0.8}),
        (me, "import", None, {"file": gallery, "on_conflict": "fail"}),
        (me, "remove", "carol", None),
        (me, "remove", "dora", None),
    ]
    assert f"{me}  remove      carol" in run("audit").stdout
    run("optout", "alice  smith", "--yes")
    after = trail()
    assert "Alice Smith" not in json.dumps(after)
    _, _, marker, detail = after[0]
    assert marker.startswith("opted-out:") and detail == enrolled(2)
    assert after[1:-1] == made[1:] and after[-1][:3] == (me, "optout", None)  # the others' records kept


def test_the_cli_sets_the_policy_enrolls_with_consent_shows_expires_and_opts_out(run, clips, monkeypatch):
    assert json.loads(run("policy", "--json").stdout)["require_consent"] is False
    out = run("policy", "--require-consent", "--expire-after", "180d").stdout
    assert "require consent: yes" in out and "expire after: 180d" in out
    refused = run("enroll", "alice", clips["alice"], "--json", code=1)
    assert json.loads(refused.stdout)["error"]["code"] == "consent_required"
    run("enroll", "alice", clips["alice"], "--consent", "verbal, call 2026-12-01", "--external-id", "C-1")
    run("enroll", "bob", clips["bob"], "--consent", "form F-2")
    shown = json.loads(run("show", "alice", "--json").stdout)
    assert shown["consent"]["text"] == "verbal, call 2026-12-01" and shown["last_seen"] is None
    assert shown["external_id_hash"] and "C-1" not in json.dumps(shown)
    assert shown["utterances"][0]["created_at"] and "audit" in shown
    assert "consent: verbal, call 2026-12-01" in run("show", "alice").stdout
    listed = json.loads(run("list", "--json").stdout)
    assert set(listed[0]).isdisjoint(SpeakerInfo.SHOW_ONLY)
    run("identify", clips["alice2"], "--no-voice-check")
    assert json.loads(run("show", "alice", "--json").stdout)["last_seen"]  # written when the command closed

    later = datetime.utcnow() + timedelta(days=181)
    with monkeypatch.context() as m:  # the CLI at a simulated date
        m.setattr("speakerdb.storage.store.utcnow", lambda: later)
        assert json.loads(run("expire", "--dry-run", "--json").stdout)["expired"] == ["alice", "bob"]
        assert json.loads(run("policy", "--expire-after", "never", "--json").stdout)["expire_after"] == "never"
        assert "nothing expires" in run("expire").stdout

    out = json.loads(run("optout", "bob", "--yes", "--json").stdout)
    assert out["removed"] and out["erasure"]["not_reachable"]
    assert any("copy-on-write" in line for line in out["erasure"]["not_reachable"])
    refused = run("enroll", "bob", clips["bob"], "--consent", "again", "--json", code=1)
    assert json.loads(refused.stdout)["error"]["code"] == "opted_out"
    listed = run("optout", "--list").stdout
    assert "1 opt-out(s)" in listed and "bob" not in listed
    run("enroll", "bob", clips["bob"], "--consent", "form F-3", "--override-optout")
    removed = json.loads(run("remove", "bob", "--yes", "--json").stdout)
    assert removed["erasure"]["erased"] and removed["utterances"] == 1


@pytest.mark.parametrize("duration", ["5x", "0s", "0d", "3", "999999y"])
def test_a_bad_expire_after_is_bad_usage(run, duration):
    """As an out-of-range threshold or calibrate --target far=2 are: exit 2, usage_error, one
    line, the policy unchanged (it was exit 1, invalid_input, from the library)."""
    result = run("policy", "--expire-after", duration, "--json", code=2)
    assert json.loads(result.stdout)["error"]["code"] == "usage_error"
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert f"'--expire-after': duration {duration!r}" in line
    assert json.loads(run("policy", "--json").stdout)["expire_after"] == "never"


# ---- PostgreSQL: the revision's columns and table on a server ---------------------------------------
def test_governance_on_postgres(pg_url, clips):
    clock = Clock()
    with SpeakerDB(pg_url, embedder=FakeEmbedder(), clock=clock) as db:
        db.set_policy(require_consent=True, expire_after="1y")
        db.enroll("alice", [clips["alice"]], consent="form", external_id="X-1")
        db.enroll("bob", [clips["bob"]], consent="form")
        clock.now += 2 * YEAR
        db.note_seen(["alice"])
        db.flush_seen()
        assert db.show("alice").last_seen == clock.now
        clock.now += YEAR / 2
        assert db.expire().expired == ["bob"]
        assert db.optout("alice").removed
        with pytest.raises(OptedOutError):
            db.enroll("carol", [clips["carol"]], consent="form", external_id="X-1")
        assert db.optouts().count == 1
        db.enroll("carol", [clips["carol"]], consent="form")
        assert "VACUUM FULL" in " ".join(db.erasure().erased)
    # Revision 0007 goes down and up again on the server (to the newest), keeping the speakers.
    assert api.downgrade_database(pg_url, "0006") == "0006"
    assert api.upgrade_database(pg_url) == schema.HEAD_REVISION  # 0007 and every later one
    with SpeakerDB(pg_url, embedder=FakeEmbedder()) as db:
        assert [s.name for s in db.list()] == ["carol"] and db.policy().expire_after == "never"


# ---- the service ----------------------------------------------------------------------------------
def test_the_service_enforces_the_policy_opts_out_and_expires_on_its_own(tmp_path, tiny_checkpoint, clips):
    from test_server import Server, _part

    db_path = tmp_path / "served.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        keys = {scope: db.create_key(f"k-{scope}", scope).key for scope in ("read", "write", "admin")}
        db.create_gallery("acme")
        with db.for_gallery("acme") as acme:
            acme_key = acme.create_key("acme-admin", "admin").key
    srv = Server(db_path, tiny_checkpoint, tmp_path / "server.log", "--expire-every", "0.5").start()
    try:
        status, _, doc = srv.call("PUT", "/v1/policy", key=keys["write"], body={"require_consent": True})
        assert status == 403
        status, _, doc = srv.call("PUT", "/v1/policy", key=keys["admin"], body={"require_consent": True})
        assert status == 200 and doc["require_consent"] is True
        assert srv.call("GET", "/v1/policy", key=keys["read"])[2]["require_consent"] is True
        acme_policy = srv.call("GET", "/v1/galleries/acme/policy", key=acme_key)[2]
        assert acme_policy["require_consent"] is False  # a gallery's policy is its own
        enroll = "/v1/speakers/alice/enrollments"
        status, _, doc = srv.call("POST", enroll, key=keys["write"], files=[_part(clips["alice"])])
        assert status == 422 and doc["error"]["code"] == "consent_required"
        fields = {"consent": "signed form 7", "external_id": "E-7"}
        status, _, doc = srv.call("POST", enroll, key=keys["write"], fields=fields, files=[_part(clips["alice"])])
        assert status == 201, doc
        shown = srv.call("GET", "/v1/speakers/alice", key=keys["read"])[2]
        assert shown["consent"]["text"] == "signed form 7" and shown["consent"]["recorded_by"] == "k-write"
        assert [a["operation"] for a in shown["audit"]] == ["enroll"]

        status, _, doc = srv.call("POST", "/v1/speakers/alice/optout", key=keys["write"], body={})
        assert status == 200 and doc["removed"] and doc["erasure"]["erased"]
        status, _, doc = srv.call("POST", enroll, key=keys["write"], fields=fields, files=[_part(clips["alice"])])
        assert status == 409 and doc["error"]["code"] == "opted_out"
        over = {**fields, "override_optout": "true"}
        assert srv.call("POST", enroll, key=keys["write"], fields=over, files=[_part(clips["alice"])])[0] == 403
        assert srv.call("GET", "/v1/optouts", key=keys["admin"])[2]["count"] == 1
        assert srv.call("GET", "/v1/galleries/acme/optouts", key=acme_key)[2]["count"] == 0
        status, _, doc = srv.call("POST", enroll, key=keys["admin"], fields=over, files=[_part(clips["alice"])])
        assert status == 201, doc

        # Retention: the background task (every 0.5 s here, once a day by default) expires alice.
        status, _, doc = srv.call("POST", "/v1/expire", key=keys["admin"], body={"dry_run": True})
        assert status == 200 and doc["cutoff"] is None  # no retention policy yet
        srv.call("PUT", "/v1/policy", key=keys["admin"], body={"expire_after": "2s"})
        deadline = time.monotonic() + 30
        while srv.call("GET", "/v1/speakers", key=keys["read"])[2] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert srv.call("GET", "/v1/speakers", key=keys["read"])[2] == []
        audit = srv.call("GET", "/v1/audit", key=keys["admin"])[2]
        assert [a["speaker"] for a in audit if a["operation"] == "expire"] == ["alice"]
        # the service's own run, not the operating-system user that started it
        assert [a["key_name"] for a in audit if a["operation"] == "expire"] == [None]
    finally:
        srv.stop()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_the_service_log_names_routes_never_speakers_or_their_files(tmp_path, tiny_checkpoint, clips):
    """uvicorn's access log wrote each request's path and query (`DELETE /v1/speakers/Alice%20Smith`,
    `GET /v1/audit?speaker=...`): a name that the opt-out scrubs from the audit stayed in the
    operator's log. The service logs the route's template, the status, the key and the gallery."""
    from test_server import Server

    db_path = tmp_path / "logged.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        admin = db.create_key("k-admin", "admin").key
    log = tmp_path / "server.log"
    srv = Server(db_path, tiny_checkpoint, log, "--log-level", "info").start()  # info: serve's default
    try:
        upload = ("files", "zelda-quist-call.wav", clips["alice"].read_bytes())
        assert srv.call("POST", "/v1/speakers/Zelda%20Quist/enrollments", key=admin, files=[upload])[0] == 201
        assert srv.call("GET", "/v1/speakers/Zelda%20Quist", key=admin)[0] == 200
        assert srv.call("PATCH", "/v1/speakers/Zelda%20Quist", key=admin, body={"name": "Zelda Q"})[0] == 200
        assert srv.call("GET", "/v1/audit?speaker=Zelda%20Q&limit=5", key=admin)[0] == 200
        assert srv.call("GET", "/v1/gallery?speaker=Zelda%20Q", key=admin)[0] == 200
        assert srv.call("POST", "/v1/speakers/Zelda%20Q/optout", key=admin, body={})[0] == 200
        assert srv.call("DELETE", "/v1/speakers/Zelda%20Quist", key=admin)[0] == 404
        assert srv.call("GET", "/v1/speakerz/Zelda%20Quist", key=admin)[0] == 404  # no such route
        # Refused before any route runs (an upload's key is checked before its body is read).
        bad = "sdb_nokey_secret"
        assert srv.call("POST", "/v1/speakers/Zelda%20Quist/verify", key=bad, files=[upload])[0] == 401
    finally:
        srv.stop()
    text = log.read_text()
    assert "zelda" not in text.lower() and "quist" not in text.lower(), text
    assert '"POST /v1/speakers/{name}/enrollments" 201' in text, text
    assert '"POST /v1/speakers/{name}/optout" 200' in text and "key=k-admin gallery=default" in text, text
    assert '"DELETE /v1/speakers/{name}" 404' in text and '"GET /v1/audit" 200' in text, text
    assert '"GET /v1/{name}/{name}" 404' in text, text
    assert '"POST /v1/speakers/{name}/verify" 401' in text and "key=- gallery=default" in text, text
    assert admin.split("_")[-1] not in text  # never the key's secret


def test_the_service_leaves_library_warnings_that_name_someone_out_of_its_log(capsys):
    """A file's name ("holds 2 voices"), an enrolled speaker's (a cohort recording set aside, a
    removal on PostgreSQL): the caller's answer says it; the operator's log must not keep it."""
    import logging.config

    from speakerdb.config import NAMES_SOMEONE
    from speakerdb.service.serve import log_config

    loggers = [logging.getLogger(name) for name in ("speakerdb", "speakerdb.access")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        logging.config.dictConfig(log_config("info"))
        logging.getLogger("speakerdb.api").warning("zelda-call.wav holds 2 voices", extra=NAMES_SOMEONE)
        logging.getLogger("speakerdb.storage").warning("index damaged: rebuilding it")
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate
    err = capsys.readouterr().err
    assert "index damaged" in err and "zelda" not in err


def test_the_service_refuses_an_optout_naming_case_twins_and_a_new_twin_with_409(tmp_path, tiny_checkpoint, clips):
    """As the API and the CLI do: `dave` and `Dave` enrolled (a database made before twins were
    refused), an opt-out of `dave` writes nothing; enrolling, renaming or importing a third
    spelling is refused (409 speaker_exists, SpeakerExistsError from the client), enrolling into
    `Dave` still works, and a rename through the service keeps its caller as the actor."""
    from speakerdb.client import Client
    from test_server import Server, _part

    db_path = tmp_path / "twins.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        db.enroll("dave", [clips["alice"]])
        with legacy_twins():
            db.enroll("Dave", [clips["alice2"]], new=True)
        db.enroll("bob", [clips["bob"]])
    with SpeakerDB(tmp_path / "src.sqlite", model=str(tiny_checkpoint)) as src:
        src.enroll("DAVE", [clips["carol"]])
        src.export(tmp_path / "dave.gallery")
    srv = Server(db_path, tiny_checkpoint, tmp_path / "server.log").start()
    try:
        status, _, doc = srv.call("POST", "/v1/speakers/dave/optout", body={})
        assert status == 409 and doc["error"]["code"] == "conflict", doc
        assert "'Dave', 'dave'" in doc["error"]["message"]
        status, _, doc = srv.call("POST", "/v1/speakers/dAVE/enrollments", files=[_part(clips["carol"])])
        assert status == 409 and doc["error"]["code"] == "speaker_exists", doc
        assert "'dAVE' would be a twin of existing 'Dave'" in doc["error"]["message"]
        status, _, doc = srv.call("PATCH", "/v1/speakers/bob", body={"name": "DAVE"})
        assert status == 409 and doc["error"]["code"] == "speaker_exists", doc
        client = Client(srv.url, retries=0)
        with pytest.raises(SpeakerExistsError, match="twin of existing 'Dave'"):
            client.enroll("dAVE", [clips["carol"]], new=True)
        with pytest.raises(SpeakerExistsError, match="cannot rename 'bob'"):
            client.rename("bob", "dAVE")
        with pytest.raises(SpeakerExistsError, match=r"'DAVE' \(twin of 'Dave'\)"):
            client.import_gallery(tmp_path / "dave.gallery", on_conflict="merge")
        assert {s.name: s.n_utterances for s in client.list()} == {"Dave": 1, "bob": 1, "dave": 1}
        assert client.enroll("Dave", [clips["carol"]]).n_utterances == 2  # the exact name of a twin
        client.rename("bob", "Robert")
        me = api.local_actor()  # the three enrollments made before the service, then only what it did
        assert [(a["key_name"], a["operation"], a["speaker"]) for a in srv.call("GET", "/v1/audit")[2]] == [
            (me, "enroll", "dave"),
            (me, "enroll", "Dave"),
            (me, "enroll", "bob"),
            (None, "enroll", "Dave"),
            (None, "rename", "bob"),
        ]
        assert srv.call("GET", "/v1/optouts")[2]["count"] == 0
    finally:
        srv.stop()


def test_a_speaker_may_not_be_named_a_path_step(tmp_path, clips, run):
    """`.` and `..` are valid text, but a URL reads them as path steps (`/v1/speakers/..` is
    `/v1/`): the service and the web page could never open, rename or remove such a speaker.
    Enroll, rename and import refuse to create one, nothing written; one already held (made
    before this) can still be renamed away and removed."""
    with _db(tmp_path / "t.sqlite") as db:
        db.enroll("bob", [clips["bob"]])
        for name in (".", ".."):
            with pytest.raises(InvalidInputError, match=rf"speaker name '{name}' cannot be used: a URL reads it"):
                db.enroll(name, [clips["alice"]])
            with pytest.raises(InvalidInputError, match="path step"):
                db.rename("bob", name)
        assert [s.name for s in db.list()] == ["bob"]
        assert [(a.operation, a.speaker) for a in db.audit()] == [("enroll", "bob")]  # nothing of the refusals
        with pytest.MonkeyPatch.context() as mp:  # what a database made before this may hold
            mp.setattr(api.store, "check_new_name", lambda name: None)
            db.enroll("..", [clips["alice"]])
            db.export(tmp_path / "dots.gallery", [".."])
        assert db.enroll("..", [clips["alice2"]]).n_utterances == 2  # adding to it is not creating it
        db.rename("..", "Alice")
        assert [s.name for s in db.list()] == ["Alice", "bob"]
    with _db(tmp_path / "i.sqlite") as db:
        with pytest.raises(InvalidInputError, match=r"dots.gallery: speaker name '\.\.' cannot be used.*nothing was"):
            db.import_gallery(tmp_path / "dots.gallery")
        assert db.list() == []
    refused = run("enroll", "..", clips["alice"], code=1)
    assert [line for line in refused.stderr.splitlines() if not line.startswith("warning: ")] == [
        "Error: speaker name '..' cannot be used: a URL reads it as a path step, so the service could not reach "
        "that speaker"
    ]
    assert json.loads(run("list", "--json").stdout) == []


# ---- the folded names' index (revision 0009) ------------------------------------------------------
def _folded_rows(target: str | Path) -> list[tuple[str, str, str | None]]:
    """(gallery, name, folded_name) of every speaker, read behind speakerdb's back."""
    engine, _ = migrate.engine_for(target)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT g.name, s.name, s.folded_name FROM speakers s JOIN galleries g ON g.id = s.gallery_id")
            ).all()
    finally:
        engine.dispose()
    return sorted((g, n, f) for g, n, f in rows)


def test_the_upgrade_to_0009_fills_the_folded_names_of_a_database_that_holds_twins(target, clips):
    """Finding a name's twins read and folded every name in Python, twice per enrollment (100 ms
    at 100,000 speakers). Revision 0009 keeps the folded name in an indexed column: a database
    upgraded to it (twins made before they were refused included, so the index is not unique)
    has it filled for every row, and refuses twins and names them to an opt-out as before."""
    with _db(target) as db:
        db.enroll("Dave", [clips["alice"]])
        with legacy_twins():
            db.enroll("dave", [clips["alice2"]], new=True)
        db.enroll("Alice  Smith", [clips["carol"]])
        db.enroll("Ｊｏｓé", [clips["bob"]])  # full-width letters: NFKC makes them plain
        db.create_gallery("acme")
        with db.for_gallery("acme") as acme:
            acme.enroll("DAVE", [clips["bob"]])
    assert api.downgrade_database(target, "0008") == "0008"
    engine, _ = migrate.engine_for(target)
    try:
        assert "folded_name" not in {c["name"] for c in sa_inspect(engine).get_columns("speakers")}
    finally:
        engine.dispose()
    assert api.upgrade_database(target) == schema.HEAD_REVISION
    assert _folded_rows(target) == [
        ("acme", "DAVE", "dave"),
        ("default", "Alice  Smith", "alice smith"),
        ("default", "Dave", "dave"),
        ("default", "dave", "dave"),
        ("default", "Ｊｏｓé", "josé"),
    ]
    engine, _ = migrate.engine_for(target)
    try:
        indexes = {i["name"]: i for i in sa_inspect(engine).get_indexes("speakers")}
    finally:
        engine.dispose()
    index = indexes["ix_speakers_gallery_id_folded_name"]
    assert index["column_names"] == ["gallery_id", "folded_name"] and not index["unique"]
    with _db(target) as db:
        with pytest.raises(SpeakerExistsError, match="'ALICE SMITH' would be a twin of existing 'Alice  Smith'"):
            db.enroll("ALICE SMITH", [clips["alice2"]], new=True)
        with pytest.raises(SpeakerExistsError, match="'JOSÉ' would be a twin of existing 'Ｊｏｓé'"):
            db.rename("Alice  Smith", "JOSÉ")
        with pytest.raises(ConflictError, match="names 2 enrolled speakers"):
            db.optout("DAVE")
        with db.for_gallery("acme") as acme:  # each gallery's own twins
            with pytest.raises(SpeakerExistsError, match="twin of existing 'DAVE'"):
                acme.enroll("dave", [clips["alice2"]])
            acme.enroll("Alice Smith", [clips["alice2"]])


def _audit_indexes(target: str | Path) -> dict[str, list[str]]:
    """The audit table's indexes and their columns, read behind speakerdb's back."""
    engine, _ = migrate.engine_for(target)
    try:
        return {i["name"]: i["column_names"] for i in sa_inspect(engine).get_indexes("audit")}
    finally:
        engine.dispose()


def test_the_upgrade_to_0010_indexes_the_audit_and_the_downgrade_to_0009_drops_the_indexes(target, clips):
    """Revision 0010 adds the indexes `show` finds a speaker's audit records by (speaker, and
    operation for the renames), on SQLite and PostgreSQL; the model declares them as the
    revisions make them; its downgrade drops them and nothing else; the records are the same
    after the way down and up."""
    with _db(target) as db:
        with db.audited_as("ops"):
            db.enroll("dave", [clips["bob"]])
            db.rename("dave", "Dave")
        before = [a.to_dict() for a in db.show("Dave").audit]
    assert len(before) == 2
    ours = {"ix_audit_gallery_id_speaker_id": ["gallery_id", "speaker", "id"]}
    ours["ix_audit_gallery_id_operation"] = ["gallery_id", "operation"]
    at_head = _audit_indexes(target)
    assert {k: v for k, v in at_head.items() if k in ours} == ours
    assert api.downgrade_database(target, "0009") == "0009"
    assert _audit_indexes(target) == {k: v for k, v in at_head.items() if k not in ours}
    assert api.upgrade_database(target) == schema.HEAD_REVISION == "0010"
    assert _audit_indexes(target) == at_head
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine, _ = migrate.engine_for(target)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    finally:
        engine.dispose()
    with _db(target) as db:
        assert [a.to_dict() for a in db.show("Dave").audit] == before


def _statements_on_speakers(db: SpeakerDB, call) -> list[tuple[str, Any]]:
    """The statements ``call(session)`` runs that read the speakers table, in a read session of
    ``db``'s gallery."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "speakers" in statement:
            seen.append((statement, parameters))

    event.listen(db.store.engine, "before_cursor_execute", record)
    try:
        with db.store.read() as s:
            call(s)
    finally:
        event.remove(db.store.engine, "before_cursor_execute", record)
    return seen


def _refused(call) -> str:
    """The message of the SpeakerExistsError ``call()`` raises."""
    with pytest.raises(SpeakerExistsError) as e:
        call()
    return str(e.value)


def test_finding_twins_reads_the_rows_of_the_folded_name_only(tmp_path, clips):
    """``names_folding_as`` (enroll and rename's twin check, before the model and again under the
    write lock), the opt-out's ``speakers_of_person`` and an import's twin check each read every
    name of the gallery and folded it in Python. Each statement they run now searches the index
    on (gallery, folded name) and returns the matching rows only."""
    path = tmp_path / "many.sqlite"
    with _db(path) as db:
        db.enroll("Dave", [clips["alice"]])
        with legacy_twins():
            db.enroll("dave", [clips["alice2"]], new=True)
        db.enroll("bob", [clips["bob"]])
        db.create_gallery("acme")
        with db.for_gallery("acme") as acme:
            acme.enroll("DAVE", [clips["carol"]])
        with db.store.write() as s:  # 300 more speakers, bulk-inserted as scripts/kit.py does
            centroid = _centroid(path, "bob")
            now = store.utcnow()
            rows = [
                {"name": f"person {i}", "created_at": now, "updated_at": now, "meta": {}, "centroid": centroid}
                for i in range(300)
            ]
            s.execute(insert(store.Speaker), rows)
        calls = {
            "names_folding_as": lambda s: governance.names_folding_as(s, "DAVE"),
            "twin_of": lambda s: governance.twin_of(s, "dAvE"),
            "speakers_of_person": lambda s: governance.speakers_of_person(s, "dave", None),
            "import": lambda s: _refused(lambda: gallery._refuse_twins(s, ["zed", "Person  7"], "x.gallery")),
        }
        answers = {"names_folding_as": 2, "twin_of": 2, "speakers_of_person": 2, "import": 1}
        with db.store.read() as s:
            assert governance.names_folding_as(s, "DAVE") == ["Dave", "dave"]
            assert "'Person  7' (twin of 'person 7')" in calls["import"](s)
        con = sqlite3.connect(path)
        try:
            for what, call in calls.items():
                statements = _statements_on_speakers(db, call)
                assert statements, what
                for statement, parameters in statements:
                    plan = " ".join(r[-1] for r in con.execute(f"EXPLAIN QUERY PLAN {statement}", parameters))
                    assert "ix_speakers_gallery_id_folded_name" in plan and "SCAN speakers" not in plan, (what, plan)
                    assert len(con.execute(statement, parameters).fetchall()) == answers[what], what
        finally:
            con.close()


def test_the_folded_name_follows_every_path_that_names_a_speaker(tmp_path, clips):
    """Enroll, rename (a new name, a change of case), a gallery import, a bulk insert that leaves
    the column out, and ``db copy``, which folds each name on arrival rather than copy the column."""
    path = tmp_path / "a.sqlite"
    with _db(path) as db:
        db.enroll("Dave", [clips["alice"]])
        db.enroll("bob", [clips["bob"]])
        db.rename("Dave", "Dave  Jones")
        db.rename("bob", "BOB")
        db.export(tmp_path / "all.gallery")
        with db.store.write() as s:
            now = store.utcnow()
            row = {
                "name": "Ｃarol",
                "created_at": now,
                "updated_at": now,
                "meta": {},
                "centroid": _centroid(path, "BOB"),
            }
            s.execute(insert(store.Speaker), [row])
    assert _folded_rows(path) == [
        ("default", "BOB", "bob"),
        ("default", "Dave  Jones", "dave jones"),
        ("default", "Ｃarol", "carol"),
    ]
    with _db(tmp_path / "b.sqlite") as db:
        db.import_gallery(tmp_path / "all.gallery")
        with pytest.raises(SpeakerExistsError, match="twin of existing 'Dave  Jones'"):
            db.enroll("dave jones", [clips["carol"]])
    assert _folded_rows(tmp_path / "b.sqlite") == [("default", "BOB", "bob"), ("default", "Dave  Jones", "dave jones")]
    with contextlib.closing(sqlite3.connect(path)) as con:  # a wrong value in the source is not copied
        con.execute("UPDATE speakers SET folded_name = 'someone else' WHERE name = 'BOB'")
        con.commit()
    api.copy_database(path, tmp_path / "c.sqlite")
    assert _folded_rows(tmp_path / "c.sqlite") == [
        ("default", "BOB", "bob"),
        ("default", "Dave  Jones", "dave jones"),
        ("default", "Ｃarol", "carol"),
    ]


def test_a_name_folded_past_its_length_is_kept_whole_enough(tmp_path, clips):
    """NFKC makes U+FDFA 18 characters: the column keeps the first 200 of a fold (an index entry
    must fit a PostgreSQL page), and the lookup compares whole folds of the rows it finds."""
    long_name = "\ufdfa" * 200
    with _db(tmp_path / "l.sqlite") as db:
        db.enroll(long_name, [clips["alice"]])
        db.enroll("\ufdfa" * 199 + "x", [clips["bob"]])  # the same first 200 folded characters
        with db.store.read() as s:
            assert governance.names_folding_as(s, long_name) == [long_name]
            assert governance.twin_of(s, long_name) is None
    [(_, _, first), (_, _, second)] = _folded_rows(tmp_path / "l.sqlite")
    assert first == second and len(first) == 200


def test_the_folded_name_goes_with_the_speaker(tmp_path, clips):
    """The column is a copy of a person's name: remove, expire and opt-out leave no byte of it in
    the database file or its write-ahead log, as secure_delete does for the voiceprint."""
    clock = Clock()
    path = tmp_path / "e.sqlite"
    names = {"Zelda  QUIST": b"zelda quist", "Yorick PLUMB": b"yorick plumb", "Xavia DROOM": b"xavia droom"}

    def held(needle: bytes) -> bool:
        return any(f.exists() and needle in f.read_bytes() for f in (path, Path(f"{path}-wal")))

    with _db(path, clock) as db:
        for name, clip in zip(names, ("alice", "bob", "carol")):
            db.enroll(name, [clips[clip]])
        db.set_policy(expire_after="1y")
        clock.now += YEAR / 2
        db.note_seen(["Xavia DROOM"])
        db.flush_seen()
        for folded in names.values():
            assert held(folded)  # positive control: the folded copy is written
        db.remove("Zelda  QUIST")
        clock.now += 3 * YEAR / 4
        assert db.expire().expired == ["Yorick PLUMB"]
        assert db.optout("xavia  droom").removed
        assert db.list() == []
    for name, folded in names.items():
        assert not held(folded), name
    assert not held(b"Xavia DROOM")  # the expire record keeps Yorick's name, as it always did


def test_the_folded_name_goes_with_the_speaker_on_postgres(pg_admin, pg_url, clips):
    """After remove and `db vacuum` no table or index file holds the folded name either."""
    import psycopg

    from test_postgres import _data_files_holding

    with _db(pg_url) as db:
        db.enroll("Zelda  QUIST", [clips["alice"]])
        db.enroll("bob", [clips["bob"]])
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the rows reach the table and index files
        assert _data_files_holding(pg_admin, pg_url, [b"zelda quist"])  # positive control
        db.remove("Zelda  QUIST")
        db.vacuum()
        # The audit keeps who was enrolled and removed (only an opt-out scrubs it): no other file does.
        assert [(a.operation, a.speaker) for a in db.audit()][-1] == ("remove", "Zelda  QUIST")
    with psycopg.connect(pg_url) as conn:
        audit_files = {
            str(r[0])
            for r in conn.execute(
                "SELECT pg_relation_filenode(oid) FROM pg_class WHERE oid = 'audit'::regclass "
                "OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'audit'::regclass) "
                "OR oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'audit'::regclass)"
            )
        }
    assert _data_files_holding(pg_admin, pg_url, [b"zelda quist"]) == []
    assert set(_data_files_holding(pg_admin, pg_url, [b"Zelda  QUIST"])) <= audit_files


def test_db_vacuum_rewrites_a_sqlite_database(run, tmp_path, clips):
    """`db vacuum` on SQLite runs VACUUM outside a transaction (it failed with "cannot VACUUM
    from within a transaction" whatever the database) and leaves no free page behind."""
    run("enroll", "alice", clips["alice"])
    run("enroll", "bob", clips["bob"])
    run("remove", "alice", "--yes")
    out = run("db", "vacuum", "--json")
    assert json.loads(out.output) == {"vacuumed": str(tmp_path / "cli.sqlite")}
    with contextlib.closing(sqlite3.connect(tmp_path / "cli.sqlite")) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert "bob" in run("list").output
