"""Reliability: deletion means deletion, hostile names, read-only and broken databases."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FakeEmbedder
from speakerdb import SpeakerDB
from speakerdb.audio import decode as audio
from speakerdb.errors import InvalidInputError
from speakerdb.storage import store


def _files(db: SpeakerDB) -> dict[str, bytes]:
    """Every file speakerdb keeps beside the database (index, lock, WAL, temporary files...)."""
    return {p.name: p.read_bytes() for p in db.db_path.parent.glob(f"{db.db_path.name}*") if p.is_file()}


def _vectors_of(db: SpeakerDB, name: str) -> list[bytes]:
    with db.store.read() as s:
        speaker = store.speaker_by_name(s, name)
        return [speaker.centroid] + [u.embedding for u in speaker.utterances]


def test_removed_embeddings_are_gone_from_every_file(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    fake_db.enroll("bob", voices["bob"][:3])
    secrets = _vectors_of(fake_db, "bob")
    fake_db.identify(voices["bob"][:1])  # make sure the index file holds bob too
    before = _files(fake_db)
    # Positive control: the search finds bob's vectors while he is enrolled.
    assert all(any(v in data for data in before.values()) for v in secrets)
    assert secrets[0] in before[fake_db.index_path.name]

    fake_db.remove("bob")
    after = _files(fake_db)
    for name, data in after.items():
        for v in secrets:
            assert v not in data, f"a removed embedding is still in {name}"
    assert after.get(f"{fake_db.db_path.name}-wal", b"") == b""  # truncated by the checkpoint
    alice = _vectors_of(fake_db, "alice")
    assert alice[0] in after[fake_db.index_path.name]


def test_replace_on_import_scrubs_the_old_embeddings(fake_db, voices, tmp_path):
    fake_db.enroll("bob", voices["bob"][:1])
    old = _vectors_of(fake_db, "bob")
    with SpeakerDB(tmp_path / "other.sqlite", embedder=FakeEmbedder()) as other:
        other.enroll("bob", voices["bob"][1:3])
        other.export(tmp_path / "bob.gallery")
    fake_db.import_gallery(tmp_path / "bob.gallery", on_conflict="replace")
    for name, data in _files(fake_db).items():
        assert all(v not in data for v in old), name


# ---- names ---------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=0, max_size=250))
def test_any_name_is_refused_cleanly_or_round_trips_exactly(tmp_path_factory, name):
    db_dir = tmp_path_factory.mktemp("names")
    clip = audio.Audio("take", audio.prepare(np.sin(np.arange(16000) / 7).astype(np.float32), 16000))
    with SpeakerDB(db_dir / "n.sqlite", embedder=FakeEmbedder()) as db:
        try:
            store.validate_name(name)
        except InvalidInputError:
            with pytest.raises(InvalidInputError):
                db.enroll(name, [clip])
            assert db.list() == []
            return
        db.enroll(name, [clip])
        assert [s.name for s in db.list()] == [name]
        assert db.show(name).name == name
        assert db.identify([clip])[0].speaker == name
        db.rename(name, "renamed")
        db.rename("renamed", name)
        db.remove(name)
        assert db.list() == []


@pytest.mark.parametrize(
    "name",
    ["x" * 10_000, "a\nb", "a\rb", "\x1b[31mred", "../../etc/passwd", "C:\\\\evil", "a\u0085b", " ", "\t"],
)
def test_hostile_names_are_refused(fake_db, voices, name):
    with pytest.raises(InvalidInputError):
        fake_db.enroll(name, voices["alice"][:1])
    assert fake_db.list() == []


@pytest.mark.parametrize("name", ["'; DROP TABLE speakers; --", "Zoë Ångström", "李小龍", "O'Brien", "a%b_c", "🙂"])
def test_unusual_but_valid_names_work(fake_db, voices, name):
    fake_db.enroll(name, voices["alice"][:1])
    assert [s.name for s in fake_db.list()] == [name]
    fake_db.remove(name)


# ---- databases that cannot be written or read -----------------------------------------------
def _without_dac_override() -> None:
    """In a child about to exec: drop the capabilities that let root ignore file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def _run_cli(args, cwd, honour_permissions=False):
    """Run the speakerdb CLI in a subprocess; with honour_permissions, even root obeys chmod."""
    preexec = _without_dac_override if honour_permissions and os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "speakerdb", *args], cwd=cwd, capture_output=True, text=True, preexec_fn=preexec
    )


def _permissions_can_be_enforced(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0o444)
    preexec = _without_dac_override if os.geteuid() == 0 else None
    out = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'a')"], capture_output=True, preexec_fn=preexec)
    probe.chmod(0o644)
    return out.returncode != 0


def test_read_only_database_reads_but_refuses_writes_cleanly(tmp_path, voices):
    if not _permissions_can_be_enforced(tmp_path):
        pytest.skip("this process cannot make a file read-only for itself (root without CAP_SETPCAP)")
    db_path = tmp_path / "ro.sqlite"
    with SpeakerDB(db_path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", voices["alice"][:1])
        db.identify(voices["alice"][:1])
    db_path.chmod(0o444)
    listed = _run_cli(["--db", str(db_path), "list", "--json"], tmp_path, honour_permissions=True)
    assert listed.returncode == 0, listed.stderr
    assert '"alice"' in listed.stdout
    renamed = _run_cli(["--db", str(db_path), "rename", "alice", "bob"], tmp_path, honour_permissions=True)
    assert renamed.returncode == 1, renamed.stderr
    assert "read-only" in renamed.stderr and "Traceback" not in renamed.stderr
    assert renamed.stderr.count("\n") == 1
    db_path.chmod(0o644)
    assert [s.name for s in SpeakerDB(db_path, embedder=FakeEmbedder()).list()] == ["alice"]


def test_corrupt_database_is_one_line(tmp_path):
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(20_000))
    result = _run_cli(["--db", str(path), "list"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_damaged_pages_inside_a_valid_header(tmp_path, voices):
    path = tmp_path / "damaged.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", voices["alice"][:2])
    store.Store(path).checkpoint()
    data = bytearray(path.read_bytes())
    data[16_384 * 2 : 16_384 * 2 + 200] = os.urandom(200)  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    result = _run_cli(["--db", str(path), "list"], tmp_path)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
