"""Gallery export/import: round trip, conflict policies, every refusal, and a kill in the middle."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import unicodedata
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, FakeEmbedder
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.errors import ConflictError, GalleryError, InvalidInputError, ModelMismatchError, SpeakerNotFoundError
from speakerdb.storage import gallery

FIXTURE = REPO / "tests" / "data" / "v1.gallery"


def _rows(db: SpeakerDB):
    """Speakers (name, metadata, created_at) and utterances (name, sha, duration, embedding bytes)."""
    con = sqlite3.connect(db.db_path)
    try:
        speakers = con.execute("SELECT name, metadata, created_at FROM speakers ORDER BY name").fetchall()
        utterances = con.execute(
            "SELECT s.name, u.audio_sha256, u.duration_s, u.source, u.embedding FROM utterances u "
            "JOIN speakers s ON s.id = u.speaker_id ORDER BY s.name, u.id"
        ).fetchall()
        return speakers, utterances
    finally:
        con.close()


def _snapshot(db: SpeakerDB):
    con = sqlite3.connect(db.db_path)
    try:
        return [con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("speakers", "utterances", "settings")]
    finally:
        con.close()


@pytest.fixture
def source(tmp_path, voices):
    """A database with three speakers, metadata on one."""
    db = SpeakerDB(tmp_path / "source.sqlite", embedder=FakeEmbedder())
    db.enroll("alice", voices["alice"][:2], metadata={"site": "a", "badge": 7})
    db.enroll("bob", voices["bob"][:2])
    db.enroll("carol", voices["carol"][:1])
    yield db
    db.close()


@pytest.fixture
def target(tmp_path):
    db = SpeakerDB(tmp_path / "target.sqlite", embedder=FakeEmbedder())
    yield db
    db.close()


def test_round_trip_is_exact(source, target, tmp_path, voices):
    summary = source.export(tmp_path / "all.gallery")
    assert (summary.n_speakers, summary.n_utterances) == (3, 5)
    result = target.import_gallery(tmp_path / "all.gallery")
    assert result.created == ["alice", "bob", "carol"] and result.utterances_added == 5
    assert _rows(target) == _rows(source)  # names, metadata, times, byte-identical embeddings
    queries = [voices[n][2] for n in ("alice", "bob", "carol")]
    assert target.identify(queries) == source.identify(queries)
    assert target.info().model_id == source.info().model_id


def test_partial_export(source, target, tmp_path):
    source.export(tmp_path / "two.gallery", speakers=["carol", "alice"])
    target.import_gallery(tmp_path / "two.gallery")
    assert [s.name for s in target.list()] == ["alice", "carol"]
    with pytest.raises(SpeakerNotFoundError, match="zoe"):
        source.export(tmp_path / "x.gallery", speakers=["zoe"])
    assert not (tmp_path / "x.gallery").exists()


def test_conflict_fail_names_the_speakers_and_writes_nothing(source, target, tmp_path, voices):
    source.export(tmp_path / "all.gallery")
    target.enroll("bob", voices["bob"][2:3])
    target.enroll("carol", voices["carol"][2:3])
    before = _snapshot(target)
    with pytest.raises(ConflictError) as err:
        target.import_gallery(tmp_path / "all.gallery")
    assert "bob" in str(err.value) and "carol" in str(err.value) and "alice" not in str(err.value)
    assert _snapshot(target) == before


def test_conflict_skip_keeps_ours(source, target, tmp_path, voices):
    source.export(tmp_path / "all.gallery")
    target.enroll("bob", voices["bob"][2:3])
    ours = [r for r in _rows(target)[1] if r[0] == "bob"]
    result = target.import_gallery(tmp_path / "all.gallery", on_conflict="skip")
    assert (result.created, result.skipped) == (["alice", "carol"], ["bob"])
    assert [r for r in _rows(target)[1] if r[0] == "bob"] == ours


def test_conflict_replace_takes_theirs_whole(source, target, tmp_path, voices):
    source.export(tmp_path / "all.gallery")
    target.enroll("bob", voices["bob"][2:3], metadata={"local": True})
    result = target.import_gallery(tmp_path / "all.gallery", on_conflict="replace")
    assert result.replaced == ["bob"]
    theirs = [r for r in _rows(source)[1] if r[0] == "bob"]
    assert [r for r in _rows(target)[1] if r[0] == "bob"] == theirs
    assert target.show("bob").metadata == {}
    assert target.identify([voices["bob"][0]])[0].speaker == "bob"


def test_conflict_merge_adds_new_audio_once_and_recomputes_the_centroid(source, target, tmp_path, voices):
    source.export(tmp_path / "all.gallery")
    target.enroll("alice", [voices["alice"][0], voices["alice"][2]], metadata={"site": "local"})
    result = target.import_gallery(tmp_path / "all.gallery", on_conflict="merge")
    assert result.merged == ["alice"] and result.utterances_added == 1 + 2 + 1  # alice0 was already there
    shas = [r[1] for r in _rows(target)[1] if r[0] == "alice"]
    assert len(shas) == len(set(shas)) == 3
    assert target.show("alice").metadata == {"site": "local", "badge": 7}  # ours wins, theirs fills gaps
    vectors = FakeEmbedder().embed([__import__("speakerdb").audio.load(p).samples for p in voices["alice"]])
    mean = vectors.mean(axis=0)
    [r] = target.identify([voices["alice"][0]], top_k=1)
    assert r.score == pytest.approx(float(vectors[0] @ mean / np.linalg.norm(mean)), abs=1e-5)
    again = target.import_gallery(tmp_path / "all.gallery", on_conflict="merge")
    assert again.utterances_added == 0


def test_dry_run_writes_nothing(source, target, tmp_path):
    source.export(tmp_path / "all.gallery")
    before = _snapshot(target)
    result = target.import_gallery(tmp_path / "all.gallery", dry_run=True)
    assert result.dry_run and result.created == ["alice", "bob", "carol"] and result.utterances_added == 5
    assert _snapshot(target) == before
    assert not target.index_path.exists() or len(target.list()) == 0


def test_unknown_policy(target, tmp_path):
    with pytest.raises(InvalidInputError, match="on-conflict"):
        target.import_gallery(tmp_path / "x.gallery", on_conflict="overwrite")


# ---- refusals --------------------------------------------------------------------------------
def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write_members(path: Path, members: dict[str, bytes], fix_checksums: bool = True, extra=()) -> Path:
    """Write members back, recomputing the manifest's sizes and checksums unless told not to."""
    if fix_checksums:
        manifest = json.loads(members["manifest.json"])
        for name in ("speakers.json", "embeddings.f32"):
            manifest["members"][name] = {
                "size": len(members[name]),
                "sha256": hashlib.sha256(members[name]).hexdigest(),
            }
        members = {**members, "manifest.json": json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for info, data in extra:
            z.writestr(info, data)
    return path


def _edit(members, member, fn):
    doc = json.loads(members[member])
    fn(doc)
    return {**members, member: json.dumps(doc).encode()}


def _floats(members, fn):
    m = np.frombuffer(members["embeddings.f32"], "<f4").copy()
    fn(m)
    return {**members, "embeddings.f32": m.astype("<f4").tobytes()}


def _symlink_info(name="link"):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


BAD = {
    "other model": (
        lambda m: _edit(m, "manifest.json", lambda d: d["model"].update(id="another-model")),
        True,
        "another-model",
    ),
    "unknown version": (lambda m: _edit(m, "manifest.json", lambda d: d.update(format_version=99)), True, "version 99"),
    "not a gallery": (
        lambda m: _edit(m, "manifest.json", lambda d: d.update(format="zip-of-things")),
        True,
        "not a speakerdb gallery",
    ),
    "checksum": (
        lambda m: {**m, "speakers.json": m["speakers.json"].replace(b"alice", b"alicf")},
        False,
        "checksum mismatch",
    ),
    "nan vector": (lambda m: _floats(m, lambda a: a.__setitem__(3, np.nan)), True, "NaN"),
    "inf vector": (lambda m: _floats(m, lambda a: a.__setitem__(0, np.inf)), True, "NaN or infinite"),
    "not unit": (lambda m: _floats(m, lambda a: a.__imul__(2)), True, "unit vectors"),
    "short vectors": (lambda m: {**m, "embeddings.f32": m["embeddings.f32"][:-4]}, True, "float32 vectors need"),
    "duplicate names": (
        lambda m: _edit(m, "speakers.json", lambda d: d[1].update(name="alice")),
        True,
        "appears twice",
    ),
    "empty name": (lambda m: _edit(m, "speakers.json", lambda d: d[0].update(name="")), True, "must not be empty"),
    "slash in name": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0].update(name="../etc")),
        True,
        "must not contain",
    ),
    "missing member": (
        lambda m: {k: v for k, v in m.items() if k != "embeddings.f32"},
        False,
        "missing embeddings.f32",
    ),
    "extra member": (lambda m: {**m, "evil.sh": b"rm -rf /"}, True, "unexpected archive member"),
    "absolute path": (lambda m: {**m, "/etc/passwd": b"x"}, True, "absolute path"),
    "dot dot": (lambda m: {**m, "../../outside": b"x"}, True, "outside the archive"),
    "bad json": (lambda m: {**m, "speakers.json": b"[{not json"}, True, "not valid JSON"),
    "utterance count": (
        lambda m: _edit(m, "manifest.json", lambda d: d["counts"].update(utterances=4)),
        True,
        "float32 vectors need",
    ),
    # Fields of the right checksums but the wrong type, range or encoding (issue 12, item 2).
    "created_at type": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0].update(created_at=12345)),
        True,
        "created_at",
    ),
    "created_at range": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0].update(created_at="99999-01-01T00:00:00Z")),
        True,
        "created_at",
    ),
    "created_at 1900": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0].update(updated_at="1900-01-01T00:00:00Z")),
        True,
        "before 1970",
    ),
    "utterance time": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0]["utterances"][0].update(created_at=[1])),
        True,
        "created_at",
    ),
    "deep metadata": (lambda m: _deep_metadata(m, 100_000), True, "nested too deeply"),
    "deep-ish metadata": (lambda m: _deep_metadata(m, 50), True, "nested more than"),
    "nan metadata": (
        lambda m: {**m, "speakers.json": m["speakers.json"].replace(b'"site": "a"', b'"site": NaN')},
        True,
        "not a JSON number",
    ),
    "duration text": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0]["utterances"][0].update(duration_s="1e400")),
        True,
        "duration_s",
    ),
    "duration inf": (
        lambda m: {**m, "speakers.json": m["speakers.json"].replace(b'"duration_s": 2.0', b'"duration_s": 1e400', 1)},
        True,
        "duration_s",
    ),
    "surrogate name": (lambda m: _edit(m, "speakers.json", lambda d: d[0].update(name="b\ud800ob")), True, "surrogate"),
    "surrogate source": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0]["utterances"][0].update(source="a\udcff.wav")),
        True,
        "source",
    ),
    "surrogate metadata": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0]["metadata"].update(site="\udcff")),
        True,
        "not valid Unicode",
    ),
    "invisible name": (
        lambda m: _edit(m, "speakers.json", lambda d: d[1].update(name="alice\u200b")),
        True,
        "invisible",
    ),
    "sha not hex": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0]["utterances"][0].update(audio_sha256="Z" * 64)),
        True,
        "audio_sha256",
    ),
    "metadata list": (
        lambda m: _edit(m, "speakers.json", lambda d: d[0].update(metadata=[1, 2])),
        True,
        "must be a dict",
    ),
}


def _deep_metadata(members, depth: int):
    """speakers.json with alice's metadata nested ``depth`` levels deep (written as text: too deep for json.dumps)."""
    doc = json.loads(members["speakers.json"])
    doc[0]["metadata"] = "__DEEP__"
    text = json.dumps(doc).replace('"__DEEP__"', '{"a": ' * depth + "1" + "}" * depth)
    return {**members, "speakers.json": text.encode()}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_galleries_are_refused_and_nothing_changes(source, target, tmp_path, voices, case):
    source.export(tmp_path / "good.gallery")
    target.enroll("dora", voices["alice"][2:3])
    mutate, fix, message = BAD[case]
    bad = _write_members(tmp_path / "bad.gallery", mutate(_members(tmp_path / "good.gallery")), fix_checksums=fix)
    before = _snapshot(target)
    with pytest.raises((GalleryError, ModelMismatchError)) as err:
        target.import_gallery(bad, on_conflict="merge")
    assert message in str(err.value)
    assert _snapshot(target) == before


def test_other_dimension_is_refused(target, tmp_path, voices):
    target.enroll("dora", voices["alice"][:1])
    v = np.ones(16, np.float32) / 4  # a unit vector of another model's size
    speaker = gallery.GallerySpeaker("eve", None, None, {}, [gallery.GalleryUtterance("e.wav", 1.0, "0" * 64, None, v)])
    gallery.write(tmp_path / "16d.gallery", gallery.Gallery("fake-spectral-v1", None, 16, [speaker]), "test")
    before = _snapshot(target)
    with pytest.raises(ModelMismatchError, match="16-d"):
        target.import_gallery(tmp_path / "16d.gallery")
    assert _snapshot(target) == before


def test_symlink_member_is_refused(source, target, tmp_path):
    source.export(tmp_path / "good.gallery")
    bad = _write_members(
        tmp_path / "bad.gallery", _members(tmp_path / "good.gallery"), extra=[(_symlink_info(), b"/etc/passwd")]
    )
    with pytest.raises(GalleryError, match="is a link"):
        target.import_gallery(bad)


def test_truncated_file_is_refused(source, target, tmp_path):
    data = (tmp_path / "good.gallery").read_bytes() if source.export(tmp_path / "good.gallery") else b""
    for cut in (10, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.gallery").write_bytes(data[:cut])
        with pytest.raises(GalleryError, match="truncated or corrupt"):
            target.import_gallery(tmp_path / "cut.gallery")
    assert target.list() == []


def test_decompression_bomb_is_refused_without_inflating_it(source, target, tmp_path):
    source.export(tmp_path / "good.gallery")
    members = _members(tmp_path / "good.gallery")
    bomb = tmp_path / "bomb.gallery"
    _write_members(bomb, members)
    # Swap speakers.json for 200 MB of zeros (compresses to ~200 kB) while the manifest
    # still promises the small original, and lie about the size in the zip header too.
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", members["manifest.json"])
        z.writestr("embeddings.f32", members["embeddings.f32"])
        with z.open("speakers.json", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(200):
                f.write(chunk)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(GalleryError, match="more than the"):
        target.import_gallery(bomb)


def test_oversized_manifest_is_refused(target, tmp_path):
    path = tmp_path / "big.gallery"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", b" " * (2 << 20))
        z.writestr("speakers.json", b"[]")
        z.writestr("embeddings.f32", b"")
    with pytest.raises(GalleryError, match="more than the"):
        target.import_gallery(path)


def test_not_a_zip(target, tmp_path):
    (tmp_path / "x.gallery").write_text("hello")
    with pytest.raises(GalleryError):
        target.import_gallery(tmp_path / "x.gallery")
    with pytest.raises(GalleryError, match="no such gallery"):
        target.import_gallery(tmp_path / "missing.gallery")


# ---- compatibility: galleries written by earlier versions keep importing --------------------
def test_version_1_fixture_still_imports(target):
    """tests/data/v1.gallery was written by speakerdb 0.1.0 (scripts/make_gallery_fixture.py). Never regenerate it."""
    result = target.import_gallery(FIXTURE)
    assert result.created == ["ada", "grace"] and result.utterances_added == 3
    assert target.info().model_id == "fake-spectral-v1"
    assert target.show("ada").metadata == {"lab": "analytical engines"}
    g = gallery.read(FIXTURE)
    assert g.manifest["format_version"] == 1 and g.manifest["speakerdb_version"] == "0.1.0"
    assert hashlib.sha256(np.stack([u.embedding for s in g.speakers for u in s.utterances]).tobytes()).hexdigest() == (
        FIXTURE_EMBEDDINGS_SHA256
    )


FIXTURE_EMBEDDINGS_SHA256 = "d30872b28eeaa49eeea72ffd5dd30fa1caacd588ca48edd58a808f9e2bdf0f34"


# ---- CLI ---------------------------------------------------------------------------------------
def test_cli_export_import(source, tmp_path):
    runner = CliRunner()
    out = runner.invoke(
        cli, ["--db", str(source.db_path), "export", str(tmp_path / "a.gallery"), "--speaker", "alice", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_speakers"] == 1
    target = ["--db", str(tmp_path / "t.sqlite")]
    dry = runner.invoke(cli, target + ["import", str(tmp_path / "a.gallery"), "--dry-run"])
    assert dry.exit_code == 0 and "would import" in dry.stdout and "1 created" in dry.stdout
    done = runner.invoke(cli, target + ["import", str(tmp_path / "a.gallery"), "--json"])
    assert json.loads(done.stdout)["created"] == ["alice"]
    conflict = runner.invoke(cli, target + ["import", str(tmp_path / "a.gallery")])
    assert conflict.exit_code == 1 and "alice" in conflict.stderr and "Traceback" not in conflict.output
    merged = runner.invoke(cli, target + ["import", str(tmp_path / "a.gallery"), "--on-conflict", "merge"])
    assert "1 merged" in merged.stdout
    bad = runner.invoke(cli, target + ["import", str(tmp_path / "a.gallery"), "--on-conflict", "overwrite"])
    assert bad.exit_code == 2


# ---- a kill in the middle --------------------------------------------------------------------
def _big_gallery(path: Path, n_speakers: int, per_speaker: int, dim: int = 32) -> None:
    rng = np.random.default_rng(0)
    speakers = []
    for i in range(n_speakers):
        utts = []
        for j in range(per_speaker):
            v = rng.standard_normal(dim).astype(np.float32)
            utts.append(
                gallery.GalleryUtterance(
                    f"s{i}-{j}.wav", 3.0, hashlib.sha256(f"{i}/{j}".encode()).hexdigest(), None, v / np.linalg.norm(v)
                )
            )
        speakers.append(gallery.GallerySpeaker(f"speaker-{i:05d}", None, None, {"i": i}, utts))
    gallery.write(path, gallery.Gallery("fake-spectral-v1", None, dim, speakers), "test")


IMPORT_SCRIPT = """
import sys, time
from speakerdb import SpeakerDB
db = SpeakerDB(sys.argv[1])
print("start", flush=True)
t0 = time.perf_counter()
db.import_gallery(sys.argv[2])
print("done", time.perf_counter() - t0, flush=True)
"""


def test_sigkill_during_import_leaves_the_database_as_before(tmp_path, voices):
    big = tmp_path / "big.gallery"
    _big_gallery(big, 3000, 5)
    db_path = tmp_path / "killed.sqlite"
    with SpeakerDB(db_path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", voices["alice"][:1])
    # How long the import itself takes here (without interpreter start-up), to aim the kills inside it.
    timing = tmp_path / "timing.sqlite"
    SpeakerDB(timing, embedder=FakeEmbedder()).enroll("alice", voices["alice"][:1])
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, str(timing), str(big)], check=True, capture_output=True, text=True
    )
    duration = float(out.stdout.split()[-1])

    killed_mid_import = 0
    # Three kills early on: the test holds while the import runs at least 0.4 x as long as timed (load varies).
    for fraction in (0.1, 0.25, 0.4, 0.6, 0.8, 0.95):
        proc = subprocess.Popen(
            [sys.executable, "-c", IMPORT_SCRIPT, str(db_path), str(big)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "start"
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        finished = "done" in rest
        con = sqlite3.connect(db_path)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        n = con.execute("SELECT count(*) FROM speakers").fetchone()[0]
        con.close()
        assert n in (1, 3001), f"half an import is visible: {n} speakers after a kill at {fraction:.0%}"
        assert n == 3001 or not finished
        with SpeakerDB(db_path, embedder=FakeEmbedder()) as db:  # the next command works
            assert len(db.list()) == n and db.identify(voices["alice"][:1])[0].speaker == "alice"
        if n == 3001:  # committed, whether or not it lived to say so (a kill after the commit)
            break
        killed_mid_import += 1
    assert killed_mid_import >= 3, "imports finished before the kills: the test proved little"


# ---- property-based: the reader never fails with anything but GalleryError -------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def good_gallery_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("g") / "good.gallery"
    rng = np.random.default_rng(0)
    speakers = []
    for i in range(3):
        v = rng.standard_normal(8).astype(np.float32)
        speakers.append(
            gallery.GallerySpeaker(
                f"s{i}",
                None,
                None,
                {"k": i},
                [gallery.GalleryUtterance("a.wav", 1.0, "ab" * 32, None, v / np.linalg.norm(v))],
            )
        )
    gallery.write(path, gallery.Gallery("fake-spectral-v1", None, 8, speakers), "test")
    return path.read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_gallery_bytes_raise_only_gallery_error(tmp_path_factory, good_gallery_bytes, data):
    raw = bytearray(good_gallery_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    path = tmp_path_factory.mktemp("fuzz") / "x.gallery"
    path.write_bytes(bytes(raw[:cut]))
    try:
        g = gallery.read(path)
    except GalleryError:
        return
    # Whatever got through passed every check: it must be a well-formed gallery.
    assert all(np.isfinite(u.embedding).all() for s in g.speakers for u in s.utterances)


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


# Values that broke the reader or the database in issue 12: NaN, infinities, numbers as
# text, wrong types, lone surrogates, invisible characters, deep nesting.
_NASTY = [
    float("nan"),
    float("inf"),
    -1.0,
    "1e400",
    12345,
    True,
    [],
    {},
    "\ud800",
    "b\udcffob",
    "alice\u200b",
    "\u202egnp.exe",
    "a\u2028b",
    "99999-01-01T00:00:00Z",
    "1900-01-01T00:00:00Z",
    "Z" * 64,
    "x" * 5000,
    {"a": {"b": {"c": [float("nan")]}}},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
]


def _valid_documents():
    """A well-formed manifest and speakers.json (2 speakers, 3 utterances of dimension 2) as plain JSON."""
    speakers = [
        {
            "name": "s0",
            "created_at": "2024-01-02T03:04:05Z",
            "updated_at": None,
            "metadata": {"k": [1, "x"]},
            "utterances": [
                {"source": "a.wav", "duration_s": 1.5, "audio_sha256": "a" * 64, "created_at": None},
                {"source": "b.wav", "duration_s": 2, "audio_sha256": "b" * 64, "created_at": None},
            ],
        },
        {
            "name": "s1",
            "created_at": None,
            "updated_at": None,
            "metadata": {},
            "utterances": [{"source": "c.wav", "duration_s": 3.0, "audio_sha256": "c" * 64, "created_at": None}],
        },
    ]
    manifest = {
        "format": gallery.FORMAT_NAME,
        "format_version": 1,
        "speakerdb_version": "t",
        "created_at": None,
        "model": {"id": "fake-spectral-v1", "source": None, "dim": 2},
        "counts": {"speakers": 2, "utterances": 3},
        "members": {},
    }
    return manifest, speakers


def _leaf_paths(doc, prefix=()):
    """Every place in a JSON document, as a path of keys and indices."""
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _leaf_paths(value, prefix + (key,))


def _replace(doc, path, value):
    if not path:
        return value
    *parent, last = path
    target = doc
    for key in parent:
        target = target[key]
    target[last] = value
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_members_raise_only_gallery_error(tmp_path_factory, data):
    """One field at a time of an otherwise valid gallery (checksums kept right, so every later
    check is reached) is replaced by arbitrary JSON: the reader raises GalleryError or returns
    a gallery whose every field is storable."""
    manifest, speakers = _valid_documents()
    member = data.draw(st.sampled_from(["manifest", "speakers", "none"]))
    if member != "none":
        doc = manifest if member == "manifest" else speakers
        paths = [p for p in _leaf_paths(doc) if p and p[0] != "members"]
        value = data.draw(st.sampled_from(_NASTY) | _ANY_JSON | st.text(alphabet=st.characters(codec="utf-8")))
        doc = _replace(doc, data.draw(st.sampled_from(paths)), value)
        manifest, speakers = (doc, speakers) if member == "manifest" else (manifest, doc)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 2)).astype(np.float32)
    embeddings = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("<f4").tobytes()
    speakers_bytes = json.dumps(speakers).encode()
    if isinstance(manifest, dict):
        manifest["members"] = {
            name: {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
            for name, raw in (("speakers.json", speakers_bytes), ("embeddings.f32", embeddings))
        }
    path = tmp_path_factory.mktemp("fuzz") / "x.gallery"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        z.writestr("speakers.json", speakers_bytes)
        z.writestr("embeddings.f32", embeddings)
    try:
        g = gallery.read(path)
    except GalleryError:
        return
    for s in g.speakers:  # whatever got through can be stored, exported and printed as JSON
        _assert_storable_text(s.name)
        assert unicodedata.normalize("NFC", s.name) == s.name
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in s.name)
        assert isinstance(s.metadata, dict)
        json.dumps(s.metadata, allow_nan=False, ensure_ascii=False).encode()
        for t in (s.created_at, s.updated_at):
            assert t is None or datetime.fromisoformat(t.replace("Z", "+00:00")).year >= 1970
        for u in s.utterances:
            assert isinstance(u.duration_s, float) and np.isfinite(u.duration_s) and u.duration_s >= 0
            _assert_storable_text(u.source)
            assert u.created_at is None or datetime.fromisoformat(u.created_at.replace("Z", "+00:00")).year >= 1970
            assert len(u.audio_sha256) == 64 and set(u.audio_sha256) <= set("0123456789abcdef")


def _assert_storable_text(text) -> None:
    assert isinstance(text, str)
    text.encode("utf-8")  # no lone surrogates


# ---- sizes and binding (issue 12, items 3, 4, 12) ----------------------------------------------
def _gallery_of(path: Path, model_id: str, n_speakers: int, dim: int = 4) -> Path:
    rng = np.random.default_rng(1)
    speakers = []
    for i in range(n_speakers):
        v = rng.standard_normal(dim).astype(np.float32)
        speakers.append(
            gallery.GallerySpeaker(
                f"s{i}",
                None,
                None,
                {},
                [gallery.GalleryUtterance("a.wav", 1.0, f"{i:064x}", None, v / np.linalg.norm(v))],
            )
        )
    gallery.write(path, gallery.Gallery(model_id, model_id, dim, speakers), "test")
    return path


def test_a_gallery_declaring_more_than_the_cap_is_refused_in_constant_memory(tmp_path):
    """A few MB that honestly unpack to hundreds: refused from the manifest, before inflating anything."""
    import tracemalloc

    n = gallery.MAX_UTTERANCES + 1  # dimension 1: one float per utterance
    one = np.ones(1, "<f4").tobytes()
    utterance = b'{"source": "a.wav", "duration_s": 1.0, "audio_sha256": "' + b"a" * 64 + b'", "created_at": null}'
    path = tmp_path / "bomb.gallery"
    sha_speakers, sha_embeddings = hashlib.sha256(), hashlib.sha256()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        size = 0
        with z.open("speakers.json", "w", force_zip64=True) as f:
            parts = [b'[{"name": "x", "metadata": {}, "utterances": [', utterance] + [b", " + utterance] * (n - 1)
            for part in parts + [b"]}]"]:
                f.write(part)
                sha_speakers.update(part)
                size += len(part)
        with z.open("embeddings.f32", "w", force_zip64=True) as f:
            block = one * 65_536
            for start in range(0, n, 65_536):
                chunk = block[: 4 * min(65_536, n - start)]
                f.write(chunk)
                sha_embeddings.update(chunk)
        manifest = {
            "format": gallery.FORMAT_NAME,
            "format_version": 1,
            "speakerdb_version": "x",
            "created_at": None,
            "model": {"id": "fake-spectral-v1", "source": None, "dim": 1},
            "counts": {"speakers": 1, "utterances": n},
            "members": {
                "speakers.json": {"size": size, "sha256": sha_speakers.hexdigest()},
                "embeddings.f32": {"size": 4 * n, "sha256": sha_embeddings.hexdigest()},
            },
        }
        z.writestr("manifest.json", json.dumps(manifest))
    assert path.stat().st_size < size // 20  # the archive is small, its contents are not
    tracemalloc.start()
    try:
        with pytest.raises(GalleryError, match="more than the 1,000,000 one import accepts"):
            gallery.read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # bytes: the manifest, not the members


def test_limits_can_be_raised_and_lowered(tmp_path):
    path = _gallery_of(tmp_path / "g.gallery", "fake-spectral-v1", 3)
    with pytest.raises(GalleryError, match="more than the 2 one import accepts"):
        gallery.read(path, gallery.Limits(max_utterances=2))
    assert len(gallery.read(path, gallery.Limits(max_utterances=3)).speakers) == 3
    with pytest.raises(GalleryError, match="dimension 4 is more than the 3"):
        gallery.read(path, gallery.Limits(max_dim=3))


def test_cli_import_cap_option(tmp_path):
    path = _gallery_of(tmp_path / "g.gallery", "fake-spectral-v1", 3)
    db = ["--db", str(tmp_path / "t.sqlite")]
    refused = CliRunner().invoke(cli, db + ["import", str(path), "--max-utterances", "2"])
    assert refused.exit_code == 1 and "--max-utterances" in refused.stderr
    assert "max-utterances" in CliRunner().invoke(cli, ["import", "--help"]).output


def test_an_empty_gallery_binds_nothing(tmp_path, target, voices):
    path = tmp_path / "empty.gallery"
    gallery.write(path, gallery.Gallery("attacker/hub-model", "attacker/hub-model", 7, []), "test")
    summary = target.import_gallery(path)
    assert summary.created == [] and summary.utterances_added == 0
    info = target.info()
    assert info.model_id is None and info.dim is None and info.model_source is None
    target.enroll("alice", voices["alice"][:1])  # the database's own model binds it, as if nothing happened
    assert target.info().model_id == "fake-spectral-v1"


def test_importing_into_a_new_database_binds_the_models_starting_threshold(tmp_path):
    """A GE2E gallery gets GE2E's 0.80 in a new database, as a GE2E enrollment does, not WavLM's 0.86."""
    from speakerdb.embedding.models import ResemblyzerEncoder

    ge2e = _gallery_of(tmp_path / "ge2e.gallery", "resemblyzer-ge2e@0123456789abcdef", 2)
    with SpeakerDB(tmp_path / "new.sqlite") as db:
        db.import_gallery(ge2e)
        assert db.threshold == ResemblyzerEncoder.default_threshold == 0.80
    with SpeakerDB(tmp_path / "chosen.sqlite") as db:  # a threshold someone chose is kept
        db.set_threshold(0.7)
        db.import_gallery(ge2e)
        assert db.threshold == 0.7
    wavlm = _gallery_of(tmp_path / "w.gallery", "wavlm-base-plus-sv@00ff00ff00ff00ff", 2)
    with SpeakerDB(tmp_path / "w.sqlite") as db:
        db.import_gallery(wavlm)
        assert db.threshold == 0.86
