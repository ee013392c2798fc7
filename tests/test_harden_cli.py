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


# ---- item 16: invisible names, and names that are not UTF-8 ---------------------------------------
#: Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt).
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
]


@pytest.mark.parametrize("low, high", DEFAULT_IGNORABLE, ids=[f"U+{a:04X}-{b:04X}" for a, b in DEFAULT_IGNORABLE])
def test_every_default_ignorable_code_point_is_refused_in_a_name(low, high):
    from speakerdb.errors import InvalidInputError
    from speakerdb.store import validate_name

    for code in range(low, high + 1):
        with pytest.raises(InvalidInputError, match=f"U\\+{code:04X}"):
            validate_name(f"bo{chr(code)}b")


@pytest.mark.parametrize("name", ["\u3164", "\u2800", "\u2800\u2800", "\u2800 \u2800", "\u115f\u1160", "\uffa0",
                                  "\u0301", "\u20dd"])
def test_a_name_that_shows_nothing_is_refused(fake_db, voices, name):
    from speakerdb.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="speaker name"):
        fake_db.enroll(name, voices["alice"][:1])
    fake_db.enroll("alice", voices["alice"][:1])
    with pytest.raises(InvalidInputError, match="speaker name"):
        fake_db.rename("alice", name)
    assert [s.name for s in fake_db.list()] == ["alice"]


@pytest.mark.parametrize("name", ["José", "Zoë", "李雷", "नमस्ते", "O'Brien", "mary ann", "😀", "a\u2800b", "Ω-7"])
def test_visible_names_are_still_accepted(name):
    from speakerdb.store import validate_name

    assert validate_name(name)


NAME_COMMANDS = {
    "show": [b"show", b"b\xffob"],
    "remove": [b"remove", b"b\xffob", b"--yes"],
    "rename old": [b"rename", b"b\xffob", b"carol"],
    "rename new": [b"rename", b"alice", b"b\xffob"],
    "verify": [b"verify", b"b\xffob", b"{wav}"],
    "audit --speaker": [b"audit", b"--speaker", b"b\xffob"],
    "export --speaker": [b"export", b"{out}", b"--speaker", b"b\xffob"],
    "enroll": [b"enroll", b"b\xffob", b"{wav}"],
}


@pytest.fixture
def named_db(tmp_path, voices):
    """A database with alice enrolled (fake embedder), made without the command line."""
    path = tmp_path / "named.sqlite"
    with SpeakerDB(path, embedder=FakeEmbedder()) as db:
        db.enroll("alice", voices["alice"][:1])
    return path


@pytest.mark.parametrize("command", NAME_COMMANDS, ids=list(NAME_COMMANDS))
def test_a_name_that_is_not_utf8_is_one_clear_line(tmp_path, voices, named_db, command):
    """Bytes on the command line that are not UTF-8: one error line naming them, exit 1, nothing changed."""
    fill = {b"{wav}": os.fsencode(voices["alice"][2]), b"{out}": os.fsencode(tmp_path / "out.gallery")}
    argv = [fill.get(a, a) for a in NAME_COMMANDS[command]]
    r = subprocess.run([sys.executable, "-m", "speakerdb", "--db", os.fsencode(named_db), *argv],
                       capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    stderr = r.stderr.decode("utf-8")
    assert r.returncode == 1 and "Traceback" not in stderr, stderr
    [line] = stderr.splitlines()
    assert line.startswith("Error: speaker name 'b\\xffob' is not valid UTF-8"), line
    assert not (tmp_path / "out.gallery").exists()
    with SpeakerDB(named_db, embedder=FakeEmbedder()) as db:
        assert [(s.name, s.n_utterances) for s in db.list()] == [("alice", 1)]


def test_the_library_refuses_names_that_are_not_utf8(fake_db, voices, tmp_path):
    from speakerdb.errors import InvalidInputError

    fake_db.enroll("alice", voices["alice"][:1])
    bad = "b\udcffob"
    for call in (lambda: fake_db.show(bad), lambda: fake_db.remove(bad), lambda: fake_db.rename(bad, "x"),
                 lambda: fake_db.verify(bad, voices["alice"][2]), lambda: fake_db.audit(10, bad),
                 lambda: fake_db.export(tmp_path / "o.gallery", [bad])):
        with pytest.raises(InvalidInputError, match=r"b\\xffob.*not valid UTF-8"):
            call()


# ---- item 17e: `db current` on a file that is not a speakerdb database ----------------------------
def test_db_current_on_a_text_file_says_it_is_not_a_database(tmp_path):
    import sqlite3

    text = tmp_path / "notes.txt"
    text.write_text("revision: 0004\nthis is not a database\n")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (a)")
    for path in (text, other):
        r = CliRunner().invoke(cli, ["--db", str(path), "db", "current"])
        assert r.exit_code == 1 and "not a speakerdb database" in r.stderr and r.stdout == "", r.output
    assert text.read_text().startswith("revision: 0004")  # read, never written
    SpeakerDB(tmp_path / "real.sqlite").close()
    r = CliRunner().invoke(cli, ["--db", str(tmp_path / "real.sqlite"), "db", "current"])
    assert r.exit_code == 0 and r.stdout.startswith("revision: ")


# ---- item 17f: a newline in a path or name stays on the error's one line -------------------------
@pytest.mark.parametrize("args", [
    ["identify", "{dir}/no\nsuch.wav"],
    ["verify", "alice", "{dir}/no\nsuch.wav"],
    ["enroll", "alice", "{dir}/no\nsuch.wav"],
    ["export", "{dir}/no\nsuch/out.gallery"],
    ["--db", "{dir}/no\nsuch/x.sqlite", "list"],
    ["--db", "{dir}/no\nsuch/x.sqlite", "db", "current"],
], ids=["identify", "verify", "enroll", "export", "db", "db current"])
def test_a_newline_in_a_path_stays_on_one_error_line(tmp_path, named_db, args):
    r = CliRunner().invoke(cli, ["--db", str(named_db), *[a.format(dir=tmp_path) for a in args]])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    [line] = [l for l in r.stderr.splitlines() if l.startswith("Error")]
    assert "\\n" in line and line == r.stderr.splitlines()[-1], r.stderr
