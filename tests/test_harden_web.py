"""The web page's and the live stream's surfaces attacked as a hostile web page or a hostile
client would (docs/security.md, "The web page and live streams"), against real ``speakerdb
serve`` processes (tests/test_server.py's ``Server``) with the tiny random checkpoint.

- A loopback service that needs no key is reached by other sites' pages: through a name of
  theirs pointed at 127.0.0.1 (DNS rebinding), or by a form or WebSocket sent across origins.
- Live streams: connections that never send their key, a key revoked while its stream runs,
  one key opening every stream a worker holds.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import voice, write
from speakerdb import SpeakerDB
from test_server import Server
from test_stream import _open, _pcm16, _rest, _wait_metric


@pytest.fixture(scope="module")
def open_svc(tmp_path_factory, tiny_checkpoint):
    """A loopback service whose database never had a key: every caller on this machine may do everything."""
    d = tmp_path_factory.mktemp("keyless")
    clip = write(d / "dora.wav", voice(180.0, 1.5))
    with SpeakerDB(d / "open.sqlite", model=str(tiny_checkpoint)) as db:
        db.enroll("dora", [clip])
    srv = Server(d / "open.sqlite", tiny_checkpoint, d / "open.log")
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    srv.clip = clip
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text()


def _ws_as(srv, host: str, origin: str | None):
    """A WebSocket to ``srv`` whose Host header is ``host``: what a browser sends after a page's
    own name was pointed at 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    return connect(f"ws://{host}/v1/stream", sock=sock, origin=origin, open_timeout=60)


def _names(srv) -> list[str]:
    status, _, doc = srv.call("GET", "/v1/speakers")
    assert status == 200, doc
    return [s["name"] for s in doc]


def test_a_keyless_service_answers_no_other_name_than_loopback(open_svc):
    """DNS rebinding: evil.example resolves to 127.0.0.1 once its page is loaded; the page is then
    same-origin with what it reaches and reads every answer: the speakers, and the voiceprints in
    an exported gallery. The Host header still says evil.example."""
    port = open_svc.port
    for path in ("/v1/speakers", "/v1/gallery", "/v1/audit", "/"):
        status, _, doc = open_svc.call("GET", path, headers={"Host": f"evil.example:{port}"})
        assert status == 403 and doc["error"]["code"] == "forbidden", (path, status, doc)
        assert "evil.example" in doc["error"]["message"] and "loopback" in doc["error"]["message"]
    status, _, doc = open_svc.call(
        "POST",
        "/v1/speakers/eve/enrollments",
        files=[("files", "eve.wav", open_svc.clip.read_bytes())],
        headers={"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
    )
    assert status == 403 and doc["error"]["code"] == "forbidden", doc
    # The machine's own names are served, with or without the port.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"app.localhost:{port}", f"127.0.0.2:{port}"):
        status, _, doc = open_svc.call("GET", "/v1/speakers", headers={"Host": host})
        assert status == 200 and [s["name"] for s in doc] == ["dora"], (host, doc)
    # The live stream, opened by the rebound page (its Origin and Host agree: only the name tells).
    with _ws_as(open_svc, f"evil.example:{port}", f"http://evil.example:{port}") as ws:
        docs, code = _rest(ws)
    assert code == 1008 and [d["code"] for d in docs] == ["forbidden"], docs
    with _ws_as(open_svc, f"localhost:{port}", f"http://localhost:{port}") as ws:  # the page, by a loopback name
        ws.send(json.dumps({"type": "end"}))
        docs, code = _rest(ws)
    assert code == 1000 and docs[-1]["type"] == "timeline", docs
    assert _names(open_svc) == ["dora"]


def test_a_keyless_service_takes_no_request_from_another_sites_page(open_svc):
    """Cross-site request forgery: a page of any site may POST a multipart form to
    http://127.0.0.1:PORT (no preflight for multipart/form-data) and so enroll, import a gallery or
    turn normalisation on, blind; its Origin header names the page's site."""
    own = f"http://127.0.0.1:{open_svc.port}"
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{open_svc.port + 1}"):
        status, _, doc = open_svc.call(
            "POST",
            "/v1/speakers/eve/enrollments",
            files=[("files", "eve.wav", open_svc.clip.read_bytes())],
            headers={"Origin": origin},
        )
        assert status == 403 and doc["error"]["code"] == "forbidden", (origin, doc)
        assert "another origin" in doc["error"]["message"]
        status, _, doc = open_svc.call("GET", "/v1/speakers/dora", headers={"Origin": origin})
        assert status == 403, (origin, doc)
    assert _names(open_svc) == ["dora"]
    # The service's own page (its Origin is the service's), and programs (no Origin), are served.
    status, _, doc = open_svc.call("GET", "/v1/speakers/dora", headers={"Origin": own})
    assert status == 200 and doc["name"] == "dora", doc
    status, _, doc = open_svc.call(
        "POST", "/v1/identify", files=[("files", "dora.wav", open_svc.clip.read_bytes())], headers={"Origin": own}
    )
    assert status == 200 and doc[0]["file"] == "dora.wav", doc


def test_a_service_without_keys_by_choice_serves_any_name_but_not_other_sites_pages(tmp_path, tiny_checkpoint):
    """--insecure-no-auth lets every caller in, from any name it is reached by, but a page of
    another site is no caller: its cross-site forms and WebSockets (ambient, blind) were served."""
    clip = write(tmp_path / "dora.wav", voice(180.0, 1.5))
    with SpeakerDB(tmp_path / "open.sqlite", model=str(tiny_checkpoint)) as db:
        db.enroll("dora", [clip])
    srv = Server(tmp_path / "open.sqlite", tiny_checkpoint, tmp_path / "open.log", "--insecure-no-auth").start()
    try:
        port, name = srv.port, f"speakers.example:{srv.port}"
        status, _, doc = srv.call("GET", "/v1/speakers", headers={"Host": name})  # a program, by any name
        assert status == 200 and [s["name"] for s in doc] == ["dora"], doc
        status, _, doc = srv.call("GET", "/v1/speakers", headers={"Host": name, "Origin": f"http://{name}"})
        assert status == 200, doc  # the service's own page
        status, _, doc = srv.call(
            "POST",
            "/v1/speakers/eve/enrollments",
            files=[("files", "eve.wav", clip.read_bytes())],
            headers={"Host": name, "Origin": "https://evil.example"},
        )
        assert status == 403 and doc["error"]["code"] == "forbidden", doc
        with _ws_as(srv, f"127.0.0.1:{port}", "https://evil.example") as ws:
            docs, code = _rest(ws)
        assert code == 1008 and [d["code"] for d in docs] == ["forbidden"], docs
        with _ws_as(srv, name, f"http://{name}") as ws:
            ws.send(json.dumps({"type": "end"}))
            docs, code = _rest(ws)
        assert code == 1000 and docs[-1]["type"] == "timeline", docs
        assert _names(srv) == ["dora"]
    finally:
        srv.stop()


# ---- live streams ----------------------------------------------------------------------------------
MAX_STREAMS = 3


def _keyed(d: Path, checkpoint: Path, *options: str) -> Server:
    """A service with keys (admin, write, read) and ``MAX_STREAMS`` live streams per worker."""
    with SpeakerDB(d / "keyed.sqlite", model=str(checkpoint)) as db:
        keys = {scope: db.create_key(scope, scope).key for scope in ("admin", "write", "read")}
        keys["other"] = db.create_key("other", "read").key
    srv = Server(d / "keyed.sqlite", checkpoint, d / "keyed.log", "--max-streams", str(MAX_STREAMS), *options)
    srv.keys = keys
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    return srv.start()


@pytest.fixture(scope="module")
def keyed_svc(tmp_path_factory, tiny_checkpoint):
    srv = _keyed(tmp_path_factory.mktemp("keyed"), tiny_checkpoint)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text()


def _ended(ws) -> tuple[list[dict], int | None]:
    ws.send(_pcm16(voice(150, 0.2)))
    ws.send(json.dumps({"type": "end"}))
    return _rest(ws)


def test_connections_waiting_for_their_key_take_no_live_stream(keyed_svc):
    """A stream's place was taken as it connected, before its key: MAX_STREAMS sockets that send
    nothing, opened again every 5 s, kept every live stream of a worker from everyone, without a
    key. Waiting for a key now holds a place of its own kind (as many as --max-streams)."""
    waiting = [connect(keyed_svc.ws, open_timeout=60) for _ in range(MAX_STREAMS)]
    try:
        time.sleep(0.5)
        with _open(keyed_svc, key=keyed_svc.keys["read"]) as ws:  # a program, its key in the header
            docs, code = _ended(ws)
        assert code == 1000 and docs[-1]["type"] == "timeline", docs
        with connect(keyed_svc.ws, open_timeout=60) as ws:  # one more browser waiting: try later
            docs, code = _rest(ws)
        assert code == 1013 and [d["code"] for d in docs] == ["busy"], docs
        assert "key" in docs[0]["message"]
    finally:
        for ws in waiting:
            ws.close()
    _wait_metric(keyed_svc, "speakerdb_streams_open", 0)
    with connect(keyed_svc.ws, open_timeout=60) as ws:  # and a browser gets in again
        ws.send(json.dumps({"type": "auth", "key": keyed_svc.keys["read"]}))
        docs, code = _ended(ws)
    assert code == 1000 and docs[-1]["type"] == "timeline", docs


def test_a_key_revoked_while_its_stream_runs_is_closed_and_enrolls_nothing(keyed_svc):
    """Revoking a key reaches every worker's next request, and now its open streams too: they
    were kept (listening, and enrolling for a write key) up to --max-stream-s, 4 h."""
    admin = keyed_svc.keys["admin"]
    status, _, doc = keyed_svc.call("POST", "/v1/keys", key=admin, body={"name": "leaked", "scope": "write"})
    assert status == 201, doc
    docs: list[dict] = []
    with _open(keyed_svc, key=doc["key"]) as ws:
        ws.send(_pcm16(voice(150, 0.5)))
        status, _, gone = keyed_svc.call("DELETE", "/v1/keys/leaked", key=admin)
        assert status == 200 and not gone["active"], gone
        try:
            for _ in range(30):  # 3 s of audio, in real time
                ws.send(_pcm16(voice(150, 0.1)))
                time.sleep(0.1)
            ws.send(json.dumps({"type": "enroll", "label": "unknown-1", "name": "mallory"}))
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        docs, code = _rest(ws)
    assert code == 1008, docs
    assert [d["code"] for d in docs if d["type"] == "error"] == ["unauthorized"], docs
    assert not [d for d in docs if d["type"] in ("enrolled", "timeline")], docs
    names = [s["name"] for s in keyed_svc.call("GET", "/v1/speakers", key=admin)[2]]
    assert "mallory" not in names


def test_one_key_holds_at_most_max_streams_per_key(tmp_path, tiny_checkpoint):
    """One key (a read key of one gallery) could open every live stream of a worker and keep every
    other key, of any gallery, out."""
    srv = _keyed(tmp_path, tiny_checkpoint, "--max-streams-per-key", "2")
    try:
        held = [_open(srv, key=srv.keys["read"]) for _ in range(2)]
        try:
            for ws in held:
                ws.send(_pcm16(voice(150, 0.1)))
            _wait_metric(srv, "speakerdb_streams_open", 2)
            with _open(srv, key=srv.keys["read"]) as ws:
                docs, code = _rest(ws)
            assert code == 1013 and [d["code"] for d in docs] == ["busy"], docs
            assert "'read'" in docs[0]["message"] and "per key" in docs[0]["message"], docs
            with _open(srv, key=srv.keys["other"]) as ws:  # another key still gets the worker's last place
                docs, code = _ended(ws)
            assert code == 1000 and docs[-1]["type"] == "timeline", docs
        finally:
            for ws in held:
                ws.close()
        _wait_metric(srv, "speakerdb_streams_open", 0)
        with _open(srv, key=srv.keys["read"]) as ws:  # its places come back as its streams end
            docs, code = _ended(ws)
        assert code == 1000 and docs[-1]["type"] == "timeline", docs
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()


def _closed_within(ws, seconds: float) -> bool:
    """Whether the server closes ``ws`` within ``seconds``; the client's reading thread sees the
    close frame, and what came before it stays queued for :func:`_rest`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ws.protocol.close_rcvd is not None:
            return True
        time.sleep(0.05)
    return False


def test_a_key_sent_after_a_keyless_stream_began_takes_its_keys_place(tmp_path, tiny_checkpoint):
    """A browser's key as the first message, on a stream let in without one (the database had no
    key yet): its place was counted as keyless, and the key then held more streams than
    --max-streams-per-key on that worker."""
    db_path = tmp_path / "later.sqlite"
    SpeakerDB(db_path, model=str(tiny_checkpoint)).close()
    srv = Server(db_path, tiny_checkpoint, tmp_path / "later.log", "--max-streams-per-key", "1", "--stream-idle-s", "5")
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    srv.start()
    try:
        streams = [connect(srv.ws, open_timeout=60) for _ in range(2)]  # no key: none exists yet
        try:
            _wait_metric(srv, "speakerdb_streams_open", 2)
            with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:  # a key made meanwhile
                key = db.create_key("late", "read").key
            for ws in streams:
                ws.send(json.dumps({"type": "auth", "key": key}))
            _wait_metric(srv, "speakerdb_streams_open", 1)  # one of the two, whichever came second, refused
            refused = [ws for ws in streams if _closed_within(ws, 2.0)]
            assert len(refused) == 1, refused
            [kept] = [ws for ws in streams if ws is not refused[0]]
            second, second_code = _rest(refused[0])
            first, first_code = _ended(kept)
        finally:
            for ws in streams:
                ws.close()
        assert first_code == 1000 and first[-1]["type"] == "timeline", first
        assert second_code == 1013 and [d["code"] for d in second] == ["busy"], second
        assert "'late'" in second[0]["message"] and "per key" in second[0]["message"], second
        _wait_metric(srv, "speakerdb_streams_open", 0)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()


def test_the_machines_own_names_are_loopback_fully_qualified_too():
    """A browser opening http://localhost.:8000/ (the fully qualified name, which no DNS server
    can point elsewhere for a browser either) sends it as it was typed: it was refused."""
    from speakerdb.service.auth import keyless_refusal, loopback_name

    for host in ("localhost.", "localhost.:8000", "LocalHost.:8000", "app.localhost.:8000", "127.0.0.1.:8000"):
        assert loopback_name(host), host
        assert keyless_refusal(host, f"http://{host.lower()}") is None, host
    assert loopback_name("[::1]:8000") and loopback_name("[::1]")
    for host in ("localhost..", "evil.example.", "localhost.evil.example.:8000", ".:8000", "", "[::1]evil", "[::1]:x"):
        assert not loopback_name(host), host


def test_the_short_forms_of_a_loopback_address_are_loopback_and_nothing_else_is(open_svc):
    """Python's clients send the Host as it was typed: ``http://127.1:8000/`` reached
    the keyless service and was refused 403. The forms inet_aton(3) reads as a 127/8 address are
    loopback (browsers write them as 127.0.0.1 themselves); a name that is no such address is one
    DNS resolves, which a rebinding site may point at 127.0.0.1: still refused."""
    from speakerdb.service.auth import loopback_name
    from speakerdb.service.client import Client

    port = open_svc.port
    for name in ("127.1", "127.0.1", "2130706433", "0x7f.1", "0X7F.1", "0177.0.0.1", "0x7f000001", "127.0x1.1"):
        assert loopback_name(name) and loopback_name(f"{name}:{port}"), name
    assert [s.name for s in Client(f"http://127.1:{port}").list()] == ["dora"]
    status, _, doc = open_svc.call("GET", "/v1/speakers", headers={"Host": f"0x7f.1:{port}"})
    assert status == 200 and [s["name"] for s in doc] == ["dora"], doc
    for name in (
        "127.1.evil",  # a name under 1.evil, which DNS resolves
        "0x7f.1.",  # inet_aton takes no trailing dot: a client resolves it through DNS
        "127.1.",
        "127.1 evil",  # glibc's inet_aton ignores what follows a space
        "127\t.1",  # (around the whole value, whitespace is HTTP's, stripped)
        "127.1\n.evil",
        "127..1",
        "127.0.0.0.1",
        "4294967296",  # overflows 32 bits (inet_aton refuses it; it is no 0.0.0.0 nor 127/8)
        "6442450944",  # 0x180000000: 127/8 only in its low 32 bits
        "127.16777216",  # past the 24 bits left to the last part
        "383.1",  # 0x17f: past a byte
        "0x17f.1",
        "0127.0.0.1",  # octal: 87.0.0.1
        "08.1",
        "0x.1",
        "2147483648",  # 128.0.0.0
        "0x7e.1",
        "[127.1]",
        "1" * 5000,
        "１２７.1",  # full-width digits
        "127.١",  # an Arabic-Indic one
    ):
        assert not loopback_name(name) and not loopback_name(f"{name}:{port}"), name
    status, _, doc = open_svc.call("GET", "/v1/speakers", headers={"Host": f"127.1.evil:{port}"})
    assert status == 403 and doc["error"]["code"] == "forbidden", doc
