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


def _full_spectral(a: np.ndarray, k: int) -> np.ndarray:
    """clustering.spectral as it was: k-means on the first k of all the eigenvectors."""
    _, vec = np.linalg.eigh(clustering.laplacian(a))
    return clustering.kmeans(vec[:, :k], k)


def test_the_few_eigenvalues_the_p_search_reads_are_those_of_the_full_decomposition(monkeypatch):
    """From SUBSET_VALUES_FROM items the p search takes only the count smallest eigenvalues and the
    largest, by bisection: the same values as all of them, a repeated one (a graph in pieces: 0 once
    per piece, and 2 once per piece of two) as often as it occurs, also where bisection gives up."""
    monkeypatch.setattr(clustering, "SUBSET_VALUES_FROM", 1)  # every size, to keep this quick
    rng = np.random.default_rng(11)
    far = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:6]
    seen_pieces = set()
    for trial in range(24):
        n = int(rng.integers(40, 160))
        if trial % 3 == 0:  # one voice: a connected graph
            x = _unit(rng.standard_normal((n, DIM)))
        elif trial % 3 == 1:  # far voices no neighbour graph joins: a graph in pieces
            x = _unit(far[rng.integers(0, 6, n)] + 0.01 * rng.standard_normal((n, DIM)))
        else:  # repeated windows
            x = _unit(rng.standard_normal((max(2, n // 4), DIM)))[rng.integers(0, max(2, n // 4), n)]
        sim = x.astype(np.float64) @ x.T.astype(np.float64)
        for p in (2, 3, 5, 9):
            a = clustering.pruned_affinity(sim, p)
            every = np.linalg.eigvalsh(clustering.laplacian(a))
            count = int(rng.integers(3, 14))
            some = clustering.spectrum(a.copy(), count)
            assert len(some) == count + 1
            np.testing.assert_allclose(some, np.concatenate([every[:count], every[-1:]]), rtol=0, atol=1e-12)
            seen_pieces.add(min(int(np.sum(every < clustering.SPLIT_APART)), count))
    assert 1 in seen_pieces and max(seen_pieces) >= 3  # connected graphs and graphs in pieces were tried

    # Where bisection gives up (non-monotonic counts: 2 of 900 graphs of long recordings), all the
    # eigenvalues of the same tridiagonal form.
    import scipy.linalg

    def gives_up(*args, **kwargs):
        raise np.linalg.LinAlgError("stebz (eigh_tridiagonal) did not converge (LAPACK info=2)")

    monkeypatch.setattr(scipy.linalg, "eigvalsh_tridiagonal", gives_up)
    a = clustering.pruned_affinity(sim, 3)
    every = np.linalg.eigvalsh(clustering.laplacian(a))
    np.testing.assert_allclose(
        clustering.spectrum(a.copy(), 5), np.concatenate([every[:5], every[-1:]]), rtol=0, atol=1e-12
    )


def test_the_voices_k_means_takes_only_the_eigenvectors_it_uses_with_the_same_voices(monkeypatch):
    """From SUBSET_VECTORS_FROM items k-means gets only the first k eigenvectors (LAPACK's syevr on
    a subset): the labels of all of them (an eigenvector's sign, all that differs, is not seen by
    k-means). Where k cuts a repeated eigenvalue (a graph in more pieces than voices: its 0s), the
    two routines pick different bases of that space, and k-means on syevr's split the graph
    elsewhere in 3 of these 4 cases: there the full decomposition is taken, as before."""
    monkeypatch.setattr(clustering, "SUBSET_VECTORS_FROM", 1)
    taken: list[bool] = []
    original = clustering._smallest_vectors

    def smallest_vectors(lap, k):
        vec = original(lap, k)
        taken.append(vec is not None)
        return vec

    monkeypatch.setattr(clustering, "_smallest_vectors", smallest_vectors)
    rng = np.random.default_rng(5)
    for voices in (2, 3, 5):  # connected graphs: the subset is taken
        centres = _voices(0.75, voices, rng)
        x = _unit(centres[np.repeat(np.arange(voices), 30)] + 0.035 * rng.standard_normal((30 * voices, DIM)))
        a = clustering.pruned_affinity(x.astype(np.float64) @ x.T.astype(np.float64), 35)  # > a voice
        taken.clear()
        np.testing.assert_array_equal(clustering.spectral(a, voices), _full_spectral(a, voices))
        assert taken == [True]
    for seed, pieces, k in ((0, 3, 2), (0, 4, 3), (1, 3, 2), (1, 4, 3)):  # k cuts the pieces' 0s
        rng = np.random.default_rng(seed)
        far = np.linalg.qr(rng.standard_normal((32, 32)))[0][:4]
        x = far[np.repeat(np.arange(pieces), 40)] + 0.05 * rng.standard_normal((40 * pieces, 32))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        a = clustering.pruned_affinity(x @ x.T, 5)
        taken.clear()
        np.testing.assert_array_equal(clustering.spectral(a, k), _full_spectral(a, k))
        assert taken == [False]


@pytest.mark.parametrize(
    "case", ["three voices", "ten far voices, up to 20", "three far voices, told two", "one voice, repeated windows"]
)
def test_the_subset_decompositions_give_the_voices_of_the_full_ones(monkeypatch, case):
    """clustering.voices with every decomposition a subset one (thresholds at 1 item) gives the
    labels it gives with every one full, on connected graphs and on graphs in pieces."""
    rng = np.random.default_rng(9)
    hints = None
    if case == "three voices":
        centres = _voices(0.75, 3, rng)
        x = _unit(centres[np.repeat([0, 1, 2, 0, 1, 2], 40)] + 0.035 * rng.standard_normal((240, DIM)))
    elif case == "ten far voices, up to 20":
        far = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:10]
        x = _unit(far[np.repeat(np.arange(10), 20)] + 0.01 * rng.standard_normal((200, DIM)))
        hints = clustering.Hints(max_speakers=20)
    elif case == "three far voices, told two":
        far = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:3]
        x = _unit(far[np.repeat([0, 1, 2], 50)] + 0.01 * rng.standard_normal((150, DIM)))
        hints = clustering.Hints(speakers=2)
    else:
        x = _unit(rng.standard_normal((30, DIM)))[rng.integers(0, 30, 180)]
    monkeypatch.setattr(clustering, "SUBSET_VALUES_FROM", 10**9)
    monkeypatch.setattr(clustering, "SUBSET_VECTORS_FROM", 10**9)
    full = clustering.voices(x, hints=hints)
    monkeypatch.setattr(clustering, "SUBSET_VALUES_FROM", 1)
    monkeypatch.setattr(clustering, "SUBSET_VECTORS_FROM", 1)
    np.testing.assert_array_equal(clustering.voices(x, hints=hints), full)


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
