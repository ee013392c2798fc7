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

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB, timeline
from speakerdb.cli import cli
from speakerdb.scoring import evaluate, metrics


# ---- item 12: every output file gets export's care -----------------------------------------------
def _canned_timeline(monkeypatch) -> None:
    """SpeakerDB.timeline answers at once: these tests are about the files, not diarization."""
    t = timeline.Timeline(
        "call.wav",
        4.0,
        [timeline.Segment(0.5, 3.5, "unknown-1", None, None)],
        [timeline.Voice("unknown-1", None, 3.0, None)],
    )
    monkeypatch.setattr(SpeakerDB, "timeline", lambda self, files, **kw: [t])


def _canned_evaluation(monkeypatch) -> None:
    """evaluate's scoring answers at once with a small fixed report."""
    target, nontarget = np.array([0.9, 0.95, 0.97]), np.array([0.1, 0.2, 0.3, 0.4])
    scores = evaluate.Scores(target, nontarget, target, np.ones(3, bool), np.ones(3, np.int64), np.array([0.4]))
    eer, at = metrics.eer(target, nontarget).eer, metrics.eer_threshold(target, nontarget).threshold  # as summarise
    report = evaluate.Report(3, 1, 6, 3, 1, 3, 4, 1.0, 1.0, eer, at, {}, {}, {"model_id": "fake", "data_dir": "d"})
    monkeypatch.setattr("speakerdb.scoring.evaluate.run", lambda data_dir, **kw: (report, scores, FakeEmbedder()))


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
    from speakerdb.errors import InvalidInputError
    from speakerdb.storage import atomic

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
    r = CliRunner().invoke(
        cli, ["--db", str(tmp_path / "d.sqlite"), "timeline", "x.wav", "--rttm", str(out), "--plot", str(out)]
    )
    assert r.exit_code == 2 and "different files" in r.stderr and not out.exists()


# ---- item 16: invisible names, and names that are not UTF-8 ---------------------------------------
#: Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt).
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]


@pytest.mark.parametrize("low, high", DEFAULT_IGNORABLE, ids=[f"U+{a:04X}-{b:04X}" for a, b in DEFAULT_IGNORABLE])
def test_every_default_ignorable_code_point_is_refused_in_a_name(low, high):
    from speakerdb.errors import InvalidInputError
    from speakerdb.storage.store import validate_name

    for code in range(low, high + 1):
        with pytest.raises(InvalidInputError, match=f"U\\+{code:04X}"):
            validate_name(f"bo{chr(code)}b")


@pytest.mark.parametrize(
    "name", ["\u3164", "\u2800", "\u2800\u2800", "\u2800 \u2800", "\u115f\u1160", "\uffa0", "\u0301", "\u20dd"]
)
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
    from speakerdb.storage.store import validate_name

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
    r = subprocess.run(
        [sys.executable, "-m", "speakerdb", "--db", os.fsencode(named_db), *argv],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
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
    for call in (
        lambda: fake_db.show(bad),
        lambda: fake_db.remove(bad),
        lambda: fake_db.rename(bad, "x"),
        lambda: fake_db.verify(bad, voices["alice"][2]),
        lambda: fake_db.audit(10, bad),
        lambda: fake_db.export(tmp_path / "o.gallery", [bad]),
    ):
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
@pytest.mark.parametrize(
    "args",
    [
        ["identify", "{dir}/no\nsuch.wav"],
        ["verify", "alice", "{dir}/no\nsuch.wav"],
        ["enroll", "alice", "{dir}/no\nsuch.wav"],
        ["export", "{dir}/no\nsuch/out.gallery"],
        ["--db", "{dir}/no\nsuch/x.sqlite", "list"],
        ["--db", "{dir}/no\nsuch/x.sqlite", "db", "current"],
    ],
    ids=["identify", "verify", "enroll", "export", "db", "db current"],
)
def test_a_newline_in_a_path_stays_on_one_error_line(tmp_path, named_db, args):
    r = CliRunner().invoke(cli, ["--db", str(named_db), *[a.format(dir=tmp_path) for a in args]])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    [line] = [text for text in r.stderr.splitlines() if text.startswith("Error")]
    assert "\\n" in line and line == r.stderr.splitlines()[-1], r.stderr


# ---- item 6: cohort recordings of enrolled people -----------------------------------------------
#: Cohort pitches far from the ``voices`` fixture's enrolled 210 Hz (alice), as tests/test_norm.py's.
COHORT_F0 = [95, 125, 140, 155, 170, 185, 235, 250, 270, 290, 330, 350]


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    root = tmp_path / "cohort"
    root.mkdir()
    for i, f0 in enumerate(COHORT_F0):
        write(root / f"c{i:02d}.wav", voice(f0, 1.0, seed=100 + i))
    return root


def _alice_in_disguise(tmp_path, voices) -> list[Path]:
    """Clip A (enrolled) with its first sample dropped, and another recording of alice."""
    import soundfile as sf

    samples, sr = sf.read(str(voices["alice"][0]), dtype="float32")
    return [write(tmp_path / "shifted-a.wav", samples[1:], sr=sr), voices["alice"][1]]


def test_cohort_recordings_of_an_enrolled_voice_are_set_aside(fake_db, voices, cohort_dir, tmp_path, caplog):
    from speakerdb.scoring import norm
    from speakerdb.storage import store

    fake_db.enroll("alice", voices["alice"][:1])
    disguised = _alice_in_disguise(tmp_path, voices)
    with caplog.at_level("WARNING", logger="speakerdb"):
        change = fake_db.set_norm(sorted(cohort_dir.iterdir()) + disguised, top_n=5)
    assert sorted((a.source, a.speaker) for a in change.set_aside) == sorted((str(p), "alice") for p in disguised)
    assert all(a.score >= a.threshold == 0.86 for a in change.set_aside)
    for p in disguised:  # one warning names each file and the speaker
        assert any(str(p) in m and "alice" in m and "set aside" in m for m in caplog.messages)
    assert change.norm.count == len(COHORT_F0) and change.to_dict()["set_aside"][0]["speaker"] == "alice"
    # alice's own probe keeps a high normalised score ...
    [r] = fake_db.identify([voices["alice"][2]])
    assert r.speaker == "alice" and r.score >= fake_db.threshold
    # ... which the disguised recordings, kept in the cohort, would have pulled below the threshold.
    emb = FakeEmbedder()
    with fake_db.store.read() as s:
        centroid = store.speaker_by_name(s, "alice").centroid_vector()
        cohort = store.cohort(s)
    tainted = np.concatenate([cohort, emb.embed([voice(210, 2.0, seed=0)[1:], voice(210, 2.0, seed=1)])])
    probe = emb.embed([voice(210, 2.0, seed=2)])[0]
    mean, std = norm.top_stats(np.stack([centroid, probe]), tainted, 5)
    assert norm.as_norm(float(probe @ centroid), mean[0], std[0], mean[1], std[1]) < fake_db.threshold < r.score


def test_a_cohort_left_too_small_by_enrolled_voices_is_refused(fake_db, voices, cohort_dir, tmp_path):
    from speakerdb.errors import InvalidInputError

    fake_db.enroll("alice", voices["alice"][:1])
    disguised = _alice_in_disguise(tmp_path, voices)
    files = sorted(cohort_dir.iterdir())[:9] + disguised  # 11 recordings, 2 of them alice: 9 left
    with pytest.raises(InvalidInputError, match="not enrolled") as e:
        fake_db.set_norm(files)
    assert "alice" in str(e.value) and any(str(p) in str(e.value) for p in disguised) and "9 left" in str(e.value)
    assert fake_db.norm_settings is None and fake_db.threshold_scale == "cosine"


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """The command line on a database of the fake embedder (--model fake)."""
    monkeypatch.setattr("speakerdb.api.load_embedder", lambda source, **kw: FakeEmbedder())
    db = tmp_path / "fake-cli.sqlite"

    def run(*args):
        return CliRunner().invoke(cli, ["--db", str(db), "--model", "fake", *map(str, args)])

    return run


def test_cli_norm_names_the_cohort_recordings_it_sets_aside(fake_cli, voices, cohort_dir, tmp_path):
    import json
    import shutil

    assert fake_cli("enroll", "alice", voices["alice"][0]).exit_code == 0
    for p in _alice_in_disguise(tmp_path, voices):
        shutil.copy(p, cohort_dir / f"zz-{p.name}")
    r = fake_cli("norm", "--cohort", cohort_dir, "--top-n", "5", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(Path(a["source"]).name for a in doc["set_aside"]) == ["zz-alice1.wav", "zz-shifted-a.wav"]
    assert doc["norm"]["count"] == len(COHORT_F0)
    warned = [line for line in r.stderr.splitlines() if "set aside" in line]
    assert len(warned) == 2 and all("alice" in line and "zz-" in line for line in warned)
    assert "2 set aside" in fake_cli("norm", "--cohort", cohort_dir, "--top-n", "5").stdout


# ---- item 17a: norm's --top-n defaults to at most the cohort's size ------------------------------
def test_norm_default_top_n_is_at_most_the_cohort_size(fake_cli, fake_db, voices, cohort_dir):
    import json

    assert fake_cli("enroll", "bob", voices["bob"][0]).exit_code == 0
    r = fake_cli("norm", "--cohort", cohort_dir, "--json")  # 12 recordings, default top-n 100
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["norm"]["top_n"] == len(COHORT_F0)
    too_many = fake_cli("norm", "--cohort", cohort_dir, "--top-n", "50")
    assert too_many.exit_code == 1 and f"more than the {len(COHORT_F0)} cohort recordings" in too_many.stderr
    assert f"at most {len(COHORT_F0)}" in too_many.stderr
    assert json.loads(fake_cli("norm", "--json").stdout)["norm"]["top_n"] == len(COHORT_F0)  # unchanged
    assert fake_db.set_norm(cohort_dir).norm.top_n == len(COHORT_F0)  # the library's default too


# ---- a top-n that only the set-aside makes unreachable stops the embedding there -------------
@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """The sources of the clips embedded so far, in order."""
    from speakerdb.embedding import pipeline

    made: list[str] = []
    real = pipeline.embed_clip

    def counted(f, *args, **kwargs):
        clip = real(f, *args, **kwargs)
        made.append(clip.source)
        return clip

    monkeypatch.setattr(pipeline, "embed_clip", counted)
    return made


def test_a_top_n_the_set_aside_makes_unreachable_stops_the_embedding(fake_db, voices, cohort_dir, tmp_path, embedded):
    from speakerdb.errors import InvalidInputError

    fake_db.enroll("alice", voices["alice"][:1])
    cohort = sorted(cohort_dir.iterdir())
    files = _alice_in_disguise(tmp_path, voices) + cohort  # 14 recordings, 12 left once alice's are set aside
    embedded.clear()
    with pytest.raises(InvalidInputError, match="top-n 13 cannot be reached") as e:
        fake_db.set_norm(files, top_n=13)
    assert len(embedded) == 2  # stopped at the second of alice's: not after all 14
    assert "of the first 2 of 14" in str(e.value) and "alice" in str(e.value) and "at most 12" in str(e.value)
    embedded.clear()
    with pytest.raises(InvalidInputError, match="top-n 13 cannot be reached") as e:
        fake_db.set_norm([cohort[0], *cohort], top_n=13)  # the same recording twice: 12 different, 13 files
    assert len(embedded) == 2 and "1 repeat another recording" in str(e.value)
    assert fake_db.norm_settings is None and fake_db.threshold_scale == "cosine"  # nothing written
    assert fake_db.set_norm(files, top_n=12).norm.count == 12  # reachable: as before


def test_cli_norm_refuses_an_unreachable_top_n_before_embedding_the_rest(
    fake_cli, voices, cohort_dir, tmp_path, embedded
):
    import json
    import shutil

    assert fake_cli("enroll", "alice", voices["alice"][0]).exit_code == 0
    for p in _alice_in_disguise(tmp_path, voices):
        shutil.copy(p, cohort_dir / f"aa-{p.name}")  # sorted first
    embedded.clear()
    r = fake_cli("norm", "--cohort", cohort_dir, "--top-n", "13")
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "top-n 13 cannot be reached" in errors[0] and "nothing stored" in errors[0]
    assert len(embedded) == 2 and r.stdout == ""
    assert json.loads(fake_cli("norm", "--json").stdout)["norm"] is None


def test_a_newline_in_a_file_name_cannot_forge_result_lines(fake_cli, voices, tmp_path):
    forged = write(tmp_path / "x\nx.wav: alice (score 1.000).wav", voice(210, 2.0, seed=2))
    assert fake_cli("enroll", "bob", voices["bob"][0]).exit_code == 0
    for args in (["identify", forged, "--no-voice-check"], ["verify", "bob", forged]):
        r = fake_cli(*args)
        assert r.exit_code == 0, r.output
        [line] = [text for text in r.stdout.splitlines() if not text.startswith("  ")]
        assert "x\\nx.wav: alice" in line
