"""The service records who changed what through the facade (``SpeakerDB.audited_as``), not past it.

The facade knows each change's operation and details; the service only says whose request it
runs. Outside ``audited_as`` (the CLI, Python users) speaker changes are not recorded, as before,
except renames (as ``local:<user>``): an opt-out follows a person's names back through them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from speakerdb.errors import SpeakerExistsError

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


def test_a_change_that_fails_or_is_made_outside_audited_as_records_nothing_but_a_rename(fake_db, voices):
    """A rename made outside the service wrote no record, so an opt-out could not follow the
    person's earlier names back through it: it is recorded as local:<user>, and only it."""
    fake_db.enroll("bob", [str(voices["bob"][0])])  # the CLI's way: no record, as before
    with fake_db.audited_as("ops"), pytest.raises(SpeakerExistsError):
        fake_db.enroll("bob", [str(voices["bob"][1])], new=True)
    fake_db.rename("bob", "robert")
    fake_db.enroll("carol", [str(voices["carol"][0])])
    with pytest.raises(SpeakerExistsError):  # a rename that fails records nothing either
        fake_db.rename("robert", "carol")
    [(actor, *record)] = _trail(fake_db)
    assert record == ["rename", "bob", {"new": "robert"}] and actor.startswith("local:")


def test_the_service_calls_no_audit_function_past_the_facade():
    for path in sorted(SERVICE.glob("*.py")):
        text = path.read_text()
        assert "store.audited" not in text and "normalize_name" not in text, path.name
