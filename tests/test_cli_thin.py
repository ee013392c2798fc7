"""The command line is a thin edge (issue 22 item 2): calibrate's and evaluate's workflows run
in the library, no option type opens the database, and a command that works on a local
database only says so in one line when given --server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, workflows
from speakerdb.cli import cli
from speakerdb.errors import InvalidInputError


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """DATA_DIR/<speaker>/<recordings>: 4 speakers x 4 recordings of different pitch."""
    root = tmp_path / "data"
    for i, f0 in enumerate([100, 150, 220, 330]):
        folder = root / f"spk{i}"
        folder.mkdir(parents=True)
        for k in range(4):
            write(folder / f"{k}.wav", voice(f0, 1.5 + 0.25 * k, seed=10 * i + k))
    return root


def test_calibrate_through_the_library(data_dir, tmp_path, tiny_checkpoint):
    db = tmp_path / "new.sqlite"
    measured = workflows.calibrate_threshold(data_dir, "far=0.1", db=db, model=str(tiny_checkpoint), enroll_count=2)
    assert not measured.applied and measured.database is None and not db.exists()  # measuring creates nothing
    assert measured.threshold_scale == "cosine" and measured.p_fa <= 0.1
    assert set(measured.to_dict()) == {"target", "threshold", "p_miss", "p_fa", "threshold_scale", "applied", "report"}
    applied = workflows.calibrate_threshold(
        data_dir, "far=0.1", db=db, model=str(tiny_checkpoint), enroll_count=2, apply=True
    )
    assert applied.applied and applied.database == str(db.absolute())
    with SpeakerDB(db) as mine:  # created, bound to the model, the threshold stored
        assert mine.threshold == pytest.approx(applied.threshold)
        assert mine.info().model_source == str(tiny_checkpoint)


def test_calibrate_refuses_a_bad_target_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="far=RATE"):
        workflows.calibrate_threshold(tmp_path / "no-such-dir", "frr=1", model=str(tmp_path / "no-model"))


def test_evaluate_checks_the_plot_before_scoring(data_dir, tmp_path):
    # The model does not exist: reaching it would mean the evaluation started first.
    with pytest.raises(InvalidInputError, match="does not exist"):
        workflows.evaluate_recordings(data_dir, model=str(tmp_path / "no-model"), plot=tmp_path / "nodir" / "r.png")


def test_a_threshold_is_judged_on_the_scale_of_the_database_given_after_it(tmp_path, voices, monkeypatch):
    """The score option no longer opens the database while options are parsed: --db given after
    the value is the database whose scale (here AS-norm, -20 to 100) the value is judged on."""
    db = tmp_path / "d.sqlite"
    with SpeakerDB(db, embedder=FakeEmbedder()) as mine:
        mine.enroll("alice", voices["alice"][:1])
        mine.set_norm(
            [write(tmp_path / f"c{i}.wav", voice(90 + 25 * i, 1.5, seed=100 + i)) for i in range(10)],
            screen_enrolled=False,
        )
    r = CliRunner().invoke(cli, ["threshold", "5", "--db", str(db)])
    assert r.exit_code == 0 and "threshold: 5 (as-norm scale)" in r.stdout, r.output
    r = CliRunner().invoke(cli, ["threshold", "500", "--db", str(db)])
    assert r.exit_code == 2 and "500 is not in the range -20 to 100 of AS-norm scores" in r.stderr, r.output
    r = CliRunner().invoke(cli, ["identify", str(voices["alice"][0]), "--threshold", "3", "--db", str(tmp_path / "x")])
    assert r.exit_code == 2 and "3 is not in the range 0 to 1" in r.stderr, r.output
    # A negative per-call threshold is an AS-norm score like any other on this database.
    monkeypatch.setattr("speakerdb.api.load_embedder", lambda source, **kw: FakeEmbedder())
    r = CliRunner().invoke(cli, ["verify", "alice", str(voices["alice"][1]), "--threshold", "-5", "--db", str(db)])
    assert r.exit_code == 0 and ">= threshold -5" in r.stdout, r.output
    r = CliRunner().invoke(cli, ["threshold", "nan", "--db", str(db)])
    assert r.exit_code == 2 and "not in the range 0 to 1" in r.stderr, r.output


@pytest.mark.parametrize(
    "command",
    [["db", "current"], ["db", "vacuum"], ["index"], ["calibrate", "."], ["evaluate", "."]],
)
def test_local_only_commands_refuse_server_in_one_line(command, tmp_path):
    r = CliRunner().invoke(cli, ["--db", str(tmp_path / "local.sqlite"), "--server", "http://127.0.0.1:9", *command])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().count("\n") == 0 and "not available through --server http://127.0.0.1:9" in r.stderr
    assert not (tmp_path / "local.sqlite").exists()


def test_serve_refuses_server(tmp_path):
    r = CliRunner().invoke(cli, ["--server", "http://127.0.0.1:9", "serve"])
    assert r.exit_code == 2 and "drop --server" in r.stderr


def test_evaluate_json_goes_through_the_library(data_dir, tiny_checkpoint, monkeypatch):
    seen = []
    real = workflows.evaluate_recordings
    monkeypatch.setattr(workflows, "evaluate_recordings", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    r = CliRunner().invoke(
        cli, ["--model", str(tiny_checkpoint), "evaluate", str(data_dir), "--enroll-count", "2", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["settings"]["enroll_count"] == 2
    assert seen and seen[0]["model"] == str(tiny_checkpoint) and seen[0]["enroll_count"] == 2


@pytest.mark.parametrize("where", ["before", "after"])
def test_db_given_with_a_server_is_refused_not_ignored(where, tmp_path, monkeypatch):
    """`--db FILE` with SPEAKERDB_SERVER exported (as the README has clients do) named two
    databases, and the service's won: `--db backup.sqlite rename carol carol2` renamed carol
    on the server. Now a usage error, before anything is sent or opened."""
    db = tmp_path / "local.sqlite"
    with SpeakerDB(db, embedder=FakeEmbedder()) as local:
        local.enroll("carol", [write(tmp_path / "c.wav", voice(150, 1.5))])
    monkeypatch.setenv("SPEAKERDB_SERVER", "http://127.0.0.1:9")  # nothing listens: a call would fail otherwise
    rename = ["rename", "carol", "carol2"]
    args = ["--db", str(db), *rename] if where == "before" else [*rename, "--db", str(db)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert "--db and --server http://127.0.0.1:9 (or SPEAKERDB_SERVER) name two databases" in r.stderr
    with SpeakerDB(db, embedder=FakeEmbedder()) as local:
        assert [s.name for s in local.list()] == ["carol"]


def test_server_from_the_environment_still_wins_over_db_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPEAKERDB_DB", "postgresql://speakerdb@db.internal/speakers")
    monkeypatch.setenv("SPEAKERDB_SERVER", "http://127.0.0.1:9")
    r = CliRunner().invoke(cli, ["list"])
    assert r.exit_code == 1 and "cannot reach" in r.output, r.output
