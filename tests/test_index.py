"""The FAISS index equals brute-force numpy search and survives a round trip; damage is detected."""

from __future__ import annotations

import numpy as np
import pytest

from speakerdb.embed import l2_normalize
from speakerdb.index import IndexFileError, SpeakerIndex


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
        path.write_bytes(data.replace(b'"count": 10', b'"count": 11'))
    with pytest.raises(IndexFileError):
        SpeakerIndex.load(path)
