"""``speakerdb serve`` tested as it runs: a real uvicorn process on a free loopback port, the tiny
random-weight checkpoint, requests over TCP (issue 13).

One server (two worker processes, keys on) serves most tests of this module; a second one
(one worker, a queue of one embedding, no keys) is killed, restarted and overloaded.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SR, assert_index_agrees_with_store, voice, write
from speakerdb import SpeakerDB
from speakerdb.errors import AuthenticationError, ServiceError, SpeakerDBError, SpeakerNotFoundError
from speakerdb.service.client import Client, _multipart

READY_TIMEOUT_S = 240  # seconds: importing torch and loading the model on a busy 2-core machine
SCOPES = ("read", "write", "admin")


# ---- a real server -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``speakerdb serve`` subprocess and how to reach it."""

    def __init__(self, db: Path, checkpoint: Path, log: Path, *options: str, workers: int = 1) -> None:
        self.db, self.checkpoint, self.log, self.options, self.workers = db, checkpoint, log, options, workers
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("SPEAKERDB_SERVER", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "speakerdb",
                    "--db",
                    str(self.db),
                    "--model",
                    str(self.checkpoint),
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    "--workers",
                    str(self.workers),
                    *self.options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5):
                    pass  # the worker that answered is ready; the others may not be
                # Every worker, whichever answers (the kernel may give one all connections):
                with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
                    ready = re.search(r'^speakerdb_workers\{state="ready"\} (\d+)$', r.read().decode(), re.M)
                if ready and int(ready.group(1)) >= self.workers:
                    return self
            except urllib.error.HTTPError as e:
                error = json.loads(e.read())["error"]
                assert error["code"] == "not_ready", error  # model_unavailable: no use waiting
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {READY_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body=None,
        fields=None,
        files=None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], object]:
        """(status, headers, JSON or text) of one request; never raises for an HTTP status."""
        h = dict(headers or {})
        data = raw
        if key:
            h["Authorization"] = f"Bearer {key}"
        if files is not None:
            data, h["Content-Type"] = _multipart(fields or {}, files)
        elif body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(request, timeout=300) as r:
                status, rh, text = r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            status, rh, text = e.code, dict(e.headers), e.read()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = text
        return status, rh, doc


def _wav(path: Path, f0: float, seconds: float = 1.5, seed: int = 0) -> Path:
    return write(path, voice(f0, seconds, seed=seed))


def _part(path: Path, field: str = "files", name: str | None = None) -> tuple[str, str, bytes]:
    return field, name or path.name, path.read_bytes()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {name: _wav(d / f"{name}.wav", f0) for name, f0 in [("alice", 210.0), ("bob", 110.0), ("carol", 310.0)]}
    out["alice2"] = _wav(d / "alice2.wav", 212.0, seed=1)
    out["long"] = _wav(d / "long.wav", 150.0, seconds=40.0)  # over the module server's 30 s
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    """Two workers, keys of every scope, small limits (2 MB, 4 files, 30 s of audio)."""
    d = tmp_path_factory.mktemp("served")
    db_path = d / "served.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        keys = {scope: db.create_key(f"k-{scope}", scope).key for scope in SCOPES}
        revoked = db.create_key("k-revoked", "admin").key
        db.revoke_key("k-revoked")
    srv = Server(
        db_path,
        tiny_checkpoint,
        d / "server.log",
        "--max-upload-mb",
        "2",
        "--max-files",
        "4",
        "--max-audio-s",
        "30",
        "--tmp-dir",
        str(d / "tmp"),
        workers=2,
    )
    (d / "tmp").mkdir()
    srv.keys, srv.revoked, srv.tmp = keys, revoked, d / "tmp"
    srv.start()
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert list((d / "tmp").iterdir()) == []  # upload directories go with their workers
    assert "Traceback" not in srv.log.read_text()


@pytest.fixture
def admin(server) -> Client:
    return Client(server.url, server.keys["admin"], retries=0)


def _no_uploads_left(server) -> None:
    for d in server.tmp.iterdir():
        assert list(d.iterdir()) == [], list(d.iterdir())


# ---- endpoints -----------------------------------------------------------------------------
def test_health_readiness_docs_and_metrics(server):
    assert server.call("GET", "/healthz")[0] == 200
    status, _, doc = server.call("GET", "/readyz")
    assert status == 200 and doc["status"] == "ready" and "@" in doc["model"]
    status, _, spec = server.call("GET", "/openapi.json")
    assert status == 200
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    for op in [
        ("POST", "/v1/identify"),
        ("POST", "/v1/speakers/{name}/enrollments"),
        ("POST", "/v1/speakers/{name}/verify"),
        ("GET", "/v1/speakers"),
        ("GET", "/v1/speakers/{name}"),
        ("PATCH", "/v1/speakers/{name}"),
        ("DELETE", "/v1/speakers/{name}"),
        ("GET", "/v1/info"),
        ("PUT", "/v1/threshold"),
        ("GET", "/v1/gallery"),
        ("POST", "/v1/gallery"),
        ("GET", "/metrics"),
    ]:
        assert op in operations, op
    for path, ops in spec["paths"].items():  # every /v1 endpoint documents an example answer
        for method, op in ops.items():
            if path.startswith("/v1") and (method, path) != ("get", "/v1/gallery"):  # that one is a zip file
                examples = [c.get("example") for r in op["responses"].values() for c in r.get("content", {}).values()]
                assert any(e is not None for e in examples), (method, path)
    assert server.call("GET", "/docs")[0] == 200
    server.call("GET", "/v1/speakers", key=server.keys["read"])
    status, headers, text = server.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = text.decode() if isinstance(text, bytes) else text
    for name in (
        "speakerdb_requests_total{",
        "speakerdb_request_seconds_bucket{",
        "speakerdb_audio_seconds_total",
        "speakerdb_queue_depth",
    ):
        assert name in text, name


def test_every_endpoint_answers_what_the_cli_prints(server, admin, clips, tiny_checkpoint, tmp_path):
    created = admin.enroll("alice", [clips["alice"], clips["alice2"]], metadata={"team": "sales"})
    assert created.created and [u.source for u in created.added] == [str(clips["alice"]), str(clips["alice2"])]
    admin.enroll("bob", [clips["bob"]])
    status, _, doc = server.call(
        "POST", "/v1/speakers/bob/enrollments", key=server.keys["write"], files=[_part(clips["bob"])]
    )
    assert status == 200 and doc["created"] is False and len(doc["skipped"]) == 1  # same audio: skipped

    # identify: the answer of the facade itself on the same database, file names as sent
    answers = admin.identify([clips["alice"], clips["carol"]], top_k=5)
    with SpeakerDB(server.db, model=str(tiny_checkpoint)) as db:
        local = db.identify([clips["alice"], clips["carol"]], top_k=5)
    assert [a.to_dict() for a in answers] == [r.to_dict() for r in local]
    assert answers[0].speaker == "alice" and answers[0].score > answers[0].candidates[1].score

    v = admin.verify("alice", clips["alice"], threshold=0.5)
    assert v.accepted and v.speaker == "alice" and v.threshold == 0.5
    assert [s.name for s in admin.list()] == ["alice", "bob"]
    shown = admin.show("alice")
    assert shown.metadata == {"team": "sales"} and shown.n_utterances == 2 and len(shown.utterances) == 2
    admin.rename("bob", "robert")
    assert [s.name for s in admin.list()] == ["alice", "robert"]
    with pytest.raises(SpeakerNotFoundError):
        admin.show("bob")
    info = admin.info()
    assert (info.n_speakers, info.n_utterances, info.dim) == (2, 3, 24)
    admin.set_threshold(0.75)
    assert admin.threshold == 0.75 and admin.info().threshold == 0.75

    # export streams a gallery; importing it back with skip changes nothing, merge adds nothing
    summary = admin.export(tmp_path / "site.gallery")
    assert (summary.n_speakers, summary.n_utterances) == (2, 3)
    assert (tmp_path / "site.gallery").stat().st_mode & 0o777 == 0o600
    with zipfile.ZipFile(tmp_path / "site.gallery") as z:
        assert set(z.namelist()) == {"manifest.json", "speakers.json", "embeddings.f32"}
    partial = admin.export(tmp_path / "alice.gallery", ["alice"])
    assert partial.n_speakers == 1
    dry = admin.import_gallery(tmp_path / "site.gallery", on_conflict="replace", dry_run=True)
    assert dry.dry_run and sorted(dry.replaced) == ["alice", "robert"]
    skipped = admin.import_gallery(tmp_path / "site.gallery", on_conflict="skip")
    assert sorted(skipped.skipped) == ["alice", "robert"] and skipped.utterances_added == 0

    assert admin.remove("robert") == 1
    assert [s.name for s in admin.list()] == ["alice"]
    status, _, doc = server.call("DELETE", "/v1/speakers/robert", key=server.keys["write"])
    assert status == 404 and doc["error"]["code"] == "speaker_not_found"

    # keys and the audit record, through the service
    new = admin.create_key("k-made-by-api", "read")
    assert Client(server.url, new.key).list()
    assert "k-made-by-api" in {k.name for k in admin.list_keys()}
    admin.revoke_key("k-made-by-api")
    with pytest.raises(AuthenticationError):
        Client(server.url, new.key).list()
    trail = [(e.key_name, e.operation, e.speaker) for e in admin.audit(limit=1000)]
    for entry in [
        ("k-admin", "enroll", "alice"),
        ("k-admin", "rename", "bob"),
        ("k-admin", "threshold", None),
        ("k-admin", "import", None),
        ("k-admin", "remove", "robert"),
        ("k-admin", "key-create", None),
        ("k-admin", "key-revoke", None),
    ]:
        assert entry in trail, entry
    assert ("k-admin", "import", None) in trail and trail.count(("k-admin", "import", None)) == 1  # dry run: none
    _no_uploads_left(server)


def test_normalisation_is_switched_through_the_service(server, admin, clips, monkeypatch, tmp_path):
    from speakerdb.cli import cli

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(10):
        _wav(cohort / f"c{i}.wav", 140.0 + 23 * i, seconds=1.0, seed=40 + i)
    admin.enroll("dora", [clips["alice"]])
    parts = [_part(p) for p in cohort.iterdir()]
    status, _, doc = server.call("POST", "/v1/norm", key=server.keys["write"], files=parts)
    assert status == 403 and doc["error"]["code"] == "forbidden"
    status, _, doc = server.call("POST", "/v1/norm", key=server.keys["admin"], files=[_part(cohort / "c0.wav")])
    assert status == 422 and "a cohort needs at least 10 recordings" in doc["error"]["message"], doc
    assert admin.norm_settings is None and admin.threshold_scale == "cosine"  # nothing written

    # A top-n that the set-aside makes unreachable is refused as the library refuses it: at the
    # second file (a repeat of the first), with the same message, nothing written.
    repeated = [_part(cohort / "c0.wav"), _part(cohort / "c0.wav", name="c0-again.wav")]
    repeated += [_part(cohort / f"c{i}.wav") for i in range(1, 10)]
    fields = {"top_n": "11", "screen_enrolled": "false"}
    status, _, doc = server.call("POST", "/v1/norm", key=server.keys["admin"], fields=fields, files=repeated)
    assert status == 422 and "top-n 11 cannot be reached: of the first 2 of 11" in doc["error"]["message"], doc
    assert admin.norm_settings is None and admin.threshold_scale == "cosine"

    change = admin.set_norm(cohort, top_n=5, screen_enrolled=False)
    assert change.norm is not None and change.norm.top_n == 5 and change.norm.count == 10
    assert change.recalibrate and change.threshold_scale == "as-norm" == admin.threshold_scale
    assert admin.norm_settings == change.norm
    with SpeakerDB(server.db, model=str(server.checkpoint)) as db:
        assert db.norm_settings == change.norm  # what the store holds, not what a worker remembers

    monkeypatch.setenv("SPEAKERDB_API_KEY", server.keys["admin"])
    r = CliRunner().invoke(cli, ["--server", server.url, "norm", "--off", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["norm"] is None and admin.norm_settings is None
    assert admin.threshold_scale == "cosine"
    trail = [(e.key_name, e.operation, e.detail) for e in admin.audit(limit=1000) if e.operation == "norm"]
    assert trail == [("k-admin", "norm", {"norm": "as-norm", "top_n": 5}), ("k-admin", "norm", {"norm": "off"})]
    admin.remove("dora")
    _no_uploads_left(server)


def test_cli_commands_go_through_the_server(server, clips, monkeypatch, tmp_path):
    from speakerdb.cli import cli

    monkeypatch.setenv("SPEAKERDB_SERVER", server.url)
    monkeypatch.setenv("SPEAKERDB_API_KEY", server.keys["write"])
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    r = run("enroll", "carol", clips["carol"], "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["speaker"] == "carol"
    r = run("identify", clips["carol"], tmp_path / "missing.wav", "--json")
    assert r.exit_code == 1  # one file failed: as locally
    good, missing = json.loads(r.stdout)
    assert good["speaker"] == "carol" and missing == {"file": str(tmp_path / "missing.wav"), "error": "no such file"}
    assert "carol" in run("list").stdout
    r = run("show", "nobody")
    assert r.exit_code == 1 and "Error: no speaker named 'nobody'" in r.output and "Traceback" not in r.output
    r = run("threshold", "0.5")  # a write key may not change the threshold
    assert r.exit_code == 1 and "scope" in r.output
    monkeypatch.delenv("SPEAKERDB_API_KEY")
    r = run("list")
    assert r.exit_code == 1 and "API key" in r.output
    r = run("--server", "http://127.0.0.1:9", "list")  # nothing listens on the discard port
    assert r.exit_code == 1 and "cannot reach" in r.output


def test_auth_matrix(server, clips):
    """No key: 401; a wrong or revoked key: 401; a key without the scope: 403; with it: neither."""
    junk = ("files", "junk.wav", b"not audio")
    gallery_part = ("file", "junk.gallery", b"not a zip")
    endpoints = [
        ("read", "POST", "/v1/identify", {"files": [junk]}),
        ("read", "POST", "/v1/speakers/nobody/verify", {"files": [("file", "junk.wav", b"not audio")]}),
        ("read", "GET", "/v1/speakers", {}),
        ("read", "GET", "/v1/speakers/nobody", {}),
        ("read", "GET", "/v1/info", {}),
        ("read", "GET", "/v1/threshold", {}),
        ("write", "POST", "/v1/speakers/nobody/enrollments", {"files": [junk]}),
        ("write", "PATCH", "/v1/speakers/nobody", {"body": {"name": "somebody"}}),
        ("write", "DELETE", "/v1/speakers/nobody", {}),
        ("write", "POST", "/v1/gallery", {"files": [gallery_part]}),
        ("admin", "PUT", "/v1/threshold", {"body": {"threshold": 0.75}}),
        ("admin", "GET", "/v1/gallery", {}),
        ("admin", "GET", "/v1/keys", {}),
        ("admin", "DELETE", "/v1/keys/nokey", {}),
        ("admin", "GET", "/v1/audit", {}),
    ]
    for needed, method, path, kw in endpoints:
        for key, expected in [
            (None, 401),
            ("sdb_0123456789abcdef_" + "x" * 43, 401),
            ("garbage", 401),
            (server.revoked, 401),
        ]:
            status, headers, doc = server.call(method, path, key=key, **kw)
            assert status == expected and doc["error"]["code"] == "unauthorized", (method, path, key, status, doc)
            assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
        for scope in SCOPES:
            status, _, doc = server.call(method, path, key=server.keys[scope], **kw)
            if SCOPES.index(scope) < SCOPES.index(needed):
                assert status == 403 and doc["error"]["code"] == "forbidden", (method, path, scope, status)
            else:
                assert status not in (401, 403), (method, path, scope, status, doc)
    status, _, doc = server.call("POST", "/v1/keys", key=server.keys["write"], body={"name": "x", "scope": "admin"})
    assert status == 403  # a write key cannot make itself an admin key
    status, _, doc = server.call("GET", "/v1/speakers", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401


def test_limits(server, clips, tmp_path):
    key = server.keys["write"]
    # over --max-upload-mb (2 MB), declared...
    big = ("files", "big.wav", b"\0" * 2_100_000)
    status, _, doc = server.call("POST", "/v1/identify", key=key, files=[big])
    assert status == 413 and doc["error"]["code"] == "too_large"
    # The answer comes before the body is read, and urllib (like any "Connection: close" client)
    # is still sending when it does: the server must read and drop the rest before it closes,
    # or the client sees a reset instead of the answer. Far over the limit, it always would.
    huge = ("files", "huge.wav", b"\0" * 12_000_000)
    for _ in range(4):
        status, _, doc = server.call("POST", "/v1/identify", key=key, files=[huge])
        assert status == 413 and doc["error"]["code"] == "too_large", doc
        status, _, doc = server.call("POST", "/v1/identify", key=None, files=[huge[:2] + (huge[2][:1_990_000],)])
        assert status == 401 and doc["error"]["code"] == "unauthorized", doc
    # Through the client, a file too large for one request is its own error, not a refusal of all.
    (tmp_path / "huge.wav").write_bytes(huge[2])
    [answer] = Client(server.url, key).identify([tmp_path / "huge.wav"])
    assert answer.error is not None and "at most 2,000,000 are accepted" in answer.error, answer
    # ...and chunked, with no length to refuse it by in advance
    body, ctype = _multipart({}, [big])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/identify")
    for name, value in [("Authorization", f"Bearer {key}"), ("Content-Type", ctype), ("Transfer-Encoding", "chunked")]:
        conn.putheader(name, value)
    conn.endheaders()
    try:
        for start in range(0, len(body), 65536):
            chunk = body[start : start + 65536]
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the whole body is sent
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "too_large"
    conn.close()
    # more files than --max-files (4)
    status, _, doc = server.call("POST", "/v1/identify", key=key, files=[_part(clips["alice"])] * 5)
    assert status == 413 and doc["error"]["code"] == "too_many_files"
    # a recording over --max-audio-s (30 s): its own error in identify, a refusal for enroll
    status, _, doc = server.call("POST", "/v1/identify", key=key, files=[_part(clips["long"]), _part(clips["alice"])])
    assert status in (200, 409) and (status == 409 or "30 s" in doc[0]["error"])
    status, _, doc = server.call("POST", "/v1/speakers/longo/enrollments", key=key, files=[_part(clips["long"])])
    assert status == 400 and doc["error"]["code"] == "bad_audio" and "long.wav" in doc["error"]["message"]
    # not multipart: 415; invalid fields: 422
    status, _, doc = server.call("POST", "/v1/identify", key=key, body={"files": "x"})
    assert status == 415 and doc["error"]["code"] == "unsupported_media_type"
    status, _, doc = server.call(
        "PATCH",
        "/v1/speakers/alice",
        key=key,
        raw=b"name=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    status, _, doc = server.call("POST", "/v1/identify", key=key, files=[_part(clips["alice"])], fields={"top_k": "0"})
    assert status == 422 and doc["error"]["code"] == "invalid_fields" and "top_k" in doc["error"]["message"]
    status, _, doc = server.call(
        "POST", "/v1/identify", key=key, files=[_part(clips["alice"])], fields={"threshold": "nan"}
    )
    assert status == 422
    status, _, doc = server.call(
        "POST", "/v1/speakers/x/enrollments", key=key, files=[_part(clips["alice"])], fields={"metadata": "{not json"}
    )
    assert status == 422 and doc["error"]["code"] == "invalid_input"
    status, _, doc = server.call("PUT", "/v1/threshold", key=server.keys["admin"], body={"threshold": 7})
    assert status == 422 and doc["error"]["code"] == "invalid_input"
    status, _, doc = server.call("GET", "/v1/nothing-here")
    assert status == 404 and doc["error"]["code"] == "not_found"
    _no_uploads_left(server)


def _hostile_audio(d: Path) -> dict[str, bytes]:
    """What the CLI refuses, as bytes a client could upload."""
    good = write(d / "good.flac", voice(150, 2.0)).read_bytes()
    nan = voice(150, 1.0)
    nan[100] = np.nan
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, nan, SR, format="WAV", subtype="FLOAT")
    rate = io.BytesIO()
    sf.write(rate, (voice(150, 1.0)[:10_000] * 32767).astype(np.int16), 1, format="WAV", subtype="PCM_16")
    silent, short = io.BytesIO(), io.BytesIO()
    sf.write(silent, np.zeros(SR, np.float32), SR, format="WAV")
    sf.write(short, voice(150, 0.2), SR, format="WAV")
    return {
        "empty.wav": b"",
        "text.wav": b"this is not audio\n" * 100,
        "corrupt.flac": b"fLaC" + os.urandom(3000),
        "truncated.flac": good[: len(good) // 2],
        "nan.wav": buf.getvalue(),
        "rate1.wav": rate.getvalue(),
        "silent.wav": silent.getvalue(),
        "short.wav": short.getvalue(),
        "header-declares-37h.wav": _wav_header(2**32 - 64),
    }


def _wav_header(n_data_bytes: int, rate: int = SR) -> bytes:
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + n_data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", n_data_bytes)
    )


def _approx(doc):
    """``doc`` with its floats compared to 1e-6: the service embeds the clips of one request
    in one batch, the library all of them in one, and a batch's shape moves the 8th digit."""
    if isinstance(doc, float):
        return pytest.approx(doc, abs=1e-6)
    if isinstance(doc, dict):
        return {k: _approx(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_approx(v) for v in doc]
    return doc


def test_more_files_than_one_request_takes_are_sent_in_several(server, admin, clips, tiny_checkpoint, tmp_path):
    """identify and timeline of more files than --max-files (4), or of more bytes than
    --max-upload-mb (2 MB), through the client or `speakerdb --server`: split into requests
    that fit the limits GET /v1/info advertises; the answers are the local ones, in order, with
    a file that cannot be read here, or is too large for any request, failing alone."""
    status, _, doc = server.call("GET", "/v1/info", key=server.keys["read"])
    assert status == 200 and doc["limits"] == {"max_files": 4, "max_upload_bytes": 2_000_000, "max_cohort_files": 2000}
    admin.enroll("alice", [clips["alice"]])
    admin.enroll("bob", [clips["bob"]])
    files = [_wav(tmp_path / f"c{i}.wav", 100.0 + 30 * i, seed=i) for i in range(9)]
    files.insert(5, tmp_path / "missing.wav")
    sent: list[int] = []  # files per request
    client = Client(server.url, server.keys["read"], retries=0)
    request = client._request

    def counting(method, path, **kw):
        if kw.get("files") is not None:
            sent.append(len(kw["files"]))
        return request(method, path, **kw)

    client._request = counting  # type: ignore[method-assign]
    shown, progress = [], []
    answers = client.identify(files, on_result=shown.append, progress=lambda n, total, s: progress.append((n, total)))
    with SpeakerDB(server.db, model=str(tiny_checkpoint)) as db:
        local = db.identify(files)
        local_timelines = db.timeline(files[:6])
    assert [a.to_dict() for a in answers] == _approx([r.to_dict() for r in local])
    assert answers[5].error == "no such file" and answers[0].speaker is not None
    assert shown == answers and sent == [4, 4, 1] and [n for n, _ in progress] == [4, 9, 10]
    sent.clear()
    timelines = client.timeline(files[:6])
    assert [t.to_dict() for t in timelines] == _approx([t.to_dict() for t in local_timelines])
    assert sent == [4, 1]

    # By size: three 0.9 MB recordings are 2.7 MB, two requests; a 2.1 MB one fits in none.
    big = [write(tmp_path / f"big{i}.wav", voice(140.0 + 40 * i, 14.0, seed=i), subtype="FLOAT") for i in range(3)]
    huge = write(tmp_path / "huge.wav", voice(150.0, 33.0), subtype="FLOAT")
    sent.clear()
    answers = client.identify([big[0], huge, big[1], big[2]])
    assert sent == [2, 1]
    assert huge.stat().st_size > 2_000_000 and "too large for the service" in answers[1].error
    with SpeakerDB(server.db, model=str(tiny_checkpoint)) as db:
        local = db.identify(big)
    assert [a.to_dict() for a in answers[:1] + answers[2:]] == _approx([r.to_dict() for r in local])

    # The command line, through the service, prints what it prints locally.
    from speakerdb.cli import cli

    env = {"SPEAKERDB_SERVER": server.url, "SPEAKERDB_API_KEY": server.keys["read"]}
    remote = CliRunner().invoke(cli, ["identify", *map(str, files), "--json"], env=env)
    here = CliRunner().invoke(
        cli, ["--db", str(server.db), "--model", str(tiny_checkpoint), "identify", *map(str, files), "--json"]
    )
    assert remote.exit_code == here.exit_code == 1, remote.output  # the missing file
    assert json.loads(remote.stdout) == _approx(json.loads(here.stdout))
    _no_uploads_left(server)


def test_an_enrollment_over_the_limits_stays_one_request_and_says_what_to_do(server, clips, tmp_path, monkeypatch):
    """An enrollment writes all of its files or none, so it is never split: more files than
    --max-files is refused in one line that says to enroll them in parts."""
    from speakerdb.cli import cli

    files = [_wav(tmp_path / f"d{i}.wav", 180.0, seed=i) for i in range(5)]
    writer = Client(server.url, server.keys["write"], retries=0)
    with pytest.raises(ServiceError, match=r"413: 5 files in one request, at most 4 are accepted: enroll them in"):
        writer.enroll("ottilie", files)
    monkeypatch.setenv("SPEAKERDB_SERVER", server.url)
    monkeypatch.setenv("SPEAKERDB_API_KEY", server.keys["write"])
    r = CliRunner().invoke(cli, ["enroll", "ottilie", *map(str, files)])
    assert r.exit_code == 1 and "at most 4 are accepted: enroll them in parts" in r.stderr, r.output
    assert "without --new adds to the speaker" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(SpeakerNotFoundError):
        writer.show("ottilie")  # nothing written
    # --each-folder: the folder too large for one request fails with that line, the others go on.
    for i, f in enumerate(files):
        (tmp_path / "people" / "ottilie").mkdir(parents=True, exist_ok=True)
        f.rename(tmp_path / "people" / "ottilie" / f.name)
        if i < 2:
            (tmp_path / "people" / "pia").mkdir(exist_ok=True)
            _wav(tmp_path / "people" / "pia" / f"p{i}.wav", 260.0, seed=10 + i)
    r = CliRunner().invoke(cli, ["enroll", "--each-folder", str(tmp_path / "people"), "--json"])
    docs = json.loads(r.stdout)
    assert isinstance(docs, list), r.output  # a result per folder, not the run's one error
    assert r.exit_code == 1 and [d["speaker"] for d in docs] == ["ottilie", "pia"], r.output
    assert "at most 4 are accepted" in docs[0]["error"] and docs[1]["created"], docs
    writer.remove("pia")
    # A cohort replaces the stored one whole: 2.6 MB of it is refused, saying what to do instead.
    cohort = [write(tmp_path / f"n{i}.wav", voice(120.0 + 20 * i, 4.0, seed=i), subtype="FLOAT") for i in range(10)]
    admin = Client(server.url, server.keys["admin"], retries=0)
    before = admin.info().norm
    with pytest.raises(ServiceError, match="at most 2,000,000 are accepted: the cohort goes in one request"):
        admin.set_norm(cohort)
    assert admin.info().norm == before
    _no_uploads_left(server)


def test_hostile_uploads_get_json_errors_and_write_nothing(server, admin, clips, tmp_path):
    admin.enroll("dora", [clips["carol"]])
    before = [s.to_dict() for s in admin.list()]
    key = server.keys["write"]
    hostile = _hostile_audio(tmp_path)
    status, _, answers = server.call(
        "POST", "/v1/identify", key=key, files=[("files", n, b) for n, b in list(hostile.items())[:4]]
    )
    assert status == 200 and [a["file"] for a in answers] == list(hostile)[:4]
    assert all(set(a) == {"file", "error"} for a in answers)
    for name, data in hostile.items():
        status, _, answers = server.call("POST", "/v1/identify", key=key, files=[("files", name, data)])
        assert status == 200 and set(answers[0]) == {"file", "error"}, (name, answers)
        status, _, doc = server.call(
            "POST", "/v1/speakers/mallory/enrollments", key=key, files=[_part(clips["alice"]), ("files", name, data)]
        )
        assert status == 400 and doc["error"]["code"] == "bad_audio", (name, status, doc)
        assert doc["error"]["message"].startswith(name + ": "), doc  # the client's name, not a private path
        status, _, doc = server.call("POST", "/v1/speakers/dora/verify", key=key, files=[("file", name, data)])
        assert status == 400 and doc["error"]["code"] == "bad_audio"
    # names that would be paths, lines or escapes are labels only
    status, _, doc = server.call(
        "POST", "/v1/identify", key=key, files=[("files", "../../etc/x\x1b[31m\u2028.wav", clips["alice"].read_bytes())]
    )
    assert status == 200 and doc[0]["file"] == "../../etc/x\\x1b[31m\\u2028.wav"
    # galleries the CLI refuses
    good = tmp_path / "good.gallery"
    admin.export(good)
    members = {}
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    bad_galleries = {"not-a-zip.gallery": b"PK\x03\x04 nothing", "random.gallery": os.urandom(5000)}
    for name, extra in [
        ("outside.gallery", {"../../outside": b"x"}),
        ("tampered.gallery", {"speakers.json": members["speakers.json"].replace(b"dora", b"dorb")}),
    ]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n, data in {**members, **extra}.items():
                z.writestr(n, data)
        bad_galleries[name] = buf.getvalue()
    for name, data in bad_galleries.items():
        status, _, doc = server.call(
            "POST", "/v1/gallery", key=key, files=[("file", name, data)], fields={"on_conflict": "replace"}
        )
        assert status == 400 and doc["error"]["code"] == "bad_gallery", (name, doc)
        assert str(server.tmp) not in doc["error"]["message"]
    status, _, doc = server.call(
        "POST", "/v1/gallery", key=key, files=[("file", "g", good.read_bytes())], fields={"on_conflict": "sometimes"}
    )
    assert status == 422
    assert [s.to_dict() for s in admin.list()] == before
    _no_uploads_left(server)


def test_eight_clients_lose_no_write_and_never_name_a_removed_speaker(server, clips, tiny_checkpoint):
    """8 clients on two workers mixing enroll, rename, remove and identify, each on its own
    names. Every acknowledged write is in the database afterwards, and no answer names a
    speaker whose removal (or renaming away) was acknowledged before the request was sent."""
    key = server.keys["write"]
    gone_at: dict[str, float] = {}  # name -> when its removal or rename was acknowledged
    answers: list[tuple[float, set[str]]] = []  # (when the request was sent, names in the answer)
    expected: dict[str, int] = {}  # final speakers -> utterances
    failures: list[str] = []
    lock = threading.Lock()
    audio = {i: voice(120 + 13 * i, 1.0, seed=i) for i in range(8)}

    def worker(i: int) -> None:
        client = Client(server.url, key, retries=20)
        clip = write(server.tmp.parent / f"c{i}.wav", audio[i])
        try:
            for round_ in range(3):
                name = f"c{i}-{round_}"
                client.enroll(name, [clip])
                sent = time.monotonic()
                [answer] = client.identify([clip], top_k=1000)
                with lock:
                    answers.append((sent, {c.speaker for c in answer.candidates}))
                if round_ == 0:
                    client.remove(name)
                    with lock:
                        gone_at[name] = time.monotonic()
                elif round_ == 1:
                    client.rename(name, f"{name}-renamed")
                    with lock:
                        gone_at[name] = time.monotonic()
                        expected[f"{name}-renamed"] = 1
                else:
                    with lock:
                        expected[name] = 1
            sent = time.monotonic()
            [answer] = client.identify([clip], top_k=1000)
            with lock:
                answers.append((sent, {c.speaker for c in answer.candidates}))
        except Exception as e:  # reported, never hidden
            with lock:
                failures.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert failures == []
    stale = [(names & {n for n, at in gone_at.items() if at < sent}) for sent, names in answers]
    assert not any(stale), [s for s in stale if s]
    assert len(answers) == 32
    with SpeakerDB(server.db, model=str(tiny_checkpoint)) as db:
        names = {s.name: s.n_utterances for s in db.list() if re.match(r"c\d-", s.name)}
    assert names == expected
    assert_index_agrees_with_store(server.db, model=str(tiny_checkpoint))


def test_cli_does_not_import_the_web_stack(tmp_path):
    SpeakerDB(tmp_path / "x.sqlite").close()
    code = (
        "import sys; from click.testing import CliRunner; from speakerdb.cli import cli;"
        f"r = CliRunner().invoke(cli, ['--db', {str(tmp_path / 'x.sqlite')!r}, 'list']);"
        "assert r.exit_code == 0, r.output;"
        "r = CliRunner().invoke(cli, ['--server', 'http://127.0.0.1:9', 'list']);"
        "assert r.exit_code == 1 and 'cannot reach' in r.output, r.output;"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_refuses_other_hosts_without_keys(tmp_path):
    from speakerdb.cli import cli

    db = tmp_path / "nokeys.sqlite"
    SpeakerDB(db).close()
    r = CliRunner().invoke(cli, ["--db", str(db), "serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "without API keys" in r.output and "--insecure-no-auth" in r.output


def test_keys_and_audit_commands(tmp_path):
    from speakerdb.cli import cli

    db = str(tmp_path / "keys.sqlite")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["--db", db, *args], catch_exceptions=False)

    r = run("keys", "create", "ops", "--scope", "admin", "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert set(made) == {"name", "key", "scope"} and made["key"].startswith("sdb_") and made["scope"] == "admin"
    r = run("keys", "create", "reader")  # text: the key alone on stdout, the advice on stderr
    assert r.exit_code == 0 and r.stdout.strip().startswith("sdb_") and "cannot be shown again" in r.stderr
    assert run("keys", "create", "ops").exit_code == 1  # names are unique
    assert run("keys", "create", "bad name!").exit_code == 1
    assert run("keys", "create", "x", "--scope", "root").exit_code == 2
    raw = sqlite3.connect(db).execute("SELECT group_concat(hash || salt || key_id) FROM api_keys").fetchone()[0]
    assert made["key"].split("_", 2)[2] not in raw  # the secret (it may hold "_" too) is nowhere in the database
    listed = json.loads(run("keys", "list", "--json").stdout)
    assert [(k["name"], k["scope"], k["active"]) for k in listed] == [("ops", "admin", True), ("reader", "read", True)]
    assert run("keys", "revoke", "reader").exit_code == 0
    assert "REVOKED" in run("keys", "list").stdout
    r = run("keys", "revoke", "nobody")
    assert r.exit_code == 1 and "no key named 'nobody'" in r.output
    with SpeakerDB(db) as sdb:
        assert sdb.authenticate(made["key"]).name == "ops" and sdb.has_keys()
    trail = json.loads(run("audit", "--json").stdout)
    assert [(e["operation"], e["detail"]["key"]) for e in trail] == [
        ("key-create", "ops"),
        ("key-create", "reader"),
        ("key-revoke", "reader"),
    ]
    assert all(e["key_name"].startswith("local:") for e in trail)
    assert "key-revoke" in run("audit", "--limit", "1").stdout


# ---- a server that is killed, restarted and overloaded -------------------------------------
def test_sigkill_during_enrollment_then_restart_then_busy_then_sigterm(tmp_path, tiny_checkpoint):
    db_path = tmp_path / "fragile.sqlite"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    long_clips = [write(tmp_path / f"long{i}.wav", voice(100 + 20 * i, 25.0, seed=i)) for i in range(4)]
    srv = Server(
        db_path,
        tiny_checkpoint,
        tmp_path / "server.log",
        "--queue-size",
        "1",
        "--insecure-no-auth",
        "--tmp-dir",
        str(tmp),
    )
    srv.start()
    assert "--insecure-no-auth" in srv.log.read_text()  # announced at every start
    client = Client(srv.url, retries=0)
    client.enroll("anchor", [long_clips[0]])

    # SIGKILL while an enrollment of 3 x 25 s is embedding
    outcome: list[object] = []
    t = threading.Thread(target=lambda: outcome.append(_try(lambda: client.enroll("victim", long_clips[1:]))))
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "speakerdb_queue_depth 1" not in _metrics(srv):
        time.sleep(0.02)
    assert "speakerdb_queue_depth 1" in _metrics(srv)
    time.sleep(0.3)
    srv.stop(signal.SIGKILL)
    t.join(timeout=60)
    killed_pid = srv.proc.pid
    assert list(tmp.iterdir())  # the killed worker's upload directory is still there...

    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    srv.start()  # ...until the next start
    assert not any(d.name.startswith(f"speakerdb-upload-{killed_pid}-") for d in tmp.iterdir())
    names = {s.name for s in client.list()}
    assert "anchor" in names
    enrolled = "victim" in names
    with SpeakerDB(db_path) as db:
        audit = [(e.operation, e.speaker) for e in db.audit()]
    assert (("enroll", "victim") in audit) == enrolled  # the change and its record: both or neither
    if enrolled:
        assert client.show("victim").n_utterances == 3
    assert_index_agrees_with_store(db_path, model=str(tiny_checkpoint))

    # a queue of one: concurrent embeddings beyond it are answered 503 with Retry-After at once
    results: list[tuple[int, dict, object]] = []

    def identify() -> None:
        results.append(srv.call("POST", "/v1/identify", files=[_part(long_clips[2])]))

    threads = [threading.Thread(target=identify) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    statuses = sorted(r[0] for r in results)
    assert 200 in statuses and 503 in statuses, statuses
    for status, headers, doc in results:
        if status == 503:
            assert doc["error"]["code"] == "busy" and int(headers["retry-after"]) >= 1
    assert f"speakerdb_busy_rejections_total {statuses.count(503)}" in _metrics(srv)

    # SIGTERM while a request runs: it is answered, then the server exits
    answer: list[object] = []
    t = threading.Thread(target=lambda: answer.append(srv.call("POST", "/v1/identify", files=[_part(long_clips[3])])))
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "speakerdb_queue_depth 1" not in _metrics(srv):
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert answer and answer[0][0] == 200 and "speaker" in answer[0][2][0]
    assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # once: a second SIGTERM forces uvicorn out
    assert list(tmp.iterdir()) == []
    assert "Traceback" not in srv.log.read_text()


def _try(fn):
    try:
        return fn()
    except Exception as e:
        return e


def _metrics(srv: Server) -> str:
    try:
        with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as r:
            return r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


@pytest.mark.parametrize("workers, given, expected", [(1, None, None), (2, None, "1"), (2, "3", "3")])
def test_workers_share_the_cores_out(monkeypatch, tmp_path, workers, given, expected):
    """Several workers each start torch with a thread per core unless told otherwise: on 2
    cores, 16 clients on 2 workers got 0.55-0.62 x the throughput of one client."""
    import uvicorn

    from speakerdb.embedding import threads
    from speakerdb.service import serve as server
    from speakerdb.service.settings import CONFIG_ENV

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # setenv first, so that monkeypatch restores both variables whatever serve() sets
    monkeypatch.setenv(threads.ENV_THREADS, given or "")
    monkeypatch.setenv(CONFIG_ENV, "")
    if given is None:
        monkeypatch.delenv(threads.ENV_THREADS)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(threads=os.environ.get(threads.ENV_THREADS)))
    server.serve(server.ServeConfig(db_path=str(tmp_path / "x.sqlite")), workers=workers)
    assert seen["threads"] == expected


def test_identify_requests_waiting_together_share_one_facade_call():
    """IdentifyBatches: the first waiting request's turn answers every waiting request with
    the same top_k and threshold (up to max_files files), each with its own slice; the
    others return their stored answers; an error of the whole call reaches each of them."""
    from speakerdb.errors import EmptyDatabaseError
    from speakerdb.service.lanes import IdentifyBatches
    from speakerdb.service.uploads import UploadedFile

    class Facade:
        def __init__(self, fail: bool = False) -> None:
            self.calls: list[list[str]] = []
            self.fail = fail

        def identify(self, files, top_k, threshold, count_voices=True):
            self.calls.append([str(f) for f in files])
            if self.fail:
                raise EmptyDatabaseError("no speakers enrolled")
            return [f"answer for {f} (top {top_k})" for f in files]

    def uploads(*names):
        return [UploadedFile(f"/private/{n}", n) for n in names]

    batches = IdentifyBatches(max_files=4)
    a = batches.add(uploads("a1", "a2"), 5, None)
    b = batches.add(uploads("b1"), 5, None)
    other = batches.add(uploads("o1"), 1, None)  # another top_k: its own call
    c = batches.add(uploads("c1", "c2"), 5, None)  # would make 5 files: waits for the next call
    db = Facade()
    assert batches.run(db, a) == ["answer for a1 (top 5)", "answer for a2 (top 5)"]
    assert db.calls == [["a1", "a2", "b1"]]
    assert batches.run(db, b) == ["answer for b1 (top 5)"] and len(db.calls) == 1  # ready: no second call
    assert batches.run(db, other) == ["answer for o1 (top 1)"]
    assert batches.run(db, c) == ["answer for c1 (top 5)", "answer for c2 (top 5)"]
    assert db.calls[1:] == [["o1"], ["c1", "c2"]] and (batches.requests, batches.calls) == (4, 3)
    # A request cancelled before its turn is forgotten, not answered in someone else's call.
    gone, kept = batches.add(uploads("g1"), 5, None), batches.add(uploads("k1"), 5, None)
    batches.discard(gone)
    assert batches.run(db, kept) == ["answer for k1 (top 5)"] and db.calls[-1] == ["k1"]
    assert batches.run(db, gone) == ["answer for g1 (top 5)"]  # its lane job may still run: alone
    # An error of the whole call is every member's.
    failing, x, y = Facade(fail=True), batches.add(uploads("x1"), 5, None), batches.add(uploads("y1"), 5, None)
    for entry in (x, y):
        with pytest.raises(EmptyDatabaseError):
            batches.run(failing, entry)
    assert failing.calls == [["x1", "y1"]]


def test_timeline_through_the_service_is_the_local_one(server, tiny_checkpoint, tmp_path, monkeypatch):
    """POST /v1/timeline, Client.timeline and `speakerdb --server URL timeline` answer what
    SpeakerDB.timeline answers on the same database; bad knobs are refused before upload."""
    gap = np.zeros(SR // 2, np.float32)
    conv = write(tmp_path / "conv.wav", np.concatenate([voice(150, 4.0, seed=3), gap, voice(290, 4.0, seed=4)]))
    client = Client(server.url, server.keys["read"], retries=0)
    remote, missing = client.timeline([conv, tmp_path / "missing.wav"])
    with SpeakerDB(server.db, model=str(tiny_checkpoint)) as db:
        [local] = db.timeline([conv])
    assert {**remote.to_dict(), "file": None} == {**local.to_dict(), "file": None}
    assert remote.file == "conv.wav" or remote.file.endswith("conv.wav")
    assert missing.error is not None and "missing.wav" in missing.file
    status, _, doc = server.call(
        "POST", "/v1/timeline", key=server.keys["read"], files=[_part(conv)], fields={"window": "0.1"}
    )
    assert status == 422 and doc["error"]["code"] == "invalid_input" and "window" in doc["error"]["message"]
    status, _, _ = server.call("POST", "/v1/timeline", files=[_part(conv)])
    assert status == 401
    from speakerdb.cli import cli

    monkeypatch.setenv("SPEAKERDB_SERVER", server.url)
    monkeypatch.setenv("SPEAKERDB_API_KEY", server.keys["read"])
    out = CliRunner().invoke(cli, ["timeline", str(conv), "--json"])
    assert out.exit_code == 0, out.output
    [printed] = json.loads(out.stdout)
    assert {**printed, "file": None} == {**local.to_dict(), "file": None}
    _no_uploads_left(server)


def test_uploads_without_a_valid_key_are_refused_before_the_body_is_read(server):
    """A POST of audio whose key is missing or wrong gets its 401 at once: the server does
    not wait for (or store) a body it would refuse."""
    for auth in (None, "Bearer sdb_0000000000000000_not-a-key"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("POST", "/v1/identify")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", "1000000")  # announced, never sent
        if auth:
            conn.putheader("Authorization", auth)
        conn.endheaders()
        response = conn.getresponse()  # a server reading the body first would time out here
        assert response.status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert json.loads(response.read())["error"]["code"] == "unauthorized"
        conn.close()
    _no_uploads_left(server)


def _one_request_server(answer: bytes, read_body_first: bool) -> tuple[str, dict, threading.Thread]:
    """A stand-in service for one request: it answers ``answer`` at once (a refusal) or after
    reading the whole body without a "100 Continue" (a server that ignores Expect), and
    records the request's headers and how many body bytes it received."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: dict = {}

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            headers, _, body = head.partition(b"\r\n\r\n")
            seen["headers"] = headers.decode("latin-1").lower()
            length = int(re.search(r"content-length: (\d+)", seen["headers"]).group(1))
            started = time.monotonic()
            if not read_body_first:
                conn.sendall(answer)
            while len(body) < length:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                body += chunk
            seen["waited_s"] = time.monotonic() - started
            seen["body_bytes"] = len(body)
            if read_body_first:
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", seen, thread


def _answer(status: str, doc: dict) -> bytes:
    body = json.dumps(doc).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def test_large_uploads_ask_first_so_a_refusal_costs_no_upload(server, tmp_path):
    """The client sends a body of 1 MiB or more only after the service's "100 Continue": a
    service that refuses it (too large, no valid key) answers and no byte is sent. A service
    that ignores the question gets the body after a second; the real one asks for it."""
    from speakerdb.service.client import CONTINUE_WAIT_S, EXPECT_CONTINUE_BYTES

    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (EXPECT_CONTINUE_BYTES + 1000))
    url, seen, thread = _one_request_server(
        _answer("413 Content Too Large", {"error": {"code": "too_large", "message": "at most 1,000 bytes"}}), False
    )
    with pytest.raises(ServiceError, match="413: at most 1,000 bytes"):
        Client(url, "k", retries=0).verify("x", big)  # one request (identify asks /v1/info first)
    thread.join(10)
    assert "expect: 100-continue" in seen["headers"] and seen["body_bytes"] == 0

    url, seen, thread = _one_request_server(
        _answer("400 Bad Request", {"error": {"code": "bad_audio", "message": "big.wav: not audio"}}), True
    )
    with pytest.raises(SpeakerDBError, match="big.wav: not audio"):
        Client(url, "k", retries=0).verify("x", big)
    thread.join(10)
    assert seen["body_bytes"] > EXPECT_CONTINUE_BYTES and seen["waited_s"] >= CONTINUE_WAIT_S * 0.9

    with pytest.raises(ServiceError, match="cannot reach the speakerdb service"):
        Client(f"http://127.0.0.1:{_free_port()}", "k", retries=0).verify("x", big)  # nobody listening

    # The real service: a 24 s float32 recording (1.5 MB) goes after its "100 Continue".
    clip = write(tmp_path / "long.wav", voice(180, 24.0), subtype="FLOAT")
    assert clip.stat().st_size > EXPECT_CONTINUE_BYTES
    writer = Client(server.url, server.keys["write"])
    enrolled = writer.enroll("long-recording", [clip], new=True)
    assert enrolled.created and enrolled.n_utterances == 1
    assert writer.remove("long-recording") == 1


def test_metrics_are_summed_over_the_workers(server):
    """With two workers, whichever takes the scrape counts the other's requests too.

    Which worker accepts a connection is the kernel's choice, and on a quiet machine it can
    give every connection to the same one for a minute: the worker that answers is stopped
    (SIGSTOP) for one scrape, so that the other one must take it."""
    from speakerdb.service.metrics import METRICS_PUBLISH_S

    def scrape() -> tuple[int, dict[str, float]]:
        status, _, text = server.call("GET", "/metrics")
        assert status == 200
        values = {}
        for line in (text.decode() if isinstance(text, bytes) else text).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return int(values["speakerdb_worker_pid"]), values

    info = 'speakerdb_requests_total{method="GET",endpoint="/v1/info",status="200"}'

    def agreed() -> tuple[float, dict[str, float]]:
        """The count once both workers give it, and still do a few publications later: the one
        that answers, then the other while the first is stopped. Each publishes every
        METRICS_PUBLISH_S (later on a busy machine), and before either has published the
        other's requests, two workers that served 6 each agree on 6."""
        deadline = time.monotonic() + 60
        since: tuple[float, float] | None = None  # (count, when both first gave it)
        while True:
            first, values = scrape()
            os.kill(first, signal.SIGSTOP)
            try:
                other, others = scrape()
            finally:
                os.kill(first, signal.SIGCONT)
            assert other != first
            count, now = values.get(info, 0), time.monotonic()
            if count != others.get(info, 0):
                since = None
            elif since is None or since[0] != count:
                since = (count, now)
            elif now - since[1] >= 2.5 * METRICS_PUBLISH_S:
                return count, others
            assert now < deadline, f"the workers never agreed: {count} != {others.get(info)}"
            time.sleep(METRICS_PUBLISH_S / 2)

    before, _ = agreed()
    for _ in range(12):
        assert server.call("GET", "/v1/info", key=server.keys["read"])[0] == 200
    after, values = agreed()
    assert after - before == 12  # the same total from either worker
    assert values['speakerdb_workers{state="running"}'] == 2 and values['speakerdb_workers{state="ready"}'] == 2


def test_metrics_directories_of_dead_services_are_swept(tmp_path):
    """serve --workers N sweeps the metrics directories that a service killed with SIGKILL left."""
    from speakerdb.service.metrics import METRICS_DIR_PREFIX
    from speakerdb.service.uploads import sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{int(dead.stdout)}-abc"
    alive = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    for d in (stale, alive):
        d.mkdir()
        (d / "1.json").write_text("{}")
    sweep_stale(tmp_path, METRICS_DIR_PREFIX)
    assert not stale.exists() and alive.exists()
