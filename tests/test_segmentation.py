"""The optional speaker segmentation model (pyannote segmentation-3.0, issue 24): the
PyanNet port loads a checkpoint strictly (Lightning file or plain state_dict) through an
unpickler that runs no code, and the timeline built on it gives a second voice where two
speak at once. The network here has random weights; the timeline tests use a fake
segmentation whose answer is fixed, so they run in well under a second each."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SR, EnergyDetector, FakeEmbedder, voice, write
from speakerdb import timeline
from speakerdb.cli import cli
from speakerdb.embedding import segmentation as seg
from speakerdb.errors import ModelLoadError
from speakerdb.timeline import Gallery, Params

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return seg.build_network().eval()


def _lightning_file(path, state, monkeypatch):
    """A checkpoint shaped like pyannote's: the weights plus pickled pyannote.audio objects."""
    task = types.ModuleType("pyannote.audio.core.task")

    class Specifications:  # stands for pyannote's class: the loader must not need it
        def __init__(self) -> None:
            self.duration = 10.0

    Specifications.__module__, Specifications.__qualname__ = task.__name__, "Specifications"
    task.Specifications = Specifications
    monkeypatch.setitem(sys.modules, task.__name__, task)
    torch.save(
        {
            "pytorch-lightning_version": "2.0.2",
            "state_dict": state,
            "hyper_parameters": {"sample_rate": 16000, "sincnet": {"stride": 10}},
            "pyannote.audio": {"specifications": Specifications()},
        },
        path,
    )
    return path


def test_checkpoint_loads_strictly_as_lightning_file_and_plain_state_dict(tmp_path, network, monkeypatch):
    """The state_dict keys are the checkpoint's (a strict load), in either file shape, and the
    loaded model computes what the network computes: 589 frames of 7 log-probabilities per chunk."""
    state = network.state_dict()
    lightning = _lightning_file(tmp_path / "pytorch_model.bin", state, monkeypatch)
    monkeypatch.delitem(sys.modules, "pyannote.audio.core.task")  # as on a machine without pyannote
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    x = (0.1 * np.random.default_rng(0).standard_normal(seg.CHUNK)).astype(np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(x)[None, None])[0].numpy()
    for path in (lightning, plain, tmp_path):  # a folder holding pytorch_model.bin, too
        model = seg.load(path)
        [(start, out)] = list(model.chunk_outputs([x]))
        assert start == 0 and out.shape == (seg.frames_in(seg.CHUNK), 7) == (589, 7)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-4)


def test_chunks_cover_the_recording_streaming(network):
    """Chunks every step and one aligned to the end, whatever the blocks; a short recording is padded."""
    model = seg.Segmenter(network.state_dict(), "random", step_s=5.0)
    x = (0.1 * np.random.default_rng(1).standard_normal(23 * SR)).astype(np.float32)
    starts = [s for s, _ in model.chunk_outputs(np.array_split(x, 7))]
    assert starts == [0, 5 * SR, 10 * SR, 13 * SR]
    assert [s for s, _ in model.chunk_outputs([x[: 3 * SR]])] == [0]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-checkpoint",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch pwned-by-eval')",))


def test_a_hostile_checkpoint_runs_no_code(tmp_path, network, monkeypatch):
    """Globals other than tensor rebuilding and plain containers become inert stubs: a file
    whose pickle calls os.system or eval executes nothing; one without weights is refused."""
    monkeypatch.chdir(tmp_path)
    with_weights = tmp_path / "evil.bin"
    torch.save({"state_dict": network.state_dict(), "hook": _Evil(), "more": [_EvalEvil()]}, with_weights)
    only_evil = tmp_path / "only-evil.bin"
    torch.save(_Evil(), only_evil)
    seg.load(with_weights)  # the weights load; the rest stays inert
    with pytest.raises(ModelLoadError, match="no state_dict"):
        seg.load(only_evil)
    assert not (tmp_path / "pwned-by-checkpoint").exists() and not (tmp_path / "pwned-by-eval").exists()


def test_bad_files_are_one_error_line(tmp_path, network):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.bin"
    torch.save({"state_dict": {"lstm.weight": torch.zeros(2)}}, wrong)
    for path, reason in (
        (tmp_path / "missing.bin", "no such file"),
        (junk, "cannot be read"),
        (wrong, "not a pyannote segmentation-3.0 checkpoint"),
    ):
        with pytest.raises(ModelLoadError, match=reason) as e:
            seg.load(path)
        assert "\n" not in str(e.value)


# ---- the timeline on a fake segmentation -------------------------------------------------------
def _logp(active: np.ndarray) -> np.ndarray:
    """Log-probabilities (frames, 7) that say exactly ``active`` (frames, 3) bools."""
    out = np.full((len(active), 7), np.log(1e-4), np.float32)
    for f, row in enumerate(active):
        out[f, seg.POWERSET.index(tuple(np.flatnonzero(row).tolist()))] = np.log(1 - 6e-4)
    return out


class FakeSegmenter(seg.Segmenter):
    """Answers from the truth: ``turns`` [(start s, end s, speaker)], speakers numbered per
    chunk in order of appearance (as a real model's local speakers are: arbitrary)."""

    def __init__(self, turns, step_s: float = 5.0) -> None:
        self.turns, self.step, self.source = turns, int(step_s * SR), "fake"

    def _run(self, chunks):
        out = []
        for start, _ in chunks:
            n = seg.frames_in(seg.CHUNK)
            t = (start + np.arange(n) * seg.FRAME_STEP + seg.RECEPTIVE_FIELD / 2) / SR
            speakers = sorted({spk for a, b, spk in self.turns if a < t[-1] and b > t[0]}, reverse=True)
            active = np.zeros((n, 3), bool)
            for a, b, spk in self.turns:
                if spk in speakers:
                    active[(t >= a) & (t < b), speakers.index(spk)] = True
            out.append((start, _logp(active)))
        return out


def _two_voices(tmp_path):
    """A low voice 0-6 s and a high voice 5-12 s: they overlap from 5 to 6 s."""
    low, high = voice(110, 12, seed=1), voice(300, 12, seed=2)
    t = np.arange(12 * SR) / SR
    x = low * (t < 6) + high * (t >= 5)
    return write(tmp_path / "overlap.wav", x.astype(np.float32)), [(0.0, 6.0, "A"), (5.0, 12.0, "B")]


def test_aggregate_follows_local_speakers_across_chunks():
    """Local speaker numbers change between chunks (here swapped); the tracks follow the
    speakers, and speakers heard in one chunk are kept apart."""
    n = seg.frames_in(seg.CHUNK)
    first = np.zeros((n, 3), bool)
    first[:, 0] = True
    first[n // 2 :, 1] = True
    second = np.zeros((n, 3), bool)  # starts half a chunk later: speaker 0 is now local 1
    second[: n // 2, 1] = True
    second[:, 0] = True
    act = seg.aggregate([(0, _logp(first)), (seg.CHUNK // 2, _logp(second))], int(1.5 * seg.CHUNK))
    assert act.n_tracks == 2 and act.co_active == frozenset({(0, 1)})
    assert act.count.max() == 2


def test_overlapping_speech_gets_both_voices(tmp_path):
    """With a segmentation model the timeline has two voices where two speak at once: the
    segments overlap, and so do the RTTM lines; the JSON holds both; the plot draws them."""
    path, turns = _two_voices(tmp_path)
    t = timeline.build(path, FakeEmbedder(), Gallery.empty(FakeEmbedder.dim, 0.8), Params(), FakeSegmenter(turns))
    assert sorted(v.label for v in t.voices) == ["unknown-1", "unknown-2"]
    by_label = {s.label: s for s in t.segments}
    assert len(t.segments) == 2 and set(by_label) == {"unknown-1", "unknown-2"}
    first, second = sorted(t.segments, key=lambda s: s.start)
    assert first.start == pytest.approx(0.0, abs=0.05) and first.end == pytest.approx(6.0, abs=0.05)
    assert second.start == pytest.approx(5.0, abs=0.05) and second.end == pytest.approx(12.0, abs=0.05)
    lines = timeline.rttm_lines(t)
    spans = [(float(x.split()[3]), float(x.split()[3]) + float(x.split()[4])) for x in lines]
    assert spans[0][1] > spans[1][0]  # the lines overlap in time
    doc = json.loads(json.dumps(t.to_dict()))
    assert len(doc["segments"]) == 2 and {v["label"] for v in doc["voices"]} == {"unknown-1", "unknown-2"}
    assert sum(v.seconds for v in t.voices) > t.duration  # overlapped time counts for both
    # Told there is one voice, there is one, and its speech is one segment.
    [one] = timeline.build(
        path, FakeEmbedder(), Gallery.empty(FakeEmbedder.dim, 0.8), Params(speakers=1), FakeSegmenter(turns)
    ).voices
    assert one.seconds == pytest.approx(12.0, abs=0.1)


def test_assemble_tracks_keeps_co_active_tracks_apart():
    """Two tracks the model heard in one chunk are two voices even when their windows look
    alike; tracks never heard together and alike are one voice."""
    rng = np.random.default_rng(0)
    same = rng.standard_normal(16)
    n = 900
    tracks = np.full((n, 3), -1)
    tracks[0:300, 0] = 0
    tracks[200:400, 1] = 1
    tracks[500:800, 0] = 2
    act = seg.Activity(tracks, (tracks >= 0).sum(axis=1), 3, frozenset({(0, 1)}))
    spans, speech = timeline.track_windows(act, n * seg.FRAME_STEP_S + 0.1, Params())
    vectors = np.stack([same + 0.01 * rng.standard_normal(16) for _ in spans]).astype(np.float32)
    t = timeline.assemble_tracks("x.wav", 16.0, act, spans, vectors, Gallery.empty(16, 0.8), Params(), speech)
    assert len(t.voices) == 2
    labels = [(round(s.start, 1), s.label) for s in t.segments]
    assert labels[0][1] == labels[-1][1]  # tracks 0 and 2 are one voice, 1 another


def test_cli_names_the_segmentation_and_refuses_a_bad_file_writing_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    """--segmentation with a missing or broken file: one error line, exit 1, no RTTM, no database;
    without one, stderr says overlapping speech is not detected."""
    path, _ = _two_voices(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04junk")
    db, rttm = tmp_path / "home" / "speakerdb.sqlite", tmp_path / "out.rttm"  # none at the default place
    base = ["--model", str(tiny_checkpoint), "timeline", str(path), "--rttm", str(rttm)]
    for bad in (str(tmp_path / "missing.bin"), str(junk)):
        r = CliRunner().invoke(cli, [*base, "--segmentation", bad])
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines()[-1].startswith("Error: ") and "segmentation model" in r.stderr.splitlines()[-1]
        assert "Traceback" not in r.output and not rttm.exists() and not db.exists()
    monkeypatch.setenv("SPEAKERDB_SEGMENTATION", str(junk))  # the variable is the option's default
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 1 and "cannot be read" in r.stderr and not rttm.exists()
    monkeypatch.delenv("SPEAKERDB_SEGMENTATION")
    monkeypatch.setattr(timeline, "load_detector", lambda params: FakeSegmenter([(0.0, 12.0, "A")]))
    r = CliRunner().invoke(cli, base)
    assert "no segmentation model" in r.stderr and "overlapping speech not detected" in r.stderr


def test_serve_refuses_to_start_with_an_unusable_segmentation(tmp_path, network, monkeypatch):
    """SPEAKERDB_SEGMENTATION missing, not a checkpoint or a hub id not cached: serve is one error
    line naming the variable, exit 1, before the database is made or uvicorn started (every
    /v1/timeline would fail); a good checkpoint starts it."""
    import speakerdb.service.serve

    started: list[object] = []
    monkeypatch.setattr(speakerdb.service.serve, "serve", lambda config, **kw: started.append(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04junk")
    db = tmp_path / "svc.sqlite"
    for bad, error in (
        (str(tmp_path / "missing.bin"), "no such file"),
        (str(junk), "cannot be read"),
        ("pyannote/segmentation-3.0", "local Hugging Face cache"),
    ):
        r = CliRunner().invoke(cli, ["--db", str(db), "serve"], env={"SPEAKERDB_SEGMENTATION": bad})
        assert r.exit_code == 1, r.output
        [line] = r.stderr.splitlines()
        assert line.startswith("Error: SPEAKERDB_SEGMENTATION: segmentation model") and error in line, line
        assert r.stdout == "" and started == [] and not db.exists()
    good = tmp_path / "segmentation.pt"
    torch.save(network.state_dict(), good)
    r = CliRunner().invoke(cli, ["--db", str(db), "serve"], env={"SPEAKERDB_SEGMENTATION": str(good)})
    assert r.exit_code == 0, r.output
    assert len(started) == 1


def test_two_voices_of_one_room_stay_apart_unless_the_recording_is_noisy():
    """Two people in one room take turns: their tracks' means score ~0.85, over the 0.8 at
    which tracks used to join, and the recording's clustering tells them apart, so they are
    two voices. In a noisy recording, where the clustering splits one voice more often than
    it joins two, such tracks still join."""
    rng = np.random.default_rng(2)
    shared, a, b = np.linalg.qr(rng.standard_normal((16, 16)))[0][:3]
    centres = np.stack([np.sqrt(0.85) * shared + np.sqrt(0.15) * own for own in (a, b)])
    n = int(40 / seg.FRAME_STEP_S)
    tracks = np.full((n, 3), -1)
    turn = n // 4
    for k in range(4):  # A, B, A, B: one track per turn, never heard together
        tracks[k * turn : (k + 1) * turn - 30, 0] = k
    act = seg.Activity(tracks, (tracks >= 0).sum(axis=1), 4, frozenset())
    spans, speech = timeline.track_windows(act, 40.0, Params())
    who = np.array([t % 2 for _, _, t in spans])
    vectors = (centres[who] + 0.03 * rng.standard_normal((len(spans), 16))).astype(np.float32)
    means = np.stack([vectors[who == v].mean(axis=0) for v in (0, 1)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    assert 0.8 < float(means[0] @ means[1]) < 0.9
    args = ("room.wav", 40.0, act, spans, vectors, Gallery.empty(16, 0.8), Params(), speech)
    clean = timeline.assemble_tracks(*args)
    assert [s.label for s in clean.segments] == ["unknown-1", "unknown-2"] * 2
    assert len(timeline.assemble_tracks(*args, noisy=True).voices) == 1


def test_the_speech_pass_measures_how_far_speech_stands_above_the_pauses():
    """snr_db: the power of the frames the VAD calls speech over that of its pauses; the
    segmentation path calls a recording under 15 dB noisy."""
    rng = np.random.default_rng(3)
    speech = np.concatenate([voice(150, 3.0), np.zeros(SR * 2, np.float32)] * 3)
    for noise_db, low, high in ((None, 40, None), (10, 7, 13)):
        x = speech.copy()
        if noise_db is not None:
            power = float(np.mean(voice(150, 3.0).astype(np.float64) ** 2))
            x += np.sqrt(power / 10 ** (noise_db / 10)) * rng.standard_normal(len(x)).astype(np.float32)
        pass_ = timeline.SpeechPass(EnergyDetector(level=0.1), levels=True)  # level: between noise and voice
        for _ in pass_.watch(x[i : i + 7000] for i in range(0, len(x), 7000)):  # blocks across frames
            pass
        pass_.finish("x.wav")
        snr = pass_.snr_db()
        assert snr is not None and snr > low and (high is None or snr < high), (noise_db, snr)
    quiet = timeline.SpeechPass(EnergyDetector(level=0.05), levels=True)
    for _ in quiet.watch([np.full(SR * 2, 0.001, np.float32)]):
        pass
    assert quiet.snr_db() is None  # no speech frame to compare


def test_a_track_holding_two_voices_is_cut_where_its_windows_change_voice():
    """The model sometimes keeps two voices that follow each other as one local speaker: the
    windows' own clustering cuts the track there, so each voice gets its own time."""
    rng = np.random.default_rng(1)
    centres = np.linalg.qr(rng.standard_normal((16, 16)))[0][:2]  # two orthogonal voices
    n = int(20 / seg.FRAME_STEP_S)
    tracks = np.full((n, 3), -1)
    tracks[:, 0] = 0  # one track for 20 s: voice 0 for 10 s, then voice 1
    act = seg.Activity(tracks, (tracks >= 0).sum(axis=1), 1, frozenset())
    spans, speech = timeline.track_windows(act, 20.0, Params())
    centre_s = np.array([(a + b) / 2 / SR for a, b, _ in spans])
    vectors = (centres[(centre_s >= 10).astype(int)] + 0.05 * rng.standard_normal((len(spans), 16))).astype(np.float32)
    t = timeline.assemble_tracks("x.wav", 20.0, act, spans, vectors, Gallery.empty(16, 0.8), Params(), speech)
    assert len(t.voices) == 2
    first, second = t.segments
    assert first.label != second.label
    assert first.end == pytest.approx(10.0, abs=0.5) and second.start == pytest.approx(10.0, abs=0.5)


def test_a_hub_id_is_read_from_the_cache_offline(tmp_path, network, monkeypatch):
    """``pyannote/segmentation-3.0`` is looked up in the local Hugging Face cache; offline and
    not cached it is one error line saying what to do."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nor in the local Hugging Face cache") as e:
        seg.load(seg.DEFAULT_HUB_ID)
    assert "speakerdb model download pyannote/segmentation-3.0" in str(e.value)
    snapshot = tmp_path / "hub" / "models--pyannote--segmentation-3.0" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(network.state_dict(), snapshot / seg.HUB_FILE)
    (tmp_path / "hub" / "models--pyannote--segmentation-3.0" / "refs").mkdir()
    (tmp_path / "hub" / "models--pyannote--segmentation-3.0" / "refs" / "main").write_text("0" * 40)
    assert seg.resolve(seg.DEFAULT_HUB_ID) == snapshot / seg.HUB_FILE


def test_a_hub_id_not_cached_is_one_error_line_without_asking_the_hub(tmp_path, monkeypatch):
    """The option takes a hub id "from the local cache": with HF_HUB_OFFLINE unset, an id not
    cached is still one error line at once, not huggingface_hub's retries of a dead network
    (27 s of "Retrying in 8s" before); it says how to get the model."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked = []

    def download(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            asked.append(args)
        raise OSError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelLoadError) as e:
        seg.resolve(seg.DEFAULT_HUB_ID)
    assert asked == []  # the hub was not asked
    assert "nor in the local Hugging Face cache" in str(e.value) and "\n" not in str(e.value)
    assert "speakerdb model download pyannote/segmentation-3.0" in str(e.value)
    path, _ = _two_voices(tmp_path)
    rttm = tmp_path / "out.rttm"
    r = CliRunner().invoke(
        cli,
        ["timeline", str(path), "--rttm", str(rttm)] + ["--segmentation", seg.DEFAULT_HUB_ID],
    )
    assert r.exit_code == 1 and asked == [] and not rttm.exists()
    assert r.stderr.splitlines()[-1].startswith("Error: segmentation model 'pyannote/segmentation-3.0'")


def test_speech_only_the_vad_hears_goes_to_the_nearest_voice():
    """Speech the segmentation missed but the VAD heard joins the nearest voice in time (up to
    1 s away); speech far from every voice is left out rather than guessed."""
    from speakerdb.audio.vad import Region
    from speakerdb.results import Segment, Timeline, Voice

    t = Timeline(
        "x.wav",
        20.0,
        [Segment(0.0, 2.0, "unknown-1", None, None), Segment(4.0, 6.0, "unknown-2", None, None)],
        [Voice("unknown-1", None, 2.0, None), Voice("unknown-2", None, 2.0, None)],
    )
    out = timeline.fill_speech(t, [Region(1.5, 2.6), Region(3.7, 4.2), Region(12.0, 13.0)])
    assert [(s.start, round(s.end, 2), s.label) for s in out.segments] == [
        (0.0, 2.6, "unknown-1"),
        (3.7, 6.0, "unknown-2"),
    ]
    assert {v.label: round(v.seconds, 2) for v in out.voices} == {"unknown-1": 2.6, "unknown-2": 2.3}


def test_a_client_cannot_name_a_model_file_on_the_service():
    """The service's segmentation is its operator's setting: a client's Params naming a file is
    refused before anything is sent."""
    from speakerdb.errors import InvalidInputError
    from speakerdb.service.client import Client

    with pytest.raises(InvalidInputError, match="service's own setting"):
        Client("http://127.0.0.1:9").timeline(["x.wav"], params=Params(segmentation="/etc/passwd"))
