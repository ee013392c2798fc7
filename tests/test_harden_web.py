"""The web page's and the live stream's surfaces attacked as a hostile web page or a hostile
client would (docs/security.md, "The web page and live streams"), against real ``speakerdb
serve`` processes (tests/test_server.py's ``Server``) with the tiny random checkpoint.

- A loopback service that needs no key is reached by other sites' pages: through a name of
  theirs pointed at 127.0.0.1 (DNS rebinding), or by a form or WebSocket sent across origins.
"""

from __future__ import annotations

import json
import socket

import pytest
from websockets.sync.client import connect

from conftest import voice, write
from speakerdb import SpeakerDB
from test_server import Server
from test_stream import _rest


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
