"""Decode once: identify embeds a file and counts its voices from one decode, the timeline's two
passes share one decode, and the answers are the ones decoding again for each pass gives
(issue 22 item 4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import SR, EnergyDetector, FakeEmbedder, voice, write
from speakerdb import SpeakerDB, timeline
from speakerdb.audio import decode, decoded, vad
from speakerdb.audio.decoded import Decoded
from speakerdb.embedding import pipeline
from speakerdb.timeline import Gallery, Params


@pytest.fixture
def decodes(monkeypatch) -> Counter:
    """How many times each file is decoded (calls of decode._decode_blocks, by file name)."""
    counts: Counter = Counter()
    real = decode._decode_blocks

    def counting(path: Path, block_s: float):
        counts[Path(path).name] += 1
        return real(path, block_s)

    monkeypatch.setattr(decode, "_decode_blocks", counting)
    return counts


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """Two voices taking turns over several decode blocks (16 kHz), one voice at 44.1 kHz (the
    resampler's blocks are of uneven length) and a short clip."""
    gap = np.zeros(SR, np.float32)
    turns = np.concatenate([voice(110, 5, seed=1), gap, voice(300, 5, seed=2), gap, voice(110, 4, seed=3)])
    one = np.concatenate(
        [voice(200, 6, seed=4, sr=44_100), np.zeros(44_100, np.float32), voice(200, 6, seed=5, sr=44_100)]
    )
    return [
        write(tmp_path / "turns.wav", turns),
        write(tmp_path / "one44k.wav", one, sr=44_100),
        write(tmp_path / "short.flac", voice(150, 2, seed=6)),
    ]


def _spy_on_clips(monkeypatch) -> list[pipeline.EmbeddedClip]:
    """The clips identify embeds, as pipeline.embed_clips hands them over."""
    seen: list[pipeline.EmbeddedClip] = []
    real = pipeline.embed_clips

    def spying(sources, embedder, *args, **kwargs) -> Iterator:
        for position, clip in real(sources, embedder, *args, **kwargs):
            if isinstance(clip, pipeline.EmbeddedClip):
                seen.append(clip)
            yield position, clip

    monkeypatch.setattr(pipeline, "embed_clips", spying)
    return seen


def _decoding_every_pass(monkeypatch) -> None:
    """The behaviour before decode-once: every read of a file decodes it again."""
    monkeypatch.setattr(Decoded, "blocks", lambda self: decode.stream(self.path))


def _spy_on_inputs(embedder, monkeypatch) -> list[str]:
    """sha256 of every waveform ``embedder`` is given, in order."""
    seen: list[str] = []
    real = embedder.embed

    def spying(waveforms):
        seen.extend(decode.samples_sha256(w) for w in waveforms)
        return real(waveforms)

    monkeypatch.setattr(embedder, "embed", spying)
    return seen


def _check_identify(db: SpeakerDB, files: list[Path], decodes: Counter, monkeypatch, exact: bool) -> None:
    """One decode per file, and the answer decoding for every pass gave. ``exact``: the embedder
    gives the same bits for the same input (the fake one; torch's kernels may differ in the
    last bit from call to call, so for them the model's inputs are compared bit for bit)."""
    embedder = db.embedder
    inputs = _spy_on_inputs(embedder, monkeypatch)
    clips = _spy_on_clips(monkeypatch)
    results = db.identify(files)
    assert decodes == {f.name: 1 for f in files}  # embedding and voice count from one decode
    assert all(r.ok and r.voices is not None for r in results)
    once = list(inputs)

    # The vectors are the ones embedding each file directly gives.
    by_source = {c.source: c for c in clips}
    for f in files:
        direct = pipeline.embed_clip(f, embedder)
        clip = by_source[decode.source_label(f)]
        assert (clip.sha256, clip.duration_s, clip.n_windows) == (direct.sha256, direct.duration_s, direct.n_windows)
        if exact:
            assert clip.vector.tobytes() == direct.vector.tobytes()
        else:
            np.testing.assert_allclose(clip.vector, direct.vector, atol=1e-6)

    # The whole answer (scores, voice counts) is the one decoding for every pass gave, from
    # the same samples handed to the model in the same order.
    with monkeypatch.context() as m:
        _decoding_every_pass(m)
        decodes.clear()
        inputs.clear()
        before = db.identify(files)
        # Embedding, voice activity, and the windows (where speech was found): decoded again each time.
        assert set(decodes) == {f.name for f in files} and min(decodes.values()) >= 2
    assert inputs == once
    if exact:
        assert [r.to_dict() for r in results] == [r.to_dict() for r in before]
    else:
        assert [(r.speaker, r.voices, [c.speaker for c in r.candidates]) for r in results] == [
            (r.speaker, r.voices, [c.speaker for c in r.candidates]) for r in before
        ]
        np.testing.assert_allclose([r.score for r in results], [r.score for r in before], atol=1e-5)


def test_identify_decodes_each_file_once_with_the_fake_embedder(tmp_path, files, decodes, monkeypatch):
    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector())
    with SpeakerDB(tmp_path / "d.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("bob", [write(tmp_path / "bob.wav", voice(110, 4, seed=9))])
        decodes.clear()
        _check_identify(db, files, decodes, monkeypatch, exact=True)
        assert [r.voices for r in db.identify(files)] == [2, 1, 1]


def test_identify_decodes_each_file_once_with_the_tiny_checkpoint(
    tmp_path, files, decodes, monkeypatch, tiny_checkpoint
):
    """The real model and the real voice activity detector (Silero)."""
    with SpeakerDB(tmp_path / "d.sqlite", model=str(tiny_checkpoint)) as db:
        db.enroll("bob", [write(tmp_path / "bob.wav", voice(110, 4, seed=9))])
        decodes.clear()
        _check_identify(db, files, decodes, monkeypatch, exact=False)


def test_long_files_are_spooled_not_held_and_give_the_same_answer(tmp_path, files, decodes, monkeypatch):
    """Past IN_MEMORY_S the kept blocks go to a temporary file: still one decode, same answer."""
    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector())
    monkeypatch.setattr(decoded, "IN_MEMORY_S", 3.0)
    spooled: list[Decoded] = []
    real_close = Decoded.close

    def noting_close(self: Decoded) -> None:
        if self.spooled:
            spooled.append(self)
        real_close(self)

    monkeypatch.setattr(Decoded, "close", noting_close)
    with SpeakerDB(tmp_path / "d.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("bob", [write(tmp_path / "bob.wav", voice(110, 4, seed=9))])
        decodes.clear()
        _check_identify(db, files, decodes, monkeypatch, exact=True)
    assert sorted(Path(d.path).name for d in spooled) == ["one44k.wav", "turns.wav"]  # not the 2 s clip


@pytest.mark.parametrize("in_memory_s", [60.0, 3.0])
def test_replays_give_the_blocks_of_a_fresh_decode(files, decodes, in_memory_s):
    for f in files:
        fresh = list(decode.stream(f))
        d = Decoded(f, in_memory_s=in_memory_s)
        first, second, third = list(d.blocks()), list(d.blocks()), list(d.blocks())
        for replay in (first, second, third):  # same blocks, same boundaries
            assert [b.tobytes() for b in replay] == [b.tobytes() for b in fresh]
        assert d.decodes == 1 and d.n_samples == sum(map(len, fresh))
        assert d.spooled == (sum(map(len, fresh)) > in_memory_s * SR)
        with pytest.raises(ValueError):
            second[0][0] = 1.0  # read-only: a consumer cannot change what the next one reads
        d.close()
        assert not d.spooled and d.n_samples == 0


def test_a_read_abandoned_halfway_is_decoded_again_not_replayed_in_part(files, decodes):
    d = Decoded(files[0], in_memory_s=3.0)
    partial = d.blocks()
    next(partial)
    partial.close()
    assert [b.tobytes() for b in d.blocks()] == [b.tobytes() for b in decode.stream(files[0])]
    assert d.decodes == 2


def test_the_timeline_decodes_once_for_both_passes(tmp_path, files, decodes, monkeypatch):
    emb = FakeEmbedder()
    gallery = Gallery(["bob"], emb.embed([voice(110, 4, seed=9)]), threshold=0.9)
    t = timeline.build(files[0], emb, gallery, Params(), detector=EnergyDetector())
    assert decodes == {"turns.wav": 1}  # voice activity and windows from one decode
    with monkeypatch.context() as m:
        _decoding_every_pass(m)
        before = timeline.build(files[0], emb, gallery, Params(), detector=EnergyDetector())
    assert t.to_dict() == before.to_dict() and [s.label for s in t.segments] == ["bob", "unknown-1", "bob"]


def test_enroll_and_verify_decode_each_file_once(tmp_path, files, decodes):
    with SpeakerDB(tmp_path / "d.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("bob", files[:2])
        db.verify("bob", files[2])
    assert decodes == {f.name: 1 for f in files}
