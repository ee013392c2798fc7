"""Issue 21, items 3 and 4: an index file proves it matches the store, or it is rebuilt.

A zeroed 512-byte sector in the alive flags once hid 512 speakers from every search while
every check passed; a header that named the other FAISS kind ended every identify in an
AttributeError. Here each such file, and a few hundred other damaged shapes, must answer
as the store does, with a warning, and be replaced by a good file.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import FakeEmbedder, assert_index_agrees_with_store, voice, write
from speakerdb import SpeakerDB
from speakerdb.storage import gallery, store
from speakerdb.storage import index as index_module
from speakerdb.storage.index import MAGIC, SpeakerIndex
from speakerdb.storage.indexkeeper import IndexKeeper


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _database(tmp_path: Path, n: int, kind: str = "flat", target: str | None = None) -> tuple[str | Path, Path]:
    """A database of ``n`` speakers (random centroids of the fake embedder's size) with its index
    file: at ``target`` (a PostgreSQL URL) or in ``tmp_path``; returns it and the index's path."""
    vectors = _unit(n, FakeEmbedder.dim, 0)
    speakers = [
        gallery.GallerySpeaker(
            f"s{i}", None, None, {}, [gallery.GalleryUtterance(f"s{i}.wav", 2.0, f"{i:064x}", None, v)]
        )
        for i, v in enumerate(vectors)
    ]
    source = tmp_path / "speakers.gallery"
    gallery.write(source, gallery.Gallery(FakeEmbedder().model_id, None, FakeEmbedder.dim, speakers), "test")
    path = target or tmp_path / "db.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.import_gallery(source)
        if kind == "hnsw":
            db.set_index_params(approximate_above=0)
        db.rebuild_index()
        index_path = Path(db.index_path)
    assert SpeakerIndex.read_header(index_path)["kind"] == kind
    return path, index_path


def _misses(path: str | Path) -> int:
    """How many speakers a fresh process's search does not name first for their own centroid
    (what identify does with a query: search the index, then name the ids it found)."""
    with SpeakerDB(path, embedder=FakeEmbedder()) as db, db.indexer.snapshot() as (s, index):
        ids, vectors = store.centroids(s)
        _, found = index.search(vectors, 1)  # (n, 1)
        return int(np.count_nonzero(found[:, 0] != ids)) if len(found) and found.shape[1] else len(ids)


def _sections(path: Path) -> dict[str, tuple[int, int]]:
    """Where each part of an index file lies: name -> (start, end) byte offsets."""
    data = path.read_bytes()
    header_len = struct.unpack_from("<I", data, len(MAGIC))[0]
    start = len(MAGIC) + 12 + header_len
    header = json.loads(data[len(MAGIC) + 12 : start])
    n, dim = header["positions"], header["dim"]
    return {
        "header": (len(MAGIC) + 12, start),
        "labels": (start, start + 8 * n),
        "alive": (start + 8 * n, start + 9 * n),
        "payload before vectors": (start + 9 * n, len(data) - 4 * n * dim),
        "vectors": (len(data) - 4 * n * dim, len(data)),
    }


def _rewrite_header(data: bytes, change) -> bytes:
    """The file with its JSON header changed by ``change`` and its digest (if any) made right again:
    a header that is well-formed and consistent with itself, only wrong about the payload."""
    header_len, scrubbed = struct.unpack_from("<IQ", data, len(MAGIC))
    start = len(MAGIC) + 12
    header = change(json.loads(data[start : start + header_len]))
    if "header_sha256" in header and hasattr(index_module, "_header_digest"):
        header["header_sha256"] = index_module._header_digest(header)
    encoded = json.dumps(header).encode()
    return MAGIC + struct.pack("<IQ", len(encoded), scrubbed) + encoded + data[start + header_len :]


# ---- item 3: a zeroed sector in the alive flags -----------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_zeroed_sector_in_the_alive_flags_is_found_and_the_file_rebuilt(tmp_path, caplog, request, backend):
    n = 600  # 600 alive flags hold a whole 512-byte sector
    path, index_path = _database(
        tmp_path, n, target=request.getfixturevalue("pg_url") if backend == "postgresql" else None
    )
    a, _ = _sections(index_path)["alive"]
    data = bytearray(index_path.read_bytes())
    data[a + 44 : a + 556] = bytes(512)
    index_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        assert _misses(path) == 0  # 512 speakers were "unknown" here
    assert any("index" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records), caplog.text
    # The file was replaced: the next process loads every speaker from it, with no warning.
    assert len(SpeakerIndex.load(index_path)) == n
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        assert _misses(path) == 0
    assert not caplog.records, caplog.text
    # and later writes do not carry the damage on
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.remove("s1")
    assert _misses(path) == 0
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


@pytest.mark.parametrize("section", ["labels", "alive", "payload before vectors", "vectors"])
def test_a_zeroed_sector_anywhere_means_right_answers_and_a_good_file(tmp_path, section):
    path, index_path = _database(tmp_path, 600)
    a, b = _sections(index_path)[section]
    data = bytearray(index_path.read_bytes())
    at = max(a, min((a + b) // 2 - 256, b - 512))
    data[at : min(at + 512, b)] = bytes(min(512, b - at))
    index_path.write_bytes(bytes(data))
    assert _misses(path) == 0
    assert len(SpeakerIndex.load(index_path)) == 600
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_file_true_to_itself_but_not_to_the_store_is_rebuilt(tmp_path, caplog, request, backend):
    """Speakers dead in the file (flag and vector zeroed, as after a remove) but alive in the
    store: no digest or norm can tell, only the store."""
    path, index_path = _database(
        tmp_path, 300, target=request.getfixturevalue("pg_url") if backend == "postgresql" else None
    )
    with SpeakerDB(path, embedder=FakeEmbedder()) as db, db.store.read() as s:
        ids = store.centroids(s)[0][:100]
    header = SpeakerIndex.read_header(index_path)
    assert SpeakerIndex.kill_in_file(index_path, ids, header["scrubbed_to"]) == 100
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        assert _misses(path) == 0
    assert any("damaged" in r.getMessage() and "speakers" in r.getMessage() for r in caplog.records), caplog.text
    assert len(SpeakerIndex.load(index_path)) == 300


# ---- item 4: a header that names the other kind ---------------------------------------------
@pytest.mark.parametrize("truth, claimed", [("flat", "hnsw"), ("hnsw", "flat")])
def test_a_header_naming_the_other_kind_is_rebuilt(tmp_path, caplog, truth, claimed):
    path = tmp_path / "db.sqlite"
    index_path = Path(f"{path}.faiss")
    clips = {
        name: [write(tmp_path / f"{name}{k}.wav", voice(f0, 2.0, seed=k)) for k in range(3)]
        for name, f0 in {"alice": 210.0, "bob": 110.0, "carol": 310.0}.items()
    }
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        for name, files in clips.items():
            db.enroll(name, files[:2])
        if truth == "hnsw":
            db.set_index_params(approximate_above=0)
        db.rebuild_index()
    assert SpeakerIndex.read_header(index_path)["kind"] == truth
    index_path.write_bytes(_rewrite_header(index_path.read_bytes(), lambda h: {**h, "kind": claimed}))
    assert SpeakerIndex.read_header(index_path)["kind"] == claimed  # the header alone looks right
    with caplog.at_level(logging.WARNING, logger="speakerdb"), SpeakerDB(path, embedder=FakeEmbedder()) as db:
        answers = db.identify([files[2] for files in clips.values()], count_voices=False)
    assert [a.speaker for a in answers] == list(clips)
    assert any("damaged" in r.getMessage() for r in caplog.records), caplog.text
    assert SpeakerIndex.load(index_path).kind == truth  # rebuilt as the settings say
    assert_index_agrees_with_store(path, embedder=FakeEmbedder())


# ---- the rest of the family: header fields and bytes, fuzzed -------------------------------
HEADER_VALUES = {
    "kind": [{"flat": "hnsw", "hnsw": "flat"}],  # the other one
    "dim": [16, 33],
    "positions": [0, 41],
    "max_label": [0, 41],
    "payload_bytes": [0, 10**6],
    "vectors_in_place": [False],
    "generation": [0, 2],
    "nonce": [None, 1],
    "params": [{}, {"approximate_above": -1}, {"hnsw_m": 2**40}],
}
SECTORS = 10  # zeroed 512-byte sectors per file, spread over it


def _shapes(data: bytes, sections: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """Damaged versions of an index file: header fields given other values (the header's
    digest made right, and for a few without), 512-byte sectors zeroed, bytes flipped."""
    shapes: dict[str, bytes] = {}
    header = json.loads(data[sections["header"][0] : sections["header"][1]])
    for key, values in HEADER_VALUES.items():
        for value in values:
            if key == "kind":
                value = value[header["kind"]]

            def change(h: dict, k: str = key, v: Any = value) -> dict:
                """The header ``h`` with field ``k`` set to ``v``; params are merged into the header's own."""
                if k == "params":
                    return {**h, "params": {**h["params"], **v} if v else {}}
                return {**h, k: v}

            shapes[f"{key}={value!r}"] = _rewrite_header(data, change)
            if key in ("kind", "positions", "nonce"):
                plain = json.dumps(change(dict(header))).encode()
                shapes[f"{key}={value!r} (digest not updated)"] = (
                    data[: len(MAGIC)]
                    + struct.pack("<I", len(plain))
                    + data[len(MAGIC) + 4 : len(MAGIC) + 12]
                    + plain
                    + data[sections["header"][1] :]
                )
    n_sectors = -(-len(data) // 512)
    for sector in sorted({round(i * (n_sectors - 1) / (SECTORS - 1)) for i in range(SECTORS)}):
        at = 512 * sector
        shapes[f"sector {sector} zeroed"] = data[:at] + bytes(min(512, len(data) - at)) + data[at + 512 :]
    for name, (a, b) in sections.items():
        for at in sorted({a, (a + b) // 2, b - 1}):
            if a <= at < b:
                flipped = bytearray(data)
                flipped[at] ^= 0x40
                shapes[f"{name}: byte {at - a} flipped"] = bytes(flipped)
    return shapes


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_damaged_shapes_answer_as_the_store_does_and_heal(tmp_path, monkeypatch, kind):
    n = 40
    path, index_path = _database(tmp_path, n, kind)
    good = index_path.read_bytes()
    builds = []
    build = IndexKeeper._build
    monkeypatch.setattr(IndexKeeper, "_build", staticmethod(lambda *a, **k: builds.append(1) or build(*a, **k)))
    failures = []
    for name, damaged in _shapes(good, _sections(index_path)).items():
        index_path.write_bytes(damaged)
        try:
            misses = _misses(path)
            builds.clear()
            again = _misses(path)
        except Exception as e:  # noqa: BLE001 - any exception is a failure to report
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if misses or again:
            failures.append(f"{name}: {misses} of {n} speakers not found, then {again}")
        elif builds:
            failures.append(f"{name}: not healed (the next process rebuilt the index again)")
    assert not failures, "\n".join(failures)
