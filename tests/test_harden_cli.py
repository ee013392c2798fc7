"""Issue 21, the command line: outputs through links and over files (item 12), names (16),
cohort recordings of enrolled people (6), and clearer messages (17a, 17e, 17f)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from speakerdb import SpeakerDB, evaluate, metrics, timeline
from speakerdb.cli import cli

from conftest import FakeEmbedder, voice, write


# ---- item 12: every output file gets export's care -----------------------------------------------
def _canned_timeline(monkeypatch) -> None:
    """SpeakerDB.timeline answers at once: these tests are about the files, not diarization."""
    t = timeline.Timeline("call.wav", 4.0, [timeline.Segment(0.5, 3.5, "unknown-1", None, None)],
                          [timeline.Voice("unknown-1", None, 3.0, None)])
    monkeypatch.setattr(SpeakerDB, "timeline", lambda self, files, **kw: [t])


def _canned_evaluation(monkeypatch) -> None:
    """evaluate's scoring answers at once with a small fixed report."""
    target, nontarget = np.array([0.9, 0.95, 0.97]), np.array([0.1, 0.2, 0.3, 0.4])
    scores = evaluate.Scores(target, nontarget, target, np.ones(3, bool), np.ones(3, np.int64), np.array([0.4]))
    eer, at = metrics.eer(target, nontarget)
    report = evaluate.Report(3, 1, 6, 3, 1, 3, 4, 1.0, 1.0, eer, at, {}, {}, {"model_id": "fake", "data_dir": "d"})
    monkeypatch.setattr("speakerdb.cli._run_evaluation", lambda state, as_json, **kw: (report, scores, FakeEmbedder()))


def _outputs(tmp_path):
    """(name, command line writing to PATH) for every output option of the command line."""
    pytest.importorskip("matplotlib")
    db = tmp_path / "d.sqlite"
    SpeakerDB(db).close()
    (tmp_path / "data").mkdir()
    return {
        "timeline --rttm": lambda path: ["--db", str(db), "timeline", "call.wav", "--rttm", str(path)],
        "timeline --plot": lambda path: ["--db", str(db), "timeline", "call.wav", "--plot", str(path)],
        "evaluate --plot": lambda path: ["evaluate", str(tmp_path / "data"), "--plot", str(path)],
    }


OUTPUTS = ["timeline --rttm", "timeline --plot", "evaluate --plot"]


@pytest.fixture
def output_command(tmp_path, monkeypatch, request):
    _canned_timeline(monkeypatch)
    _canned_evaluation(monkeypatch)
    return _outputs(tmp_path)[request.param]


@pytest.mark.parametrize("output_command", OUTPUTS, indirect=True)
def test_an_output_is_new_and_private(tmp_path, output_command):
    out = tmp_path / "out.file"
    r = CliRunner().invoke(cli, output_command(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("output_command", OUTPUTS, indirect=True)
def test_an_existing_output_is_replaced_only_with_force(tmp_path, output_command):
    out = tmp_path / "out.file"
    out.write_bytes(b"keep me")
    r = CliRunner().invoke(cli, output_command(out))
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr, r.output
    assert out.read_bytes() == b"keep me"
    r = CliRunner().invoke(cli, output_command(out) + ["--force"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() != b"keep me" and stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("output_command", OUTPUTS, indirect=True)
def test_an_output_is_never_written_through_a_link(tmp_path, output_command):
    target = tmp_path / "victim.txt"
    target.write_bytes(b"precious")
    os.chmod(target, 0o644)
    link = tmp_path / "out.file"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.file"
    dangling.symlink_to(tmp_path / "not-yet")
    for planted in (link, dangling):
        r = CliRunner().invoke(cli, output_command(planted))
        assert r.exit_code == 1 and "already exists" in r.stderr, r.output
    assert not (tmp_path / "not-yet").exists()
    # --force replaces the link itself: the file it pointed to is untouched.
    r = CliRunner().invoke(cli, output_command(link) + ["--force"])
    assert r.exit_code == 0, r.output
    assert target.read_bytes() == b"precious" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600


def test_an_output_that_appears_during_the_work_is_not_replaced(tmp_path):
    """The check before the work is repeated when the file is put in place (no clobbering race)."""
    from speakerdb import atomic
    from speakerdb.errors import InvalidInputError

    out = tmp_path / "out.rttm"
    with pytest.raises(InvalidInputError, match="already exists"):
        with atomic.write_output(out) as f:
            f.write(b"new")
            out.symlink_to(tmp_path / "elsewhere")  # planted while the command worked
    assert out.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_two_outputs_on_one_path_are_refused(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _canned_timeline(monkeypatch)
    SpeakerDB(tmp_path / "d.sqlite").close()
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["--db", str(tmp_path / "d.sqlite"), "timeline", "x.wav", "--rttm", str(out),
                                 "--plot", str(out)])
    assert r.exit_code == 2 and "different files" in r.stderr and not out.exists()
