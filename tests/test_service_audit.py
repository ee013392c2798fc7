"""The service records who changed what through the facade (``SpeakerDB.audited_as``), not past it.

The facade knows each change's operation and details; the service only says whose request it
runs. Outside ``audited_as`` (the CLI, Python users) the same changes are recorded as
``local:<user>``'s, with the same operations and details.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from conftest import FakeEmbedder
from speakerdb import SpeakerDB, api
from speakerdb.errors import EnrollmentRefusedError, SpeakerExistsError
from speakerdb.storage import index as index_files
from speakerdb.storage import indexkeeper

SERVICE = Path(__file__).resolve().parent.parent / "speakerdb" / "service"


def _trail(db):
    return [(e.key_name, e.operation, e.speaker, e.detail) for e in db.audit(limit=100)]


def test_changes_made_for_a_caller_are_recorded_by_the_facade(fake_db, voices, tmp_path):
    alice = [str(p) for p in voices["alice"][:2]]
    with fake_db.audited_as("ops"):
        fake_db.enroll("alice", alice, new=True)
        fake_db.rename("alice", "alicia")
        fake_db.set_threshold(0.8)
        gallery = tmp_path / "g.gallery"
        fake_db.export(gallery)  # a read: nothing recorded
        fake_db.import_gallery(gallery, on_conflict="skip", dry_run=True)  # writes nothing: no record
        fake_db.import_gallery(gallery, on_conflict="merge")
    with fake_db.audited_as(None):  # a service that needs no key
        fake_db.remove("alicia")
    assert _trail(fake_db) == [
        ("ops", "enroll", "alice", {"files": 2, "new": True, "consent": False, "override_optout": False}),
        ("ops", "rename", "alice", {"new": "alicia"}),
        ("ops", "threshold", None, {"threshold": 0.8}),
        ("ops", "import", None, {"file": str(gallery), "on_conflict": "merge"}),
        (None, "remove", "alicia", None),
    ]


def test_a_change_made_outside_audited_as_is_local_and_one_that_fails_records_nothing(fake_db, voices, tmp_path):
    """Only the service's changes were recorded (and renames): who enrolled or removed whom on the
    command line or in Python was not. They are recorded as local:<user>, as the service records
    them; a refused change, or a dry run, still records nothing, wherever it is made."""
    me = api.local_actor()
    assert me.startswith("local:")
    fake_db.enroll("bob", [str(voices["bob"][0])])
    with fake_db.audited_as("ops"), pytest.raises(SpeakerExistsError):
        fake_db.enroll("bob", [str(voices["bob"][1])], new=True)
    with pytest.raises(SpeakerExistsError):
        fake_db.enroll("bob", [str(voices["bob"][1])], new=True)
    fake_db.rename("bob", "robert")
    fake_db.enroll("carol", [str(voices["carol"][0])])
    with pytest.raises(SpeakerExistsError):  # a rename that fails records nothing either
        fake_db.rename("robert", "carol")
    fake_db.set_threshold(0.8)
    fake_db.apply_threshold(0.7)  # calibrate --apply
    gallery = tmp_path / "g.gallery"
    fake_db.export(gallery, ["carol"])
    fake_db.remove("carol")
    fake_db.import_gallery(gallery, dry_run=True)
    fake_db.import_gallery(gallery)
    fake_db.identify([str(voices["carol"][1])])  # reads: nothing recorded
    fake_db.verify("carol", str(voices["carol"][1]))
    fake_db.list()
    fake_db.show("carol")
    assert _trail(fake_db) == [
        (me, "enroll", "bob", {"files": 1, "new": False, "consent": False, "override_optout": False}),
        (me, "rename", "bob", {"new": "robert"}),
        (me, "enroll", "carol", {"files": 1, "new": False, "consent": False, "override_optout": False}),
        (me, "threshold", None, {"threshold": 0.8}),
        (me, "threshold", None, {"threshold": 0.7}),
        (me, "remove", "carol", None),
        (me, "import", None, {"file": str(gallery), "on_conflict": "fail"}),
    ]


def test_the_service_calls_no_audit_function_past_the_facade():
    for path in sorted(SERVICE.glob("*.py")):
        text = path.read_text()
        assert "store.audited" not in text and "normalize_name" not in text, path.name


@pytest.mark.parametrize("key", ["ops", None], ids=["service", "local"])
def test_a_change_refused_after_the_index_was_rebuilt_and_saved_records_nothing(tmp_path, voices, monkeypatch, key):
    """Saving a rebuilt index prunes old change records in a write of its own, and the pending
    audit record joined that write: an enrollment refused after its voice check had rebuilt the
    index (`--strict`, a voice that matches another speaker) was recorded all the same."""
    path = tmp_path / "big.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", [str(voices["alice"][0])])
        db.enroll("bob", [str(voices["bob"][0])])
        index_path = db.index_path
    index_files.remove_files(index_path)
    monkeypatch.setattr(api, "VOICE_CHECK_WITHOUT_INDEX_UP_TO", 0)  # the index, as past 2,000 speakers
    monkeypatch.setattr(indexkeeper, "KEEP_CHANGES", 0)  # as past 10,000 changes: the save prunes
    with SpeakerDB(path, embedder=FakeEmbedder()) as db, db.audited_as(key) if key else contextlib.nullcontext():
        before = _trail(db)
        with pytest.raises(EnrollmentRefusedError, match="matches alice"):
            db.enroll("alicia", [str(voices["alice"][1])], strict=True)
        assert index_files.file_identity(index_path) is not None  # rebuilt and saved: the case at hand
        assert _trail(db) == before
        db.enroll("alicia", [str(voices["alice"][1])], new=True)
        assert [t[1:3] for t in _trail(db)] == [t[1:3] for t in before] + [("enroll", "alicia")]
