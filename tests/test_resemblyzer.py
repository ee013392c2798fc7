"""The pretrained GE2E encoder (``--model resemblyzer``): interface, identity, refusals, real speech.

Needs the ``resemblyzer`` extra (``pip install -e ".[dev,resemblyzer]"``); without it the
whole file is skipped and the default suite still passes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("resemblyzer")

from conftest import SR, voice, write  # noqa: E402
from speakerdb import SpeakerDB  # noqa: E402
from speakerdb.audio.decode import Audio, load  # noqa: E402
from speakerdb.embedding.models import (  # noqa: E402
    Embedder,
    ResemblyzerEncoder,
    load_embedder,
    same_model,
)
from speakerdb.errors import InvalidInputError, ModelLoadError, ModelMismatchError  # noqa: E402

TEST_OTHER = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "test-other"
SPEAKER_M, SPEAKER_F = "1688", "1998"  # LibriSpeech test-other: a man and a woman


@pytest.fixture(scope="module")
def ge2e() -> ResemblyzerEncoder:
    return load_embedder("resemblyzer")


def hum(seconds: float = 3.0) -> np.ndarray:
    """A quiet 50 Hz mains hum: not silent for speakerdb.audio, but no speech for webrtcvad. (n,) float32"""
    t = np.arange(int(seconds * SR)) / SR
    return (0.01 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)


# ---- interface -------------------------------------------------------------------------
def test_implements_the_interface(ge2e):
    assert isinstance(ge2e, ResemblyzerEncoder)
    assert isinstance(ge2e, Embedder)
    assert ge2e.dim == 256
    waves = [voice(120, 2.0), voice(220, 3.3, seed=1), voice(300, 0.6, seed=2)]
    out = ge2e.embed(waves)
    assert out.shape == (3, 256) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_deterministic_and_batch_equals_one_at_a_time(ge2e):
    waves = [voice(110 + 40 * i, 1.0 + 0.45 * i, seed=i) for i in range(4)]
    first, second = ge2e.embed(waves), ge2e.embed(waves)
    np.testing.assert_array_equal(first, second)
    single = np.concatenate([ge2e.embed([w]) for w in waves])
    np.testing.assert_allclose(first, single, atol=1e-6)
    fresh = ResemblyzerEncoder().embed(waves)  # a second load of the weights: same vectors
    np.testing.assert_allclose(first, fresh, atol=1e-6)


def test_equals_resemblyzers_own_recipe(ge2e):
    from resemblyzer import VoiceEncoder, preprocess_wav

    reference = VoiceEncoder("cpu", verbose=False)
    for wave in [voice(140, 2.5), voice(260, 4.0, seed=3)]:
        ours = ge2e.embed([wave])[0]
        theirs = reference.embed_utterance(preprocess_wav(wave, source_sr=SR))
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_loading_prints_nothing(capfd):
    """--json promises one JSON document on stdout: resemblyzer's 'Loaded the voice encoder' must not appear."""
    load_embedder("resemblyzer")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_import_stays_cheap():
    code = (
        "import sys, speakerdb.embedding.models; "
        "print(sorted(m for m in ('torch', 'resemblyzer', 'librosa') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_device_is_refused():
    with pytest.raises(InvalidInputError, match="unknown device"):
        load_embedder("resemblyzer", device="tpu")


def test_cuda_without_gpu_is_a_load_error():
    import torch

    if torch.cuda.is_available():
        gpu = load_embedder("resemblyzer", device="cuda")
        assert gpu.device.type == "cuda"
        np.testing.assert_allclose(gpu.embed([voice(150)]), ResemblyzerEncoder().embed([voice(150)]), atol=1e-4)
    else:
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_embedder("resemblyzer", device="cuda")


# ---- clips without speech ----------------------------------------------------------------
def test_clip_without_speech_is_embedded_whole_with_a_warning(ge2e, caplog):
    """webrtcvad keeps nothing of a hum; the untrimmed (volume-normalised) clip is embedded instead."""
    from resemblyzer import normalize_volume, preprocess_wav

    wave = hum()
    assert len(preprocess_wav(wave, source_sr=SR)) == 0  # what resemblyzer alone would embed
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        out = ge2e.embed([wave])
    assert "embedding the whole recording" in caplog.text
    assert out.shape == (1, 256) and np.isfinite(out).all()
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, abs=1e-6)
    expected = ge2e.encoder.embed_utterance(normalize_volume(wave, -30, increase_only=True))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_array_equal(out, ge2e.embed([wave]))  # deterministic too


def test_clip_without_speech_enrolls_like_with_wavlm(tmp_path, ge2e):
    """A file speakerdb.audio accepts is accepted with either model."""
    path = write(tmp_path / "hum.wav", hum())
    with SpeakerDB(tmp_path / "db.sqlite", embedder=ge2e) as db:
        result = db.enroll("hum", [path])
        assert result.n_utterances == 1


@pytest.mark.parametrize(
    "wave, message",
    [
        (np.zeros(SR, dtype=np.float32), "all zeros"),
        (np.full(SR, np.nan, dtype=np.float32), "NaN"),
        (np.zeros((2, SR), dtype=np.float32), "1-D"),
        (np.zeros(0, dtype=np.float32), "non-empty"),
    ],
)
def test_unusable_arrays_are_refused(ge2e, wave, message):
    with pytest.raises(InvalidInputError, match=message):
        ge2e.embed([wave])


# ---- identity of the model -----------------------------------------------------------------
def test_model_id_pins_the_weights_file(ge2e):
    import resemblyzer

    weights = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
    assert ge2e.weights_path == weights
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert ge2e.model_id == f"resemblyzer-ge2e@{digest}"
    assert re.fullmatch(r"resemblyzer-ge2e@[0-9a-f]{16}", ge2e.model_id)


def test_never_the_same_model_as_wavlm(ge2e, tiny_embedder):
    assert ge2e.model_id != tiny_embedder.model_id
    assert not same_model(ge2e.model_id, tiny_embedder.model_id)
    assert not same_model(tiny_embedder.model_id, ge2e.model_id)
    assert same_model(ge2e.model_id, ResemblyzerEncoder().model_id)
    # Fingerprints of the two families are computed differently: even equal digests
    # under different families do not make the same model.
    digest = ge2e.model_id.rsplit("@", 1)[1]
    assert not same_model(ge2e.model_id, f"microsoft/wavlm-base-plus-sv@{digest}")
    assert not same_model(f"some-dir@{digest}", ge2e.model_id)
    # Labels of transformers checkpoints still do not matter (hub id vs copied directory).
    tiny_digest = tiny_embedder.model_id.rsplit("@", 1)[1]
    assert same_model(f"microsoft/wavlm-base-plus-sv@{tiny_digest}", tiny_embedder.model_id)


def test_database_of_one_model_refuses_the_other(tmp_path, ge2e, tiny_embedder):
    clip = Audio("a.wav", voice(180, 2.0))
    for built_with, other in [(ge2e, tiny_embedder), (tiny_embedder, ge2e)]:
        path = tmp_path / f"{built_with.dim}.sqlite"
        with SpeakerDB(path, embedder=built_with) as db:
            db.enroll("alice", [clip])
            assert db.info().model_id == built_with.model_id
        with SpeakerDB(path, embedder=other) as db:
            with pytest.raises(ModelMismatchError, match="built with model"):
                db.enroll("bob", [Audio("b.wav", voice(120, 2.0))])
            with pytest.raises(ModelMismatchError):
                db.identify([clip])
            assert [s.name for s in db.list()] == ["alice"]


def test_database_remembers_resemblyzer(tmp_path, voices, ge2e):
    path = tmp_path / "ge2e.sqlite"
    with SpeakerDB(path, model="resemblyzer") as db:
        db.enroll("alice", voices["alice"][:2])
        db.enroll("bob", voices["bob"][:2])
        info = db.info()
        assert info.model_source == "resemblyzer" and info.dim == 256
        assert info.model_id.startswith("resemblyzer-ge2e@")
        assert info.threshold == ResemblyzerEncoder.default_threshold == 0.80  # its own scale, not 0.86
    with SpeakerDB(path) as db:  # no model given: the database's own
        # A recording that was not enrolled: its scores are GE2E's cosines to the centroids,
        # which only the database's own model reproduces.
        [result] = db.identify([voices["alice"][2]])
        assert isinstance(db.embedder, ResemblyzerEncoder)
        from speakerdb.audio.decode import load

        probe = ge2e.embed([load(voices["alice"][2]).samples])[0]
        for c in result.candidates:
            enrolled = ge2e.embed([load(p).samples for p in voices[c.speaker][:2]])
            centroid = enrolled.mean(axis=0) / np.linalg.norm(enrolled.mean(axis=0))
            assert c.score == pytest.approx(float(probe @ centroid), abs=1e-4)
        assert result.score < 1 - 1e-4 and {c.speaker for c in result.candidates} == {"alice", "bob"}


def test_cli_json_stdout_is_one_document(tmp_path, voices):
    """The real command in a fresh interpreter: loading the encoder writes nothing to stdout."""
    db = str(tmp_path / "cli.sqlite")

    def speakerdb(*args):
        done = subprocess.run(
            [sys.executable, "-m", "speakerdb", "--db", db, *map(str, args)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    doc = speakerdb("--model", "resemblyzer", "enroll", "alice", *voices["alice"][:2], "--json")
    assert doc["speaker"] == "alice" and len(doc["added"]) == 2
    [answer] = speakerdb("identify", voices["alice"][0], "--json")
    assert answer["speaker"] == "alice"


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import machinery: "not installed"
    with pytest.raises(ModelLoadError, match=re.escape('pip install -e ".[resemblyzer]"')) as info:
        load_embedder("resemblyzer")
    assert "\n" not in str(info.value)


def test_setuptools_without_pkg_resources_is_explained():
    """setuptools >= 82 has no pkg_resources, which webrtcvad imports: one line that says so."""
    code = (
        "import sys; sys.modules['pkg_resources'] = None\n"
        "from speakerdb.embed import load_embedder\n"
        "from speakerdb.errors import ModelLoadError\n"
        "try:\n    load_embedder('resemblyzer')\nexcept ModelLoadError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message = out.stdout.strip()
    assert "pkg_resources" in message and "setuptools" in message and '".[resemblyzer]"' in message
    assert "\n" not in message


# ---- real speech -----------------------------------------------------------------------------
def _utterances(speaker: str, n: int) -> list[Path]:
    return sorted((TEST_OTHER / speaker).glob("*.flac"))[:n]


@pytest.mark.librispeech
@pytest.mark.skipif(not TEST_OTHER.is_dir(), reason=f"LibriSpeech test-other not found at {TEST_OTHER}")
def test_real_speech_same_speaker_scores_higher(ge2e):
    m = ge2e.embed([load(p).samples for p in _utterances(SPEAKER_M, 3)])  # (3, 256)
    f = ge2e.embed([load(p).samples for p in _utterances(SPEAKER_F, 3)])
    same = [float(m[0] @ m[1]), float(m[1] @ m[2]), float(f[0] @ f[1]), float(f[1] @ f[2])]
    different = (m @ f.T).ravel()  # (9,)
    assert min(same) > float(different.max()) + 0.1, (same, different)


@pytest.mark.librispeech
@pytest.mark.skipif(not TEST_OTHER.is_dir(), reason=f"LibriSpeech test-other not found at {TEST_OTHER}")
def test_real_speech_is_identified(tmp_path, ge2e):
    m, f = _utterances(SPEAKER_M, 3), _utterances(SPEAKER_F, 3)
    with SpeakerDB(tmp_path / "libri.sqlite", embedder=ge2e) as db:
        db.enroll("m1688", m[:2])
        db.enroll("f1998", f[:2])
        results = db.identify([m[2], f[2]])
    assert [r.candidates[0].speaker for r in results] == ["m1688", "f1998"]


def test_a_chosen_threshold_is_kept_when_the_model_is_bound(tmp_path, voices):
    with SpeakerDB(tmp_path / "chosen.sqlite", model="resemblyzer") as db:
        db.set_threshold(0.7)
        db.enroll("alice", voices["alice"][:1])
        assert db.threshold == 0.7


def test_the_lstm_runs_on_one_thread_and_blas_on_one(ge2e):
    """threads.py: torch's OpenMP pool and numpy's BLAS pool must not fight (10 x slower on a busy 2-core CPU)."""
    import threadpoolctl
    import torch

    from speakerdb.embedding import threads

    seen = []
    original = ge2e.encoder.forward

    def forward(*args):
        blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        seen.append((torch.get_num_threads(), set(blas)))
        return original(*args)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    ge2e.encoder.forward = forward
    try:
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            ge2e.embed([voice(150, 2.0)])
            assert torch.get_num_threads() == 2  # restored for the rest of the program
    finally:
        del ge2e.encoder.forward
        torch.set_num_threads(before)
    assert seen and all(s == (threads.LSTM_THREADS, {threads.BLAS_THREADS}) for s in seen)


def test_the_no_speech_warning_names_its_file(tmp_path, ge2e, caplog):
    from speakerdb.embedding import pipeline

    path = write(tmp_path / "mains-hum.wav", hum())
    with caplog.at_level(logging.WARNING, logger="speakerdb"):
        pipeline.embed_clip(path, ge2e)
    assert any(
        r.getMessage().startswith(f"{path}: ") and "embedding the whole recording" in r.getMessage()
        for r in caplog.records
    )


def test_the_readme_python_example_runs_offline(tmp_path, monkeypatch, capsys):
    """README's Python API example, as written, with the demo's file names (synthetic voices here)."""
    import re

    from conftest import REPO

    section = (REPO / "README.md").read_text().split("\n## Python API\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    audio_dir = tmp_path / "demo" / "audio"
    audio_dir.mkdir(parents=True)
    for name, f0 in (("alice", 210.0), ("bob", 110.0)):
        write(audio_dir / f"{name}-1.wav", voice(f0, 2.5, seed=1))
        write(audio_dir / f"{name}-2.flac", voice(f0, 2.5, seed=2))
        write(audio_dir / f"{name}-unseen.wav", voice(f0, 2.5, seed=3))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo/audio/alice-unseen.wav alice ")
    assert lines[1].startswith("demo/audio/bob-unseen.wav bob ")
    assert lines[2] == "no-such.wav no such file None"
    assert lines[3] == "False" and lines[4] == "1 0.8"
