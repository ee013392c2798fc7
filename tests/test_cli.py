"""The speakerdb command end to end with CliRunner and the tiny WavLM checkpoint (the users' code path)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from conftest import voice, write
from speakerdb.cli import cli
from speakerdb.errors import InvalidInputError


@pytest.fixture
def run(tmp_path, tiny_checkpoint):
    """Invoke speakerdb with a fresh database and the tiny model; returns the click Result."""
    runner = CliRunner()
    db = tmp_path / "cli.sqlite"

    def invoke(*args: str, model: bool = True):
        base = ["--db", str(db)] + (["--model", str(tiny_checkpoint)] if model else [])
        return runner.invoke(cli, base + [str(a) for a in args], catch_exceptions=False)

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def test_enroll_identify_verify_rename_remove(run, voices):
    for name in ("alice", "bob", "carol"):
        doc = as_json(run("enroll", name, *voices[name][:2], "--json"))
        assert doc["speaker"] == name and doc["created"] and len(doc["added"]) == 2

    # The random-weight model cannot tell these voices apart, but identical audio scores 1.0.
    results = as_json(run("identify", voices["alice"][0], voices["bob"][1], "--json"))
    assert [r["file"] for r in results] == [str(voices["alice"][0]), str(voices["bob"][1])]
    for r in results:
        assert set(r) == {"file", "speaker", "score", "raw_score", "candidates", "voices"}
        assert len(r["candidates"]) == 3 and all({"speaker", "score"} <= set(c) for c in r["candidates"])
        assert r["score"] == r["candidates"][0]["score"]

    v = as_json(run("verify", "alice", voices["alice"][2], "--json"))  # a recording not enrolled
    assert v["speaker"] == "alice" and v["threshold"] == 0.86 and v["accepted"] == (v["score"] >= 0.86)
    # The decision is the score against the threshold, both ways.
    at = as_json(run("verify", "alice", voices["alice"][2], "--threshold", repr(v["score"]), "--json"))
    above = as_json(run("verify", "alice", voices["alice"][2], "--threshold", repr(v["score"] + 1e-4), "--json"))
    assert at["accepted"] is True and above["accepted"] is False and at["score"] == above["score"] == v["score"]

    assert as_json(run("rename", "alice", "alicia", "--json")) == {"old": "alice", "new": "alicia"}
    assert [s["name"] for s in as_json(run("list", "--json"))] == ["alicia", "bob", "carol"]
    removed = as_json(run("remove", "bob", "--yes", "--json"))
    assert removed["removed"] == ["bob"] and removed["utterances"] == 2 and removed["erasure"]["erased"]
    assert [s["name"] for s in as_json(run("list", "--json"))] == ["alicia", "carol"]

    after = as_json(run("identify", voices["bob"][0], "--json", "--top-k", "5"))[0]
    assert {c["speaker"] for c in after["candidates"]} == {"alicia", "carol"}
    info = as_json(run("info", "--json"))
    assert (info["n_speakers"], info["n_utterances"], info["dim"]) == (2, 4, 24)


def test_identical_audio_is_identified(run, voices, tmp_path):
    """The same samples in another container and under another name are the same audio:
    decoded identically, they embed identically (score 1.0), whatever the model."""
    import soundfile as sf

    samples, rate = sf.read(str(voices["bob"][0]), dtype="int16")
    wav = write(tmp_path / "bob-enrolled.wav", samples, sr=rate, subtype="PCM_16")
    flac = write(tmp_path / "call-0042.flac", samples, sr=rate, subtype="PCM_16")
    assert wav.read_bytes() != flac.read_bytes()
    ok(run("enroll", "alice", voices["alice"][0]))
    ok(run("enroll", "bob", wav))
    [r] = as_json(run("identify", flac, "--json"))
    assert r["speaker"] == "bob" and r["score"] == pytest.approx(1.0, abs=1e-5)
    assert r["candidates"][1]["speaker"] == "alice" and r["candidates"][1]["score"] < r["score"] - 1e-4
    skipped = as_json(run("enroll", "bob", flac, "--json"))  # and it is recognised as already enrolled
    assert skipped["added"] == [] and len(skipped["skipped"]) == 1


def test_unknown_below_threshold(run, voices):
    run("enroll", "alice", voices["alice"][0])
    [r] = as_json(run("identify", voices["carol"][0], "--threshold", "1.0", "--json"))
    assert r["speaker"] is None and r["candidates"][0]["speaker"] == "alice"
    assert "unknown" in ok(run("identify", voices["carol"][0], "--threshold", "1.0"))


def test_database_remembers_its_model(run, voices):
    run("enroll", "alice", voices["alice"][0])
    # No --model: the database's own model is used, not the unreachable hub default.
    [r] = as_json(run("identify", voices["alice"][0], "--json", model=False))
    assert r["speaker"] == "alice"


def test_human_output(run, voices):
    out = ok(run("enroll", "alice", *voices["alice"][:2]))
    assert "created alice: 2 utterance(s) added" in out
    again = run("enroll", "alice", voices["alice"][0])
    assert "note: skipped" in again.stderr and "already enrolled" in again.stderr
    assert "alice" in ok(run("list")) and "utterances: 2" in ok(run("show", "alice"))
    assert "accepted" in ok(run("verify", "alice", voices["alice"][0]))
    assert "threshold: 0.86" in ok(run("threshold"))


def test_threshold_can_be_changed(run, tmp_path):
    from speakerdb import SpeakerDB

    SpeakerDB(tmp_path / "cli.sqlite").close()
    assert as_json(run("threshold", "0.7", "--json")) == {"threshold": 0.7}
    assert as_json(run("info", "--json"))["threshold"] == 0.7


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["identify", "{missing}"], 1, "no such file"),
        (["enroll", "x", "{empty}"], 1, "empty"),
        (["enroll", "x", "{short}"], 1, "too short"),
        (["enroll", "bad/name", "{good}"], 1, "must not contain"),
        (["show", "nobody"], 1, "no speaker named 'nobody'"),
        (["remove", "nobody"], 1, "no speaker named"),
        (["verify", "nobody", "{good}"], 1, "no speaker named"),
        (["identify", "{good}"], 1, "no speakers are enrolled"),
        (["identify", "{good}", "--top-k", "0"], 2, "--top-k"),
        (["threshold", "3"], 2, "not in the range"),
        (["enroll", "x"], 2, "Missing argument"),
        (["enroll", "x", "{good}", "--meta", "novalue"], 2, "KEY=VALUE"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_codes(run, tmp_path, args, code, message):
    from speakerdb import SpeakerDB

    SpeakerDB(tmp_path / "cli.sqlite").close()  # an empty database: read-only commands refuse a missing one
    files = {
        "missing": tmp_path / "missing.wav",
        "empty": tmp_path / "empty.wav",
        "short": write(tmp_path / "short.wav", voice(100, 0.1)),
        "good": write(tmp_path / "good.wav", voice(100, 1.0)),
    }
    files["empty"].write_bytes(b"")
    result = run(*[a.format(**files) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    if code == 1:  # one error line, after any warnings (the tiny model's random weights)
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith("Error: ")


def test_bad_input_writes_nothing(run, voices, tmp_path):
    run("enroll", "alice", voices["alice"][0])
    before = as_json(run("info", "--json"))
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + b"\x00" * 500)
    assert run("enroll", "alice", voices["alice"][1], bad).exit_code == 1
    assert run("enroll", "alice", voices["alice"][1], "--new").exit_code == 1
    assert as_json(run("info", "--json")) == before


def test_model_that_cannot_be_loaded_is_one_line(tmp_path, voices):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "d.sqlite"), "enroll", "alice", str(voices["alice"][0])])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "microsoft/wavlm-base-plus-sv" in line and "--model DIR" in line


def test_db_commands(run, tmp_path, voices):
    from speakerdb.storage.schema import HEAD_REVISION as head

    run("enroll", "alice", voices["alice"][0])
    assert as_json(run("db", "current", "--json")) == {"revision": head, "head": head}
    assert "already at revision" in ok(run("db", "upgrade"))  # says so when there is nothing to do
    refused = run("db", "downgrade", "base")
    assert refused.exit_code == 2 and "--yes" in refused.stderr  # asks first; nobody at a terminal here
    assert as_json(run("db", "current", "--json"))["revision"] == head
    assert as_json(run("db", "downgrade", "base", "--yes", "--json")) == {"revision": None}
    refused = run("list")
    assert refused.exit_code == 1 and "speakerdb db upgrade" in refused.stderr
    assert as_json(run("db", "upgrade", "--json")) == {"revision": head, "previous": None}
    assert as_json(run("list", "--json")) == []


def _all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in _all_commands(cli)], ids=" ".join)
def test_every_command_is_documented_with_an_example(path):
    command = cli
    for part in path:
        command = command.commands[part]
    assert command.help and "Example" in command.help, f"speakerdb {' '.join(path)} has no example"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize(
    "path",
    [()] + [p for p, c in _all_commands(cli) if isinstance(c, click.Group)],
    ids=lambda p: " ".join(p) or "speakerdb",
)
def test_a_group_without_a_command_prints_its_help_as_help_does(path):
    """`speakerdb` or `speakerdb keys` alone: the help, line by line (exit 2, as click does);
    it was one line of literal \\n, escaped as an error message's quoted values are."""
    bare = CliRunner().invoke(cli, list(path))
    assert bare.exit_code == 2 and "\\n" not in bare.stderr
    assert bare.stderr == CliRunner().invoke(cli, [*path, "--help"]).stdout


def test_every_command_has_json_output():
    for path, command in _all_commands(cli):
        if not isinstance(command, click.Group):
            assert any(p.name == "as_json" for p in command.params), " ".join(path)


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "speakerdb", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("speakerdb, version")


def test_list_does_not_import_torch(tmp_path):
    from speakerdb import SpeakerDB

    SpeakerDB(tmp_path / "x.sqlite").close()
    code = (
        "import sys; from click.testing import CliRunner; from speakerdb.cli import cli;"
        f"r = CliRunner().invoke(cli, ['--db', {str(tmp_path / 'x.sqlite')!r}, 'list']);"
        "assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_random_weights_are_announced(run, voices):
    result = run("enroll", "alice", voices["alice"][0])
    assert result.exit_code == 0
    assert "warning: model" in result.stderr and "RANDOM weights" in result.stderr
    assert "RANDOM" not in result.stdout


def test_progress_bar_for_a_person_only(run, voices, monkeypatch):
    files = voices["alice"] + voices["bob"]
    quiet = run("enroll", "alice", *files[:3])
    assert "enrolling" not in quiet.stderr  # stderr is not a terminal here
    monkeypatch.setattr("speakerdb.cli.output.interactive", lambda: True)
    shown = run("identify", *files)
    assert "identifying" in shown.stderr and "s of audio" in shown.stderr
    as_json = run("identify", *files, "--json")
    assert "identifying" in as_json.stderr  # stderr is the person's: the bar whatever stdout gets (issue 25)
    json.loads(as_json.stdout)


def test_index_command_shows_and_changes_settings(run, voices):
    ok(run("enroll", "alice", voices["alice"][0]))
    assert as_json(run("index", "--json", model=False))["file"] is None  # written by the first search
    ok(run("identify", voices["alice"][1]))
    shown = as_json(run("index", "--json", model=False))
    assert shown["params"]["hnsw_ef_search"] == 2048 and shown["file"]["kind"] == "flat"
    assert shown["file"]["speakers"] == 1
    changed = as_json(
        run("index", "--ef-search", "512", "--approximate-above", "0", "--rebuild", "--json", model=False)
    )
    assert changed["params"]["hnsw_ef_search"] == 512 and changed["rebuilt_speakers"] == 1
    assert changed["file"]["kind"] == "hnsw" and changed["file"]["built_with"]["hnsw_ef_search"] == 512
    text = ok(run("index", model=False))
    assert "hnsw_ef_search: 512" in text and "index file: hnsw, 1 speakers" in text
    assert run("index", "--ef-search", "0", model=False).exit_code == 2  # bad usage, nothing stored
    assert as_json(run("index", "--json", model=False))["params"]["hnsw_ef_search"] == 512


def test_one_bad_file_does_not_lose_the_batch(run, voices, tmp_path):
    ok(run("enroll", "alice", voices["alice"][0]))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    files = [voices["alice"][0], voices["bob"][1], empty, tmp_path / "missing.wav"]
    result = run("identify", *files, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [r["file"] for r in doc] == [str(f) for f in files]
    assert doc[0]["speaker"] == "alice" and doc[1]["candidates"]
    assert set(doc[2]) == {"file", "error"} and "empty" in doc[2]["error"]
    assert "no such file" in doc[3]["error"]
    text = run("identify", *files)
    assert text.exit_code == 1 and f"{voices['alice'][0]}: alice" in text.stdout
    assert f"Error: {empty}: file is empty" in text.stderr and "Traceback" not in text.output


def test_json_never_holds_nan(run, voices, tmp_path):
    """A 44.1 kHz float file with a 1 ms burst of 3e38 used to become a NaN centroid and "score": NaN."""
    import numpy as np

    ok(run("enroll", "alice", voices["alice"][0]))
    x = voice(150, 2.0, sr=44_100)
    x[44_100:44_144] = 3e38
    burst = write(tmp_path / "burst.wav", x, sr=44_100, subtype="FLOAT")
    assert run("enroll", "bob", burst).exit_code == 1  # nothing stored
    result = run("identify", voices["alice"][0], burst, "--json")
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert doc[0]["speaker"] == "alice" and "impossible magnitude" in doc[1]["error"]
    from speakerdb.cli.output import emit as _emit  # the one JSON writer: non-finite floats become null

    command = click.Command("x", callback=lambda: _emit(True, {"a": np.nan, "b": [float("inf")]}, ""))
    assert json.loads(CliRunner().invoke(command).stdout) == {"a": None, "b": [None]}


def test_show_escapes_sources_and_metadata(run, tmp_path):
    forged = tmp_path / "a\nname: mallory\x1b[2J.wav"
    write(forged, voice(150, 1.0))
    ok(run("enroll", "alice", forged, "--meta", "note=x\ncreated: never", "--meta", "k\u2028=\u202ev"))
    out = ok(run("show", "alice"))
    assert "\x1b" not in out and "\u2028" not in out and "\u202e" not in out
    lines = out.splitlines()
    assert not any(line.startswith(("name: mallory", "created: never")) for line in lines)
    assert (
        "name: alice" in lines[0]
        and "\\nname: mallory\\x1b[2J.wav" in out
        and "metadata.note: x\\ncreated: never" in out
    )
    assert (
        json.loads(ok(run("show", "alice", "--json")))["metadata"]["note"] == "x\ncreated: never"
    )  # JSON keeps it exact


@pytest.mark.parametrize(
    "args, why",
    [
        (["enroll", "b\udcffob", "{good}"], "surrogate"),  # invalid UTF-8 on the command line
        (["enroll", "alice\u200b", "{good}"], "invisible"),
        (["enroll", "bob", "{good}", "--meta", "k=\udcff"], "not valid Unicode"),
    ],
)
def test_invalid_text_on_the_command_line_is_one_line(run, tmp_path, args, why):
    good = write(tmp_path / "good.wav", voice(100, 1.0))
    result = run(*[a.format(good=good) for a in args])
    assert result.exit_code == 1 and why in result.stderr and "Traceback" not in result.output
    [line] = [text for text in result.stderr.splitlines() if not text.startswith("warning: ")]
    assert line.startswith("Error: ")


# ---- paths, bounds, confirmations (issue 12, items 8, 9, 13, 14, 15, 16) ------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "alice"],
        ["info"],
        ["threshold"],
        ["threshold", "0.7"],
        ["index"],
        ["verify", "alice", "x.wav"],
        ["identify", "x.wav"],
        ["rename", "a", "b"],
        ["remove", "alice", "--yes"],
        ["export", "{tmp}/out.gallery"],
        ["db", "current"],
        ["db", "upgrade"],
    ],
)
def test_read_commands_refuse_a_missing_database(tmp_path, args):
    db = tmp_path / "nonexistent" / "dir" / "x.sqlite"
    result = CliRunner().invoke(cli, ["--db", str(db), *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: no database at") and str(db) in line and "enroll" in line and "import" in line
    assert not (tmp_path / "nonexistent").exists()  # neither the file nor its directories


def test_a_failed_first_enroll_leaves_no_database(run, tmp_path):
    db = tmp_path / "new" / "x.sqlite"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + b"\0" * 100)
    result = CliRunner().invoke(cli, ["--db", str(db), "enroll", "alice", str(bad)])
    assert result.exit_code == 1
    assert not db.exists() and not (tmp_path / "new").exists() and not list(tmp_path.glob("new*"))


def test_an_audio_file_as_name_is_a_forgotten_name(run, voices, tmp_path, monkeypatch):
    """`enroll a.flac b.flac` created speaker "a.flac" from b.flac alone; an existing file with
    a recording's suffix is refused as NAME (exit 2, nothing written). A folder is not: it may
    share the speaker's name."""
    db = tmp_path / "new.sqlite"
    first, second = voices["alice"][:2]
    refusal = f"Error: NAME {str(first)!r} is an audio file: give the speaker's name first"
    for args in ([first, second], [first], [first, second, "--json"]):
        result = CliRunner().invoke(cli, ["--db", str(db), "enroll", *map(str, args)])
        assert result.exit_code == 2, result.output
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
        assert line == refusal + " (speakerdb enroll NAME FILE...)"
        assert not db.exists()
    assert json.loads(result.stdout)["error"]["code"] == "usage_error"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "b.wav").write_bytes(voices["bob"][0].read_bytes())
    assert as_json(run("enroll", "bob", "bob", "--json"))["speaker"] == "bob"


@pytest.mark.parametrize(
    "where, code, message",
    [
        ("/dev/null", 1, "not a regular file"),
        ("{file}/x.sqlite", 1, "is a file, not a directory"),
    ],
)
def test_unusable_database_paths_are_one_line(tmp_path, where, code, message):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    db = where.format(file=a_file, tmp=tmp_path)
    for args in (["list"], ["enroll", "alice", str(a_file)]):
        result = CliRunner().invoke(cli, ["--db", db, *args])
        assert result.exit_code == code and message in result.stderr and "Traceback" not in result.output
        if code == 1:
            assert len(result.stderr.strip().splitlines()) == 1


def test_speakerdb_home_pointing_at_a_file(tmp_path, monkeypatch, voices):
    a_file = tmp_path / "home-is-a-file"
    a_file.write_text("x")
    monkeypatch.setenv("SPEAKERDB_HOME", str(a_file))
    result = CliRunner().invoke(cli, ["enroll", "alice", str(voices["alice"][0])])
    assert result.exit_code == 1 and "is a file, not a directory" in result.stderr


def test_a_disk_without_room_for_a_new_database(tmp_path, monkeypatch, voices):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10_000, 6_000, 4_000))
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.sqlite"), "enroll", "alice", str(voices["alice"][0])])
    assert result.exit_code == 1 and "KiB free" in result.stderr and not (tmp_path / "x.sqlite").exists()


def test_export_checks_its_path_first_and_never_overwrites_unasked(run, voices, tmp_path):
    ok(run("enroll", "alice", voices["alice"][0]))
    missing = run("export", tmp_path / "nodir" / "a.gallery")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    proc = run("export", "/proc/a.gallery")
    assert proc.exit_code == 1 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.output
    target = tmp_path / "a.gallery"
    target.write_bytes(b"precious")
    refused = run("export", target)
    assert refused.exit_code == 1 and "--force" in refused.stderr and target.read_bytes() == b"precious"
    assert as_json(run("export", target, "--force", "--json"))["n_speakers"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["index", "--ef-search", "99999999999999999999"],
        ["index", "--hnsw-m", "100000000"],
        ["index", "--ef-construction", "10000000"],
        ["threshold", "nan"],
        ["threshold", "--", "-0.5"],
        ["identify", "x.wav", "--threshold", "nan"],
        ["verify", "alice", "x.wav", "--threshold", "nan"],
        # A per-call threshold follows `threshold`'s rule: a negative cosine accepts nearly every voice.
        ["verify", "alice", "x.wav", "--threshold", "-0.5"],
        ["identify", "x.wav", "--threshold", "-0.2"],
        ["timeline", "x.wav", "--threshold", "-1"],
        ["listen", "x.wav", "--threshold", "-0.5"],
    ],
)
def test_out_of_bounds_settings_are_usage_errors(run, voices, args):
    ok(run("enroll", "alice", voices["alice"][0]))
    before = as_json(run("info", "--json"))
    result = run(*args)
    assert result.exit_code == 2, result.output
    if args[-1].startswith("-"):
        assert "not in the range 0 to 1: a negative threshold accepts nearly every voice" in result.stderr
    assert as_json(run("info", "--json")) == before  # nothing stored


def test_api_bounds(fake_db):
    with pytest.raises(InvalidInputError, match="100,000"):
        fake_db.set_index_params(hnsw_ef_search=10**20)
    with pytest.raises(InvalidInputError, match="256"):
        fake_db.set_index_params(hnsw_m=100_000_000)
    with pytest.raises(InvalidInputError, match="nearly every voice"):
        fake_db.set_threshold(-0.2)
    assert fake_db.threshold == 0.86


def test_global_options_after_the_command(tmp_path, tiny_checkpoint, voices):
    db = tmp_path / "after.sqlite"
    runner = CliRunner()
    enrolled = runner.invoke(
        cli, ["enroll", "alice", str(voices["alice"][0]), "--db", str(db), "--model", str(tiny_checkpoint)]
    )
    assert enrolled.exit_code == 0, enrolled.output
    found = runner.invoke(
        cli, ["identify", "--model", str(tiny_checkpoint), "--db", str(db), str(voices["alice"][0]), "--json"]
    )
    assert found.exit_code == 0, found.output and json.loads(found.stdout)[0]["speaker"] == "alice"
    # After the command wins over before it.
    listed = runner.invoke(cli, ["--db", str(tmp_path / "other.sqlite"), "list", "--db", str(db), "--json"])
    assert [s["name"] for s in json.loads(listed.stdout)] == ["alice"]
    for path, command in _all_commands(cli):
        if not isinstance(command, click.Group):
            help_text = runner.invoke(cli, [*path, "--help"]).output
            assert all(opt in help_text for opt in ("--db", "--model", "--device", "--precision")), path


def test_remove_asks_first_and_takes_several_names(run, voices, monkeypatch, tmp_path):
    for name in ("alice", "bob", "carol"):
        ok(run("enroll", name, voices[name][0]))
    refused = run("remove", "alice")  # no terminal, no --yes
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    unknown = run("remove", "alice", "nobody", "--yes")
    assert unknown.exit_code == 1 and "nobody" in unknown.stderr
    assert len(as_json(run("list", "--json"))) == 3  # nothing removed by either
    monkeypatch.setattr("speakerdb.cli.output.can_ask", lambda: True)
    runner = CliRunner()
    base = ["--db", str(tmp_path / "cli.sqlite")]  # the run fixture's database
    no = runner.invoke(cli, base + ["remove", "alice"], input="n\n")
    assert no.exit_code == 1 and "Delete 1 speaker(s) (alice)" in no.stderr
    assert len(as_json(run("list", "--json"))) == 3
    yes = runner.invoke(cli, base + ["remove", "alice", "bob"], input="y\n")
    assert yes.exit_code == 0, yes.output
    assert [s["name"] for s in as_json(run("list", "--json"))] == ["carol"]


def test_everyday_output(run, voices):
    ok(run("enroll", "alice", voices["alice"][0]))
    again = ok(run("enroll", "alice", voices["alice"][0]))
    assert again.startswith("unchanged alice: 0 utterance(s) added, 1 skipped")
    [listed] = as_json(run("list", "--json"))
    assert "utterances" not in listed and listed["n_utterances"] == 1
    info = ok(run("info"))
    assert "{" not in info and "  hnsw_ef_search: 2048" in info
    ok(run("enroll", "a-much-longer-speaker-name", voices["bob"][0]))
    text = ok(run("identify", voices["carol"][0]))
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 and len({row.rindex(" ") for row in rows}) == 1  # scores in one column


def test_file_names_that_are_not_utf8_are_stored_printably(run, tmp_path):
    """A Latin-1 file name (bytes that are not UTF-8) used to be stored as lone surrogates, after
    which every export crashed with UnicodeEncodeError."""
    import os

    good = write(tmp_path / "plain.wav", voice(150, 1.0))
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav")
    os.rename(os.fsencode(good), raw)
    name = os.fsdecode(raw)  # what Python (and the command line) make of it: 'caf\udce9.wav'
    enrolled = as_json(run("enroll", "alice", name, "--json"))
    assert enrolled["added"][0]["source"] == str(tmp_path / "caf\\xe9.wav")
    assert "caf\\xe9.wav" in ok(run("show", "alice"))
    assert as_json(run("export", tmp_path / "a.gallery", "--json"))["n_utterances"] == 1
    [r] = as_json(run("identify", name, "--json"))
    assert r["file"].endswith("caf\\xe9.wav") and r["speaker"] == "alice"


def test_a_one_shot_process_spares_the_garbage_collector_and_serve_does_not(tmp_path, monkeypatch):
    """`speakerdb CMD` (main) makes full collections rare and skips them at exit: with torch and a
    model loaded they cost 1.3 s of a 6 s `identify` (docs/performance.md, issue 17). A service keeps
    Python's own settings."""
    probe = (
        "import gc, sys; from speakerdb.cli import main; sys.argv = ['speakerdb', 'info', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, gc.get_threshold()[2], gc.get_freeze_count() > 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-3:] == ["0", "1000", "True"], done.stdout + done.stderr

    from speakerdb import cli as cli_module
    from speakerdb.service import serve as server

    seen = []
    monkeypatch.setattr(server, "serve", lambda *a, **kw: seen.append(gc.get_threshold()))
    monkeypatch.setattr(cli_module, "_gc_thresholds_before", gc.get_threshold())
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], 1000)  # as main() leaves it
    try:
        result = CliRunner().invoke(cli, ["--db", str(tmp_path / "s.db"), "serve"])
    finally:
        gc.set_threshold(*before)
    assert result.exit_code == 0, result.output
    assert seen == [before]
