"""``WebSocket /v1/stream`` (issue 23 items 2, 4 and 6) against a real ``speakerdb serve``: the
protocol's messages and events, both ways of sending a key, both scopes, every limit, hostile
frames, clients that vanish, concurrent sessions, telephony audio, and ``Client.stream``.

One server serves the module (tests/test_server.py's ``Server``), with small limits so that the
tests are quick. Its model is the pretrained GE2E encoder when installed (``.[resemblyzer]``),
else the tiny random checkpoint; the tests that need speech (VAD finds none in synthetic tones)
stream LibriSpeech excerpts and are skipped without them or without GE2E.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from builders import trim
from conftest import SR, voice
from speakerdb import SpeakerDB
from speakerdb.audio import decode as audio
from speakerdb.errors import AuthenticationError, PermissionDeniedError, ServiceError, SpeakerExistsError
from speakerdb.results import EnrolledEvent, SpeechEvent, VoiceEvent
from speakerdb.service.client import Client
from test_server import Server

LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "test-other"
try:
    import resemblyzer  # noqa: F401

    GE2E = True
except ImportError:
    GE2E = False
needs_speech = pytest.mark.skipif(
    not (GE2E and LIBRISPEECH.is_dir()),
    reason=f"needs the GE2E encoder (.[resemblyzer]) and LibriSpeech excerpts at {LIBRISPEECH}",
)

MAX_STREAMS = 8
IDLE_S = 3.0
MAX_STREAM_S = 40.0
MAX_FRAME_KB = 64
AUTH_S = 5.0  # the protocol's: a browser's key as the first message within 5 s


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_checkpoint):
    """One worker with keys (admin, write, read) and small stream limits."""
    d = tmp_path_factory.mktemp("stream")
    db_path = d / "stream.sqlite"
    model = "resemblyzer" if GE2E else str(tiny_checkpoint)
    with SpeakerDB(db_path, model=model) as db:
        keys = {scope: db.create_key(scope, scope).key for scope in ("admin", "write", "read")}
    srv = Server(
        db_path,
        Path(model),
        d / "server.log",
        "--max-streams",
        str(MAX_STREAMS),
        "--stream-idle-s",
        str(IDLE_S),
        "--max-stream-s",
        str(MAX_STREAM_S),
        "--max-frame-kb",
        str(MAX_FRAME_KB),
    )
    srv.keys = keys
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text()


def _open(svc, query: str = "", key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(svc.ws + (f"?{query}" if query else ""), additional_headers=headers, max_queue=None, open_timeout=60)


def _rest(ws, timeout: float = 120) -> tuple[list[dict], int | None]:
    """Every message until the server closes: (the JSON documents, the close code)."""
    docs = []
    try:
        while True:
            docs.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        pass
    return docs, ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


def _refused(svc, query: str = "", key: str | None = None, send=()) -> tuple[dict, int | None]:
    """Send ``send`` (bytes or JSON-able); the one error event and the close code that follow."""
    with _open(svc, query, key) as ws:
        try:
            for m in send:
                ws.send(m if isinstance(m, (bytes, str)) else json.dumps(m))
        except ConnectionClosed:
            pass
        docs, code = _rest(ws)
    errors = [d for d in docs if d["type"] == "error"]
    assert len(errors) == 1 and set(errors[0]) <= {"type", "code", "message", "at"}, docs
    return errors[0], code


def _metric(svc, name: str, labels: str = "") -> float:
    _, _, text = svc.call("GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else text
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_metric(svc, name: str, value: float, labels: str = "", within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while _metric(svc, name, labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} is {_metric(svc, name, labels)}, not {value}"
        time.sleep(0.1)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


# ---- auth ---------------------------------------------------------------------------------------
def test_a_key_by_header_or_first_message_and_never_in_the_url(svc):
    for key in (svc.keys["read"], svc.keys["admin"]):  # a read key listens
        with _open(svc, key=key) as ws:
            ws.send(_pcm16(voice(150, 0.5)))
            ws.send(json.dumps({"type": "end"}))
            docs, code = _rest(ws)
        assert code == 1000 and docs[-1]["type"] == "timeline", docs
    # A browser: the key as the first message.
    with _open(svc) as ws:
        ws.send(json.dumps({"type": "auth", "key": svc.keys["read"]}))
        ws.send(_pcm16(voice(150, 0.5)))
        ws.send(json.dumps({"type": "end"}))
        docs, code = _rest(ws)
    assert code == 1000 and docs[-1]["type"] == "timeline", docs
    assert set(docs[-1]) == {"type", "file", "duration", "segments", "voices", "notes"} or "error" in docs[-1]

    error, code = _refused(svc, key="sdb_0000000000000000_wrong")
    assert (error["code"], code) == ("unauthorized", 1008)
    error, code = _refused(svc, send=[{"type": "auth", "key": "sdb_0000000000000000_wrong"}])
    assert (error["code"], code) == ("unauthorized", 1008)
    error, code = _refused(svc, send=[_pcm16(voice(150, 0.1))])  # audio before the key
    assert (error["code"], code) == ("unauthorized", 1008)
    error, code = _refused(svc, f"key={svc.keys['read']}")
    assert (error["code"], code) == ("invalid_input", 1008) and "URL" in error["message"]
    # A key reaches its own gallery's stream only (/v1/galleries/{gallery}/stream), whether or
    # not the other gallery exists.
    with connect(
        svc.ws.replace("/v1/stream", "/v1/galleries/acme/stream"),
        open_timeout=60,
        additional_headers={"Authorization": f"Bearer {svc.keys['admin']}"},
    ) as ws:
        docs, code = _rest(ws)
    assert code == 1008 and [d["code"] for d in docs] == ["gallery_not_found"], docs
    # An auth message after the key came by header is a message out of place.
    error, code = _refused(svc, key=svc.keys["read"], send=[{"type": "auth", "key": svc.keys["read"]}])
    assert (error["code"], code) == ("invalid_message", 1008)


def test_a_browser_that_sends_no_key_is_closed_after_five_seconds(svc):
    began = time.monotonic()
    error, code = _refused(svc)
    waited = time.monotonic() - began
    assert (error["code"], code) == ("unauthorized", 1008)
    assert AUTH_S - 0.2 <= waited < AUTH_S + 4, waited


def test_a_read_key_listens_but_cannot_enroll(svc):
    with _open(svc, key=svc.keys["read"]) as ws:
        ws.send(_pcm16(voice(150, 0.5)))
        ws.send(json.dumps({"type": "enroll", "label": "unknown-1", "name": "mallory"}))
        ws.send(json.dumps({"type": "enroll", "label": "unknown-1", "name": "mallory", "add": True}))
        ws.send(json.dumps({"type": "end"}))  # the session goes on after a refused enrollment
        docs, code = _rest(ws)
    assert [d["code"] for d in docs if d["type"] == "error"] == ["forbidden", "forbidden"]
    assert code == 1000 and docs[-1]["type"] == "timeline"
    # A write key may; a label nobody was heard under is an error of that enrollment only.
    with _open(svc, key=svc.keys["write"]) as ws:
        ws.send(json.dumps({"type": "enroll", "label": "unknown-7", "name": "mallory"}))
        ws.send(json.dumps({"type": "end"}))
        docs, code = _rest(ws)
    assert [d["code"] for d in docs if d["type"] == "error"] == ["invalid_input"], docs
    assert code == 1000 and docs[-1]["type"] == "timeline"
    assert "mallory" not in [s["name"] for s in svc.call("GET", "/v1/speakers", key=svc.keys["read"])[2]]


def test_without_keys_only_pages_of_the_services_own_origin_may_connect(tmp_path, tiny_checkpoint):
    """A loopback service that never had a key: any page a browser shows could open a WebSocket
    to it (no CORS for WebSockets), so a page of another origin is refused; programs (no Origin)
    and the service's own pages are not, and a key sent anyway must be valid."""
    srv = Server(tmp_path / "open.sqlite", tiny_checkpoint, tmp_path / "open.log")
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    srv.start()
    try:
        own = f"http://127.0.0.1:{srv.port}"
        for origin in (None, own):
            with connect(srv.ws, origin=origin, open_timeout=60) as ws:
                ws.send(json.dumps({"type": "end"}))
                docs, code = _rest(ws)
            assert code == 1000 and docs[-1]["type"] == "timeline", docs
        with connect(srv.ws, origin="https://evil.example", open_timeout=60) as ws:
            docs, code = _rest(ws)
        assert code == 1008 and docs[0]["code"] == "forbidden", docs
        error, code = _refused(srv, send=[{"type": "auth", "key": "sdb_0000000000000000_wrong"}])
        assert (error["code"], code) == ("unauthorized", 1008)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()


# ---- hostile input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, send, code, close",
    [
        ("", [b"\x01\x02\x03"], "bad_audio", 1007),  # pcm_s16le: an odd byte count
        ("encoding=f32le", [np.array([0.1, np.nan], "<f4").tobytes()], "bad_audio", 1007),
        ("encoding=f32le", [np.array([np.inf], "<f4").tobytes()], "bad_audio", 1007),
        ("encoding=f32le", [b"\x00" * 6], "bad_audio", 1007),  # not whole 4-byte samples
        ("", ["not json"], "invalid_message", 1003),
        ("", [{"type": "dance"}], "invalid_message", 1008),
        ("", [[1, 2]], "invalid_message", 1008),
        ("", [{"kind": "end"}], "invalid_message", 1008),
        ("", [{"type": "end", "now": True}], "invalid_message", 1008),
        ("", [{"type": "enroll", "label": "unknown-1"}], "invalid_message", 1008),
        ("", [{"type": "enroll", "label": 1, "name": "x"}], "invalid_message", 1008),
        ("", [{"type": "enroll", "label": "unknown-1", "name": "x", "add": "yes"}], "invalid_message", 1008),
        ("", ["[" * 100_000], "too_large", 1009),  # longer than any message (and deep)
        ("", [b"\x00" * (MAX_FRAME_KB * 1024 + 2)], "too_large", 1009),
        ("sample_rate=7999", [], "invalid_input", 1008),
        ("sample_rate=48001", [], "invalid_input", 1008),
        ("sample_rate=abc", [], "invalid_input", 1008),
        ("encoding=mp3", [], "invalid_input", 1008),
        ("threshold=nan", [], "invalid_input", 1008),
    ],
    ids=lambda v: str(v)[:30],
)
def test_hostile_input_is_an_error_event_and_a_close_never_a_traceback(svc, query, send, code, close):
    error, got = _refused(svc, query, svc.keys["admin"], send)
    assert (error["code"], got) == (code, close), error
    assert "Traceback" not in svc.log.read_text()


# ---- limits ------------------------------------------------------------------------------------------
def test_one_stream_more_than_the_limit_is_told_to_try_again_later(svc):
    refused = _metric(svc, "speakerdb_streams_total", '{outcome="refused"}')
    held = [_open(svc, key=svc.keys["read"]) for _ in range(MAX_STREAMS)]
    try:
        for ws in held:
            ws.send(_pcm16(voice(150, 0.1)))
        _wait_metric(svc, "speakerdb_streams_open", MAX_STREAMS)
        error, code = _refused(svc, key=svc.keys["read"])
        assert (error["code"], code) == ("busy", 1013)
        assert _metric(svc, "speakerdb_streams_total", '{outcome="refused"}') == refused + 1
    finally:
        for ws in held:
            ws.close()
    _wait_metric(svc, "speakerdb_streams_open", 0)
    held = [_open(svc, key=svc.keys["read"]) for _ in range(MAX_STREAMS)]
    try:  # the client says so too
        for ws in held:
            ws.send(_pcm16(voice(150, 0.1)))
        _wait_metric(svc, "speakerdb_streams_open", MAX_STREAMS)
        with pytest.raises(ServiceError) as e, Client(svc.url, svc.keys["read"]) as c:
            c.stream().finish()
        assert e.value.code == "busy" and e.value.status == 503
    finally:
        for ws in held:
            ws.close()
    _wait_metric(svc, "speakerdb_streams_open", 0)


def test_a_stream_without_audio_is_closed_after_the_idle_limit(svc):
    began = time.monotonic()
    with _open(svc, key=svc.keys["read"]) as ws:
        ws.send(_pcm16(voice(150, 0.2)))
        ws.send(json.dumps({"type": "enroll", "label": "unknown-1", "name": "x"}))  # not audio: no reprieve
        docs, code = _rest(ws)
    assert IDLE_S - 0.2 <= time.monotonic() - began < IDLE_S + 5
    assert code == 1008 and [d["code"] for d in docs if d["type"] == "error"][-1] == "idle", docs


def _trickle(svc, query: str, frame: bytes, results: dict, name: str) -> None:
    """``frame`` every 0.2 s until the server closes (or for twice the idle limit): in
    ``results[name]``, (seconds from the first frame to the close, error codes, close code)."""
    with _open(svc, query, svc.keys["read"]) as ws:
        began = time.monotonic()
        try:
            while time.monotonic() - began < 2 * IDLE_S + 2:
                ws.send(frame)
                time.sleep(0.2)
            results[name] = (None, [], None)  # still open
            return
        except ConnectionClosed:
            pass
        docs, code = _rest(ws)
    results[name] = (time.monotonic() - began, [(d["code"], d["message"]) for d in docs if d["type"] == "error"], code)


def _real_time(svc, results: dict) -> None:
    """0.1 s frames at the pace of their audio for 2.5 idle limits, then end."""
    x = voice(150, 2.5 * IDLE_S)
    step = SR // 10
    with _open(svc, key=svc.keys["read"]) as ws:
        began = time.monotonic()
        try:
            for k, start in enumerate(range(0, len(x), step)):
                time.sleep(max(0.0, began + k * 0.1 - time.monotonic()))
                ws.send(_pcm16(x[start : start + step]))
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        docs, code = _rest(ws)
    results["real time"] = (
        time.monotonic() - began,
        [(d["code"], d["message"]) for d in docs if d["type"] == "error"],
        code,
        docs[-1]["type"],
    )


def test_a_trickle_of_frames_is_closed_after_the_idle_limit_and_audio_in_real_time_is_not(svc):
    """A frame restarts the idle limit only with a sample of audio in it, and the audio must keep
    up with the clock: empty frames, and frames of one sample (a byte of mu-law, two of 16-bit
    PCM), every 0.2 s held a place among --max-streams until --max-stream-s. A stream sending
    audio in real time beside them stays open past the idle limit twice over."""
    results: dict = {}
    threads = [
        threading.Thread(target=_trickle, args=(svc, "", b"", results, "empty")),
        threading.Thread(target=_trickle, args=(svc, "sample_rate=8000&encoding=mulaw", b"\xff", results, "mulaw")),
        threading.Thread(target=_trickle, args=(svc, "", b"\x00\x01", results, "pcm")),
        threading.Thread(target=_real_time, args=(svc, results)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, errors, code = results["empty"]
    assert code == 1008 and errors == [("idle", f"no audio for {IDLE_S:g} s: the stream is closed")], results
    assert IDLE_S - 0.5 <= elapsed < IDLE_S + 1.5, results
    for name in ("mulaw", "pcm"):
        elapsed, errors, code = results[name]
        assert code == 1008 and [c for c, _ in errors] == ["idle"], results
        assert errors[0][1].startswith(f"the audio fell more than {IDLE_S:g} s behind real time"), results
        assert IDLE_S - 0.5 <= elapsed < IDLE_S + 1.5, results
    elapsed, errors, code, last = results["real time"]
    assert code == 1000 and errors == [] and last == "timeline", results
    assert elapsed >= 2.5 * IDLE_S - 0.2, results


def test_a_stream_past_its_length_gets_its_timeline_and_a_close(svc):
    frame = _pcm16(np.zeros(SR, np.float32))  # 1 s of silence, sent faster than real time
    with _open(svc, key=svc.keys["read"]) as ws:
        try:
            for _ in range(int(MAX_STREAM_S) + 5):
                ws.send(frame)
        except ConnectionClosed:
            pass
        docs, code = _rest(ws)
    assert code == 1008
    assert [d["type"] for d in docs][-2:] == ["error", "timeline"], docs
    assert docs[-2]["code"] == "stream_too_long"
    assert docs[-1].get("duration") == MAX_STREAM_S or docs[-1].get("error"), docs[-1]


def test_a_client_that_vanishes_frees_its_session_at_once(svc):
    gone = _metric(svc, "speakerdb_stream_closes_total", '{code="1006"}')
    ws = _open(svc, key=svc.keys["read"])
    ws.send(_pcm16(voice(150, 1.0)))
    _wait_metric(svc, "speakerdb_streams_open", 1)
    ws.socket.close()  # no close frame: the TCP connection just ends
    _wait_metric(svc, "speakerdb_streams_open", 0, within_s=IDLE_S - 0.5)  # before the idle limit
    assert _metric(svc, "speakerdb_stream_closes_total", '{code="1006"}') == gone + 1


def _raw_stream(svc, key: str) -> socket.socket:
    """A WebSocket to /v1/stream opened by hand, with a small receive buffer (no autotuning):
    a client that sends and never reads, not even pings, fills the buffers between quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", svc.port))
    nonce = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{svc.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)  # not a byte past the handshake: the events are never read
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked WebSocket frame (RFC 6455 5.2), with a zero mask: the payload as it is."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + size + bytes(4) + payload


def _server_holds(svc, client_port: int) -> bool:
    """Whether the server process still holds its socket of the connection from ``client_port``
    (Linux: /proc/net/tcp; a socket the process has closed has inode 0, or is gone)."""
    ports = (f"0100007F:{svc.port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == ports and fields[9] != "0":
            return True
    return False


def _never_reading(srv, key: str, frame_s: float) -> tuple[socket.socket, list[float]]:
    """A stream whose client sends ``frame_s`` of audio and an enroll, over and over, from a
    thread, and reads nothing; the times its sends returned. Events of 60 kB fill the buffers
    in a second: the error for a label not heard quotes it."""
    sock = _raw_stream(srv, key)
    enroll = json.dumps({"type": "enroll", "label": "u" * 60_000, "name": "x"}).encode()
    message = _client_frame(0x2, _pcm16(voice(150, frame_s))) + _client_frame(0x1, enroll)
    sent: list[float] = []

    def send() -> None:
        try:
            while True:
                sock.sendall(message)  # audio with each: the stream is never idle for want of it
                sent.append(time.monotonic())
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    return sock, sent


def _hang_up(sock: socket.socket) -> None:
    """End the connection: shutdown first wakes the thread blocked sending (a close alone would
    leave the socket open under it)."""
    with contextlib.suppress(OSError):  # reset by the server already
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _stalled(sent: list[float]) -> float:
    """When the client's sends stalled: blocked on its own send, the server reads no more."""
    deadline = time.monotonic() + 20
    while not sent or time.monotonic() - sent[-1] < 0.5:
        assert time.monotonic() < deadline, "the server kept reading: its sends never blocked"
        time.sleep(0.1)
    return sent[-1]


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads /proc/net/tcp (Linux)")
def test_a_client_that_never_reads_its_events_is_dropped_after_the_idle_limit(svc):
    """A client that sends audio but reads nothing: once the buffers between are full, the
    server's send waits, and it used to wait for ever (seen: still open after 65 s with
    --stream-idle-s 3 and --max-stream-s 40), holding the session, its place among the key's
    and the worker's, and the connection; uvicorn's keepalive ping (20 s, 20 s) did not end it,
    as its close waits to write out what the client never reads. Now a send not taken within
    --stream-idle-s ends the stream, and the connection is dropped within as long again."""
    closed = _metric(svc, "speakerdb_stream_closes_total", '{code="1008"}')
    sock, sent = _never_reading(svc, svc.keys["write"], frame_s=0.1)
    client_port = sock.getsockname()[1]
    try:
        _wait_metric(svc, "speakerdb_streams_open", 1)
        stalled = _stalled(sent)
        _wait_metric(svc, "speakerdb_streams_open", 0, within_s=IDLE_S + 2)
        assert IDLE_S - 0.5 <= time.monotonic() - stalled, "closed before its send had waited the idle limit"
        assert _metric(svc, "speakerdb_stream_closes_total", '{code="1008"}') == closed + 1
        # The connection (its socket, the events it never read) goes too, within the idle limit again.
        deadline = time.monotonic() + IDLE_S + 2
        while _server_holds(svc, client_port):
            assert time.monotonic() < deadline, "the server still holds the connection"
            time.sleep(0.1)
    finally:
        _hang_up(sock)


def test_a_client_that_never_reads_holds_its_keys_place_no_longer_than_a_stream_lasts(tmp_path, tiny_checkpoint):
    """The limits hold while a send waits: with an idle limit of 30 s, a stream whose client
    reads nothing still ends at --max-stream-s (4 s), and gives its key's one place back."""
    db_path = tmp_path / "never-reads.sqlite"
    with SpeakerDB(db_path, model=str(tiny_checkpoint)) as db:
        key = db.create_key("write", "write").key
    srv = Server(
        db_path,
        tiny_checkpoint,
        tmp_path / "server.log",
        "--max-streams-per-key",
        "1",
        "--max-stream-s",
        "4",
        "--stream-idle-s",
        "30",
    )
    srv.ws = srv.url.replace("http://", "ws://") + "/v1/stream"
    srv.start()
    try:
        began = time.monotonic()
        sock, sent = _never_reading(srv, key, frame_s=0.005)  # little audio: the stream's length is its time
        try:
            _wait_metric(srv, "speakerdb_streams_open", 1)
            _stalled(sent)
            error, code = _refused(srv, key=key)
            assert (error["code"], code) == ("busy", 1013), error  # the key's one place is held
            _wait_metric(srv, "speakerdb_streams_open", 0, within_s=began + 6 - time.monotonic())
            assert time.monotonic() - began >= 3.5
        finally:
            _hang_up(sock)
        with _open(srv, key=key) as ws:  # the key's place is back
            ws.send(_pcm16(voice(150, 0.5)))
            ws.send(json.dumps({"type": "end"}))
            docs, code = _rest(ws)
        assert code == 1000 and docs[-1]["type"] == "timeline", docs
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()


# ---- speech ------------------------------------------------------------------------------------------
def _utterance(speaker: str, k: int, seconds: float) -> np.ndarray:
    files = sorted((LIBRISPEECH / speaker).glob("*.flac"))
    return trim(audio.load(files[k]).samples)[: int(seconds * SR)]


def _segments(t: dict) -> list[tuple[float, float, str]]:
    return [(round(s["start"], 2), round(s["end"], 2), s["label"]) for s in t["segments"]]


def _offline(svc, tmp_path: Path, clips: dict[str, np.ndarray]) -> dict[str, dict]:
    """``timeline --json`` of each clip as a 16-bit WAV file, from the same service."""
    files = []
    for name, x in clips.items():
        sf.write(str(tmp_path / f"{name}.wav"), x, SR, subtype="PCM_16")
        files.append(("files", f"{name}.wav", (tmp_path / f"{name}.wav").read_bytes()))
    status, _, doc = svc.call("POST", "/v1/timeline", key=svc.keys["read"], files=files)
    assert status == 200, doc
    return {name: t for name, t in zip(clips, doc)}


def _as_pcm16_floats(x: np.ndarray) -> np.ndarray:
    return np.frombuffer(_pcm16(x), "<i2").astype(np.float32) / 32768


@needs_speech
def test_a_conversation_in_20_ms_frames_ends_with_the_offline_timeline(svc, tmp_path):
    gap = np.zeros(int(0.6 * SR), np.float32)
    x = np.concatenate([_utterance("1688", 0, 4), gap, _utterance("3005", 0, 4), gap, _utterance("1688", 1, 4)])
    x = _as_pcm16_floats(x)
    offline = _offline(svc, tmp_path, {"conversation": x})["conversation"]
    data = _pcm16(x)
    with _open(svc, "sample_rate=16000&encoding=pcm_s16le", svc.keys["read"]) as ws:
        for i in range(0, len(data), 640):  # 20 ms
            ws.send(data[i : i + 640])
        ws.send(json.dumps({"type": "end"}))
        docs, code = _rest(ws)
    assert code == 1000
    events, timeline = docs[:-1], docs[-1]
    assert timeline["type"] == "timeline"
    assert _segments(timeline) == _segments(offline) and len(offline["segments"]) >= 3, (timeline, offline)
    assert timeline["voices"] == offline["voices"]
    kinds = {e["type"] for e in events}
    assert kinds == {"speech", "voice"}, kinds
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert all(0 <= e["at"] <= len(x) / SR + 1e-6 for e in events)
    voices = [e for e in events if e["type"] == "voice"]
    assert set(voices[0]) == {"type", "start", "end", "label", "speaker", "score", "final", "at"}
    assert any(not v["final"] for v in voices) and any(v["final"] for v in voices)
    finals = [(v["start"], v["end"], v["label"]) for v in voices if v["final"]]
    assert {label for _, _, label in finals} == {s["label"] for s in offline["segments"]}


@needs_speech
def test_a_voice_enrolled_from_a_session_is_named_later_in_it_and_by_identify(svc, tmp_path):
    with Client(svc.url, svc.keys["write"]) as c:
        with c.stream(sample_rate=16000, encoding="f32") as live:
            events = live.feed(_utterance("2609", 0, 6))
            events += live.feed(np.zeros(SR, np.float32))
            enrolled = live.enroll("unknown-1", "dave")
            assert enrolled == EnrolledEvent("unknown-1", "dave", enrolled.at) and enrolled.at == live.seconds_fed
            events += live.feed(np.zeros(SR // 2, np.float32))
            later = live.feed(_utterance("2609", 1, 6)) + live.finish()
            timeline = live.close()
        assert all(isinstance(e, (SpeechEvent, VoiceEvent)) for e in events + later)
        named = [e for e in later if isinstance(e, VoiceEvent) and e.end > 9.0]  # the second utterance
        assert named and all(e.speaker == "dave" and e.label == "dave" for e in named), later
        assert timeline.segments and timeline.segments[-1].speaker == "dave"
        path = tmp_path / "dave.wav"
        sf.write(str(path), _utterance("2609", 2, 5), SR)
        [answer] = c.identify([path])
        assert answer.speaker == "dave"
        with c.stream() as again:  # dave is known now: his voice is named, and enrolling it again adds
            again.feed(_utterance("2609", 3, 4))
            with pytest.raises(SpeakerExistsError):
                again.enroll("dave", "dave")
            assert again.enroll("dave", "dave", add=True).name == "dave"
        assert c.show("dave").n_utterances == 2
    with Client(svc.url, svc.keys["admin"]) as admin:
        entries = [a for a in admin.audit(speaker="dave") if a.operation == "enroll"]
    assert [e.key_name for e in entries] == ["write", "write"]  # the stream's key, as for a file
    with Client(svc.url, svc.keys["read"]) as reader, reader.stream() as live:
        live.feed(_utterance("2609", 3, 3))
        with pytest.raises(PermissionDeniedError):
            live.enroll("dave", "dave", add=True)
    with pytest.raises(AuthenticationError), Client(svc.url, "sdb_0000000000000000_wrong") as bad:
        bad.stream().finish()


@needs_speech
def test_eight_concurrent_streams_mix_nothing(svc, tmp_path):
    speakers = sorted(p.name for p in LIBRISPEECH.iterdir())[:MAX_STREAMS]
    clips = {s: _as_pcm16_floats(_utterance(s, 0, 6)) for s in speakers}
    offline = _offline(svc, tmp_path, clips)
    got: dict[str, dict] = {}
    failures: list[BaseException] = []
    windows_before = _metric(svc, "speakerdb_stream_windows_total", '{count="windows"}')

    def one(speaker: str) -> None:
        try:
            data = clips[speaker].astype("<f4").tobytes()
            with _open(svc, "encoding=f32le", svc.keys["read"]) as ws:
                for i in range(0, len(data), 6400):  # 100 ms
                    ws.send(data[i : i + 6400])
                ws.send(json.dumps({"type": "end"}))
                docs, code = _rest(ws)
            assert code == 1000
            got[speaker] = docs[-1]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in speakers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for s in speakers:
        assert _segments(got[s]) == _segments(offline[s]), s
        assert got[s]["duration"] == offline[s]["duration"]
    assert _metric(svc, "speakerdb_stream_windows_total", '{count="windows"}') > windows_before


def _mulaw(x: np.ndarray) -> bytes:
    """G.711 mu-law bytes of float samples (the standard encoder: bias 0x84, clip 32635, inverted)."""
    s = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


@needs_speech
def test_telephony_8_khz_mu_law_frames(svc, tmp_path):
    import soxr

    x = np.concatenate([_utterance("1688", 2, 5), np.zeros(SR // 2, np.float32), _utterance("3005", 2, 5)])
    data = _mulaw(soxr.resample(x, SR, 8000).astype(np.float32))
    with _open(svc, "sample_rate=8000&encoding=mulaw", svc.keys["read"]) as ws:
        for i in range(0, len(data), 160):  # 20 ms at 8 kHz, one byte a sample
            ws.send(data[i : i + 160])
        ws.send(json.dumps({"type": "end"}))
        docs, code = _rest(ws)
    assert code == 1000
    events, timeline = docs[:-1], docs[-1]
    assert abs(timeline["duration"] - len(data) / 8000) < 0.01
    assert {e["type"] for e in events} == {"speech", "voice"}
    # What the library's own session makes of the same bytes (the service lost nothing on the way).
    with SpeakerDB(svc.db) as db:
        session = db.stream(sample_rate=8000, encoding="mulaw")
        for i in range(0, len(data), 160):
            session.feed(data[i : i + 160])
        local = session.close().to_dict()
    assert _segments(timeline) == _segments(local) and local["segments"]


# ---- windows of every caller in shared forward passes (item 5) ------------------------------------
class _Model:
    """An embedder that records each call's waveform lengths; a waveform of all 2s is refused."""

    dim = 4

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def embed(self, waveforms):
        self.calls.append([len(w) for w in waveforms])
        if any(np.all(w == 2) for w in waveforms):
            raise ValueError("nothing voice-like")
        return np.stack([np.full(self.dim, float(w[0])) for w in waveforms]).astype(np.float32)


def _lane():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1)


def test_windows_of_several_sessions_wait_for_one_call_on_the_lane():
    from speakerdb.service.lanes import CountingEmbedder

    model, lane = _Model(), _lane()
    shared = CountingEmbedder(model, lane.submit)
    gate = threading.Event()
    lane.submit(gate.wait)  # the lane is busy: sessions' windows gather meanwhile
    out: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda k=k: out.__setitem__(k, shared.embed_windows([np.full(8, k + 10.0)] * 2)))
        for k in range(3)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(shared._waiting) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join()
    assert model.calls == [[8] * 6]  # one call, every session's windows
    for k in range(3):
        assert out[k].shape == (2, 4) and np.all(out[k] == k + 10.0)
    assert (shared.windows_embedded, shared.window_passes) == (6, 1)
    assert shared.seconds == 6 * 8 / SR
    lane.shutdown()


def test_a_request_on_the_lane_takes_the_waiting_windows_into_its_call():
    from speakerdb.service.lanes import CountingEmbedder

    model, lane = _Model(), _lane()
    shared = CountingEmbedder(model, lane.submit)
    gate = threading.Event()
    lane.submit(gate.wait)
    # An identify's clips queued on the lane; a session's window comes while they wait: it
    # rides along in their call instead of waiting for the lane's queue.
    mine = lane.submit(shared.embed, [np.full(8, 1.0), np.full(16, 3.0)])
    got = []
    t = threading.Thread(target=lambda: got.append(shared.embed_windows([np.full(8, 7.0)])))
    t.start()
    while not shared._waiting:
        time.sleep(0.01)
    gate.set()
    t.join()
    assert np.all(mine.result() == np.array([[1.0] * 4, [3.0] * 4]))
    assert np.all(got[0] == 7.0)
    assert model.calls == [[8, 16, 8]]  # the queued drain found nothing left to do
    # A window the model refuses fails its own session, not the request it rode with.
    gate2 = threading.Event()
    lane.submit(gate2.wait)
    failed = []

    def bad() -> None:
        try:
            shared.embed_windows([np.full(8, 2.0)])
        except ValueError as e:
            failed.append(e)

    mine = lane.submit(shared.embed, [np.full(8, 1.0)])
    t = threading.Thread(target=bad)
    t.start()
    while not shared._waiting:
        time.sleep(0.01)
    gate2.set()
    t.join()
    assert np.all(mine.result() == 1.0) and len(failed) == 1
    lane.shutdown()


@needs_speech
def test_listen_through_the_service_prints_what_a_local_listen_prints(svc, tmp_path, monkeypatch):
    """`speakerdb --server URL listen FILE --json`: the events as JSON lines over /v1/stream,
    then the timeline the service's `timeline` gives for the file."""
    from click.testing import CliRunner

    from speakerdb.cli import cli

    gap = np.zeros(int(0.6 * SR), np.float32)
    x = _as_pcm16_floats(np.concatenate([_utterance("1688", 2, 3), gap, _utterance("3005", 2, 3)]))
    offline = _offline(svc, tmp_path, {"two": x})["two"]
    monkeypatch.setenv("SPEAKERDB_API_KEY", svc.keys["read"])
    r = CliRunner().invoke(cli, ["--server", svc.url, "listen", str(tmp_path / "two.wav"), "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[0]["type"] == "speech" and {d["type"] for d in lines[1:-1]} <= {"speech", "voice"}
    assert lines[-1]["type"] == "timeline" and _segments(lines[-1]) == _segments(offline)
