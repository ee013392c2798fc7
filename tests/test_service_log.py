"""The service's log keeps what finds a bug, never what a request carried: a 500's traceback,
and a live session's, name each exception's type and frames, not its message, which may hold
a speaker's name (``KeyError('Alice Smith')``, an IntegrityError's parameters).

The app runs in this process (uvicorn on a thread, the tiny random checkpoint), so that a
facade method can be made to fail and the log read with caplog.
"""

from __future__ import annotations

import builtins
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from speakerdb import SpeakerDB
from speakerdb.service.app import create_app
from speakerdb.service.settings import ServeConfig

NAME = "Alice Smith"
READY_TIMEOUT_S = 240  # importing torch and loading the model on a busy 2-core machine


class InProcess:
    """``create_app`` served by uvicorn on a thread of this process."""

    def __init__(self, config: ServeConfig) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # log_config=None: uvicorn's records reach caplog as the service's do.
        options = uvicorn.Config(create_app(config), host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(options)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> InProcess:
        self.thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise AssertionError(f"not ready after {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, tiny_checkpoint):
    """One worker, no keys (loopback), over an empty database."""
    d = tmp_path_factory.mktemp("service-log")
    with SpeakerDB(d / "log.sqlite", model=str(tiny_checkpoint)):
        pass
    server = InProcess(ServeConfig(db_path=str(d / "log.sqlite"), model=str(tiny_checkpoint), tmp_dir=str(d)))
    yield server.start()
    server.stop()


def _fails_naming_someone(*args, **kwargs):
    """What a bug deep in the facade may look like: a name in the message, and in its cause's."""
    try:
        raise ValueError(f"no row for {NAME!r}")
    except ValueError as e:
        raise KeyError(NAME) from e


def _assert_logged_without_the_name(caplog, what: str) -> None:
    text = caplog.text
    assert what in text, text
    assert NAME not in text and "no row for" not in text, text
    assert "KeyError" in text and "ValueError" in text, text  # the exception and its cause
    assert "_fails_naming_someone" in text and Path(__file__).name in text, text  # the frame that raised
    for record in caplog.records:
        assert NAME not in record.getMessage(), record.getMessage()


def test_a_500_logs_types_and_frames_never_the_messages(app_server, monkeypatch, caplog):
    monkeypatch.setattr(SpeakerDB, "show", _fails_naming_someone)
    caplog.set_level(logging.INFO)
    status, doc = app_server.get("/v1/speakers/Alice%20Smith")
    assert status == 500 and doc["error"]["code"] == "internal", doc
    assert NAME not in json.dumps(doc)
    _assert_logged_without_the_name(caplog, "unexpected error in GET /v1/speakers/{name}")
    # Logged once, by the service: not again by uvicorn with the messages.
    assert "Exception in ASGI application" not in caplog.text


def test_a_live_sessions_unexpected_error_logs_types_and_frames_never_the_messages(app_server, monkeypatch, caplog):
    monkeypatch.setattr(SpeakerDB, "stream", _fails_naming_someone)
    caplog.set_level(logging.INFO)
    docs = []
    with connect(f"ws://127.0.0.1:{app_server.port}/v1/stream", open_timeout=60) as ws:
        try:
            while True:
                docs.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed:
            pass
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
    assert [d["code"] for d in docs if d["type"] == "error"] == ["internal"] and code == 1011, (docs, code)
    assert NAME not in json.dumps(docs)
    _assert_logged_without_the_name(caplog, "unexpected error in WebSocket /v1/stream")


def test_serves_formatter_writes_any_loggers_traceback_without_messages():
    from speakerdb.service import serve

    try:
        _fails_naming_someone()
    except KeyError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (), sys.exc_info()
        )
    text = serve.MessageFreeFormatter("%(message)s").format(record)
    assert NAME not in text and "KeyError" in text and "_fails_naming_someone" in text, text
    # Another handler (a program's own, pytest's) formatting the record first caches its text,
    # messages and all, in the record: that cache is not reused.
    assert NAME in logging.Formatter("%(message)s").format(record)
    text = serve.MessageFreeFormatter("%(message)s").format(record)
    assert NAME not in text and "_fails_naming_someone" in text, text
    assert NAME in record.exc_text  # the other handler's cache is left as it was


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11's")
def test_describe_follows_the_chain_and_groups_without_messages():
    from speakerdb.service import tracebacks

    group_type = builtins.ExceptionGroup
    try:
        try:
            _fails_naming_someone()
        except KeyError as e:
            raise group_type(f"about {NAME}", [RuntimeError(NAME), e]) from None
    except group_type as group:
        text = tracebacks.describe(group)
    assert NAME not in text, text
    assert text.index("ExceptionGroup") < text.index("RuntimeError") < text.index("KeyError"), text
    assert "The above exception was the direct cause" in text and "ValueError" in text, text
