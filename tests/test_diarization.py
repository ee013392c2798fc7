"""How many voices a recording holds, found from the recording (speakerdb/clustering.py),
and diarization without a database (issue 24). Window vectors are made directly, so these
run in milliseconds; the CLI tests use the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SR, EnergyDetector, voice, write
from speakerdb import clustering, timeline
from speakerdb.audio import vad
from speakerdb.cli import cli
from speakerdb.errors import InvalidInputError
from speakerdb.timeline import Gallery, Params

DIM = 64


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _voices(similarity: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit voice centres whose pairwise cosine is ``similarity`` (a shared room/line
    component plus each voice's own)."""
    shared = rng.standard_normal(DIM)
    shared /= np.linalg.norm(shared)
    own = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:, :n].T  # orthonormal, (n, DIM)
    own -= (own @ shared)[:, None] * shared[None]
    own = _unit(own)
    return _unit(np.sqrt(similarity) * shared + np.sqrt(1 - similarity) * own)


def _recording(order: list[int], centres: np.ndarray, rng: np.random.Generator, turn_s: float = 6.0):
    """Regions, windows and window vectors of turns by ``order`` (voice per turn), 1 s apart.
    Each window is its voice's centre plus noise that puts two windows of one voice at ~0.93."""
    regions = [vad.Region(i * (turn_s + 1), i * (turn_s + 1) + turn_s) for i in range(len(order))]
    spans = timeline.plan_windows(regions)
    truth = np.array([order[r] for _, _, r in spans])
    vectors = _unit(centres[truth] + 0.035 * rng.standard_normal((len(spans), DIM)))
    return regions, spans, vectors, truth, len(order) * (turn_s + 1)


def _assemble(order, similarity, params=None, seed=0):
    rng = np.random.default_rng(seed)
    regions, spans, vectors, truth, duration = _recording(order, _voices(similarity, max(order) + 1, rng), rng)
    return timeline.assemble("room.wav", duration, regions, spans, vectors, Gallery.empty(DIM, 0.8), params or Params())


def test_two_voices_in_one_room_are_two_voices_and_one_voice_is_one():
    """Two people in one room: their windows score ~0.75 across (above the old cut at the
    threshold minus 0.18, and near the database's 0.80), ~0.93 within: two voices. The
    same recording with one person is one voice."""
    t = _assemble([0, 1, 0, 1, 0, 1], similarity=0.80)
    assert [s.label for s in t.segments] == ["unknown-1", "unknown-2"] * 3
    assert len(t.voices) == 2
    t = _assemble([0, 0, 0, 0, 0, 0], similarity=0.80)
    assert {s.label for s in t.segments} == {"unknown-1"} and len(t.voices) == 1


def test_the_number_of_voices_is_found_from_the_recording():
    for n in (3, 4):
        order = [i % n for i in range(2 * n)]
        t = _assemble(order, similarity=0.75, seed=n)
        assert len(t.voices) == n, n


def test_a_meeting_of_more_than_eight_voices_is_counted_without_a_hint():
    """Nine people at a council meeting, each heard twice: nine voices. Under the old
    default cap of 8 the search for p saw no gap at all and found one voice."""
    order = [i % 9 for i in range(18)]
    for seed in (9, 10):
        t = _assemble(order, similarity=0.75, seed=seed)
        assert len(t.voices) == 9, seed
        assert {s.label for s in t.segments} == {f"unknown-{i}" for i in range(1, 10)}


def test_hints_on_the_number_of_voices_are_obeyed():
    rng = np.random.default_rng(5)
    centres = _voices(0.75, 3, rng)
    centres[2] = _unit(centres[1] + 0.25 * centres[2])  # voices 2 and 3 nearly alike (~0.93)
    regions, spans, vectors, _, duration = _recording([0, 1, 2, 0, 1, 2], centres, rng)

    def count(params: Params) -> int:
        t = timeline.assemble("x.wav", duration, regions, spans, vectors, Gallery.empty(DIM, 0.8), params or Params())
        return len(t.voices)

    assert count(Params()) == 2  # alike enough to be one voice unless told otherwise
    assert count(Params(speakers=3)) == 3
    assert count(Params(min_speakers=3)) == 3
    assert count(Params(speakers=1)) == 1
    assert count(Params(max_speakers=1)) == 1
    with pytest.raises(InvalidInputError, match="either speakers or"):
        Params(speakers=2, max_speakers=3).check()
    with pytest.raises(InvalidInputError, match="exceeds"):
        Params(min_speakers=3, max_speakers=2).check()
    with pytest.raises(InvalidInputError, match="speakers must be"):
        Params(speakers=0).check()


def test_clustering_window_vectors_directly():
    """clustering.voices on a set of window vectors (what a live session's close() uses):
    labels numbered by first appearance, the same answer with runs of windows averaged."""
    rng = np.random.default_rng(3)
    centres = _voices(0.8, 3, rng)
    truth = np.repeat([1, 0, 2, 0, 1, 2], 12)
    vectors = _unit(centres[truth] + 0.035 * rng.standard_normal((len(truth), DIM)))
    expected = np.repeat([0, 1, 2, 1, 0, 2], 12)
    np.testing.assert_array_equal(clustering.voices(vectors), expected)
    np.testing.assert_array_equal(clustering.voices(vectors, max_items=36), expected)
    assert clustering.voices(np.zeros((0, DIM))).tolist() == []
    assert clustering.voices(vectors[:1]).tolist() == [0]


def _count_eigendecompositions(monkeypatch) -> list[int]:
    """Record the size of every symmetric eigendecomposition (eigenvalues only) numpy makes."""
    sizes: list[int] = []
    original = np.linalg.eigvalsh

    def eigvalsh(a, *args, **kwargs):
        sizes.append(len(a))
        return original(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigvalsh", eigvalsh)
    return sizes


def test_the_p_search_decomposes_each_candidate_graph_once(monkeypatch):
    """The p search is most of the cost of a long recording (a live session's close() after a
    31-minute turn: some twenty decompositions of 1,000 x 1,000): each candidate graph is
    decomposed once. The chosen graph was decomposed again to count its voices, and every graph
    twice when the search within P_VOICES found nothing and it searched again up to the cap."""
    rng = np.random.default_rng(4)
    centres = _voices(0.75, 3, rng)
    vectors = _unit(centres[np.repeat([0, 1, 2, 0, 1, 2], 40)] + 0.035 * rng.standard_normal((240, DIM)))
    sizes = _count_eigendecompositions(monkeypatch)
    assert len(set(clustering.voices(vectors).tolist())) == 3
    assert sizes == [240] * len(clustering.p_candidates(240))
    # Ten voices, each a tight cluster no neighbour graph joins to another: every graph is in
    # more than P_VOICES pieces, so the search is made again with the cap of 20 voices.
    far = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:10]
    vectors = _unit(far[np.repeat(np.arange(10), 20)] + 0.01 * rng.standard_normal((200, DIM)))
    sizes.clear()
    assert len(set(clustering.voices(vectors, hints=clustering.Hints(max_speakers=20)).tolist())) == 10
    assert sizes == [200] * len(clustering.p_candidates(200))


def test_the_neighbour_graphs_of_one_ordering_are_those_of_a_partition_per_p():
    """The p search takes each candidate's graph from one ordering of every row's nearest
    neighbours: the same graphs as pruned_affinity, ties at the p-th neighbour included (those
    rows are the partition's choice), and the same voices."""
    rng = np.random.default_rng(8)
    for trial in range(40):
        n = int(rng.integers(6, 300))
        x = _unit(rng.standard_normal((n, 8)))
        if trial % 2:  # repeated windows: equal similarities everywhere
            x = x[rng.integers(0, max(2, n // 5), n)]
        sim = x.astype(np.float64) @ x.T.astype(np.float64)
        graphs = clustering._Neighbours(sim, clustering.p_candidates(n)[-1])
        for p in clustering.p_candidates(n):
            np.testing.assert_array_equal(graphs.graph(p), clustering.pruned_affinity(sim, p))
            a = clustering.pruned_affinity(sim, p)
            np.testing.assert_array_equal(clustering.spectrum(a.copy()), np.linalg.eigvalsh(clustering.laplacian(a)))


# ---- without a database ------------------------------------------------------------------------
def _run(args):
    r = CliRunner().invoke(cli, args)
    return r, (json.loads(r.stdout) if r.exit_code == 0 and "--json" in args else None)


def test_timeline_without_a_database_diarizes_and_writes_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    """No database: the model given by --model, a note saying so, voices unknown-N, and no
    database file (nor anything else) created; a file without speech is an empty timeline."""
    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector(level=0.1))
    here = tmp_path / "work"
    here.mkdir()
    gap = np.zeros(SR, np.float32)
    talk = write(here / "talk.wav", np.concatenate([voice(110, 3, seed=1), gap, voice(300, 3, seed=2)]))
    hum = write(here / "hum.wav", (0.05 * np.random.default_rng(2).standard_normal(3 * SR)).astype(np.float32))
    before = sorted(p.name for p in here.iterdir())
    db = tmp_path / "home" / "speakerdb.sqlite"  # the default place (conftest's home), where there is none
    r, docs = _run(["--model", str(tiny_checkpoint), "timeline", str(talk), str(hum), "--json"])
    assert r.exit_code == 0, r.output
    assert f"no database at {db}" in r.stderr and str(tiny_checkpoint) in r.stderr
    talk_doc, hum_doc = docs
    assert talk_doc["segments"] and all(s["label"].startswith("unknown-") for s in talk_doc["segments"])
    assert all(s["speaker"] is None and s["score"] is None for s in talk_doc["segments"])
    assert hum_doc["segments"] == [] and hum_doc["voices"] == []
    assert "no speech found" in r.stderr
    assert sorted(p.name for p in here.iterdir()) == before and not db.exists()
    # The hints reach the library from the command line.
    r, [one] = _run(["--model", str(tiny_checkpoint), "timeline", str(talk), "--speakers", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert {s["label"] for s in one["segments"]} == {"unknown-1"}
    r, _ = _run(["timeline", str(talk), "--speakers", "2", "--max-speakers", "3"])
    assert r.exit_code == 2 and "not both" in r.output
    # A database named and not there is a typo, as for every other command: one line, nothing done.
    typo = here / "speakerdb.sqlit"
    r, _ = _run(["--db", str(typo), "--model", str(tiny_checkpoint), "timeline", str(talk)])
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith(f"Error: no database at {typo}")
    assert r.stdout == ""
    assert sorted(p.name for p in here.iterdir()) == before
