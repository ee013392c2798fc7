"""Encryption at rest (issue 27 item 4): vectors sealed in the database and the index file,
``db encrypt``, ``key rotate`` with readers and writers running, wrong and missing keys.

Files are searched byte by byte as the erasure tests do (tests/test_cache.py,
tests/test_postgres.py): for every stored vector as float32, a float32 prefix and a middle
run, as float64 and a float64 prefix; and for the data key and the keys derived from it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, api
from speakerdb.cli import cli
from speakerdb.errors import DatabaseError, EncryptionKeyMissingError, EncryptionKeyWrongError
from speakerdb.storage import crypto, store


@pytest.fixture
def clips(tmp_path) -> dict[str, list[Path]]:
    out = {}
    (tmp_path / "audio").mkdir()
    for name, f0 in [("alice", 210.0), ("bob", 110.0), ("carol", 310.0), ("dave", 160.0)]:
        out[name] = [write(tmp_path / "audio" / f"{name}{k}.wav", voice(f0, 2.0, seed=k)) for k in range(3)]
    return out


def _key(tmp_path: Path, name: str = "db.key") -> Path:
    path = tmp_path / name
    path.write_bytes(crypto.new_key_text())
    path.chmod(0o600)
    return path


def _target(kind: str, tmp_path: Path, request) -> str | Path:
    return request.getfixturevalue("pg_url") if kind == "postgresql" else tmp_path / "db" / "speakers.sqlite"


def _vectors(db: SpeakerDB) -> list[np.ndarray]:
    """Every vector the database holds, opened: centroids, utterance embeddings, cohort."""
    with db.store.read() as s:
        _, centroids = store.centroids(s)
        utterances = [u.vector() for sp in store.speakers_by_name(s) for sp_u in [sp.utterances] for u in sp_u]
        cohort = store.cohort(s)
    return [*centroids, *utterances, *cohort]


def _needles(vectors: list[np.ndarray]) -> list[bytes]:
    """Each vector as the erasure tests look for it: whole and in parts, float32 and float64."""
    out = []
    for v in vectors:
        f32, f64 = np.asarray(v, "<f4"), np.asarray(v, "<f8")
        out += [f32.tobytes(), f32[:8].tobytes(), f32[10:18].tobytes(), f64.tobytes(), f64[:4].tobytes()]
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def _pg_files(pg_admin: str, url: str) -> dict[str, bytes]:
    import psycopg

    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the rows reach the table files
        data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    with psycopg.connect(url) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return _files(data_dir / "base" / str(oid))


def _holding(files: dict[str, bytes], needles: list[bytes]) -> list[str]:
    return [name for name, data in files.items() if any(n in data for n in needles)]


def _fill(db: SpeakerDB, clips, cohort_seed: int = 0) -> None:
    for name in ("alice", "bob", "carol"):
        db.enroll(name, clips[name][:2])
    rng = np.random.default_rng(cohort_seed)
    cohort = rng.standard_normal((5, FakeEmbedder.dim)).astype(np.float32)
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    with db.store.write() as s:
        store.replace_cohort(s, [(f"c{i}", f"{i:064x}", v) for i, v in enumerate(cohort)])
    assert db.identify([clips["alice"][2]])[0].speaker == "alice"  # the index file is written
    db.remove("carol")  # zeroed in the index file in place


# ---- nothing readable on disk -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_no_stored_vector_and_no_data_key_in_any_file(kind, encrypted, tmp_path, clips, request, monkeypatch):
    if encrypted:
        monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(_key(tmp_path)))
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "db" / "index"))
    target = _target(kind, tmp_path, request)
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:
        _fill(db, clips)
        assert db.store.encrypted is encrypted
        needles = _needles(_vectors(db))
        keys = db.store.codec.fingerprints() if encrypted else []
        assert db.identify([clips["bob"][2]])[0].speaker == "bob"
    files = _files(tmp_path / "db")
    if kind == "postgresql":
        files.update(_pg_files(request.getfixturevalue("pg_admin"), str(target)))
    assert any(name.endswith(".faiss") for name in files)
    if not encrypted:  # the search finds vectors where they are stored in the clear
        assert _holding(files, needles)
        return
    assert _holding(files, needles) == []
    assert len(keys) == 2 and _holding(files, keys + [k.hex().encode() for k in keys]) == []
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:  # and all of it opens again with the key
        assert [r.speaker for r in db.identify([clips[n][2] for n in ("alice", "bob", "carol")])] == [
            "alice",
            "bob",
            None,
        ]


def test_db_encrypt_converts_a_database_and_its_index_in_place(tmp_path, clips, monkeypatch):
    path = tmp_path / "db" / "speakers.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        _fill(db, clips)
        db.create_gallery("b")
        other = db.for_gallery("b")  # another tenant's speakers and index file
        other.enroll("dave", clips["dave"][:2])
        assert other.identify([clips["dave"][2]])[0].speaker == "dave"
        mine, theirs = _needles(_vectors(db)), _needles(_vectors(other))
        needles = mine + theirs
        other.close()
        assert not db.info().encrypted
    assert _holding(_files(tmp_path / "db"), needles)  # in the clear before
    key = _key(tmp_path)
    done = _cli(path, "db", "encrypt", "--json", env={"SPEAKERDB_KEY_FILE": str(key)})
    assert done.exit_code == 0, done.output
    assert _holding(_files(tmp_path / "db"), needles) == []
    assert (tmp_path / "db" / "speakers.sqlite.faiss").exists()  # rewritten, sealed
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(key))
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        assert db.info().encrypted and db.identify([clips["bob"][2]])[0].speaker == "bob"
        assert _needles(_vectors(db)) == mine  # the same vectors, opened in memory
        assert _needles(_vectors(db.for_gallery("b"))) == theirs
        db.enroll("dave", clips["dave"][:2])
        assert db.identify([clips["dave"][2]])[0].speaker == "dave"
        assert db.for_gallery("b").identify([clips["dave"][2]])[0].speaker == "dave"
    assert _holding(_files(tmp_path / "db"), needles) == []
    monkeypatch.delenv("SPEAKERDB_KEY_FILE")
    with pytest.raises(EncryptionKeyMissingError):
        SpeakerDB(path, embedder=FakeEmbedder())
    again = _cli(path, "db", "encrypt", env={"SPEAKERDB_KEY_FILE": str(key)})
    assert again.exit_code == 1 and "already encrypted" in again.stderr


def test_db_encrypt_zeroes_the_plain_index_files_before_deleting_them(tmp_path, clips):
    """The plain vectors of every gallery's index file do not stay in the freed blocks: a
    descriptor opened before `db encrypt` reads what those blocks hold afterwards."""
    path = tmp_path / "db" / "speakers.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        _fill(db, clips)
        db.create_gallery("b")
        with db.for_gallery("b") as other:
            other.enroll("dave", clips["dave"][:2])
            assert other.identify([clips["dave"][2]])[0].speaker == "dave"
            needles, index_paths = _needles(_vectors(db) + _vectors(other)), [db.index_path, other.index_path]
    held = [open(p, "rb") for p in index_paths]
    assert all(any(n in data for n in needles) for data in [f.read() for f in held])  # in the clear
    done = _cli(path, "db", "encrypt", env={"SPEAKERDB_KEY_FILE": str(_key(tmp_path))})
    assert done.exit_code == 0, done.output
    for f in held:
        f.seek(0)
        data = f.read()
        f.close()
        assert data == bytes(len(data))


# ---- nodes that keep running without the key while another encrypts ----------------------------
def _node(target, index_dir: Path, monkeypatch) -> SpeakerDB:
    """A node of ``target`` whose index cache (a server database's) is in ``index_dir``."""
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(index_dir))
    return SpeakerDB(target, embedder=FakeEmbedder())


@pytest.mark.parametrize("first", ["identify", "remove"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_node_without_the_key_erases_its_plain_index_files_when_another_encrypts(
    kind, first, tmp_path, clips, request, monkeypatch
):
    """`db encrypt` on node A cannot reach node B's disk: B's first request after it, a read
    or a write, erases every plain index file B keeps (zeroed, then deleted), and is refused
    in one line that names the database, not a speaker."""
    monkeypatch.delenv("SPEAKERDB_KEY_FILE", raising=False)
    target = _target(kind, tmp_path, request)
    node_b = _node(target, tmp_path / "node-b", monkeypatch)
    node_b.create_gallery("b")
    gallery_b = node_b.for_gallery("b")
    try:
        gallery_b.enroll("dave", clips["dave"][:2])
        assert gallery_b.identify([clips["dave"][2]])[0].speaker == "dave"  # its file written
        node_b.enroll("alice", clips["alice"][:2])
        node_b.enroll("bob", clips["bob"][:2])
        assert node_b.identify([clips["alice"][2]])[0].speaker == "alice"
        needles = _needles(_vectors(node_b) + _vectors(gallery_b))
        plain = [node_b.index_path, gallery_b.index_path]
        held = [open(p, "rb") for p in plain]
        assert all(_holding({"file": f.read()}, needles) for f in held)  # in the clear on B's disk
        monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "node-a"))
        api.encrypt_database(target, api.KeySource(file=str(_key(tmp_path))))
        if kind == "postgresql":  # another machine's cache: db encrypt cannot reach it
            assert all(p.exists() for p in plain)
        sealed = _files(tmp_path / "db") if kind == "sqlite" else {}  # one index path on SQLite, sealed by A
        with pytest.raises(EncryptionKeyMissingError) as refused:
            if first == "identify":
                node_b.identify([clips["alice"][2]])
            else:
                node_b.remove("bob")
        for f in held:  # what B's files held is zeroed, not only unlinked
            f.seek(0)
            data = f.read()
            f.close()
            assert data == bytes(len(data))
        node_files = _files(tmp_path / "node-b") if kind == "postgresql" else _files(tmp_path / "db")
        assert _holding(node_files, needles) == []
        if kind == "postgresql":
            assert not any(p.exists() for p in plain)  # both galleries' at once
        else:
            assert _files(tmp_path / "db") == sealed  # the sealed file a node with the key wrote stays
        message = str(refused.value)
        assert "encrypted by another process" in message and "restart this process with the key" in message
        assert "of speaker" not in message and message.count("\n") == 0
        for again in (lambda: node_b.identify([clips["bob"][2]]), lambda: node_b.enroll("eve", clips["carol"][:1])):
            with pytest.raises(EncryptionKeyMissingError):
                again()
    finally:
        gallery_b.close()
        node_b.close()
    assert _holding(_files(tmp_path / "node-b"), needles) == []  # closing saved nothing in the clear


def test_the_service_tells_a_client_in_one_line_that_the_node_needs_the_key(tmp_path, clips, monkeypatch):
    """A client is told what happened and who can fix it, without the operator's internals
    (speaker ids, paths, variables); the library's message, for the operator, keeps them."""
    from speakerdb.service import responses

    monkeypatch.delenv("SPEAKERDB_KEY_FILE", raising=False)
    path = tmp_path / "db" / "speakers.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as node:
        node.enroll("alice", clips["alice"][:2])
        assert node.identify([clips["alice"][2]])[0].speaker == "alice"
        api.encrypt_database(path, api.KeySource(file=str(_key(tmp_path))))
        with pytest.raises(EncryptionKeyMissingError) as refused:
            node.identify([clips["alice"][2]])
    answer = responses.from_library(refused.value, {})
    assert (answer.status, answer.code) == (503, "encryption_key_missing")
    assert answer.message == (
        "this database is encrypted and this server was started without its key: "
        "an operator must restart it with the key (see docs/security.md)"
    )
    operator = str(refused.value)
    assert str(path) in operator and "SPEAKERDB_KEY_FILE" in operator and "speaker 1" not in operator


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_node_restarted_with_the_key_says_its_plain_index_is_from_before_the_encryption(
    kind, tmp_path, clips, request, monkeypatch, caplog
):
    """The plain file of a node stopped during `db encrypt` is erased at its restart with the
    key, said at info level as what it is, not as damage."""
    monkeypatch.delenv("SPEAKERDB_KEY_FILE", raising=False)
    target = _target(kind, tmp_path, request)
    with _node(target, tmp_path / "node-b", monkeypatch) as node_b:
        node_b.enroll("alice", clips["alice"][:2])
        assert node_b.identify([clips["alice"][2]])[0].speaker == "alice"
        needles, plain = _needles(_vectors(node_b)), node_b.index_path
    kept = plain.read_bytes()
    key = _key(tmp_path)
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "node-a"))
    api.encrypt_database(target, api.KeySource(file=str(key)))
    if kind == "sqlite":  # one index path: put back the plain file A's encryption replaced
        plain.write_bytes(kept)
    assert _holding({plain.name: plain.read_bytes()}, needles)
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(key))
    with caplog.at_level("INFO", logger="speakerdb"), _node(target, tmp_path / "node-b", monkeypatch) as node_b:
        assert node_b.identify([clips["alice"][2]])[0].speaker == "alice"
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "index" in r.getMessage()]
    assert not [m for level, m in said if level == "WARNING" or "damaged" in m], said
    assert [m for level, m in said if level == "INFO" and "unencrypted index of a database encrypted since" in m]
    assert _holding({plain.name: plain.read_bytes()}, needles) == []


# ---- a wrong or missing key: one line, nothing touched ------------------------------------------
def _cli(db: Path | str, *args: str, env: dict | None = None):
    """The command line in this process (a subprocess costs seconds on a busy machine): the
    key variables are only those in ``env``."""
    unset = {"SPEAKERDB_KEY_FILE": None, "SPEAKERDB_KEY_COMMAND": None}
    return CliRunner().invoke(cli, ["--db", str(db), *args], env={**unset, **(env or {})})


def _env(tmp_path: Path) -> dict:
    return {"SPEAKERDB_KEY_FILE": str(tmp_path / "db.key")}


def test_a_wrong_or_missing_key_is_one_line_and_touches_nothing(tmp_path, clips, monkeypatch):
    key, other = _key(tmp_path), _key(tmp_path, "other.key")
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(key))
    path = tmp_path / "db" / "speakers.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        _fill(db, clips)
    before = _files(tmp_path / "db")
    attempts = {
        "missing": ({}, "is encrypted: give its key"),
        "wrong file": ({"SPEAKERDB_KEY_FILE": str(other)}, "is not the key of database"),
        "wrong command": ({"SPEAKERDB_KEY_COMMAND": f"cat {other}"}, "is not the key of database"),
        "failing command": ({"SPEAKERDB_KEY_COMMAND": "echo no vault >&2; exit 3"}, "exit status 3): no vault"),
        "unreadable file": ({"SPEAKERDB_KEY_FILE": str(tmp_path / "absent.key")}, "cannot read the key file"),
    }
    for what, (env, said) in attempts.items():
        for args in (["list"], ["enroll", "zed", str(clips["dave"][0])], ["key", "rotate", "--reencrypt"]):
            done = _cli(path, *args, env=env)
            assert done.exit_code == 1, (what, args, done.output)
            assert done.stderr.count("\n") == 1 and said in done.stderr, (what, args, done.stderr)
            assert _files(tmp_path / "db") == before, (what, args)
    # a rotation whose new key cannot be read is refused before the database is opened
    done = _cli(
        path, "key", "rotate", "--new-key-file", str(tmp_path / "absent.key"), env={"SPEAKERDB_KEY_FILE": str(key)}
    )
    assert done.exit_code == 1 and "cannot read the key file" in done.stderr and _files(tmp_path / "db") == before
    with pytest.raises(EncryptionKeyWrongError):
        SpeakerDB(path, embedder=FakeEmbedder(), key=api.KeySource(file=str(other)))


def test_a_vector_moved_to_another_row_does_not_open(tmp_path, clips, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(_key(tmp_path)))
    path = tmp_path / "db" / "speakers.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        _fill(db, clips)
    import sqlite3

    with sqlite3.connect(path) as conn:  # bob gets alice's sealed centroid
        conn.execute(
            "UPDATE speakers SET centroid = (SELECT centroid FROM speakers WHERE name = 'alice') WHERE name = 'bob'"
        )
    for p in tmp_path.glob("db/*.faiss"):
        p.unlink()
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        with pytest.raises(DatabaseError, match="does not authenticate"):
            db.identify([clips["alice"][2]])


# ---- rotation while others read and write ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_rotation_with_readers_and_writers_running(kind, tmp_path, clips, request, monkeypatch):
    old, new = _key(tmp_path, "old.key"), _key(tmp_path, "new.key")
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(old))
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "db" / "index"))
    target = _target(kind, tmp_path, request)
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
    stop, errors, enrolled = threading.Event(), [], []

    def reader() -> None:
        with SpeakerDB(target, embedder=FakeEmbedder()) as db:
            while not stop.is_set():
                try:
                    [a, b] = db.identify([clips["alice"][2], clips["bob"][2]])
                    assert (a.speaker, b.speaker) == ("alice", "bob")
                except Exception as e:  # noqa: BLE001  (reported by the main thread)
                    errors.append(f"reader: {e!r}")
                    return

    def writer() -> None:
        with SpeakerDB(target, embedder=FakeEmbedder()) as db:
            n = 0
            while not stop.is_set():
                try:
                    db.enroll(f"w{n}", [clips["carol"][n % 3], clips["dave"][n % 3]])
                    enrolled.append(f"w{n}")
                    n += 1
                except Exception as e:  # noqa: BLE001
                    errors.append(f"writer: {e!r}")
                    return

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        while len(enrolled) < 2 and not errors:
            stop.wait(0.05)
        again = api.rotate_key(target, reencrypt=True)  # a new data key, under the same key
        assert again.reencrypted and again.dek_id == 2
        count = len(enrolled)
        while len(enrolled) < count + 2 and not errors:
            stop.wait(0.05)
        moved = api.rotate_key(target, api.KeySource(file=str(new)))  # the data key under the new key
        assert moved.rewrapped and not moved.reencrypted
        count = len(enrolled)
        while len(enrolled) < count + 2 and not errors:
            stop.wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    with pytest.raises(EncryptionKeyWrongError):
        SpeakerDB(target, embedder=FakeEmbedder())  # the old key no longer opens it
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(new))
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:
        assert {s.name for s in db.list()} == {"alice", "bob", *enrolled}
        assert len(_vectors(db)) == 2 + 3 * len(enrolled) + 4  # every vector opens under data key 2
        assert db.store.codec.dek_id == 2
        assert db.identify([clips["bob"][2]])[0].speaker == "bob"


# ---- galleries sealed to a recipient ----------------------------------------------------------------
def test_a_gallery_sealed_to_a_recipient_opens_only_with_their_key(tmp_path, clips, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(_key(tmp_path)))
    source, sealed = tmp_path / "db" / "a.sqlite", tmp_path / "b.gallery"
    with SpeakerDB(source, embedder=FakeEmbedder()) as db:
        db.enroll("alice", clips["alice"][:2])
        db.enroll("bob", clips["bob"][:2])
        needles = _needles(_vectors(db))
    for name in ("site-b.key", "other.key"):
        assert _cli(source, "key", "pair", str(tmp_path / name)).exit_code == 0
    assert (tmp_path / "site-b.key").stat().st_mode & 0o777 == 0o600
    done = _cli(source, "export", str(sealed), "--to-key", str(tmp_path / "site-b.key.pub"), env=_env(tmp_path))
    assert done.exit_code == 0, done.output
    data = sealed.read_bytes()
    assert not data.startswith(b"PK") and _holding({"g": data}, needles) == []
    target = tmp_path / "site-b.sqlite"
    refused = {
        (): "sealed to a recipient's key: import it with --key",
        ("--key", str(tmp_path / "other.key")): "does not open with the private key",
        ("--key", str(tmp_path / "site-b.key.pub")): "is not an unencrypted X25519 private key",
    }
    for args, said in refused.items():
        done = _cli(target, "import", str(sealed), *args)
        assert done.exit_code == 1 and done.stderr.count("\n") == 1 and said in done.stderr, (args, done.output)
    assert not target.exists()
    done = _cli(target, "import", str(sealed), "--key", str(tmp_path / "site-b.key"))
    assert done.exit_code == 0, done.output
    with SpeakerDB(target, embedder=FakeEmbedder()) as db:
        assert sorted(s.name for s in db.list()) == ["alice", "bob"]
        assert sorted(map(bytes, _needles(_vectors(db)))) == sorted(map(bytes, needles))


def test_a_large_sealed_index_opens_on_two_threads_and_still_names_a_damaged_block(tmp_path, monkeypatch):
    """From OPEN_THREADS_FROM_BLOCKS blocks the sealed vectors are opened on two threads: every
    vector comes back where it was, and a block altered in the file is still refused by number."""
    from speakerdb.storage import index as index_file

    n, dim = 70 * crypto.INDEX_BLOCK, 8
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = index_file.SpeakerIndex.build(np.arange(1, n + 1), vectors, dim, generation=1)
    codec = crypto.Sealer(1, bytes(range(32)))
    path = tmp_path / "sealed.faiss"
    built.save(path, codec)
    threads: list[str] = []
    real = index_file.ThreadPoolExecutor

    def watched(*args, **kw):
        threads.append(kw.get("thread_name_prefix", ""))
        return real(*args, **kw)

    monkeypatch.setattr(index_file, "ThreadPoolExecutor", watched)
    loaded = index_file.SpeakerIndex.load(path, codec)
    assert threads == ["speakerdb-open"]
    found = loaded.search(vectors[[0, n // 2, n - 1]], 1)
    assert [int(ids[0]) for ids in found[1]] == [1, n // 2 + 1, n]
    # One byte of block 37's ciphertext changed: the whole file is refused, naming the block.
    data = bytearray(path.read_bytes())
    data[len(data) - 4 * dim * n + 4 * dim * (37 * crypto.INDEX_BLOCK + 3)] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(index_file.IndexFileError, match="block 37"):
        index_file.SpeakerIndex.load(path, codec)


def test_key_files_go_where_the_docs_put_them_even_when_the_folder_is_new(tmp_path):
    """security.md's `speakerdb key generate ~/.config/speakerdb/db.key` failed for a user
    without that folder: the folders are made, owner-only, whatever the umask."""
    home = tmp_path / "home"
    home.mkdir()
    before = os.umask(0)
    try:
        made = _cli(tmp_path / "unused.sqlite", "key", "generate", str(home / ".config" / "speakerdb" / "db.key"))
        pair = _cli(tmp_path / "unused.sqlite", "key", "pair", str(home / "keys" / "site-b.key"))
    finally:
        os.umask(before)
    assert made.exit_code == 0 and pair.exit_code == 0, made.output + pair.output
    for folder in (home / ".config", home / ".config" / "speakerdb", home / "keys"):
        assert folder.stat().st_mode & 0o777 == 0o700
    for key in (home / ".config" / "speakerdb" / "db.key", home / "keys" / "site-b.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    # A folder that cannot be made is one line, and nothing is written.
    (tmp_path / "plain").write_text("")
    refused = _cli(tmp_path / "unused.sqlite", "key", "generate", str(tmp_path / "plain" / "sub" / "db.key"))
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "unused.sqlite").exists()
