"""Issue 21, the service as an attacker sees it: keys that never open it again, bounded /metrics,
deadlines on slow clients, no server paths in answers, names that are not UTF-8, deep JSON,
and 401s that take as long whether a key id exists or not.

Service tests run a real ``speakerdb serve`` (tests/test_server.py's ``Server``) and speak to
it over TCP, raw sockets where an ordinary client would not misbehave enough.
"""

from __future__ import annotations

import json
import secrets
import select
import socket
import statistics
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import FakeEmbedder, voice, write
from speakerdb import SpeakerDB
from speakerdb.service.client import Client
from test_server import Server, _part

HEADER_TIMEOUT_S = 1.0  # the module server's deadlines: short, so that the tests are quick
BODY_TIMEOUT_S = 1.0
CUT_OFF_WITHIN_S = 4.0  # a connection past a deadline is closed within this (the load of a 2-core machine)


def _cli(db: Path, *args: str):
    from speakerdb.cli import cli

    r = CliRunner().invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_checkpoint):
    """One worker, an admin key ``ops`` and a speaker, deadlines of a second."""
    d = tmp_path_factory.mktemp("hardened")
    db_path = d / "hardened.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        db.enroll("alice", [write(d / "alice.wav", voice(210.0, 1.5))])
        srv_key = db.create_key("ops", "admin").key
    srv = Server(
        db_path,
        tiny_checkpoint,
        d / "server.log",
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--body-timeout",
        str(BODY_TIMEOUT_S),
    )
    srv.key = srv_key
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text()


# ---- item 1: revoking the last key ---------------------------------------------------------------
def test_revoking_the_last_key_while_serving_does_not_open_the_service(svc, tmp_path):
    assert svc.call("GET", "/v1/speakers")[0] == 401
    _cli(svc.db, "keys", "revoke", "ops")  # the only key, while the service runs
    for method, path, body in [
        ("GET", "/v1/gallery", None),
        ("DELETE", "/v1/speakers/alice", None),
        ("POST", "/v1/keys", {"name": "intruder", "scope": "admin"}),
        ("GET", "/v1/speakers", None),
    ]:
        status, _, doc = svc.call(method, path, body=body)
        assert status == 401 and doc["error"]["code"] == "unauthorized", (method, path, status, doc)
        assert svc.call(method, path, body=body, key=svc.key)[0] == 401  # the revoked key itself
    with SpeakerDB(svc.db) as db:
        assert [s.name for s in db.list()] == ["alice"]
        assert [k.name for k in db.list_keys()] == ["ops"]
    # A new key works at once; the module's other tests use it.
    svc.key = _cli(svc.db, "keys", "create", "ops2", "--scope", "admin").stdout.strip()
    assert svc.call("GET", "/v1/speakers", key=svc.key)[0] == 200


def test_a_database_whose_keys_are_all_revoked_requires_a_key(tmp_path, tiny_checkpoint, monkeypatch):
    """Decided at start: all revoked is 'keys required' (so other hosts are allowed), never 'open'."""
    import speakerdb.service.serve

    db = tmp_path / "revoked.sqlite"
    with SpeakerDB(db) as sdb:
        sdb.create_key("ops", "admin")
        sdb.revoke_key("ops")
    started = []
    monkeypatch.setattr(speakerdb.service.serve, "serve", lambda config, **kw: started.append((config, kw)))
    r = _cli(db, "serve", "--host", "0.0.0.0")
    config, kw = started[0]
    assert kw["host"] == "0.0.0.0" and config.require_keys and not config.insecure_no_auth
    assert "all revoked" in r.stdout and "refused" in r.stderr
    nokeys = tmp_path / "nokeys.sqlite"
    SpeakerDB(nokeys).close()
    _cli(nokeys, "serve")
    assert started[1][0].require_keys is False  # loopback, never a key: open as before


def test_a_service_started_without_keys_requires_them_once_one_is_created(tmp_path, tiny_checkpoint):
    db = tmp_path / "open.sqlite"
    SpeakerDB(db, model=str(tiny_checkpoint)).close()
    srv = Server(db, tiny_checkpoint, tmp_path / "server.log").start()
    try:
        assert srv.call("GET", "/v1/speakers")[0] == 200  # loopback, no key ever: open, as before
        # Item 13 too: an answer about the database names no server path (nothing to export here).
        status, _, doc = srv.call("GET", "/v1/gallery")
        assert status == 409 and doc["error"]["code"] == "no_speakers", doc
        assert str(tmp_path) not in doc["error"]["message"] and "the service's database" in doc["error"]["message"]
        key = _cli(db, "keys", "create", "ops", "--scope", "admin").stdout.strip()
        assert srv.call("GET", "/v1/speakers")[0] == 401  # tightened at once
        assert srv.call("GET", "/v1/speakers", key=key)[0] == 200
        _cli(db, "keys", "revoke", "ops")
        for method, path in [("GET", "/v1/gallery"), ("DELETE", "/v1/speakers/x"), ("POST", "/v1/keys")]:
            assert srv.call(method, path, body={"name": "x"} if method == "POST" else None)[0] == 401, path
    finally:
        srv.stop()


# ---- item 10: /metrics labels ------------------------------------------------------------------
def _raw(svc, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_made_up_methods_do_not_grow_metrics(svc):
    def size() -> int:
        status, _, text = svc.call("GET", "/metrics")
        assert status == 200
        return len(text)

    _raw(svc, b"BREW /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # "other" exists from now on
    before = size()
    for i in range(200):
        answer = _raw(svc, f"M{i:04d}X /v1/speakers/x{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    for i in range(3):
        _raw(svc, b"L" * 10_000 + f"{i} /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    after = size()
    assert after - before < 2_000, (before, after)  # counts change, never the set of series
    text = svc.call("GET", "/metrics")[2]
    text = text.decode() if isinstance(text, bytes) else text
    assert 'method="other"' in text and "M0001X" not in text and "LLLL" not in text


# ---- item 11: slow clients ----------------------------------------------------------------------
def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """(seconds until the server closed ``sock``, what it sent); fails if it stays open."""
    sock.settimeout(seconds)
    started, got = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s; got {got[:200]!r}") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - started, got


def _trickle(sock: socket.socket, data: bytes, seconds: float) -> None:
    """Send ``data`` a byte at a time, one every 0.2 s, for at most ``seconds``, until the server answers."""
    deadline = time.monotonic() + seconds
    for byte in data:
        if time.monotonic() > deadline or select.select([sock], [], [], 0)[0]:
            return  # answered (or closed): what the test waits for
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        time.sleep(0.2)


def test_slow_headers_and_stalled_bodies_are_cut_off(svc):
    key = svc.key
    # A connection that never sends a byte.
    with socket.create_connection(("127.0.0.1", svc.port)) as s:
        _, got = _closed_within(s, CUT_OFF_WITHIN_S + HEADER_TIMEOUT_S)
        assert got.startswith(b"HTTP/1.1 408"), got[:100]
    # Headers trickled a byte every 0.2 s (each byte would reset an idle timer): a total deadline.
    with socket.create_connection(("127.0.0.1", svc.port)) as s:
        started = time.monotonic()
        _trickle(s, b"GET /v1/speakers HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 3 * HEADER_TIMEOUT_S)
        _, got = _closed_within(s, CUT_OFF_WITHIN_S)
        assert time.monotonic() - started < 3 * HEADER_TIMEOUT_S + CUT_OFF_WITHIN_S
        assert got.startswith(b"HTTP/1.1 408") or got == b"", got[:100]  # a byte sent after the close: a reset
    # A second request on a kept-alive connection, its headers never finished.
    with socket.create_connection(("127.0.0.1", svc.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        _closed_within(s, CUT_OFF_WITHIN_S + HEADER_TIMEOUT_S)
    # Bodies that stop half-way: a JSON body with and without a key, an upload without a key
    # (answered 401 at once, then lingering to read the body), an upload with a key.
    boundary = "b0undary"
    upload_head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n\r\n'
    stalled = [
        ("PATCH", "/v1/speakers/alice", "application/json", None, b'{"name": "al'),
        ("PATCH", "/v1/speakers/alice", "application/json", key, b'{"name": "al'),
        ("POST", "/v1/identify", f"multipart/form-data; boundary={boundary}", None, upload_head.encode() + b"RIFF"),
        ("POST", "/v1/identify", f"multipart/form-data; boundary={boundary}", key, upload_head.encode() + b"RIFF"),
    ]
    for method, path, ctype, k, partial in stalled:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n"
            + (f"Authorization: Bearer {k}\r\n" if k else "")
            + "\r\n"
        )
        with socket.create_connection(("127.0.0.1", svc.port)) as s:
            s.sendall(head.encode() + partial)
            _, got = _closed_within(s, CUT_OFF_WITHIN_S + BODY_TIMEOUT_S)
            assert got.startswith((b"HTTP/1.1 408", b"HTTP/1.1 401")), (path, k is not None, got[:200])
    # The service still answers, and a steady request is never cut off.
    assert svc.call("GET", "/v1/speakers", key=key)[0] == 200


# ---- item 13: server paths ---------------------------------------------------------------------------
def test_info_and_errors_do_not_name_server_paths(svc, tmp_path):
    status, _, doc = svc.call("GET", "/v1/info", key=svc.key)
    assert status == 200 and "db_path" not in doc and "index_path" not in doc
    assert str(svc.db) not in json.dumps(doc) and str(svc.db.parent) not in json.dumps(doc)
    info = Client(svc.url, svc.key).info()  # the client's info still works, naming the service
    assert info.n_speakers == 1 and info.db_path == svc.url
    # A gallery of another model: 409, and the message names the gallery, not the server's database.
    with SpeakerDB(tmp_path / "other.sqlite", embedder=FakeEmbedder()) as other:
        other.enroll("zed", [write(tmp_path / "zed.wav", voice(150.0, 1.5))])
        other.export(tmp_path / "other.gallery")
    status, _, doc = svc.call("POST", "/v1/gallery", key=svc.key, files=[_part(tmp_path / "other.gallery", "file")])
    assert status == 409, doc
    message = doc["error"]["message"]
    assert "other.gallery" in message and str(svc.db.parent) not in message


# ---- item 17d: names that are not UTF-8 -------------------------------------------------------------
def test_percent_escapes_that_are_not_utf8_are_refused(svc):
    for path in ("/v1/speakers/%FF", "/v1/speakers/%FE", "/v1/speakers/a%C3", "/v1/gallery?speaker=%FF"):
        status, _, doc = svc.call("GET", path, key=svc.key)
        assert status == 400 and doc["error"]["code"] == "invalid_input", (path, status, doc)
    status, _, doc = svc.call("DELETE", "/v1/speakers/%FF", key=svc.key)
    assert status == 400 and doc["error"]["code"] == "invalid_input"
    status, _, doc = svc.call("GET", "/v1/speakers/%C3%A9", key=svc.key)  # valid UTF-8: looked up as before
    assert status == 404 and doc["error"]["code"] == "speaker_not_found"


# ---- item 9b: deep JSON ----------------------------------------------------------------------------
def test_metadata_nested_100000_deep_is_a_json_error_not_a_500(svc, tmp_path):
    clip = write(tmp_path / "bob.wav", voice(110.0, 1.5))
    for deep in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        status, _, doc = svc.call(
            "POST", "/v1/speakers/bob/enrollments", key=svc.key, fields={"metadata": deep}, files=[_part(clip)]
        )
        assert status in (400, 422) and doc["error"]["code"] == "invalid_input", (status, doc)
    status, _, doc = svc.call(
        "PATCH",
        "/v1/speakers/alice",
        key=svc.key,
        raw=b'{"name":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert status in (400, 422) and "error" in doc, (status, doc)
    with SpeakerDB(svc.db) as db:
        assert [s.name for s in db.list()] == ["alice"]


# ---- item 18: the time a wrong key takes ---------------------------------------------------------
def test_a_wrong_secret_costs_the_same_whether_the_key_id_exists(tmp_path):
    from speakerdb.storage import keys

    with SpeakerDB(tmp_path / "k.sqlite") as db:
        real = db.create_key("ops", "admin").key
        known_id = real.split("_")[1]

        def ms(key: str) -> float:
            started = time.perf_counter()
            assert db.authenticate(key) is None
            return 1000 * (time.perf_counter() - started)

        # Alternated, so that other work on the machine weighs on both alike.
        pairs = [
            (
                ms(f"sdb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"),
                ms(f"sdb_{known_id}_{secrets.token_urlsafe(32)}"),
            )
            for _ in range(11)
        ]
        unknown, known = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        assert 0.5 <= unknown / known <= 2.0, (unknown, known)
        # The same wrong key again costs no second PBKDF2 (an attacker repeating it burns no CPU).
        wrong = f"sdb_{known_id}_{secrets.token_urlsafe(32)}"
        db.authenticate(wrong)
        started = time.perf_counter()
        assert db.authenticate(wrong) is None
        assert 1000 * (time.perf_counter() - started) < known / 2
        assert db.authenticate(real).name == "ops"  # the right key still works
        assert keys.MAX_FAILED >= 1


# ---- item 2 (the service's side): no password in serve's start-up line ------------------------------
def test_serve_prints_no_postgres_password(pg_url, monkeypatch):
    import speakerdb.service.serve

    started = []
    monkeypatch.setattr(speakerdb.service.serve, "serve", lambda config, **kw: started.append(config))
    user_pw = pg_url.replace("postgresql://postgres@", "postgresql://postgres:S3cretUserPw@")
    query_pw = pg_url + "?password=S3cretQueryPw"
    for url, secret in [(user_pw, "S3cretUserPw"), (query_pw, "S3cretQueryPw")]:
        for extra in ([], ["--json"]):
            r = _cli(url, "serve", *extra)
            assert secret not in r.output, r.output
        assert secret in started[-1].db_path  # the workers still connect with it
