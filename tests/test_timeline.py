"""Who speaks when (speakerdb.timeline, speakerdb.vad): the parts on generated audio and
known vectors, the CLI, and one conversation of real speech (skipped without LibriSpeech)."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import trim
from conftest import SR, EnergyDetector, FakeEmbedder, voice, write
from speakerdb import timeline
from speakerdb.audio import decode as audio
from speakerdb.audio import vad
from speakerdb.cli import cli
from speakerdb.timeline import Gallery, Params

LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "test-other"


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# ---- VAD ------------------------------------------------------------------------------------
def test_silero_streamed_in_odd_blocks_equals_the_packages_own_sequence_model():
    """Same probabilities as silero-vad's SileroVADSequence on the whole signal, whatever the blocks."""
    pytest.importorskip("onnxruntime")
    from silero_vad.sequence_vad import SileroVADSequence

    rng = np.random.default_rng(0)
    x = np.concatenate([voice(180, 1.3, seed=1), 0.01 * rng.standard_normal(9_001).astype(np.float32), voice(120, 2.1)])
    theirs = SileroVADSequence(str(vad.silero_model_path())).audio_forward(x)
    cuts = [0, 333, 5_000, 5_001, 23_456, len(x)]
    ours = vad.probabilities([x[a:b] for a, b in zip(cuts, cuts[1:])])
    assert len(ours) == len(theirs) == -(-len(x) // vad.FRAME)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_silero_detectors_share_one_session_from_several_threads_and_keep_their_own_state():
    """One ONNX session per process (identify made one per file): detectors fed at once from
    several threads each give exactly what they give alone."""
    pytest.importorskip("onnxruntime")
    signals = [voice(100 + 40 * i, 2.0, seed=i) for i in range(4)]
    alone = [vad.probabilities([x]) for x in signals]
    detectors = [vad.load("silero") for _ in signals]
    assert len({id(d.session) for d in detectors}) == 1

    def run(i: int) -> np.ndarray:
        blocks = np.array_split(signals[i], 17)  # many small calls, interleaved with the others'
        return np.concatenate([detectors[i].feed(b) for b in blocks] + [detectors[i].flush()])

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(4)))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_silero_finds_no_speech_in_noise():
    x = (0.05 * np.random.default_rng(1).standard_normal(3 * SR)).astype(np.float32)
    assert vad.regions(vad.probabilities([x]), duration_s=3.0) == []


def test_regions_hysteresis_minimum_lengths_and_padding():
    f = 0.1  # s per frame, to read the expectations easily
    probs = [0, 0.9, 0.9, 0.4, 0.9, 0.1, 0.1, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.8, 0.8, 0.8, 0, 0]
    #        0   1    2    3    4    5    6    7    8    9 ...         13   14   15
    got = vad.regions(probs, frame_s=f, threshold=0.5, min_silence_s=0.25, min_speech_s=0.25, pad_s=0.05)
    # frames 1-4: one region (0.4 is above the 0.35 closing level); frames 5-7 (0.3 s of
    # silence) close it; frame 8 alone is 0.1 s of speech: dropped; 13-15 a second region.
    assert [(round(r.start, 3), round(r.end, 3)) for r in got] == [(0.05, 0.55), (1.25, 1.65)]


def test_regions_tracked_block_by_block_are_those_of_the_whole_recording():
    """A RegionTracker fed random frames in random blocks (what a live session does) gives after
    each block the regions of all the frames so far, and at the end those of the whole
    recording, also when it lets go of the regions before the last but one as it goes."""
    rng = np.random.default_rng(3)
    for trial in range(300):
        levels = rng.choice([0.0, 0.2, 0.36, 0.45, 0.6, 0.95], size=int(rng.integers(1, 40)))
        probs = np.concatenate([np.clip(v + rng.normal(0, 0.05, int(rng.integers(1, 25))), 0, 1) for v in levels])
        f = [vad.FRAME_S, 0.03, 0.1][trial % 3]
        settings = {"frame_s": f, "min_silence_s": float(rng.choice([0.1, 0.2])), "pad_s": float(rng.choice([0, 0.2]))}
        tracker = vad.RegionTracker(**settings)
        done, settled = 0, -1.0
        while done < len(probs):
            k = int(rng.integers(0, 30))
            tracker.feed(probs[done : done + k])
            done = min(len(probs), done + k)
            now = [r for r in tracker.regions() if r.end > settled]
            assert now == [r for r in vad.regions(probs[:done], **settings) if r.end > settled]
            if len(now) > 1:  # as a live session does once a region is followed by another
                settled = now[-2].end
                tracker.forget(settled)
        duration = len(probs) * f - f / 2  # the last frame is partial
        whole = vad.regions(probs, duration_s=duration, **settings)
        assert [r for r in tracker.regions(duration) if r.end > settled] == [r for r in whole if r.end > settled]


# ---- windows ------------------------------------------------------------------------------
def test_plan_windows_cover_each_region_and_skip_bursts():
    regions = [vad.Region(0.0, 4.2), vad.Region(5.0, 6.0), vad.Region(7.0, 7.3)]
    spans = timeline.plan_windows(regions, window_s=1.5, hop_s=0.5)
    first = [s for s in spans if s[2] == 0]
    assert first[0][0] == 0 and first[-1][1] == int(4.2 * SR)  # covered to the region's end
    assert {b - a for a, b, _ in first} == {int(1.5 * SR)}  # one length: they stack unpadded
    assert [s for s in spans if s[2] == 1] == [(5 * SR, 6 * SR, 1)]  # shorter region: one window
    assert not [s for s in spans if s[2] == 2]  # 0.3 s: too short to embed


def test_cut_windows_from_irregular_blocks_equals_slicing():
    x = np.arange(20 * SR, dtype=np.float32)
    regions = [vad.Region(0.3, 4.0), vad.Region(9.95, 10.7), vad.Region(12.0, 19.9)]
    spans = timeline.plan_windows(regions)
    cuts = [0, 7, 16_000, 100_001, 100_002, 200_000, len(x)]
    windows = list(timeline.cut_windows((x[a:b] for a, b in zip(cuts, cuts[1:])), spans))
    assert len(windows) == len(spans)
    for w, (a, b, _) in zip(windows, spans):
        np.testing.assert_array_equal(w, x[a:b])


def test_window_embeddings_in_batches_equal_each_window_alone(tiny_embedder):
    """Windows of one length stacked into one forward pass give what each gives alone."""
    x = np.concatenate([voice(150, 3.0, seed=3), voice(240, 2.2, seed=4)])
    spans = timeline.plan_windows([vad.Region(0.0, 3.0), vad.Region(3.0, 5.2)], window_s=1.0, hop_s=0.5)
    windows = list(timeline.cut_windows([x], spans))
    batched = timeline.embed_windows(windows, tiny_embedder, batch=64)
    alone = np.concatenate([tiny_embedder.embed([w]) for w in windows])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


# ---- clustering and smoothing ---------------------------------------------------------------
def test_cluster_known_vectors_into_voices_numbered_by_first_appearance():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[[3, 7, 11]]
    order = [1, 1, 0, 0, 1, 2, 2, 0, 1]
    vectors = _unit(np.repeat(centres[order], 4, axis=0) + 0.1 * rng.standard_normal((36, 16)))
    labels = timeline.cluster(vectors, threshold=0.6)
    expected = np.repeat([0, 0, 1, 1, 0, 2, 2, 1, 0], 4)
    np.testing.assert_array_equal(labels, expected)
    # Above max_items, runs of neighbours are averaged first (here runs of 4, one voice each): same answer.
    np.testing.assert_array_equal(timeline.cluster(vectors, threshold=0.6, max_items=9), expected)


def test_viterbi_ignores_a_blip_and_merge_short_absorbs_short_runs():
    scores = np.zeros((30, 2))
    scores[:, 0] = 0.8
    scores[:, 1] = 0.2
    scores[10:13] = [0.2, 0.8]  # 3 frames prefer voice 1
    scores[20:] = [0.1, 0.9]  # voice 1 takes over for good
    assert timeline.viterbi(scores, switch_penalty=0.0).tolist() == [0] * 10 + [1] * 3 + [0] * 7 + [1] * 10
    smoothed = timeline.viterbi(scores, switch_penalty=2.0)
    assert smoothed.tolist() == [0] * 20 + [1] * 10
    raw = np.array([0] * 10 + [1] * 3 + [0] * 7 + [1] * 10)
    assert timeline.merge_short(raw, scores, min_frames=5).tolist() == [0] * 20 + [1] * 10


def test_smoothing_blocks_of_constant_scores_equals_smoothing_frame_by_frame():
    """assemble runs Viterbi and the short-run merge on blocks (score x length): same labels."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_blocks, n_voices = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        lengths = rng.integers(1, 60, n_blocks)
        block = rng.random((n_blocks, n_voices))
        frames = np.repeat(block, lengths, axis=0)
        penalty, min_frames = float(rng.choice([0.0, 0.3, 1.0, 3.0])), int(rng.choice([0, 20, 100]))
        by_frame = timeline.merge_short(timeline.viterbi(frames, penalty), frames, min_frames)
        weighted = block * lengths[:, None]
        by_block = timeline.merge_short(timeline.viterbi(weighted, penalty), weighted, min_frames, lengths)
        np.testing.assert_array_equal(np.repeat(by_block, lengths), by_frame)


def _merge_short_before(labels, scores, min_frames, lengths=None):
    """merge_short as it was until it kept its runs in a linked list: the runs found again after
    each merge (rows x runs). The reference its replacement must agree with exactly."""
    runs = timeline.runs  # the runs of equal labels, found from scratch: what the rescan did
    labels = labels.copy()
    size = np.concatenate([[0], np.cumsum(np.ones(len(labels), np.int64) if lengths is None else lengths)])
    while True:
        rs = runs(labels)
        if len(rs) < 2:
            return labels
        frames = [int(size[b] - size[a]) for a, b, _ in rs]
        short = [i for i, n in enumerate(frames) if n < min_frames]
        if not short:
            return labels
        i = min(short, key=lambda j: frames[j])
        a, b, _ = rs[i]
        options = [rs[j][2] for j in (i - 1, i + 1) if 0 <= j < len(rs)]
        labels[a:b] = max(options, key=lambda lab: float(scores[a:b, lab].sum()))


def _live_turn(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An unbroken turn as a live session smooths it: one row per window of a hop's frames,
    the speaker's voice scoring ~0.70 and two others ~0.62, Viterbi leaving many short runs."""
    rng = np.random.default_rng(seed)
    frames = 0.5 / timeline.FRAME_S
    scores = rng.normal([0.70, 0.62, 0.62], 0.08, (n, 3)) * frames
    return timeline.viterbi(scores, 0.5), scores, np.full(n, int(frames))


def test_merge_short_agrees_with_the_rescan_it_replaced():
    """Random label sequences, ties of length and of score included (integer scores), with and
    without lengths: the same labels as the implementation that found the runs again each time."""
    rng = np.random.default_rng(7)
    for trial in range(3000):
        n_voices = int(rng.integers(1, 6))
        run_lengths = rng.geometric(float(rng.choice([0.2, 0.5, 0.9])), int(rng.integers(0, 60)))
        labels = np.repeat(rng.integers(0, n_voices, len(run_lengths)), run_lengths).astype(np.int64)
        n = len(labels)
        scores = rng.integers(0, 3, (n, n_voices)).astype(np.float64) if trial % 2 else rng.random((n, n_voices))
        lengths = None if trial % 3 == 0 else rng.integers(1, 60, n)
        min_frames = int(rng.choice([0, 1, 2, 3, 5, 20, 100, 400]))
        expected = _merge_short_before(labels, scores, min_frames, lengths)
        got = timeline.merge_short(labels, scores, min_frames, lengths)
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")
        assert got.dtype == expected.dtype
    for seed in range(5):  # as the timeline and a live session call it
        path, scores, lengths = _live_turn(2000, seed)
        np.testing.assert_array_equal(
            timeline.merge_short(path, scores, 100, lengths), _merge_short_before(path, scores, 100, lengths)
        )


class _OverBudget(Exception):
    pass


def _python_lines(budget: int, call, *args) -> int:
    """Lines of Python that ``call(*args)`` runs (numpy's own loops not counted): a measure of work
    that a busy machine cannot change. Stops with _OverBudget past ``budget``."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise _OverBudget
        return trace

    before = sys.gettrace()
    sys.settrace(trace)
    try:
        call(*args)
    finally:
        sys.settrace(before)
    return count


def test_merge_short_work_grows_with_the_windows_not_windows_times_runs():
    """A 75-minute unbroken turn took 9.2 CPU s to smooth: the runs were found again after each
    of some 2,000 merges. Now the lines of Python run grow with the windows: about 7 a window
    (the rescan: ~800 at 1,000 windows and growing), 16 times the windows at most 32 times the lines."""
    per_window = 30  # lines: 4 x what the linked list needs
    counts = {}
    for n in (1000, 16000):
        path, scores, lengths = _live_turn(n)
        try:
            counts[n] = _python_lines(per_window * n, timeline.merge_short, path, scores, 100, lengths)
        except _OverBudget:
            pytest.fail(f"merge_short of {n} windows ran more than {per_window * n} lines of Python")
    assert counts[16000] <= 32 * counts[1000], counts


def test_assemble_names_enrolled_voices_and_keeps_one_label_per_unknown_voice():
    """Known vectors: alice (enrolled), then two unknown voices, alice again, the first unknown again."""
    rng = np.random.default_rng(1)
    a, u1, u2 = np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]
    turns = [(a, 0, 6), (u1, 7, 13), (u2, 14, 20), (a, 21, 27), (u1, 28, 34)]
    regions = [vad.Region(s, e) for _, s, e in turns]
    spans = timeline.plan_windows(regions)
    truth = [turns[r][0] for _, _, r in spans]
    vectors = _unit(np.array(truth) + 0.15 * rng.standard_normal((len(spans), 8)))
    gallery = Gallery(["alice", "zed"], _unit(np.array([a, np.eye(8)[5]])), threshold=0.8)
    t = timeline.assemble("x.wav", 35.0, regions, spans, vectors, gallery, Params())
    assert [(s.start, s.end, s.label) for s in t.segments] == [
        (0, 6, "alice"),
        (7, 13, "unknown-1"),
        (14, 20, "unknown-2"),
        (21, 27, "alice"),
        (28, 34, "unknown-1"),
    ]
    assert t.segments[0].speaker == "alice" and t.segments[1].speaker is None
    assert t.segments[0].score > 0.9
    assert {v.label: round(v.seconds) for v in t.voices} == {"alice": 12, "unknown-1": 12, "unknown-2": 6}
    # With nobody enrolled the same recording is plain diarization.
    plain = timeline.assemble("x.wav", 35.0, regions, spans, vectors, Gallery.empty(8, 0.8), Params())
    assert [s.label for s in plain.segments] == ["unknown-1", "unknown-2", "unknown-3", "unknown-1", "unknown-2"]


def test_voices_are_named_on_the_as_norm_scale_and_clustered_by_cosine():
    """With normalisation on, a voice is named when its AS-norm score reaches the threshold
    (as identify decides), segments give both scores, and clustering keeps the cosine threshold."""
    from speakerdb.scoring import norm

    rng = np.random.default_rng(1)
    a, u1 = np.eye(8)[0], np.eye(8)[1]
    turns = [(a, 0, 6), (u1, 7, 13), (a, 14, 20)]
    regions = [vad.Region(s, e) for _, s, e in turns]
    spans = timeline.plan_windows(regions)
    vectors = _unit(np.array([turns[r][0] for _, _, r in spans]) + 0.15 * rng.standard_normal((len(spans), 8)))
    centroids = _unit(np.array([a, np.eye(8)[5]]))
    cohort = _unit(rng.standard_normal((30, 8))).astype(np.float64)
    mean, std = norm.top_stats(centroids, cohort, 5)
    normaliser = timeline.Normaliser(mean, std, cohort, 5)

    def run(threshold):
        gallery = Gallery(["alice", "zed"], centroids, threshold, cosine_threshold=0.8, normaliser=normaliser)
        return timeline.assemble("x.wav", 21.0, regions, spans, vectors, gallery, Params())

    t = run(3.0)
    first = t.segments[0]
    assert [s.label for s in t.segments] == ["alice", "unknown-1", "alice"]
    inside = [i for i, (x, y, _) in enumerate(spans) if 0 <= (x + y) / 2 / SR < 6]
    seg = _unit(vectors[inside].mean(axis=0))
    raw = float(seg.astype(np.float64) @ centroids[0].astype(np.float64))
    p_mean, p_std = norm.top_stats(seg[None], cohort, 5)
    assert first.raw_score == pytest.approx(raw, abs=1e-6)
    assert first.score == pytest.approx(float(norm.as_norm(raw, mean[0], std[0], p_mean[0], p_std[0])), abs=1e-6)
    assert first.score > 1.5 and first.score != first.raw_score
    assert first.to_dict()["raw_score"] == round(raw, 4)
    alice = next(v for v in t.voices if v.speaker == "alice")
    # The threshold is on the AS-norm scale: just above alice's voice score, she is unknown,
    # though her cosine (~0.99) is far above any cosine threshold.
    assert [s.label for s in run(alice.score + 1e-6).segments] == ["unknown-1", "unknown-2", "unknown-1"]
    assert [s.label for s in run(alice.score - 1e-6).segments][0] == "alice"


def test_build_streams_generated_conversation(tmp_path):
    """The whole pipeline on a file: two generated voices taking turns, one enrolled."""
    emb = FakeEmbedder()
    gap = np.zeros(SR, np.float32)
    parts = [voice(110, 4, seed=1), gap, voice(300, 4, seed=2), gap, voice(110, 4, seed=3), gap, voice(300, 3, seed=4)]
    path = write(tmp_path / "conv.wav", np.concatenate(parts))
    bob = emb.embed([voice(110, 4, seed=9)])
    t = timeline.build(path, emb, Gallery(["bob"], bob, threshold=0.9), Params(), detector=EnergyDetector())
    assert [s.label for s in t.segments] == ["bob", "unknown-1", "bob", "unknown-1"]
    for seg, start in zip(t.segments, [0, 5, 10, 15]):
        assert abs(seg.start - start) < 0.25


@pytest.fixture
def two_and_one(tmp_path, monkeypatch):
    """A database with bob enrolled, a recording of two voices (bob's, then another) and one of
    bob alone; the energy VAD, which hears the generated voices."""
    from speakerdb import SpeakerDB

    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector())
    gap = np.zeros(SR, np.float32)
    two = write(tmp_path / "two.wav", np.concatenate([voice(110, 4, seed=1), gap, voice(300, 4, seed=2)]))
    one = write(tmp_path / "one.wav", np.concatenate([voice(110, 4, seed=3), gap, voice(110, 4, seed=4)]))
    with SpeakerDB(tmp_path / "d.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("bob", [write(tmp_path / "bob.wav", voice(110, 4, seed=9))])
        yield db, two, one


def test_identify_warns_when_a_file_holds_several_voices(two_and_one, caplog):
    db, two, one = two_and_one
    with caplog.at_level("WARNING", logger="speakerdb"):
        results = db.identify([two, one])
    [unchecked] = db.identify([two], count_voices=False)  # the knob for one-voice recordings
    assert unchecked.voices is None and unchecked.speaker == results[0].speaker
    assert [r.voices for r in results] == [2, 1]
    assert results[0].to_dict()["voices"] == 2
    warned = [r.getMessage() for r in caplog.records if "voices" in r.getMessage()]
    assert len(warned) == 1 and str(two) in warned[0] and "holds 2 voices" in warned[0] and "timeline" in warned[0]


def test_verify_warns_when_a_file_holds_several_voices(two_and_one, caplog):
    """verify counts voices as identify does: a claim recorded over two voices is scored as a
    blend, and the answer says so (voices, and a warning naming the file)."""
    db, two, one = two_and_one
    with caplog.at_level("WARNING", logger="speakerdb"):
        blend, alone = db.verify("bob", two), db.verify("bob", one)
    unchecked = db.verify("bob", two, count_voices=False)
    assert (blend.voices, alone.voices, unchecked.voices) == (2, 1, None)
    assert unchecked.score == blend.score and blend.to_dict()["voices"] == 2
    warned = [r.getMessage() for r in caplog.records if "voices" in r.getMessage()]
    assert len(warned) == 1 and str(two) in warned[0] and "holds 2 voices: verify embeds them" in warned[0]


# ---- RTTM ---------------------------------------------------------------------------------------
def test_rttm_round_trip_through_pyannote(tmp_path):
    load_rttm = pytest.importorskip("pyannote.database.util").load_rttm
    segs = [
        timeline.Segment(0.5, 2.25, "alice", "alice", 0.9),
        timeline.Segment(2.5, 4.0, "unknown-1", None, 0.4),
        timeline.Segment(4.0, 6.125, "mary ann", "mary ann", 0.88),
    ]
    t = timeline.Timeline("/data/call one.wav", 7.0, segs, [])
    path = tmp_path / "out.rttm"
    timeline.write_rttm(path, [t])
    ann = load_rttm(str(path))["call_one"]
    got = sorted((round(s.start, 3), round(s.end, 3), lab) for s, _, lab in ann.itertracks(yield_label=True))
    assert got == [(0.5, 2.25, "alice"), (2.5, 4.0, "unknown-1"), (4.0, 6.125, "mary_ann")]
    assert timeline.read_rttm(path) == {
        "call_one": [(0.5, 2.25, "alice"), (2.5, 4.0, "unknown-1"), (4.0, 6.125, "mary_ann")]
    }


def test_plot_titles_tell_apart_recordings_of_one_name(tmp_path, monkeypatch):
    """Each panel's title is the shortest tail of the file's path that no other plotted path
    ends with: a/conv-00.wav and b/conv-00.wav are not both "conv-00.wav"."""
    from matplotlib.figure import Figure

    titles: list[str] = []
    savefig = Figure.savefig

    def kept(fig, *args, **kwargs):
        titles.extend(ax.get_title(loc="left") for ax in fig.axes)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", kept)
    files = ["a/conv-00.wav", "b/conv-00.wav", "x/c/call.wav", "y/c/call.wav", "/data/solo.wav", "d/solo.flac"]
    timeline.plot([timeline.Timeline(f, 3.0, [], []) for f in files], tmp_path / "p.png")
    shown = [str(Path(f)) for f in ("a/conv-00.wav", "b/conv-00.wav", "x/c/call.wav", "y/c/call.wav")]
    assert titles == [f"{name} (3.0 s): no speech" for name in [*shown, "solo.wav", "solo.flac"]]


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_no_speech_is_an_empty_timeline_with_a_note(tmp_path, tiny_checkpoint):
    from speakerdb import SpeakerDB

    SpeakerDB(tmp_path / "d.sqlite").close()  # an empty database: nobody enrolled
    noise = write(tmp_path / "hum.wav", (0.05 * np.random.default_rng(2).standard_normal(3 * SR)).astype(np.float32))
    r = CliRunner().invoke(
        cli,
        [
            "--db",
            str(tmp_path / "d.sqlite"),
            "--model",
            str(tiny_checkpoint),
            "timeline",
            str(noise),
            "--json",
            "--rttm",
            str(tmp_path / "o.rttm"),
            "--plot",
            str(tmp_path / "o.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [doc] = json.loads(r.stdout)
    assert doc["segments"] == [] and doc["voices"] == [] and doc["duration"] == 3.0
    assert "no speech found" in r.stderr
    assert (tmp_path / "o.rttm").read_text() == ""


def test_cli_bad_input_is_one_error_line_and_nothing_written(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 100)  # and no database at the default place (conftest's home)
    r = CliRunner().invoke(
        cli, ["--model", str(tiny_checkpoint), "timeline", str(bad), "--rttm", str(tmp_path / "o.rttm")]
    )
    assert r.exit_code == 1
    # No database: a note says the file is diarized without one; then the file's error line.
    assert r.stderr.splitlines()[-1].startswith("Error: ") and "Traceback" not in r.output
    assert "bad.wav" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "o.rttm").exists() and not (tmp_path / "home" / "speakerdb.sqlite").exists()
    r = CliRunner().invoke(cli, ["timeline", str(bad), "--window", "1", "--hop", "2"])
    assert r.exit_code == 2


def test_cli_refuses_two_files_one_rttm_id(tmp_path, tiny_checkpoint):
    """Two inputs whose RTTM lines would carry one recording id (the same name in two folders,
    or names that differ only by a space and a "_") are a usage error before any work: a scorer
    would merge them into one recording. Without --rttm they are fine."""
    for first, second in (("a/conv-00.wav", "b/conv-00.wav"), ("call 1.wav", "call_1.flac")):
        paths = []
        for name in (first, second):
            (tmp_path / name).parent.mkdir(exist_ok=True)
            paths.append(str(write(tmp_path / name, voice(140.0, 3.0))))
        db, rttm = tmp_path / "home" / "speakerdb.sqlite", tmp_path / "o.rttm"  # none at the default place
        base = ["--model", str(tiny_checkpoint), "timeline", *paths]
        r = CliRunner().invoke(cli, [*base, "--rttm", str(rttm)])
        assert r.exit_code == 2, r.output
        error = r.stderr.splitlines()[-1]
        assert error.startswith("Error: ") and paths[0] in error and paths[1] in error
        assert repr(Path(first).stem.replace(" ", "_")) in error
        assert r.stdout == "" and not rttm.exists() and not db.exists()
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 0, r.output


def test_cli_refusals_before_work_are_their_error_line_alone(tmp_path, tiny_checkpoint, monkeypatch):
    """An output that exists without --force, a segmentation file that is missing, one that is
    there but no checkpoint (given or from SPEAKERDB_SEGMENTATION) or a hub id not in the
    cache: stderr is the one Error line, not the notes on which segmentation is used and then
    the Error; nothing is written."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    path = write(tmp_path / "call.wav", voice(140.0, 3.0))
    existing = tmp_path / "existing.rttm"
    existing.write_text("kept\n")
    junk = tmp_path / "notes.txt"
    junk.write_text("not a checkpoint\n")
    db = tmp_path / "home" / "speakerdb.sqlite"  # none at the default place
    base = ["--model", str(tiny_checkpoint), "timeline", str(path)]
    for extra, env, error in (
        (["--rttm", str(existing)], {}, "already exists"),
        (["--segmentation", str(tmp_path / "nonexistent" / "model.bin")], {}, "no such file"),
        (["--segmentation", "pyannote/segmentation-3.0"], {}, "local Hugging Face cache"),
        (["--segmentation", str(junk)], {}, "cannot be read"),
        ([], {"SPEAKERDB_SEGMENTATION": str(junk)}, "cannot be read"),
    ):
        r = CliRunner().invoke(cli, [*base, *extra], env=env)
        assert r.exit_code == 1, r.output
        [line] = r.stderr.splitlines()
        assert line.startswith("Error: ") and error in line
        assert r.stdout == "" and existing.read_text() == "kept\n" and not db.exists()


def test_one_bad_file_does_not_lose_the_batch(tmp_path, tiny_checkpoint):
    from speakerdb import SpeakerDB

    SpeakerDB(tmp_path / "d.sqlite").close()
    hum = write(tmp_path / "hum.wav", (0.05 * np.random.default_rng(2).standard_normal(3 * SR)).astype(np.float32))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 100)
    files = [str(hum), str(bad), str(tmp_path / "missing.wav")]
    r = CliRunner().invoke(
        cli,
        [
            "--db",
            str(tmp_path / "d.sqlite"),
            "--model",
            str(tiny_checkpoint),
            "timeline",
            *files,
            "--json",
            "--rttm",
            str(tmp_path / "o.rttm"),
        ],
    )
    assert r.exit_code == 1, r.output
    docs = json.loads(r.stdout)
    assert [d["file"] for d in docs] == files
    assert docs[0]["duration"] == 3.0 and set(docs[1]) == set(docs[2]) == {"file", "error"}
    assert r.stderr.count("Error: ") == 2 and "Traceback" not in r.output
    assert (tmp_path / "o.rttm").exists()  # the good file's (empty) timeline
    with SpeakerDB(tmp_path / "d.sqlite", model=str(tiny_checkpoint)) as db:  # the API: errors, not exceptions
        out = db.timeline([bad, tmp_path / "missing.wav"])
    assert [t.error is not None for t in out] == [True, True]


# ---- real speech ---------------------------------------------------------------------------------
def _real_conversation(tmp_path: Path, snr_db: float | None = None):
    """Three LibriSpeech speakers take turns, with white noise ``snr_db`` below the speech;
    two are enrolled from other (clean) recordings. Returns the recording, its timeline, and
    the share of the enrolled speakers' time named right and of the other's labelled unknown."""
    from speakerdb import SpeakerDB

    speakers = ["1688", "3005", "2609"]  # 2609 is not enrolled
    files = {s: sorted((LIBRISPEECH / s).glob("*.flac")) for s in speakers}
    parts, truth, t = [], [], 0.0
    for k, s in enumerate(["1688", "2609", "3005", "1688", "2609", "3005"]):
        piece = trim(audio.load(files[s][5 + k // 3]).samples)[: 8 * SR]
        parts += [piece, np.zeros(int(0.6 * SR), np.float32)]
        truth.append((t, t + len(piece) / SR, s))
        t += len(piece) / SR + 0.6
    samples = np.concatenate(parts)
    if snr_db is not None:
        speech_power = float(np.mean(np.concatenate(parts[::2]) ** 2))
        noise = np.random.default_rng(0).standard_normal(len(samples)) * np.sqrt(speech_power / 10 ** (snr_db / 10))
        samples = (samples + noise).astype(np.float32)
    path = write(tmp_path / "conv.wav", samples)
    with SpeakerDB(tmp_path / "db.sqlite", model="resemblyzer") as db:
        for s in speakers[:2]:
            db.enroll(s, files[s][:3])
        [tl] = db.timeline([path])
    grid = np.arange(0, t, 0.01)

    def label_at(segs, x):
        return next((lab for a, b, lab in segs if a <= x < b), None)

    hyp = [(s.start, s.end, s.label) for s in tl.segments]
    ref = [label_at(truth, x) for x in grid]
    got = [label_at(hyp, x) for x in grid]
    named = [g == r for r, g in zip(ref, got) if r in ("1688", "3005")]
    unknown = [g is not None and g.startswith("unknown-") for r, g in zip(ref, got) if r == "2609"]
    return path, tl, float(np.mean(named)), float(np.mean(unknown))


@pytest.mark.librispeech
@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech excerpts not found at {LIBRISPEECH}")
def test_conversation_of_real_speech_with_ge2e(tmp_path):
    """Three LibriSpeech speakers take turns; two are enrolled from other recordings."""
    pytest.importorskip("resemblyzer")
    from speakerdb import SpeakerDB

    path, tl, named, unknown = _real_conversation(tmp_path)
    assert named >= 0.9, tl.segments
    assert unknown >= 0.9, tl.segments
    assert {v.label for v in tl.voices} == {"1688", "3005", "unknown-1"}
    # identify on the whole conversation says it is several voices.
    with SpeakerDB(tmp_path / "db.sqlite") as db:
        [r] = db.identify([path])
    assert r.voices == 3


@pytest.mark.librispeech
@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"LibriSpeech excerpts not found at {LIBRISPEECH}")
def test_conversation_of_real_speech_at_10_db_keeps_its_voices_and_names(tmp_path):
    """The same conversation in white noise 10 dB below the speech, enrolled from clean
    recordings: the noise, measured in the pauses, is taken out before the windows are
    embedded, so each speaker stays one voice and keeps his name."""
    pytest.importorskip("resemblyzer")
    _, tl, named, unknown = _real_conversation(tmp_path, snr_db=10.0)
    assert {v.label for v in tl.voices} == {"1688", "3005", "unknown-1"}, tl.segments
    assert named >= 0.9, tl.segments
    assert unknown >= 0.9, tl.segments
