"""Everyday use, second round (issue 25): what a script or a person reads when things go wrong.

The command line runs here with the model-free FakeEmbedder (conftest) and the energy VAD of
tests/test_timeline.py, so every test is quick; --server runs against a stand-in HTTP service
that answers what ``speakerdb serve`` answers (its error documents), read by the real client.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SR, FakeEmbedder, voice, write
from speakerdb import SpeakerDB, errors
from speakerdb.cli import cli
from test_timeline import EnergyDetector

#: The codes the service answered before the CLI shared them (issue 25 item 3): class -> (code, HTTP status).
CODES: dict[type[errors.SpeakerDBError], tuple[str, int]] = {
    errors.AudioError: ("bad_audio", 400),
    errors.GalleryError: ("bad_gallery", 400),
    errors.EnrollmentRefusedError: ("enrollment_refused", 422),
    errors.InvalidInputError: ("invalid_input", 422),
    errors.SpeakerNotFoundError: ("speaker_not_found", 404),
    errors.KeyNotFoundError: ("key_not_found", 404),
    errors.SpeakerExistsError: ("speaker_exists", 409),
    errors.KeyExistsError: ("key_exists", 409),
    errors.ConflictError: ("conflict", 409),
    errors.EmptyDatabaseError: ("no_speakers", 409),
    errors.ModelMismatchError: ("model_mismatch", 409),
    errors.ModelLoadError: ("model_unavailable", 503),
    errors.DatabaseBusyError: ("database_busy", 503),
    errors.DatabaseError: ("database_error", 500),
    errors.SchemaOutdatedError: ("database_error", 500),
    errors.SchemaTooNewError: ("database_error", 500),
    errors.SpeakerDBError: ("failed", 400),
}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """speakerdb on a database of tmp_path with the FakeEmbedder; returns the click Result
    (stdout and stderr apart)."""
    from speakerdb import api
    from speakerdb.audio import vad

    class FakeModelDB(api.SpeakerDB):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["embedder"] = FakeEmbedder()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(api, "SpeakerDB", FakeModelDB)
    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector())
    monkeypatch.delenv("SPEAKERDB_SERVER", raising=False)
    runner = CliRunner()
    db = tmp_path / "everyday.sqlite"

    def invoke(*args, at=db):
        return runner.invoke(cli, ["--db", str(at), *map(str, args)], catch_exceptions=False)

    invoke.db = db
    return invoke


def json_error(result, code: str, exit_code: int = 1) -> str:
    """The one JSON error document on stdout (its message), beside the Error: line on stderr."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)
    assert list(doc) == ["error"] and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["code"] == code, doc
    assert "Error: " in result.stderr and doc["error"]["message"] in result.stderr
    return doc["error"]["message"]


# ---- item 3: JSON errors ----------------------------------------------------------------------
def test_every_error_class_has_the_code_the_service_answers():
    from speakerdb.service.responses import from_library

    for kind, (code, status) in CODES.items():
        assert kind.code == code, kind
        e = kind("x", "broken") if kind is errors.AudioError else kind("broken")
        answer = from_library(e, {})
        assert (answer.code, answer.status) == (code, status), kind
    assert errors.ServiceError("no answer").code == "service_error"
    assert errors.ServiceError("busy", 503, "database_busy").code == "database_busy"


def test_a_service_error_names_its_database_once(tmp_path):
    """The service hides its paths in messages, and "database /srv/x.sqlite requires consent..."
    read "database the service's database requires consent...": the path goes with its word."""
    from speakerdb.service.responses import from_library
    from speakerdb.service.settings import ServeConfig
    from speakerdb.service.worker import Service

    path = str(tmp_path / "x.sqlite")
    service = Service(ServeConfig(db_path=path, tmp_dir=str(tmp_path)))
    e = errors.ConsentRequiredError(f"database {path} requires consent to enroll 'bob': give --consent TEXT")
    message = from_library(e, service.private_names).message
    assert message == "the service's database requires consent to enroll 'bob': give --consent TEXT"
    e = errors.DatabaseError(f"{path} cannot be opened as a database: it is a folder")
    assert from_library(e, service.private_names).message.startswith("the service's database cannot be opened")


def test_identify_json_on_an_empty_database(run, voices):
    from speakerdb import api

    api.SpeakerDB(run.db).close()
    message = json_error(run("identify", voices["alice"][0], "--json"), "no_speakers")
    assert "enroll" in message
    plain = run("identify", voices["alice"][0])  # without --json: stdout stays empty
    assert plain.exit_code == 1 and plain.stdout == "" and "Error: " in plain.stderr


def test_verify_of_an_unknown_name_and_other_whole_failures(run, voices, tmp_path):
    assert run("enroll", "alice", voices["alice"][0], "--json").exit_code == 0
    assert run("enroll", "bob", voices["bob"][0]).exit_code == 0
    assert "alcie" in json_error(run("verify", "alcie", voices["alice"][1], "--json"), "speaker_not_found")
    json_error(run("show", "nobody", "--json"), "speaker_not_found")
    json_error(run("rename", "alice", "bob", "--json"), "speaker_exists")
    json_error(run("remove", "alice", "nobody", "--yes", "--json"), "speaker_not_found")
    json_error(run("verify", "alice", tmp_path / "missing.wav", "--json"), "bad_audio")
    json_error(run("enroll", "carol", voices["carol"][0], tmp_path / "missing.wav", "--json"), "bad_audio")
    assert "no database" in json_error(run("list", "--json", at=tmp_path / "nowhere.sqlite"), "database_error")
    # A batch where some files fail still prints its one document: the list, no error after it.
    r = run("identify", voices["alice"][1], tmp_path / "missing.wav", "--json")
    good, missing = json.loads(r.stdout)
    assert r.exit_code == 1 and good["speaker"] == "alice" and missing["error"] == "no such file"


def test_usage_errors_are_json_with_exit_code_2(run, voices):
    assert run("enroll", "alice", voices["alice"][0]).exit_code == 0
    clip = voices["alice"][1]
    assert "--top-k" in json_error(run("identify", clip, "--top-k", "0", "--json"), "usage_error", 2)
    json_error(run("identify", clip, "--json", "--top-k", "0"), "usage_error", 2)
    assert "--bogus" in json_error(run("list", "--bogus", "--json"), "usage_error", 2)
    json_error(run("--device", "tpu", "list", "--json"), "usage_error", 2)
    json_error(run("nosuchcommand", "--json"), "usage_error", 2)
    assert "--yes" in json_error(run("remove", "alice", "--json"), "usage_error", 2)  # stdin is no terminal
    plain = run("list", "--bogus")
    assert plain.exit_code == 2 and plain.stdout == ""
    assert run("show", "--", "--json").stdout == ""  # a name after "--" is no option


# ---- item 7: several voices in one file ---------------------------------------------------------
def test_identify_says_on_stdout_when_a_file_holds_several_voices(run, tmp_path):
    gap = np.zeros(SR, np.float32)
    two = write(tmp_path / "two.wav", np.concatenate([voice(110, 4, seed=1), gap, voice(300, 4, seed=2)]))
    one = write(tmp_path / "one.wav", np.concatenate([voice(110, 4, seed=3), gap, voice(110, 4, seed=4)]))
    assert run("enroll", "bob", write(tmp_path / "bob.wav", voice(110, 4, seed=9))).exit_code == 0
    r = run("identify", two, one, "--threshold", "0")
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if not line.startswith("  ")]
    assert lines[0].startswith(f"{two}: bob (score ") and lines[0].endswith("; 2 voices: see speakerdb timeline)")
    assert lines[1].startswith(f"{one}: bob (score ") and "voices" not in lines[1]
    assert "holds 2 voices" in r.stderr  # the warning stays
    claim = run("verify", "bob", two, "--threshold", "0")  # verify says it too, beside its answer
    assert claim.stdout.startswith(f"accepted: {two} as bob (score ") and claim.stdout.rstrip().endswith(
        "; 2 voices: see speakerdb timeline)"
    )
    assert "voices" not in run("verify", "bob", two, "--no-voice-check").stdout
    unknown = run("identify", two, "--threshold", "1").stdout.splitlines()[0]
    assert unknown.startswith(f"{two}: unknown (best score ") and unknown.endswith(
        "; 2 voices: see speakerdb timeline)"
    )
    docs = json.loads(run("identify", two, one, "--json").stdout)
    assert [d["voices"] for d in docs] == [2, 1]
    unchecked = run("identify", two, "--no-voice-check").stdout.splitlines()[0]
    assert "voices" not in unchecked


def test_the_voice_checks_of_short_files_share_forward_passes(tmp_path, monkeypatch):
    """Each file's clip is one forward pass (lengths differ here); the voice check's windows,
    all 1.5 s, of several short files are embedded together, and count what they did alone."""
    from speakerdb.audio import vad

    monkeypatch.setattr(vad, "load", lambda backend="silero": EnergyDetector())
    gap = np.zeros(SR, np.float32)
    files = [
        write(tmp_path / f"f{i}.wav", np.concatenate([voice(110, 3 + i / 4, seed=i), gap, voice(f0, 4, seed=10 + i)]))
        for i, f0 in enumerate([300, 110, 250])
    ]
    embedder = FakeEmbedder()
    with SpeakerDB(tmp_path / "db.sqlite", embedder=embedder) as db:
        db.enroll("bob", [write(tmp_path / "bob.wav", voice(110, 3, seed=9))])
        alone = []
        for f in files:
            before = embedder.calls
            alone.append(db.identify([f])[0].voices)
            assert embedder.calls - before == 2  # its clip, then its windows
        before = embedder.calls
        together = [r.voices for r in db.identify(files)]
        assert embedder.calls - before == len(files) + 1  # the clips, then every file's windows at once
    assert together == alone == [2, 1, 2]


# ---- --server: the same documents from the service's answers -------------------------------------
class _Answers(BaseHTTPRequestHandler):
    """A stand-in ``speakerdb serve``: every request gets the error the test set."""

    status, document = 500, {}

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        self.rfile.read(length)
        body = json.dumps(self.document).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def service(monkeypatch):
    """(URL, set(status, code, message)) of a stand-in service."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def answer(status: int, code: str, message: str) -> None:
        _Answers.status, _Answers.document = status, {"error": {"code": code, "message": message}}

    monkeypatch.setenv("SPEAKERDB_API_KEY", "sdb_test")
    yield f"http://127.0.0.1:{httpd.server_address[1]}", answer
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    "status, code, command",
    [
        (404, "speaker_not_found", ["verify", "alcie", "CLIP"]),
        (409, "no_speakers", ["identify", "CLIP"]),
        (400, "bad_audio", ["verify", "alice", "CLIP"]),
        (409, "speaker_exists", ["rename", "alice", "bob"]),
    ],
)
def test_server_mode_prints_the_same_json_errors(service, voices, status, code, command):
    url, answer = service
    answer(status, code, f"the service says {code}")
    args = [str(voices["alice"][0]) if a == "CLIP" else a for a in command]
    r = CliRunner().invoke(cli, ["--server", url, *args, "--json"], catch_exceptions=False)
    assert json_error(r, code) == f"the service says {code}"


def test_server_mode_unreachable_is_a_service_error(voices, monkeypatch):
    monkeypatch.setenv("SPEAKERDB_API_KEY", "sdb_test")
    r = CliRunner().invoke(cli, ["--server", "http://127.0.0.1:9", "list", "--json"], catch_exceptions=False)
    assert "cannot reach" in json_error(r, "service_error")


# ---- item 1: unknown names get the nearest names by spelling -------------------------------------
def test_unknown_names_suggest_the_nearest_enrolled_names(tmp_path, voices):
    from speakerdb import SpeakerDB

    with SpeakerDB(tmp_path / "names.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", [voices["alice"][0]])
        db.enroll("bob", [voices["bob"][0]])
        clip = voices["alice"][1]
        for call in (
            lambda: db.show("alcie"),
            lambda: db.verify("alcie", clip),
            lambda: db.rename("alcie", "alicia"),
            lambda: db.remove("alcie"),
            lambda: db.export(tmp_path / "out.json", speakers=["alcie"]),
        ):
            with pytest.raises(errors.SpeakerNotFoundError) as e:
                call()
            assert str(e.value) == "no speaker named 'alcie' (did you mean 'alice'?)"
        db.enroll("alicia", [voices["carol"][0]])
        db.enroll("alina", [voices["carol"][1]])
        db.enroll("alise", [voices["bob"][1]])
        with pytest.raises(errors.SpeakerNotFoundError) as e:
            db.show("alic")  # up to three, closest first
        assert str(e.value) == "no speaker named 'alic' (did you mean 'alice', 'alicia' or 'alise'?)"
        with pytest.raises(errors.SpeakerNotFoundError) as e:
            db.show("zzyzx")  # nothing close: no suggestion
        assert str(e.value) == "no speaker named 'zzyzx' (see `speakerdb list`)"
        assert db.show("alice").name == "alice"  # a name that exists: unchanged


def test_cli_unknown_name_suggests_on_stderr_and_in_json(run, voices):
    assert run("enroll", "alice", voices["alice"][0]).exit_code == 0
    assert run("enroll", "bob", voices["bob"][0]).exit_code == 0
    r = run("verify", "alcie", voices["alice"][1])
    assert r.exit_code == 1 and r.stdout == ""
    assert "no speaker named 'alcie' (did you mean 'alice'?)" in r.stderr
    message = json_error(run("verify", "alcie", voices["alice"][1], "--json"), "speaker_not_found")
    assert message == "no speaker named 'alcie' (did you mean 'alice'?)"
    far = json_error(run("show", "zzyzx", "--json"), "speaker_not_found")
    assert "did you mean" not in far


def test_unknown_names_through_the_real_service(tmp_path_factory, tiny_checkpoint):
    """The service answers the library's message; a read key, which can list every name, gets it."""
    import signal

    from speakerdb import SpeakerDB
    from speakerdb.service.client import Client
    from test_server import Server

    d = tmp_path_factory.mktemp("served-names")
    db_path = d / "served.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        db.enroll("alice", [write(d / "alice.wav", voice(210.0))])
        key = db.create_key("k-read", "read").key
        write_key = db.create_key("k-write", "write").key
    (d / "tmp").mkdir()
    srv = Server(db_path, tiny_checkpoint, d / "server.log", "--tmp-dir", str(d / "tmp")).start()
    try:
        reader = Client(srv.url, key, retries=0)
        with pytest.raises(errors.SpeakerNotFoundError) as e:
            reader.show("alcie")
        assert str(e.value) == "no speaker named 'alcie' (did you mean 'alice'?)"
        r = CliRunner(env={"SPEAKERDB_API_KEY": key}).invoke(
            cli, ["--server", srv.url, "show", "alcie", "--json"], catch_exceptions=False
        )
        assert json_error(r, "speaker_not_found") == "no speaker named 'alcie' (did you mean 'alice'?)"
        # A voice that is already alice's, enrolled under another name: the service's answer says so.
        writer = Client(srv.url, write_key, retries=0)
        typo = writer.enroll("alcie", [d / "alice.wav"])
        assert typo.created and typo.matches[0].speaker == "alice"
        assert typo.notes[0].startswith("this voice matches alice (1.00)")
        with pytest.raises(errors.EnrollmentRefusedError):
            writer.enroll("alcia", [d / "alice.wav"], strict=True)
        assert {s.name for s in writer.list()} == {"alice", "alcie"}
    finally:
        assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log.read_text()


# ---- item 1: a voice that is already someone's --------------------------------------------------
TYPO = "this voice matches alice ({score}): a typo? --new creates it anyway"


def test_enroll_warns_when_the_voice_is_another_speakers(tmp_path, voices):
    from speakerdb import SpeakerDB

    with SpeakerDB(tmp_path / "typo.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", [voices["alice"][0]])
        db.enroll("bob", [voices["bob"][0]])
        assert db.enroll("carol", [voices["carol"][0]]).notes == []  # a voice nobody has
        assert db.enroll("alice", [voices["alice"][2]]).notes == []  # more of alice's own voice
        # A recording of alice added to bob: alice is named, being closer than bob himself.
        assert db.enroll("bob", [voices["alice"][1]]).notes[0].startswith("this voice matches alice (")
        assert db.enroll("bob", [voices["alice"][1]]).notes[0].endswith(") better than bob: is it bob's?")
        db.remove("bob")
        # Until now no index existed (the check scored the store's centroids, building no file);
        # from here the index that identify built answers it.
        assert not db.indexer.available()
        db.identify([voices["carol"][1]])
        assert db.indexer.available()
        typo = db.enroll("alcie", [voices["alice"][1]])
        [match] = typo.matches
        assert match.speaker == "alice" and match.score >= db.threshold
        assert typo.notes == [TYPO.format(score=f"{match.score:.2f}")]
        assert typo.to_dict()["notes"] == typo.notes and typo.to_dict()["matches"][0]["speaker"] == "alice"
        assert typo.created  # a warning, not a refusal
        assert db.enroll("alisa", [voices["alice"][2]], new=True).notes == []  # --new: a new person who sounds alike
        before = {s.name for s in db.list()}
        with pytest.raises(errors.EnrollmentRefusedError) as e:
            db.enroll("alcia", [voices["alice"][1]], strict=True)
        assert "this voice matches al" in str(e.value) and str(e.value).endswith("; nothing written")
        assert {s.name for s in db.list()} == before


def test_cli_enroll_voice_match_on_stderr_json_and_strict(run, voices):
    assert run("enroll", "alice", voices["alice"][0]).exit_code == 0
    r = run("enroll", "alcie", voices["alice"][1])
    assert r.exit_code == 0 and r.stdout.startswith("created alcie: 1 utterance(s) added")
    [line] = [x for x in r.stderr.splitlines() if "matches" in x]
    assert line.startswith("warning: this voice matches alice (") and line.endswith("a typo? --new creates it anyway")
    doc = json.loads(run("enroll", "alcia", voices["alice"][1], "--json").stdout)
    match = doc["matches"][0]["speaker"]  # alice, or alcie: the same voice now
    assert match in {"alice", "alcie"} and doc["notes"][0].startswith(f"this voice matches {match} (")
    quiet = run("enroll", "alisa", voices["alice"][2], "--new")
    assert quiet.exit_code == 0 and "matches" not in quiet.stderr
    refused = run("enroll", "alize", voices["alice"][1], "--strict", "--json")
    assert "this voice matches al" in json_error(refused, "enrollment_refused")
    assert "alize" not in run("list").stdout


# ---- item 4: folders ------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path) -> Path:
    """ROOT/<speaker>/... : alice with a nested folder and a stray text file, bob, and an empty folder."""
    root = tmp_path / "people"
    for name, f0 in [("alice", 210.0), ("bob", 110.0)]:
        (root / name / "day2").mkdir(parents=True)
        write(root / name / "b.wav", voice(f0, 2.0, seed=1))
        write(root / name / "day2" / "a.flac", voice(f0, 2.0, seed=2))
        write(root / name / "A.WAV", voice(f0, 2.0, seed=3))
        (root / name / "notes.txt").write_text("not audio")
    (root / "empty").mkdir()
    return root


def test_enroll_a_folder_takes_its_recordings_sorted_and_recursively(run, folders):
    r = run("enroll", "alice", folders / "alice", "--json")
    assert r.exit_code == 0, r.stderr
    sources = [u["source"] for u in json.loads(r.stdout)["added"]]
    assert sources == [str(folders / "alice" / p) for p in ("A.WAV", "b.wav", "day2/a.flac")]
    empty = run("enroll", "nobody", folders / "empty")
    assert empty.exit_code == 1 and "no recordings under" in empty.stderr


def test_identify_and_timeline_take_folders_as_enroll_does(run, folders):
    """A folder given to identify or timeline is every recording below it, sorted (it was an
    error, 'is a directory', while enroll took it); an empty one is one error line."""
    assert run("enroll", "alice", folders / "alice" / "b.wav").exit_code == 0
    r = run("identify", folders / "bob", "--json", "--no-voice-check")
    assert r.exit_code == 0, r.stderr
    expected = [str(folders / "bob" / p) for p in ("A.WAV", "b.wav", "day2/a.flac")]
    assert [d["file"] for d in json.loads(r.stdout)] == expected
    t = run("timeline", folders / "bob", "--json")
    assert t.exit_code == 0, t.stderr
    assert [d["file"] for d in json.loads(t.stdout)] == expected
    for command in ("identify", "timeline"):
        empty = run(command, folders / "empty")
        assert empty.exit_code == 1 and empty.stderr.strip().splitlines()[-1].startswith("Error: no recordings under")


def test_enroll_each_folder_one_speaker_per_sub_folder(run, folders):
    r = run("enroll", "--each-folder", folders)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["speaker", "result", "added", "skipped", "warnings", "utterances"]
    assert lines[1].split() == ["alice", "created", "3", "0", "0", "3"]
    assert lines[2].split() == ["bob", "created", "3", "0", "0", "3"]
    assert lines[-1] == "2 created, 0 updated, 0 unchanged, 0 failed"
    assert "empty: no recordings in it" in r.stderr
    # The same folders again: nothing new, and the summary does not say it enrolled anyone.
    same = run("enroll", "--each-folder", folders)
    assert same.exit_code == 0 and same.stdout.splitlines()[-1] == "0 created, 0 updated, 2 unchanged, 0 failed"
    # Again, with --json and one folder that fails: the others go on, the exit code says it.
    (folders / "carol").mkdir()
    write(folders / "carol" / "c.wav", voice(310.0, 2.0))
    (folders / "carol" / "broken.wav").write_bytes(b"RIFF not really")
    again = run("enroll", "--each-folder", folders, "--json")
    assert again.exit_code == 1
    docs = json.loads(again.stdout)
    assert [d["speaker"] for d in docs] == ["alice", "bob", "carol"]
    assert [d["skipped"] and len(d["skipped"]) for d in docs[:2]] == [3, 3]  # the same audio: skipped
    assert docs[2]["folder"] == str(folders / "carol") and "broken.wav" in docs[2]["error"]
    assert "Error: carol: " in again.stderr
    assert "carol" not in run("list").stdout
    usage = run("enroll", "alice", "--each-folder", folders)
    assert usage.exit_code == 2 and "give no NAME" in usage.stderr


# ---- item 8: getting the model onto an offline machine ----------------------------------------------
def _fake_hub_cache(root: Path) -> int:
    """A Hugging Face cache as huggingface_hub lays it out: one model, two files; returns their bytes."""
    repo = root / "models--acme--tiny-sv"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    sizes = 0
    for name, body in [("config.json", b"{}" * 10), ("model.safetensors", b"\0" * 3000)]:
        blob = repo / "blobs" / f"etag-{name}"
        blob.write_bytes(body)
        (repo / "snapshots" / commit / name).symlink_to(f"../../blobs/etag-{name}")
        sizes += len(body)
    return sizes


def test_model_list_shows_the_cache_and_sizes(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    empty = runner.invoke(cli, ["model", "list"], catch_exceptions=False)
    assert empty.exit_code == 0 and empty.stdout.startswith("no models in the Hugging Face cache ")
    size = _fake_hub_cache(tmp_path / "hub")
    r = runner.invoke(cli, ["model", "list", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    [m] = json.loads(r.stdout)
    assert (m["model"], m["size_bytes"], m["files"], m["revisions"]) == ("acme/tiny-sv", size, 2, 1)
    text = runner.invoke(cli, ["model", "list"], catch_exceptions=False).stdout
    assert text.startswith("acme/tiny-sv") and " MB " in text and "2 files" in text


def test_model_download_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(cli, ["model", "download", "--json"], catch_exceptions=False)
    message = json_error(r, "model_unavailable")
    assert "'microsoft/wavlm-base-plus-sv'" in message and "HF_HUB_OFFLINE is set" in message
    assert "speakerdb model download microsoft/wavlm-base-plus-sv --to DIR" in message
    assert "speakerdb model list" in message
    assert "pass --model DIR" in message


def test_model_download_offline_of_the_segmentation_model_names_its_option(monkeypatch):
    """It said `pass --model DIR` for pyannote/segmentation-3.0 too, which --model refuses."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(cli, ["model", "download", "pyannote/segmentation-3.0", "--json"], catch_exceptions=False)
    message = json_error(r, "model_unavailable")
    assert "copy DIR here and pass --segmentation DIR;" in message and "--model" not in message


def test_model_download_fetches_into_a_folder_or_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, *, cache_dir=None, local_dir=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, cache_dir, local_dir, allow_patterns))
        where = Path(local_dir) if local_dir is not None else Path(cache_dir) / "models--x" / "snapshots" / "c"
        where.mkdir(parents=True, exist_ok=True)
        (where / "config.json").write_text("{}")
        return str(where)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    runner = CliRunner()
    r = runner.invoke(cli, ["model", "download", "acme/tiny-sv", "--to", tmp_path / "carry"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"downloaded acme/tiny-sv to {tmp_path / 'carry'}: use --model {tmp_path / 'carry'}"
    assert calls[-1][0] == "acme/tiny-sv" and calls[-1][2] == tmp_path / "carry" and "*.json" in calls[-1][3]
    doc = json.loads(runner.invoke(cli, ["model", "download", "--json"], catch_exceptions=False).stdout)
    assert doc["model"] == "microsoft/wavlm-base-plus-sv" and calls[-1][1] == tmp_path / "hub"  # the cache
    assert (Path(doc["path"]) / "config.json").is_file()

    def unreachable(*args, **kwargs):
        raise OSError("Connection refused\nretrying...")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    failed = runner.invoke(cli, ["model", "download"], catch_exceptions=False)
    assert failed.exit_code == 1 and "(Connection refused). On a machine with network run" in failed.stderr


def test_the_offline_load_error_names_both_model_commands(monkeypatch):
    from speakerdb.embedding.models import load_embedder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.ModelLoadError) as e:
        load_embedder("acme/not-here-sv")
    assert "`speakerdb model download acme/not-here-sv --to DIR`" in str(e.value)
    assert "`speakerdb model list`" in str(e.value)


# ---- item 6: PostgreSQL URLs as the user typed them -------------------------------------------------
@pytest.mark.parametrize(
    "typed",
    [
        "postgres://bob:s3cret-pw@127.0.0.1:1/speakers?application_name=a%20b",
        "postgresql://bob:s3cret-pw@127.0.0.1:1/speakers?connect_timeout=2&sslpassword=s3cret-pw",
    ],
)
def test_messages_show_the_url_as_typed_without_its_password(typed):
    r = CliRunner().invoke(cli, ["--db", typed, "info", "--json"], catch_exceptions=False)
    message = json_error(r, "database_error")
    shown = typed.replace(":s3cret-pw@", ":***@").replace("sslpassword=s3cret-pw", "sslpassword=***")
    assert message.startswith(f"{shown} cannot be opened as a database: "), message
    assert "s3cret" not in r.stdout + r.stderr and "psycopg" not in r.stdout + r.stderr


def test_db_help_names_urls():
    text = CliRunner().invoke(cli, ["--help"]).stdout
    assert "--db FILE_OR_URL" in text and "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME" in text
    assert "FILE_OR_URL" in CliRunner().invoke(cli, ["list", "--help"]).stdout


# ---- item 2: progress, and results as they come -----------------------------------------------------
@pytest.fixture
def long_voices(tmp_path) -> list[Path]:
    """Three 50 s recordings: each is embedded on its own, window by window (not batched with others)."""
    return [write(tmp_path / f"long{k}.wav", voice(f0, 50.0, seed=k)) for k, f0 in enumerate((210.0, 110.0, 310.0))]


def test_identify_hands_each_answer_over_as_soon_as_it_is_known(tmp_path, voices, long_voices):
    from speakerdb import SpeakerDB

    embedder = FakeEmbedder()
    with SpeakerDB(tmp_path / "stream.sqlite", embedder=embedder) as db:
        db.enroll("alice", [voices["alice"][0]])
        db.enroll("bob", [voices["bob"][0]])
        seen: list[tuple[str, int]] = []  # (file, embed() calls made when its answer came)
        before = embedder.calls
        missing = tmp_path / "missing.wav"
        results = db.identify(
            [*long_voices, missing],
            count_voices=False,
            on_result=lambda r: seen.append((r.file, embedder.calls - before)),
        )
    # The missing file first (cheap checks), then each recording once its two windows are embedded.
    assert seen == [(str(missing), 0), (str(long_voices[0]), 2), (str(long_voices[1]), 4), (str(long_voices[2]), 6)]
    assert [r.file for r in results] == [*map(str, long_voices), str(missing)]  # the list keeps the given order
    assert [r.speaker for r in results[:2]] == ["alice", "bob"] and results[3].error is not None


def test_identify_and_timeline_jsonl_print_one_line_per_file(run, voices, tmp_path):
    assert run("enroll", "alice", voices["alice"][0]).exit_code == 0
    missing = tmp_path / "missing.wav"
    r = run("identify", voices["alice"][1], voices["bob"][1], missing, "--jsonl")
    assert r.exit_code == 1 and f"Error: {missing}: " in r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["file"] for d in docs] == [str(missing), str(voices["alice"][1]), str(voices["bob"][1])]
    assert docs[0]["error"] and docs[1]["speaker"] == "alice"
    t = run("timeline", voices["alice"][1], voices["bob"][1], "--jsonl")
    assert t.exit_code == 0, t.stderr
    assert [json.loads(line)["file"] for line in t.stdout.splitlines()] == [
        str(voices["alice"][1]),
        str(voices["bob"][1]),
    ]
    both = run("identify", voices["alice"][1], "--json", "--jsonl")
    assert both.exit_code == 2 and "cannot be combined" in both.stderr
    empty = run("identify", voices["alice"][1], "--jsonl", at=tmp_path / "empty.sqlite")
    assert empty.exit_code == 1 and json.loads(empty.stdout)["error"]["code"]  # a JSON line, whatever failed


def test_progress_bar_on_stderr_only_at_a_terminal(run, voices, monkeypatch):
    from speakerdb.cli import output

    files = [voices["alice"][1], voices["bob"][1], voices["carol"][1]]
    assert run("enroll", "alice", voices["alice"][0]).exit_code == 0
    quiet = run("identify", *files)
    assert quiet.exit_code == 0 and "[" not in quiet.stderr  # stderr is no terminal here: no bar
    monkeypatch.setattr(output, "interactive", lambda: True)
    shown = run("identify", *files, "--json")
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)) == 3  # stdout untouched
    assert "identifying [" in shown.stderr and "3/3 files, 6 s of audio, " in shown.stderr
    # Redrawn in place ("\r", and an erase-line code that click drops when stderr is no terminal),
    # and cleared at the end.
    assert shown.stderr.startswith("\ridentifying [------------------------] 0/3 files, 0 s of audio, - s/s, - left")
    assert " s/s, 0:00 left" in shown.stderr and shown.stderr.endswith("\r")


def test_the_bar_shows_files_audio_rate_and_time_left():
    from speakerdb.cli.output import Bar

    now = [100.0]
    bar = Bar("identifying", 4, clock=lambda: now[0])
    now[0] = 102.0
    assert bar.line() == "identifying [------------------------] 0/4 files, - files/s, - left"  # nothing done yet
    bar.done, bar.seconds = 1, 10.0
    assert bar.line() == "identifying [######------------------] 1/4 files, 10 s of audio, 5.0 s/s, 0:06 left"
    steps = Bar("scoring", 3, unit="steps", clock=lambda: now[0])
    now[0] = 104.0
    steps.done = 3
    assert steps.line().endswith("3/3 steps, 1.5 steps/s, 0:00 left")  # started at 102 s


def test_metrics_show_the_files_of_requests_in_flight():
    from speakerdb.service import metrics
    from speakerdb.service.worker import Service

    service = Service.__new__(Service)  # only what tracked() needs
    service.inflight = [0, 0]
    during = []

    def work(db, progress):
        during.append(list(service.inflight))
        progress(2, 5, 12.0)
        during.append(list(service.inflight))
        return "answer"

    assert service.tracked(work, 5)(None) == "answer"
    assert during == [[0, 5], [2, 5]] and service.inflight == [0, 0]
    one = metrics.Metrics().state(0.0, 1, True, inflight=(2, 5))
    other = metrics.Metrics().state(0.0, 1, True, inflight=(1, 3))
    text = metrics.Metrics.render([one, other], 8)
    assert 'speakerdb_inflight_files{state="total"} 8' in text and 'speakerdb_inflight_files{state="done"} 3' in text


def test_the_voice_check_uses_the_index_past_a_few_thousand_speakers(tmp_path, voices, monkeypatch):
    from speakerdb import SpeakerDB, api

    monkeypatch.setattr(api, "VOICE_CHECK_WITHOUT_INDEX_UP_TO", 1)  # "a few thousand" is 1 here
    with SpeakerDB(tmp_path / "big.sqlite", embedder=FakeEmbedder()) as db:
        db.enroll("alice", [voices["alice"][0]])
        db.enroll("bob", [voices["bob"][0]], new=True)  # no check yet
        assert not db.indexer.available()
        assert db.enroll("alcie", [voices["alice"][1]]).notes[0].startswith("this voice matches alice (")
        assert db.indexer.available()  # two speakers is "many": the index was built for the check
