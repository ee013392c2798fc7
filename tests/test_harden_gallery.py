"""Gallery import hardening (issue 21, items 7, 9a, 13b, 17b): a truthful but huge manifest is
refused from the manifest in low memory, another model before any vector is read, JSON that
Python cannot convert is a clear refusal, a path that is not a regular file says what it is,
and no refusal names the database's path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, FakeEmbedder, voice, write
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.errors import ConflictError, GalleryError, ModelMismatchError
from speakerdb.storage import gallery

HUGE_DIM, HUGE_UTTERANCES = 8192, 100_000  # the red team's gallery: 3.3 GB of vectors in a few MB
ZEROS_BLOCK = 5 << 20  # bytes of zeros deflated once and repeated (divides 8192 x 4 x n for n a multiple of 160)


# ---- crafting galleries ------------------------------------------------------------------------
def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate, as in a ZIP member; fast
    return c.compress(data) + c.flush()


# (crc32, sha256) of that many zero bytes, computed once with zlib.crc32 and hashlib: the
# checksums of the crafted galleries are the true ones without hashing gigabytes in each run.
ZERO_CHECKSUMS = {
    3_276_800_000: (957076409, "c6ca4e50e609a033d9a3289734c169f8ec90adf2ab23d2b60293baa2a3639629"),
    655_360_000: (1387175084, "7e839087085458d8e24a06b1a712ec81102de4fd7b931afa9bd7b701af08db2d"),
}


def _deflated_zeros(size: int) -> tuple[bytes, int, str]:
    """(raw deflate stream, crc32, sha256) of ``size`` zero bytes, built from one deflated block.

    After a full flush deflate starts afresh, so every block of zeros deflates to the same bytes:
    gigabytes cost one block's compression.
    """
    assert size % ZEROS_BLOCK == 0
    zeros = bytes(ZEROS_BLOCK)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == first
    checksums = ZERO_CHECKSUMS.get(size) or (zlib.crc32(bytes(size)), hashlib.sha256(bytes(size)).hexdigest())
    return (block * (size // ZEROS_BLOCK) + c.flush(), *checksums)


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A ZIP archive of (name, raw deflate stream, crc32, uncompressed size) members, written by
    hand so that a member of gigabytes is given as its stream of a few MB (sizes < 4 GiB)."""
    out, central = bytearray(), bytearray()
    for name, stream, crc, size in members:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(encoded), 0)
        out += encoded + stream
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                8,
                0,
                0x21,
                crc,
                len(stream),
                size,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + encoded
        )
    start = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    path.write_bytes(bytes(out))
    return path


def _zero_vector_gallery(path: Path, model_id: str, dim: int, n: int, per_speaker: int = 100) -> Path:
    """A gallery whose manifest tells the truth (counts, sizes, checksums) about ``n`` zero
    vectors of ``dim`` floats: small on disk, ``n * dim * 4`` bytes unpacked."""
    record = {"source": "a.wav", "duration_s": 1.0, "audio_sha256": "", "created_at": None}
    speakers = [
        {
            "name": f"s{i}",
            "created_at": None,
            "updated_at": None,
            "metadata": {},
            "utterances": [{**record, "audio_sha256": f"{k:064x}"} for k in range(i, min(n, i + per_speaker))],
        }
        for i in range(0, n, per_speaker)
    ]
    speakers_bytes = json.dumps(speakers).encode()
    vectors, vectors_crc, vectors_sha = _deflated_zeros(n * dim * 4)
    manifest = json.dumps(
        {
            "format": gallery.FORMAT_NAME,
            "format_version": 1,
            "speakerdb_version": "x",
            "created_at": None,
            "model": {"id": model_id, "source": None, "dim": dim},
            "counts": {"speakers": len(speakers), "utterances": n},
            "members": {
                "speakers.json": {"size": len(speakers_bytes), "sha256": hashlib.sha256(speakers_bytes).hexdigest()},
                "embeddings.f32": {"size": n * dim * 4, "sha256": vectors_sha},
            },
        }
    ).encode()
    return _write_zip(
        path,
        [
            ("manifest.json", _deflate(manifest), zlib.crc32(manifest), len(manifest)),
            ("speakers.json", _deflate(speakers_bytes), zlib.crc32(speakers_bytes), len(speakers_bytes)),
            ("embeddings.f32", vectors, vectors_crc, n * dim * 4),
        ],
    )


def _gallery(
    path: Path,
    model_id: str = "fake-spectral-v1",
    dim: int = 32,
    n: int = 2,
    manifest_text=None,
    speakers_text=None,
    vectors: np.ndarray | None = None,
) -> Path:
    """A small gallery with right checksums; ``manifest_text``/``speakers_text`` edit the JSON as
    text (what json.dumps cannot write), ``vectors`` replaces the (n, dim) unit vectors."""
    rng = np.random.default_rng(0)
    if vectors is None:
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    speakers = [
        {
            "name": f"s{i}",
            "created_at": None,
            "updated_at": None,
            "metadata": {"badge": 7},
            "utterances": [{"source": "a.wav", "duration_s": 1.0, "audio_sha256": f"{i:064x}", "created_at": None}],
        }
        for i in range(n)
    ]
    speakers_bytes = json.dumps(speakers).encode()
    if speakers_text:
        speakers_bytes = speakers_text(speakers_bytes.decode()).encode()
    embeddings = vectors.astype("<f4").tobytes()
    manifest = json.dumps(
        {
            "format": gallery.FORMAT_NAME,
            "format_version": 1,
            "speakerdb_version": "x",
            "created_at": None,
            "model": {"id": model_id, "source": None, "dim": dim},
            "counts": {"speakers": n, "utterances": n},
            "members": {
                "speakers.json": {"size": len(speakers_bytes), "sha256": hashlib.sha256(speakers_bytes).hexdigest()},
                "embeddings.f32": {"size": len(embeddings), "sha256": hashlib.sha256(embeddings).hexdigest()},
            },
        }
    )
    if manifest_text:
        manifest = manifest_text(manifest)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", manifest)
        z.writestr("speakers.json", speakers_bytes)
        z.writestr("embeddings.f32", embeddings)
    return path


def _snapshot(db_path: Path):
    con = sqlite3.connect(db_path)
    try:
        return [con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("speakers", "utterances", "settings")]
    finally:
        con.close()


def _assert_crafting_is_truthful(tmp_path: Path) -> None:
    """The hand-made archive and its manifest agree with what is in it (at a size that is cheap to read)."""
    path = _zero_vector_gallery(tmp_path / "small.gallery", "fake-spectral-v1", HUGE_DIM, 160)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every member's CRC
        manifest = json.loads(z.read("manifest.json"))
        for name in ("speakers.json", "embeddings.f32"):
            data = z.read(name)
            assert manifest["members"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["counts"] == {"speakers": 2, "utterances": 160} and manifest["model"]["dim"] == HUGE_DIM
    with pytest.raises(GalleryError, match="not unit vectors"):  # zero vectors: refused once read
        gallery.read(path)


@pytest.fixture(scope="module")
def huge_gallery(tmp_path_factory) -> Path:
    """8,192 dims x 100,000 utterances of the fake model: 3.3 GB of vectors in about 4 MB."""
    _assert_crafting_is_truthful(tmp_path_factory.mktemp("small"))
    path = _zero_vector_gallery(
        tmp_path_factory.mktemp("huge") / "huge.gallery", "fake-spectral-v1", HUGE_DIM, HUGE_UTTERANCES
    )
    assert path.stat().st_size < 8_000_000
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("embeddings.f32").file_size == HUGE_DIM * HUGE_UTTERANCES * 4
    return path


@pytest.fixture
def bound_db(tmp_path) -> Path:
    """A database of the fake (32-d) model with one speaker."""
    path = tmp_path / "bound.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("dora", [write(tmp_path / "dora.wav", voice(180.0))])
    return path


# ---- item 7: a truthful but huge manifest --------------------------------------------------------
# Runs the CLI in a fresh process and reports the growth of its peak RSS; the address space is
# capped so that a reader that unpacks everything fails there instead of taking the machine's memory.
MEASURED_CLI = r"""
import atexit, resource, sys
import speakerdb.cli  # everything the command loads, before the baseline
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.RLIM_INFINITY))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
atexit.register(
    lambda: print(f"rss-growth-kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base}", file=sys.stderr)
)
speakerdb.cli.cli(sys.argv[1:], prog_name="speakerdb")
"""


def _measured_cli(*args: str) -> tuple[int, list[str], int]:
    """(exit code, stderr lines other than the measurement, peak RSS growth in KiB) of one command."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", MEASURED_CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert time.monotonic() - started < 60, done.stderr
    lines = done.stderr.splitlines()
    growth = [int(line.split()[1]) for line in lines if line.startswith("rss-growth-kib ")]
    assert growth, done.stderr
    return done.returncode, [line for line in lines if not line.startswith("rss-growth-kib ")], growth[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures memory through /proc")
@pytest.mark.parametrize("into", ["database of another dimension", "new database"])
def test_a_truthful_huge_gallery_is_refused_fast_and_in_little_memory(huge_gallery, bound_db, tmp_path, into):
    """Bound database: the dimension is checked from the manifest before anything is unpacked.
    New database (no model to check): 8,192 x 100,000 vectors exceed the cap on vectors' bytes."""
    db = bound_db if into == "database of another dimension" else tmp_path / "new.sqlite"
    before = _snapshot(db) if db.exists() else None
    code, lines, growth_kib = _measured_cli("--db", str(db), "import", str(huge_gallery), "--on-conflict", "merge")
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), lines
    if before is None:
        assert "3,276,800,000 bytes" in lines[0] and "--max-utterances" in lines[0]
        assert not db.exists()  # a refused import leaves no new database behind
    else:
        assert "8192-d" in lines[0] and "32-d" in lines[0] and str(db) not in lines[0]
        assert _snapshot(db) == before
    assert growth_kib < 200 * 1024


def test_another_model_is_refused_before_any_member_is_unpacked(bound_db, tmp_path):
    """NaN vectors and a broken speakers.json would each be refused too, but the model is checked first."""
    vectors = np.full((2, 32), np.nan, np.float32)
    for model_id, dim in (("another-model", 32), ("fake-spectral-v1", 16)):
        path = _gallery(
            tmp_path / f"{model_id}-{dim}.gallery",
            model_id=model_id,
            dim=dim,
            vectors=vectors[:, :dim],
            speakers_text=lambda text: text.replace("[", "{", 1),
        )
        before = _snapshot(bound_db)
        with SpeakerDB(bound_db, embedder=FakeEmbedder()) as db, pytest.raises(ModelMismatchError) as err:
            db.import_gallery(path)
        assert f"{dim}-d embeddings of model {model_id}" in str(err.value)
        assert _snapshot(bound_db) == before


def test_a_gallery_of_wide_vectors_into_a_new_database_is_capped_by_bytes(tmp_path):
    """No model to check: 100 vectors of 8,192 floats count as 1,600 of 512."""
    path = _gallery(tmp_path / "wide.gallery", dim=8192, n=100)
    with pytest.raises(GalleryError, match="more than the 1,024,000 bytes one import accepts"):
        gallery.read(path, gallery.Limits(max_utterances=500))
    assert len(gallery.read(path, gallery.Limits(max_utterances=1600)).speakers) == 100
    assert len(gallery.read(path, gallery.Limits(max_utterances=100), check_model=lambda m, d: 8192).speakers) == 100


# ---- item 9a: JSON Python cannot convert ---------------------------------------------------------
DIGITS = "9" * 5000
UNCONVERTIBLE = {
    "manifest count": (lambda t: t.replace('"speakers": 2', f'"speakers": {DIGITS}'), None),
    "manifest negative": (lambda t: t.replace('"dim": 32', f'"dim": -{DIGITS}'), None),
    "speakers metadata": (None, lambda t: t.replace('"badge": 7', f'"badge": {DIGITS}', 1)),
    "speakers duration": (None, lambda t: t.replace('"duration_s": 1.0', f'"duration_s": {DIGITS}', 1)),
}


@pytest.mark.parametrize("case", sorted(UNCONVERTIBLE))
def test_an_integer_of_thousands_of_digits_is_a_clear_refusal(fake_db, tmp_path, case):
    manifest_text, speakers_text = UNCONVERTIBLE[case]
    path = _gallery(tmp_path / "digits.gallery", manifest_text=manifest_text, speakers_text=speakers_text)
    member = "manifest.json" if manifest_text else "speakers.json"
    with pytest.raises(GalleryError, match=f"not a valid gallery: {member} holds an integer of more than 100 digits"):
        fake_db.import_gallery(path)
    assert fake_db.list() == []


def test_a_model_source_of_the_wrong_type_is_refused(fake_db, tmp_path):
    path = _gallery(tmp_path / "source.gallery", manifest_text=lambda t: t.replace('"source": null', '"source": [1]'))
    with pytest.raises(GalleryError, match="manifest is incomplete or malformed"):
        fake_db.import_gallery(path)
    assert fake_db.info().model_source is None


def test_cli_says_one_line_for_an_unconvertible_integer(tmp_path):
    path = _gallery(tmp_path / "digits.gallery", speakers_text=lambda t: t.replace('"badge": 7', f'"badge": {DIGITS}'))
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "t.sqlite"), "import", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.count("\n") == 1 and "more than 100 digits" in result.stderr, result.stderr


# ---- item 17b: paths that are not regular files ----------------------------------------------------
@pytest.mark.skipif(not Path("/dev/zero").exists() or not hasattr(os, "mkfifo"), reason="needs /dev/zero and FIFOs")
def test_a_path_that_is_not_a_regular_file_says_what_it_is(fake_db, tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it for reading must not wait for a writer
    (tmp_path / "dir").mkdir()
    for path, kind in (
        ("/dev/zero", "a character device"),
        (tmp_path / "pipe", "a named pipe"),
        (tmp_path / "dir", "a directory"),
    ):
        with pytest.raises(GalleryError, match=rf"not a regular file \({kind}\)"):
            fake_db.import_gallery(path)
    (tmp_path / "zeros.gallery").write_bytes(bytes(4096))
    (tmp_path / "empty.gallery").write_bytes(b"")
    for name in ("zeros.gallery", "empty.gallery"):
        with pytest.raises(GalleryError, match="not a speakerdb gallery"):
            fake_db.import_gallery(tmp_path / name)
    with pytest.raises(GalleryError, match="no such gallery file"):
        fake_db.import_gallery(tmp_path / "missing.gallery")
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "t.sqlite"), "import", "/dev/zero"])
    assert result.exit_code == 1 and "/dev/zero: not a regular file (a character device)" in result.stderr
    assert not (tmp_path / "t.sqlite").exists()


# ---- item 13b: no database path in an import's refusal ------------------------------------------
def test_import_refusals_name_no_database_path(bound_db, tmp_path):
    with SpeakerDB(bound_db, embedder=FakeEmbedder()) as db:
        with pytest.raises(ModelMismatchError) as mismatch:
            db.import_gallery(_gallery(tmp_path / "other.gallery", model_id="another-model"))
        db.export(tmp_path / "own.gallery")
        with pytest.raises(ConflictError) as conflict:
            db.import_gallery(tmp_path / "own.gallery")
    for err in (mismatch, conflict):
        assert str(bound_db) not in str(err.value) and bound_db.name not in str(err.value), str(err.value)
    assert "this database holds 32-d embeddings of model fake-spectral-v1" in str(mismatch.value)


# ---- the service: the same refusals as answers, in little memory ---------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_checkpoint):
    """One worker over a database of the tiny model with one speaker, and an admin key."""
    from test_server import Server

    d = tmp_path_factory.mktemp("served-gallery")
    db_path = d / "served.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        db.enroll("dora", [write(d / "dora.wav", voice(180.0))])
        key = db.create_key("k-admin", "admin").key
        model_id, dim = db.info().model_id, db.info().dim
    (d / "tmp").mkdir()
    srv = Server(db_path, tiny_checkpoint, d / "server.log", "--tmp-dir", str(d / "tmp"))
    srv.key, srv.model_id, srv.dim = key, model_id, dim
    srv.start()
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log.read_text()


def _peak_rss_kib(pid: int) -> int:
    return next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures memory through /proc")
def test_service_refuses_a_huge_gallery_of_another_dimension_before_unpacking_it(service, tmp_path):
    """A small upload that unpacks to 655 MB of vectors: a 409 that names no server path, at once."""
    assert service.dim != HUGE_DIM
    path = _zero_vector_gallery(tmp_path / "wide.gallery", service.model_id, HUGE_DIM, 20_000)
    peak = _peak_rss_kib(service.proc.pid)
    status, _, doc = service.call(
        "POST",
        "/v1/gallery",
        key=service.key,
        files=[("file", "wide.gallery", path.read_bytes())],
        fields={"on_conflict": "merge"},
    )
    assert status == 409 and doc["error"]["code"] == "model_mismatch", doc
    message = doc["error"]["message"]
    assert f"{HUGE_DIM}-d" in message and str(service.db) not in message and str(service.db.parent) not in message
    assert _peak_rss_kib(service.proc.pid) - peak < 200 * 1024


def test_service_answers_400_for_an_unconvertible_integer(service, tmp_path):
    for name, edit in (
        ("manifest", {"manifest_text": lambda t: t.replace('"speakers": 2', f'"speakers": {DIGITS}')}),
        ("speakers", {"speakers_text": lambda t: t.replace('"badge": 7', f'"badge": {DIGITS}')}),
    ):
        path = _gallery(tmp_path / f"{name}.gallery", model_id=service.model_id, dim=service.dim, **edit)
        status, _, doc = service.call(
            "POST", "/v1/gallery", key=service.key, files=[("file", f"{name}.gallery", path.read_bytes())]
        )
        assert status == 400 and doc["error"]["code"] == "bad_gallery", doc
        assert (
            "more than 100 digits" in doc["error"]["message"] and str(service.db.parent) not in doc["error"]["message"]
        )
