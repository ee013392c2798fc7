"""evaluate and calibrate: the split, the trial counts, metrics consistent with the scores, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB
from speakerdb.cli import cli
from speakerdb.errors import InvalidInputError
from speakerdb.scoring import calibrate, evaluate, metrics
from speakerdb.storage import crypto
from speakerdb.workflows import evaluation_database

LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """DATA_DIR/<speaker>/<recordings>: 6 speakers x 5 recordings of different pitch."""
    root = tmp_path / "data"
    for i, f0 in enumerate([100, 130, 170, 220, 280, 360]):
        folder = root / f"spk{i}"
        folder.mkdir(parents=True)
        for k in range(5):
            write(folder / f"{k}.wav", voice(f0, 1.5 + 0.25 * k, seed=10 * i + k))
    return root


def test_split_is_reproducible_and_disjoint(data_dir):
    a = evaluate.make_split(data_dir, enroll_count=2, impostor_speakers=2, seed=3)
    b = evaluate.make_split(data_dir, enroll_count=2, impostor_speakers=2, seed=3)
    c = evaluate.make_split(data_dir, enroll_count=2, impostor_speakers=2, seed=4)
    assert a == b and a != c
    assert len(a.enroll) == 4 and all(len(f) == 2 for f in a.enroll.values())
    assert len(a.probes) == 4 * 3 and len(a.impostors) == 2 * 5
    enrolled = {f for files in a.enroll.values() for f in files}
    assert enrolled.isdisjoint(p for p, _ in a.probes + a.impostors)
    assert {s for _, s in a.impostors}.isdisjoint(a.enroll)


def test_default_holds_out_a_fifth(data_dir):
    split = evaluate.make_split(data_dir)
    assert len({s for _, s in split.impostors}) == 1 and len(split.enroll) == 5


def test_loose_files_are_one_speaker_each(tmp_path, data_dir):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, f0 in enumerate([150, 190]):
        write(extra / f"{900 + i}-1-0000.wav", voice(f0, 1.5, seed=i))
    split = evaluate.make_split(data_dir, impostor_speakers=0, impostor_dirs=[extra])
    assert sorted({s for _, s in split.impostors}) == ["900", "901"]


def test_too_few_recordings(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "x.wav", voice(100, 1.0))
    with pytest.raises(InvalidInputError, match="at least 2 speakers"):
        evaluate.make_split(tmp_path)


def test_report_counts_and_metrics_match_the_scores(data_dir):
    report, scores, _ = evaluate.run(
        data_dir, embedder=FakeEmbedder(), enroll_count=2, impostor_speakers=2, seed=0, open_db=evaluation_database
    )
    n_enrolled, n_probes, n_impostor = 4, 4 * 3, 2 * 5
    assert (report.n_enrolled_speakers, report.n_probes, report.n_impostor_probes) == (n_enrolled, n_probes, n_impostor)
    assert report.n_target_trials == n_probes
    assert report.n_nontarget_trials == n_probes * (n_enrolled - 1) + n_impostor * n_enrolled
    assert len(scores.target) == report.n_target_trials and len(scores.nontarget) == report.n_nontarget_trials
    assert report.eer == pytest.approx(metrics.eer(scores.target, scores.nontarget).eer)
    assert report.top1 == pytest.approx(np.mean(scores.genuine_rank == 1))
    assert report.top5 == 1.0  # only 4 speakers enrolled
    assert set(report.min_dcf) == {"0.01", "0.05"} and set(report.dir) == {"0.01", "0.1"}
    # The fake embedder separates these pitches well: a meaningful, not a random, result.
    assert report.top1 >= 0.9 and report.eer <= 0.1
    json.dumps(report.to_dict(), allow_nan=False)


def test_short_utterance_condition_crops_probes(data_dir):
    _, long_scores, _ = evaluate.run(
        data_dir, embedder=FakeEmbedder(), impostor_speakers=1, open_db=evaluation_database
    )
    _, short_scores, _ = evaluate.run(
        data_dir, embedder=FakeEmbedder(), impostor_speakers=1, test_seconds=0.6, open_db=evaluation_database
    )
    assert not np.allclose(long_scores.target, short_scores.target)
    with pytest.raises(InvalidInputError):
        evaluate.run(data_dir, embedder=FakeEmbedder(), test_seconds=0.1, open_db=evaluation_database)


def test_operating_points(data_dir):
    _, scores, _ = evaluate.run(data_dir, embedder=FakeEmbedder(), impostor_speakers=1, open_db=evaluation_database)
    eer_point = evaluate.operating_point(scores, "eer")
    observed = metrics.eer(scores.target, scores.nontarget).threshold
    everything = np.concatenate([scores.target, scores.nontarget])
    # The stored threshold is the midpoint of the two scores straddling the operating
    # point: never an observed score, and the same errors as the observed one.
    below = everything[everything < observed].max()
    assert eer_point["threshold"] == pytest.approx((below + observed) / 2)
    assert below < eer_point["threshold"] < observed and eer_point["threshold"] not in everything
    assert eer_point["p_miss"] == np.mean(scores.target < observed)
    assert eer_point["p_fa"] == np.mean(scores.nontarget >= observed)
    far = evaluate.operating_point(scores, "far=0.05")
    assert far["p_fa"] <= 0.05
    assert far["p_fa"] == pytest.approx(np.mean(scores.nontarget >= far["threshold"]))
    for bad in ("frr=0.1", "far=x", "far=2"):
        with pytest.raises(InvalidInputError):
            evaluate.operating_point(scores, bad)


def test_users_database_is_never_touched(data_dir, tmp_path):
    home = Path(os.environ["SPEAKERDB_HOME"])
    evaluate.run(data_dir, embedder=FakeEmbedder(), open_db=evaluation_database)
    assert not home.exists() or not any(home.iterdir())


# ---- CLI (tiny WavLM checkpoint, the users' code path) --------------------------------------
def test_cli_evaluate_json_and_plot(data_dir, tmp_path, tiny_checkpoint):
    png = tmp_path / "report.png"
    result = CliRunner().invoke(
        cli, ["--model", str(tiny_checkpoint), "evaluate", str(data_dir), "--json", "--plot", str(png), "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["n_target_trials"] == 5 * 2 and doc["settings"]["seed"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    human = CliRunner().invoke(cli, ["--model", str(tiny_checkpoint), "evaluate", str(data_dir)])
    assert "EER:" in human.stdout and "top-1" in human.stdout and "DIR" in human.stdout


def test_cli_calibrate_apply(data_dir, tmp_path, tiny_checkpoint, voices):
    db = tmp_path / "mine.sqlite"
    base = ["--db", str(db), "--model", str(tiny_checkpoint)]
    dry = CliRunner().invoke(cli, base + ["calibrate", str(data_dir), "--target", "far=0.1", "--json"])
    assert dry.exit_code == 0, dry.output
    point = json.loads(dry.stdout)
    assert point["p_fa"] <= 0.1 and point["applied"] is False
    applied = CliRunner().invoke(cli, base + ["calibrate", str(data_dir), "--target", "far=0.1", "--apply"])
    assert applied.exit_code == 0 and "stored in" in applied.stdout
    with SpeakerDB(db) as opened:
        assert opened.threshold == pytest.approx(point["threshold"])
        assert opened.info().model_id.split("@")[1] == point["report"]["settings"]["model_id"].split("@")[1]


def test_evaluate_and_calibrate_give_the_same_eer_threshold(data_dir, tmp_path, tiny_checkpoint):
    """The threshold evaluate reports at the equal error rate is the one calibrate --target eer
    stores (metrics.eer_threshold): the midpoint below the score the EER picks, not that score."""
    calibration, _ = calibrate.measure(
        data_dir, "eer", embedder=FakeEmbedder(), impostor_speakers=1, open_db=evaluation_database
    )
    assert calibration.threshold == calibration.report.eer_threshold
    _, scores, _ = evaluate.run(data_dir, embedder=FakeEmbedder(), impostor_speakers=1, open_db=evaluation_database)
    assert calibration.threshold == evaluate.operating_point(scores, "eer")["threshold"]
    assert calibration.threshold not in np.concatenate([scores.target, scores.nontarget])
    # The command line: `evaluate --json` and `calibrate --target eer --json` on the same recordings.
    model = ["--db", str(tmp_path / "mine.sqlite"), "--model", str(tiny_checkpoint)]
    evaluated = CliRunner().invoke(cli, [*model, "evaluate", str(data_dir), "--json"])
    calibrated = CliRunner().invoke(cli, [*model, "calibrate", str(data_dir), "--target", "eer", "--json"])
    assert evaluated.exit_code == 0 and calibrated.exit_code == 0, evaluated.output + calibrated.output
    assert json.loads(evaluated.stdout)["eer_threshold"] == json.loads(calibrated.stdout)["threshold"]
    text = CliRunner().invoke(cli, [*model, "evaluate", str(data_dir)]).stdout
    assert f"at threshold {json.loads(calibrated.stdout)['threshold']:.3f}" in text


def test_cli_calibrate_refuses_a_database_of_another_model(data_dir, tmp_path, tiny_checkpoint, voices):
    db = tmp_path / "fake.sqlite"
    with SpeakerDB(db, embedder=FakeEmbedder()) as fake:
        fake.enroll("alice", voices["alice"][:1])
    result = CliRunner().invoke(
        cli, ["--db", str(db), "--model", str(tiny_checkpoint), "calibrate", str(data_dir), "--apply"]
    )
    assert result.exit_code == 1 and "fake-spectral-v1" in result.stderr
    with SpeakerDB(db, embedder=FakeEmbedder()) as fake:
        assert fake.threshold == 0.86


@pytest.mark.parametrize("target", ["frr=1", "far=abc", "far=nan", "far=2"])
def test_cli_bad_target_is_a_usage_error(data_dir, target):
    # No --model: a usage error is found while parsing, before any model is loaded.
    result = CliRunner().invoke(cli, ["calibrate", str(data_dir), "--target", target])
    assert result.exit_code == 2 and "far=RATE" in result.stderr


def test_evaluate_and_calibrate_use_the_databases_model(data_dir, tmp_path, tiny_checkpoint, tiny_embedder, voices):
    db = tmp_path / "mine.sqlite"
    with SpeakerDB(db, model=str(tiny_checkpoint)) as mine:
        mine.enroll("alice", voices["alice"][:1])
        bound = mine.info().model_id
    # No --model: the database's model, not the hub default (which cannot be loaded offline).
    result = CliRunner().invoke(cli, ["--db", str(db), "evaluate", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["model_id"] == bound
    calibrated = CliRunner().invoke(cli, ["--db", str(db), "calibrate", str(data_dir), "--apply", "--json"])
    assert calibrated.exit_code == 0, calibrated.output
    assert json.loads(calibrated.stdout)["report"]["settings"]["model_id"] == bound


def test_plot_path_is_checked_before_the_evaluation(data_dir, tmp_path):
    # The model does not exist: reaching it would mean the evaluation started first.
    result = CliRunner().invoke(
        cli,
        ["--model", str(tmp_path / "no-model"), "evaluate", str(data_dir), "--plot", str(tmp_path / "nodir" / "r.png")],
    )
    assert result.exit_code == 1 and "nodir" in result.stderr and "does not exist" in result.stderr
    assert "no-model" not in result.stderr


def test_plot_has_a_title_the_threshold_and_a_det_curve_without_errors(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    target, nontarget = np.array([0.9, 0.95, 0.97]), np.array([0.1, 0.2, 0.3, 0.4])  # no errors at all
    scores = evaluate.Scores(target, nontarget, target, np.ones(3, bool), np.ones(3, np.int64), np.array([0.4]))
    eer, at = metrics.eer(target, nontarget).eer, metrics.eer_threshold(target, nontarget).threshold  # as summarise
    report = evaluate.Report(
        3,
        1,
        6,
        3,
        1,
        3,
        4,
        1.0,
        1.0,
        eer,
        at,
        {},
        {},
        {"model_id": "resemblyzer-ge2e@abc", "data_dir": "/data/test-other"},
    )
    evaluate.plot(scores, report, tmp_path / "r.png", threshold=0.8)
    [fig] = figures
    title = fig._suptitle.get_text()
    assert "resemblyzer-ge2e@abc" in title and "/data/test-other" in title and "3 target / 4 non-target" in title
    hist, det = fig.axes
    assert any("current threshold 0.800" in t.get_text() for t in hist.get_legend().get_texts())
    assert any("threshold 0.800" in t.get_text() for t in det.get_legend().get_texts())
    (x0, x1), (y0, y1) = det.get_xlim(), det.get_ylim()
    curve = det.get_lines()[0]
    visible = [(x, y) for x, y in zip(curve.get_xdata(), curve.get_ydata()) if x0 <= x <= x1 and y0 <= y <= y1]
    assert len(visible) >= 2  # the curve is drawn inside the panel, not off its edges


def test_evaluate_with_a_model_given_needs_nothing_of_the_database(data_dir, tmp_path, tiny_checkpoint, monkeypatch):
    """evaluate runs in a database of its own: with --model given and no plot to mark, the
    user's database is not opened at all (an encrypted one without its key stopped it)."""
    key = tmp_path / "db.key"
    key.write_bytes(crypto.new_key_text())
    key.chmod(0o600)
    path = tmp_path / "mine.sqlite"
    monkeypatch.setenv("SPEAKERDB_KEY_FILE", str(key))
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("someone", [write(tmp_path / "s.wav", voice(150, 3.0))])
    monkeypatch.delenv("SPEAKERDB_KEY_FILE")
    result = CliRunner().invoke(
        cli, ["--db", str(path), "--model", str(tiny_checkpoint), "evaluate", str(data_dir), "--json", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_target_trials"] == 5 * 2
