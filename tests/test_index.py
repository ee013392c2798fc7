"""The FAISS index equals brute-force numpy search and survives a round trip; damage is detected."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from speakerdb.embedding.models import l2_normalize
from speakerdb.storage import atomic
from speakerdb.storage import index as index_module
from speakerdb.storage.index import IndexFileError, IndexLockTimeout, SpeakerIndex, remove_files, write_lock


def _random(n: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)))


def brute_force(vectors, ids, queries, k):
    scores = queries @ vectors.T  # (q, n)
    order = np.argsort(-scores, axis=1)[:, :k]  # (q, k)
    return np.take_along_axis(scores, order, axis=1), ids[order]


def test_search_equals_numpy_brute_force():
    vectors, queries = _random(500, 64, 0), _random(20, 64, 1)
    ids = np.arange(1000, 1500, dtype=np.int64)[::-1].copy()  # ids unrelated to positions
    index = SpeakerIndex.build(ids, vectors, 64, generation=3)
    scores, found = index.search(queries, 10)
    ref_scores, ref_ids = brute_force(vectors, ids, queries, 10)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_k_larger_than_index_returns_what_there_is():
    index = SpeakerIndex.build(np.array([7, 9]), _random(2, 8, 0), 8, 1)
    scores, ids = index.search(_random(1, 8, 1), 5)
    assert ids.shape == (1, 2) and set(ids[0]) == {7, 9}


def test_remove_and_add():
    vectors = _random(3, 8, 0)
    index = SpeakerIndex.build(np.array([1, 2, 3]), vectors, 8, 1)
    index.remove(np.array([2]))
    index.add(np.array([4]), vectors[1:2])
    _, ids = index.search(vectors[1:2], 1)
    assert len(index) == 3 and ids[0, 0] == 4


def test_save_load_round_trip(tmp_path):
    vectors = _random(50, 16, 0)
    index = SpeakerIndex.build(np.arange(50), vectors, 16, generation=42)
    index.save(tmp_path / "x.faiss")
    loaded = SpeakerIndex.load(tmp_path / "x.faiss")
    assert (loaded.generation, loaded.dim, len(loaded)) == (42, 16, 50)
    np.testing.assert_array_equal(loaded.search(vectors, 3)[1], index.search(vectors, 3)[1])
    assert [p.name for p in tmp_path.iterdir()] == ["x.faiss"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "bad-header"])
def test_damaged_files_are_detected(tmp_path, damage):
    path = tmp_path / "x.faiss"
    SpeakerIndex.build(np.arange(10), _random(10, 16, 0), 16, 1).save(path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data.replace(b'"max_label": 9', b'"max_label": 8'))
    with pytest.raises(IndexFileError):
        SpeakerIndex.load(path)


def test_replacing_and_removing_keeps_search_exact():
    vectors = _random(300, 32, 0)
    index = SpeakerIndex.build(np.arange(300), vectors, 32, 1)
    updated = _random(50, 32, 5)
    index.add(np.arange(50), updated)  # 50 speakers got new centroids
    index.remove(np.arange(250, 300))  # 50 removed
    live_ids = np.arange(250)
    live_vectors = np.concatenate([updated, vectors[50:250]])
    queries = _random(20, 32, 9)
    scores, ids = index.search(queries, 7)
    ref_scores, ref_ids = brute_force(live_vectors, live_ids, queries, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert len(index) == 250 and index.n_dead == 100


@pytest.mark.parametrize("approximate_above", [200_000, 10])
def test_positions_are_killed_in_the_file_in_place(tmp_path, approximate_above):
    """Flat and HNSW files: a removed speaker's vector leaves the file without a rewrite."""
    path = tmp_path / "x.faiss"
    vectors = _random(40, 16, 0)
    index = SpeakerIndex.build(np.arange(100, 140), vectors, 16, 5, {"approximate_above": approximate_above})
    index.save(path)
    inode = path.stat().st_ino
    assert vectors[3].astype("<f4").tobytes() in path.read_bytes()
    assert SpeakerIndex.kill_in_file(path, np.array([103, 117, 999]), 6) == 2  # 999: not in the file
    data = path.read_bytes()
    assert vectors[3].astype("<f4").tobytes() not in data and vectors[17].astype("<f4").tobytes() not in data
    assert vectors[4].astype("<f4").tobytes() in data and path.stat().st_ino == inode
    loaded = SpeakerIndex.load(path)
    assert len(loaded) == 38 and loaded.generation == 5
    _, ids = loaded.search(vectors, 40)
    assert not np.isin(ids, [103, 117]).any()
    assert SpeakerIndex.kill_in_file(path, np.array([103]), 7) == 0  # already dead
    assert SpeakerIndex.kill_in_file(path, np.array([500]), 8) == 0  # newer than the file
    assert SpeakerIndex.read_header(path)["scrubbed_to"] == 8


def test_removed_vectors_leave_the_file(tmp_path):
    vectors = _random(5, 16, 0)
    index = SpeakerIndex.build(np.arange(5), vectors, 16, 1)
    index.remove(np.array([2]))
    index.save(tmp_path / "x.faiss")
    data = (tmp_path / "x.faiss").read_bytes()
    assert vectors[2].astype("<f4").tobytes() not in data and vectors[3].astype("<f4").tobytes() in data


def test_deleted_index_files_are_zeroed_first_never_through_a_link_or_another_name(tmp_path):
    """Deleting an index file (a removed gallery, `db encrypt`, a damaged file) zeroes it
    first, as SQLite's secure_delete zeroes freed cells: what a descriptor opened before
    reads afterwards is what the freed blocks hold."""
    vectors = _random(50, 16, 0)
    index = SpeakerIndex.build(np.arange(50), vectors, 16, 1)
    path = tmp_path / "x.faiss"
    index.save(path)
    debris = tmp_path / "x.faiss.0a1b2c3d.tmp"  # a killed save's temporary file: a copy
    debris.write_bytes(path.read_bytes())
    held = [open(p, "rb") for p in (path, debris)]
    assert remove_files(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    for f in held:
        data = f.read()
        f.close()
        assert len(data) > 50 * 16 * 4 and data == bytes(len(data))
    # A file another name links to (a hard link: someone's copy) is only unlinked.
    index.save(path)
    kept = path.read_bytes()
    os.link(path, tmp_path / "copy")
    assert remove_files(path) == [] and not path.exists() and (tmp_path / "copy").read_bytes() == kept
    # A link at the index's name goes; what it points to is never written.
    path.symlink_to(tmp_path / "copy")
    assert remove_files(path) == [] and not os.path.lexists(path) and (tmp_path / "copy").read_bytes() == kept
    # A reader that opened it before zeroing reads zeros: damage, rebuilt, never answered from.
    zeroed = tmp_path / "zeroed.faiss"
    zeroed.write_bytes(bytes(len(kept)))
    with pytest.raises(IndexFileError):
        SpeakerIndex.load(zeroed)


def test_what_a_killed_erase_left_is_finished_by_the_next_erase_in_the_directory(tmp_path):
    """Another index's file renamed aside and left part zeroed (its process killed; a removed
    gallery's, which nothing opens again) is zeroed and deleted; a link there only unlinked."""
    vectors = _random(50, 16, 0)
    SpeakerIndex.build(np.arange(50), vectors, 16, 1).save(tmp_path / "x.gallery-2.faiss")
    data = (tmp_path / "x.gallery-2.faiss").read_bytes()
    (tmp_path / "x.gallery-2.faiss").unlink()
    left = tmp_path / "x.gallery-2.faiss.0123456789abcdef.erasing"
    left.write_bytes(bytes(100) + data[100:])
    held = open(left, "rb")
    (tmp_path / "theirs").write_bytes(data)
    link = tmp_path / "x.gallery-3.faiss.fedcba9876543210.erasing"
    link.symlink_to(tmp_path / "theirs")
    assert remove_files(tmp_path / "x.faiss") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]
    assert (tmp_path / "theirs").read_bytes() == data
    assert held.read() == bytes(len(data))
    held.close()


def test_a_failed_replace_zeroes_its_temporary_file_before_deleting_it(tmp_path):
    """A save or an export that fails half-way had written voiceprints into its temporary file."""
    secret = os.urandom(10_000)
    with pytest.raises(RuntimeError), atomic.replace(tmp_path / "x.faiss") as f:
        f.write(secret)
        f.flush()
        [tmp] = tmp_path.glob("x.faiss.*.tmp")
        held = open(tmp, "rb")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    data = held.read()
    held.close()
    assert data == bytes(len(secret))


def test_a_lock_file_deleted_by_its_holder_still_lets_one_writer_in_at_a_time(tmp_path, monkeypatch):
    """A removed gallery's lock file is deleted by its holder: a process that was waiting for it
    must not hold the deleted file while another takes the new one at its name."""
    path = tmp_path / "x.faiss"
    waiting, held, release = threading.Event(), threading.Event(), threading.Event()
    real_sleep = time.sleep

    def sleep(seconds):
        if threading.current_thread() is waiter:
            waiting.set()  # it has the lock file open and waits for the lock
        real_sleep(seconds)

    def wait_for_the_lock():
        with write_lock(path, timeout=10):
            held.set()
            release.wait(10)

    waiter = threading.Thread(target=wait_for_the_lock)
    monkeypatch.setattr(index_module.time, "sleep", sleep)
    with write_lock(path):
        waiter.start()
        assert waiting.wait(10)
        Path(f"{path}.lock").unlink()  # what remove_lock does
    try:
        assert held.wait(10)
        with pytest.raises(IndexLockTimeout), write_lock(path, timeout=0.2):
            pass
    finally:
        release.set()
        waiter.join(10)
    with write_lock(path, timeout=0):
        pass


def test_the_lock_file_names_the_holders_program_not_its_arguments(tmp_path, monkeypatch):
    """A command line may name a speaker (enroll "Jane Doe"): the lock file, and the timeout
    message that quotes it, give the pid and the program only."""
    path = tmp_path / "db.faiss"
    monkeypatch.setattr(index_module.sys, "argv", ["/usr/bin/speakerdb", "enroll", "Jane Doe", "jane.wav"])
    with write_lock(path):
        held = Path(f"{path}.lock").read_text()
        with pytest.raises(IndexLockTimeout) as caught, write_lock(path, timeout=0):
            pass
    assert held == f"pid {os.getpid()} (speakerdb)"
    assert "Jane" not in str(caught.value) and f"pid {os.getpid()} (speakerdb)" in str(caught.value)


def test_hnsw_above_the_size_limit(tmp_path):
    """A small limit makes the HNSW path testable: recall@1 of noisy copies, removal, files."""
    n, dim = 3000, 64
    vectors = _random(n, dim, 0)
    index = SpeakerIndex.build(np.arange(n), vectors, dim, 1, {"approximate_above": 1000})
    assert index.kind == "hnsw"
    rng = np.random.default_rng(1)
    queries = l2_normalize(vectors[:300] + 0.04 * rng.standard_normal((300, dim)))  # cosine ~0.85 to their source
    _, ids = index.search(queries, 1)
    assert np.mean(ids[:, 0] == np.arange(300)) >= 0.99
    index.remove(np.arange(100))
    _, ids = index.search(queries[:100], 3)
    assert not np.isin(ids, np.arange(100)).any()
    assert np.all(index._stored_vectors()[:100] == 0)  # removed vectors are zeroed in place
    index.save(tmp_path / "h.faiss")
    loaded = SpeakerIndex.load(tmp_path / "h.faiss")
    assert loaded.kind == "hnsw" and len(loaded) == n - 100
    assert loaded.params["approximate_above"] == 1000
    np.testing.assert_array_equal(loaded.search(queries[100:], 1)[1], index.search(queries[100:], 1)[1])
