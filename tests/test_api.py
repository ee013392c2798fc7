"""The SpeakerDB facade: enroll, identify, verify, list, show, rename, remove, info, index upkeep."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB
from speakerdb.audio import decode as audio
from speakerdb.errors import (
    AudioError,
    EmptyDatabaseError,
    InvalidInputError,
    ModelMismatchError,
    SpeakerExistsError,
    SpeakerNotFoundError,
)
from speakerdb.storage import store
from speakerdb.storage.index import SpeakerIndex


def _snapshot(db: SpeakerDB):
    """Everything in the database file that a failed operation must leave as it was."""
    con = sqlite3.connect(db.db_path)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("speakers", "utterances", "settings")
        }
    finally:
        con.close()


def test_enroll_creates_then_adds(fake_db, voices):
    first = fake_db.enroll("alice", voices["alice"][:1], metadata={"team": "red"})
    assert first.created and len(first.added) == 1 and first.n_utterances == 1
    second = fake_db.enroll("alice", voices["alice"][1:2], metadata={"site": "b"})
    assert not second.created and second.n_utterances == 2
    info = fake_db.show("alice")
    assert info.metadata == {"team": "red", "site": "b"}
    assert [u.source for u in info.utterances] == [str(p) for p in voices["alice"][:2]]
    assert info.total_duration_s == pytest.approx(4.0)


def test_centroid_is_normalised_mean_of_utterances(fake_db, voices):
    fake_db.enroll("alice", voices["alice"])
    vectors = FakeEmbedder().embed([audio.load(p).samples for p in voices["alice"]])
    mean = vectors.mean(axis=0)
    with fake_db.store.read() as s:
        from speakerdb.storage import store

        centroid = store.speaker_by_name(s, "alice").centroid_vector()
    np.testing.assert_allclose(centroid, mean / np.linalg.norm(mean), atol=1e-6)


def test_same_audio_twice_is_skipped_with_a_note(fake_db, voices, tmp_path):
    fake_db.enroll("alice", voices["alice"][:1])
    # Same samples in another container and under another name: still the same audio.
    same = write(tmp_path / "copy.flac", audio.load(voices["alice"][0]).samples, subtype="PCM_24")
    assert same.read_bytes() != voices["alice"][0].read_bytes()
    result = fake_db.enroll("alice", [same, voices["alice"][1]])
    assert [s.source for s in result.skipped] == [str(same)]
    assert "already enrolled" in result.skipped[0].reason
    assert [u.source for u in result.added] == [str(voices["alice"][1])]
    assert result.n_utterances == 2
    # Within one call, a repeated file is skipped too.
    again = fake_db.enroll("bob", [voices["bob"][0], voices["bob"][0]])
    assert len(again.added) == 1 and len(again.skipped) == 1


def test_new_refuses_an_existing_name(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:1])
    before = _snapshot(fake_db)
    with pytest.raises(SpeakerExistsError, match="alice"):
        fake_db.enroll("alice", voices["alice"][1:2], new=True)
    assert _snapshot(fake_db) == before


def test_identify_names_the_nearest_speaker_or_unknown(fake_db, voices):
    for name in ("alice", "bob", "carol"):
        fake_db.enroll(name, voices[name][:2])
    results = fake_db.identify([voices[n][2] for n in ("alice", "bob", "carol")], top_k=2)
    assert [r.speaker for r in results] == ["alice", "bob", "carol"]
    assert all(len(r.candidates) == 2 and r.score == r.candidates[0].score for r in results)
    strict = fake_db.identify([voices["alice"][2]], threshold=1.0)[0]
    assert strict.speaker is None and strict.candidates[0].speaker == "alice"
    assert fake_db.identify([voices["alice"][2]], top_k=50)[0].candidates.__len__() == 3


def test_identify_scores_equal_brute_force(fake_db, voices):
    for name in ("alice", "bob", "carol"):
        fake_db.enroll(name, voices[name][:2])
    query = audio.load(voices["bob"][2])
    [result] = fake_db.identify([query], top_k=3)
    q = FakeEmbedder().embed([query.samples])[0]
    expected = {}
    for name in ("alice", "bob", "carol"):
        v = FakeEmbedder().embed([audio.load(p).samples for p in voices[name][:2]]).mean(axis=0)
        expected[name] = float(q @ (v / np.linalg.norm(v)))
    assert [c.speaker for c in result.candidates] == sorted(expected, key=expected.get, reverse=True)
    for c in result.candidates:
        assert c.score == pytest.approx(expected[c.speaker], abs=1e-5)


def test_verify_accepts_and_rejects(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    fake_db.enroll("bob", voices["bob"][:2])
    yes = fake_db.verify("alice", voices["alice"][2])
    no = fake_db.verify("alice", voices["bob"][2])
    assert yes.accepted and not no.accepted and yes.score > no.score
    assert yes.threshold == 0.86
    with pytest.raises(SpeakerNotFoundError):
        fake_db.verify("zoe", voices["alice"][2])


def test_threshold_is_stored_per_database(fake_db, voices, tmp_path):
    assert fake_db.threshold == 0.86
    fake_db.set_threshold(0.5)
    with SpeakerDB(fake_db.db_path, embedder=FakeEmbedder()) as again:
        assert again.threshold == 0.5
    with SpeakerDB(tmp_path / "other.sqlite", embedder=FakeEmbedder()) as other:
        assert other.threshold == 0.86
    for bad in (1.5, -2, "high"):
        with pytest.raises(InvalidInputError):
            fake_db.set_threshold(bad)


def test_rename(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:1])
    fake_db.enroll("bob", voices["bob"][:1])
    fake_db.rename("alice", "alicia")
    assert [s.name for s in fake_db.list()] == ["alicia", "bob"]
    assert fake_db.identify([voices["alice"][0]])[0].speaker == "alicia"
    with pytest.raises(SpeakerExistsError):
        fake_db.rename("alicia", "bob")
    with pytest.raises(SpeakerNotFoundError):
        fake_db.rename("alice", "x")


def test_remove_leaves_nothing_of_the_speaker(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    fake_db.enroll("bob", voices["bob"][:2])
    with fake_db.store.read() as s:
        from speakerdb.storage import store

        bob_id = store.speaker_by_name(s, "bob").id
    fake_db.identify([voices["bob"][2]])  # the index file now holds bob
    assert bob_id in SpeakerIndex.load(fake_db.index_path).labels
    assert fake_db.remove("bob") == 2
    con = sqlite3.connect(fake_db.db_path)
    assert con.execute("SELECT count(*) FROM utterances WHERE speaker_id = ?", (bob_id,)).fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM speakers WHERE name = 'bob'").fetchone() == (0,)
    con.close()
    index = SpeakerIndex.load(fake_db.index_path)
    assert len(index) == 1
    assert bob_id not in set(index.search(np.ones((1, 32), np.float32), 5)[1].ravel())
    assert fake_db.identify([voices["bob"][2]])[0].candidates[0].speaker == "alice"
    with pytest.raises(SpeakerNotFoundError):
        fake_db.remove("bob")


def test_info_and_list(fake_db, voices):
    fake_db.enroll("bob", voices["bob"][:2])
    fake_db.enroll("alice", voices["alice"][:1])
    info = fake_db.info()
    assert (info.model_id, info.dim, info.n_speakers, info.n_utterances) == ("fake-spectral-v1", 32, 2, 3)
    assert info.db_path == str(fake_db.db_path) and info.index_path.endswith(".faiss")
    assert info.index_params["approximate_above"] == 200_000 and info.index_params["hnsw_m"] == 32
    assert [(s.name, s.n_utterances) for s in fake_db.list()] == [("alice", 1), ("bob", 2)]


def test_a_database_refuses_another_model(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:1])
    before = _snapshot(fake_db)
    with SpeakerDB(fake_db.db_path, embedder=FakeEmbedder("other-model")) as other:
        with pytest.raises(ModelMismatchError) as err:
            other.enroll("bob", voices["bob"][:1])
        assert "fake-spectral-v1" in str(err.value) and "other-model" in str(err.value)
        with pytest.raises(ModelMismatchError):
            other.identify(voices["alice"][:1])
    assert _snapshot(fake_db) == before


def test_bad_audio_writes_nothing(fake_db, voices, tmp_path):
    fake_db.enroll("alice", voices["alice"][:1])
    before = _snapshot(fake_db)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    short = write(tmp_path / "short.wav", voice(100, 0.1))
    for files in ([voices["alice"][1], bad], [short], [tmp_path / "missing.wav"]):
        with pytest.raises(AudioError):
            fake_db.enroll("alice", files)
        with pytest.raises(AudioError):
            fake_db.enroll("newcomer", files)
    assert _snapshot(fake_db) == before


@pytest.mark.parametrize("name", ["", " alice", "al/ice", "a\\b", "tab\there", "x" * 201, "nul\x00"])
def test_bad_names_are_refused(fake_db, voices, name):
    with pytest.raises(InvalidInputError):
        fake_db.enroll(name, voices["alice"][:1])
    assert fake_db.list() == []


def test_sql_looking_names_are_just_names(fake_db, voices):
    name = "Robert'); DROP TABLE speakers;--"
    fake_db.enroll(name, voices["bob"][:1])
    assert [s.name for s in fake_db.list()] == [name]


def test_identify_on_empty_database(fake_db, voices):
    with pytest.raises(EmptyDatabaseError, match="speakerdb enroll"):
        fake_db.identify(voices["alice"][:1])


@pytest.mark.parametrize("damage", ["missing", "stale", "corrupt"])
def test_index_is_rebuilt_from_the_store(fake_db, voices, damage):
    for name in ("alice", "bob", "carol"):
        fake_db.enroll(name, voices[name][:2])
    expected = [r.candidates for r in fake_db.identify([voices["carol"][2]])]
    if damage == "missing":
        fake_db.index_path.unlink()
    elif damage == "stale":
        SpeakerIndex.build(np.array([999]), np.ones((1, 32), np.float32) / np.sqrt(32), 32, 1).save(fake_db.index_path)
    else:
        fake_db.index_path.write_bytes(b"junk")
    with SpeakerDB(fake_db.db_path, embedder=FakeEmbedder()) as fresh:
        assert [r.candidates for r in fresh.identify([voices["carol"][2]])] == expected
    rebuilt = SpeakerIndex.load(fake_db.index_path)
    with fake_db.store.read() as s:  # the database's generation: info's is the gallery's own count
        assert len(rebuilt) == 3 and rebuilt.generation == store.generation(s)


def test_index_follows_writes_from_another_process(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    assert fake_db.identify([voices["bob"][2]])[0].candidates[0].speaker == "alice"
    with SpeakerDB(fake_db.db_path, embedder=FakeEmbedder()) as other:
        other.enroll("bob", voices["bob"][:2])
    # fake_db's in-memory index is one generation behind: it must notice.
    assert fake_db.identify([voices["bob"][2]])[0].speaker == "bob"


def test_arrays_can_be_enrolled_from_python(fake_db):
    clip = audio.Audio("mic-take-1", audio.prepare(voice(150, 1.0, sr=44_100), 44_100))
    result = fake_db.enroll("dora", [clip])
    assert result.added[0].source == "mic-take-1"
    assert result.added[0].duration_s == pytest.approx(1.0, abs=1e-3)


def test_clean_enrollment_has_no_warnings(fake_db, voices):
    assert fake_db.enroll("alice", voices["alice"]).warnings == []


def test_little_speech_is_flagged(fake_db, voices, tmp_path):
    # 0.6 s of voice in 4 s of faint room noise.
    x = np.concatenate([voice(210, 0.6), np.zeros(int(3.4 * 16000), np.float32)])
    x += 0.0005 * np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)
    mostly_silent = write(tmp_path / "mostly-silent.wav", x)
    result = fake_db.enroll("alice", [voices["alice"][0], mostly_silent])
    [warning] = [w for w in result.warnings if "speech" in w.reason]
    assert warning.source == str(mostly_silent) and "0.6 s of speech" in warning.reason
    assert audio.active_seconds(audio.load(voices["alice"][0]).samples) == pytest.approx(2.0, abs=0.05)


def test_a_different_voice_is_flagged(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    result = fake_db.enroll("alice", [voices["alice"][2], voices["bob"][0]])
    assert [w.source for w in result.warnings] == [str(voices["bob"][0])]
    assert "far from alice's other clips" in result.warnings[0].reason and result.n_utterances == 4


def test_strict_refuses_and_writes_nothing(fake_db, voices):
    from speakerdb.errors import EnrollmentRefusedError

    fake_db.enroll("alice", voices["alice"][:2])
    before = _snapshot(fake_db)
    with pytest.raises(EnrollmentRefusedError, match=str(voices["carol"][0])):
        fake_db.enroll("alice", [voices["carol"][0]], strict=True)
    assert _snapshot(fake_db) == before
    assert fake_db.enroll("alice", voices["alice"][2:], strict=True).warnings == []


def test_index_params_are_stored_and_ef_search_applies_without_a_rebuild(fake_db, voices):
    fake_db.enroll("alice", voices["alice"][:2])
    fake_db.identify([voices["alice"][2]])  # writes the index file
    assert fake_db.index_params["hnsw_ef_search"] == 2048  # the default stored at creation
    mtime = fake_db.index_path.stat().st_mtime_ns
    params = fake_db.set_index_params(hnsw_ef_search=64, approximate_above=10)
    assert params["hnsw_ef_search"] == 64 and params["approximate_above"] == 10
    # Another process (a second SpeakerDB on the same file) sees both at once...
    with SpeakerDB(fake_db.db_path, embedder=fake_db.embedder) as other:
        assert other.index_params == params
        index = other.indexer.current()
        assert index.params["hnsw_ef_search"] == 64
        assert index.kind == "flat"  # ...but the build-time ones only from the next rebuild
    assert fake_db.index_path.stat().st_mtime_ns == mtime
    assert fake_db.index_file_info()["built_with"]["approximate_above"] == 200_000
    fake_db.rebuild_index()
    assert fake_db.index_file_info()["built_with"]["approximate_above"] == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"hnsw_ef": 5},
        {"hnsw_ef_search": 0},
        {"approximate_above": -1},
        {"hnsw_m": 2.5},
        {"hnsw_m": True},
        {"hnsw_m": 1},
    ],
)
def test_bad_index_params_are_refused_and_nothing_is_written(fake_db, bad):
    before = fake_db.index_params
    with pytest.raises(InvalidInputError):
        fake_db.set_index_params(**bad)
    assert fake_db.index_params == before


def test_identify_answers_every_file_even_when_some_fail(fake_db, voices, tmp_path):
    fake_db.enroll("alice", voices["alice"][:1])
    short = write(tmp_path / "short.wav", voice(100, 0.1))
    files = [voices["alice"][0], tmp_path / "missing.wav", short, voices["bob"][0]]
    results = fake_db.identify(files)
    assert [r.file for r in results] == [str(f) for f in files]
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].speaker == "alice" and results[3].candidates
    assert "no such file" in results[1].error and "too short" in results[2].error
    assert results[1].to_dict() == {"file": str(files[1]), "error": results[1].error}
    assert results[1].speaker is None and results[1].score is None and results[1].candidates == []
    assert set(results[0].to_dict()) == {"file", "speaker", "score", "raw_score", "candidates", "voices"}


@pytest.mark.parametrize(
    "name, why",
    [
        ("alice\u200b", "invisible"),  # zero-width space
        ("\ufeffalice", "invisible"),  # byte-order mark
        ("\u202egnp.exe", "invisible"),  # right-to-left override
        ("a\u2028b", "line separator"),
        ("a\u2029b", "paragraph separator"),
        ("b\ud800ob", "surrogate"),  # what invalid UTF-8 becomes in Python
        ("b\udcffob", "surrogate"),
        ("a\ue000", "private-use"),
    ],
)
def test_look_alike_and_invalid_names_are_refused(fake_db, voices, name, why):
    with pytest.raises(InvalidInputError, match=why):
        fake_db.enroll(name, voices["alice"][:1])
    assert fake_db.list() == []


def test_names_compare_in_nfc(fake_db, voices):
    nfd, nfc = "Jose\u0301", "Jos\u00e9"
    created = fake_db.enroll(nfd, voices["alice"][:1])
    assert created.speaker == nfc and created.created
    again = fake_db.enroll(nfc, voices["alice"][1:2])
    assert not again.created and again.n_utterances == 2
    assert [s.name for s in fake_db.list()] == [nfc]
    assert fake_db.show(nfd).name == nfc and fake_db.verify(nfd, voices["alice"][0]).speaker == nfc
    fake_db.rename(nfd, "Zo\u0308e")
    assert [s.name for s in fake_db.list()] == ["Z\u00f6e"]


@pytest.mark.parametrize(
    "metadata, why",
    [
        ({"k": "b\ud800ob"}, "not valid Unicode"),
        ({"k\udcff": 1}, "not valid Unicode"),
        ({"k": float("nan")}, "not a JSON number"),
        ({"k": 10**5000}, "beyond 64 bits"),
        ({"k": "x" * 70_000}, "at most 65,536"),
    ],
)
def test_bad_metadata_is_refused(fake_db, voices, metadata, why):
    with pytest.raises(InvalidInputError, match=why):
        fake_db.enroll("alice", voices["alice"][:1], metadata=metadata)
    assert fake_db.list() == []


def test_deeply_nested_metadata_is_a_speakerdb_error(fake_db, voices):
    deep: dict = {}
    for _ in range(5_000):
        deep = {"a": deep}
    with pytest.raises(InvalidInputError, match="nested more than 32"):
        fake_db.enroll("alice", voices["alice"][:1], metadata=deep)
    assert fake_db.list() == []


def test_opening_without_create_refuses_a_missing_database(tmp_path):
    from speakerdb.errors import DatabaseError

    path = tmp_path / "missing" / "x.sqlite"
    with pytest.raises(DatabaseError, match="no database at"):
        SpeakerDB(path, create=False)
    assert not path.parent.exists()
    with SpeakerDB(path) as db:  # the default creates, as before
        assert db.created
    with SpeakerDB(path, create=False) as db:
        assert not db.created and db.list() == []


def test_discard_if_unused_removes_only_an_untouched_new_database(tmp_path, voices):
    path = tmp_path / "new" / "x.sqlite"
    db = SpeakerDB(path, embedder=FakeEmbedder())
    assert db.discard_if_unused() and not path.exists() and not path.parent.exists()
    db = SpeakerDB(path, embedder=FakeEmbedder())
    db.enroll("alice", voices["alice"][:1])
    assert not db.discard_if_unused() and path.exists()


def test_a_name_stored_before_normalisation_is_still_found(fake_db, voices):
    """Databases written before names were NFC-normalised may hold an NFD name: it stays reachable."""
    nfd = "Jose\u0301"
    fake_db.enroll("Jose", voices["alice"][:1])
    with fake_db.store.write() as s:  # as an older speakerdb stored it
        from speakerdb.storage import store

        store.speaker_by_name(s, "Jose").name = nfd
    assert fake_db.show(nfd).name == nfd
    fake_db.rename(nfd, "Ana")
    assert [sp.name for sp in fake_db.list()] == ["Ana"]
