"""What happens on a connection around the app: the outermost ASGI layer (:class:`Guard`),
uvicorn's HTTP protocol with deadlines on slow clients (:class:`TimedHTTPProtocol`), and its
WebSocket protocol, which drops a connection whose client reads nothing (:class:`TimedWebSocketProtocol`).

- **limits** checked before the app reads anything: request body size (413 before reading, or
  as soon as a chunked body passes it), the Content-Type of uploads (415), a URL that is not
  UTF-8 (400), and an upload's key (401 before its body is stored).
- **lingering close**: an answer given before the body was read stays open while the rest is
  read and thrown away, so that a client still sending reads the answer, not a reset.
- **slow clients**: headers and bodies that trickle in are cut off with 408 (slowloris).
- **metrics** and the **access log**: every answer is counted and logged here, whoever gave
  it; both name a request by its route's template (``/v1/speakers/{name}``), never by its
  path or query, which hold speaker names.
- **unexpected errors**: a 500 of one line for the client, and for the log the exception's
  types and frames without their messages (:mod:`.tracebacks`); nothing reaches uvicorn,
  which would log the whole traceback, messages and all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .auth import (
    CALLER_KEY,
    CHECKED_KEY,
    GALLERY_PREFIX,
    gallery_of_path,
    not_this_gallery,
    route_path,
)
from .responses import ApiError, error_response
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_STREAM_IDLE_S,
    ServeConfig,
)
from .tracebacks import log_error

# An answer given before the request's body was read (401, 413, 415) stays open this long while
# the rest of the body is read and thrown away. Closing at once, with unread bytes, makes the
# kernel reset the connection, and a client still sending (urllib, any ``Connection: close``
# client) then reports "connection reset" instead of the answer. nginx's lingering close.
LINGER_S = 10.0

ASGIApp = Any  # the app below (FastAPI's), called as ``app(scope, receive, send)``
Message = MutableMapping[str, Any]

#: One INFO line per request (``serve --no-access-log`` turns it off). uvicorn's own access log
#: wrote each request's path and query, and so the names of speakers, opted-out people included.
ACCESS_LOGGER = "speakerdb.access"
access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("speakerdb.server")


class _TooLarge(Exception):
    pass


class Guard:
    """Outermost layer: body size limit (413 before reading, or as soon as a chunked body passes
    it), Content-Type of uploads (415), and the request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config: ServeConfig | None = scope["app"].state.config if "app" in scope else None
        limit = config.max_upload_bytes if config else DEFAULT_MAX_UPLOAD_BYTES
        started = time.monotonic()
        status = {"code": 500, "sent": False, "over": False}

        async def send_direct(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        async def send_tracked(message: Message) -> None:
            if status["over"]:
                return  # the app's answer to a body cut short (FastAPI makes it a 400): ours is 413
            await send_direct(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        # Whether body bytes may still be on their way: none declared and not chunked means none.
        body = {"pending": declared > 0 or "chunked" in headers.get("transfer-encoding", "").lower()}

        async def reply(code: int, err: str, message: str, extra: dict[str, str] | None = None) -> None:
            response = error_response(code, err, message, extra)
            # A client that sent "Expect: 100-continue" waits for us and sends no body after a
            # final answer: nothing to read. Reading would even ask uvicorn to send the 100.
            if not body["pending"] or "100-continue" in headers.get("expect", "").lower():
                await response(scope, receive, send_direct)
                return
            await send_direct(
                {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
            )
            await send_direct({"type": "http.response.body", "body": response.body, "more_body": True})
            await discard_body(receive, LINGER_S)
            await send_direct({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            if not _url_is_utf8(scope):
                # uvicorn decodes the path with errors="replace": %FF and %FE would both become
                # U+FFFD and so name the same speaker. A name is text; these bytes are not.
                await reply(400, "invalid_input", "the URL is not valid UTF-8 once %-decoded")
                return
            service = getattr(scope["app"].state, "service", None) if "app" in scope else None
            refusal = None if service is None else service.keys.page_refusal(headers.get("host"), headers.get("origin"))
            if refusal is not None:  # another site's page, by its own name or by a form
                await reply(403, "forbidden", refusal)
                return
            if declared > limit:
                await reply(413, "too_large", f"request body of {declared:,} bytes, at most {limit:,} are accepted")
                return
            ctype = headers.get("content-type", "")
            if method == "POST" and _is_upload_path(scope["path"]) and not ctype.startswith("multipart/form-data"):
                await reply(
                    415,
                    "unsupported_media_type",
                    f"send audio as multipart/form-data parts (got Content-Type {ctype or 'none'!r})",
                )
                return
            if method == "POST" and _is_upload_path(scope["path"]) and service is not None:
                # The key before the body: a caller without a valid key is refused before it can
                # make this worker read (and store) up to --max-upload-mb. The route checks the
                # scope (403) as before; this only answers 401 early.
                try:
                    info = await asyncio.get_running_loop().run_in_executor(
                        None, service.keys.authenticate, headers.get("authorization")
                    )
                    # The route's scope check reuses it (request.state) instead of a second query.
                    scope.setdefault("state", {})[CHECKED_KEY] = (headers.get("authorization"), info)
                    if info is not None and info.gallery != gallery_of_path(scope["path"]):
                        raise not_this_gallery(gallery_of_path(scope["path"]))  # nor another gallery's
                except ApiError as e:
                    if e.status in (401, 404):
                        await reply(e.status, e.code, e.message, e.headers)
                        return
            if method in ("PUT", "PATCH") and not ctype.startswith("application/json"):
                await reply(415, "unsupported_media_type", f"send a JSON body (got Content-Type {ctype or 'none'!r})")
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    body["pending"] = bool(message.get("more_body", False))
                    received += len(message.get("body", b""))
                    if received > limit:
                        status["over"] = True
                        raise _TooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_tracked)
            except _TooLarge:
                pass
            except Exception as e:  # noqa: BLE001 - answered and logged here, never re-raised to uvicorn
                if not status["over"]:  # else the body cut short made it: a 413, no bug
                    # The route's template, not the path: a path holds speaker names.
                    log_error(log, f"unexpected error in {method} {path_template(scope)}", e)
                    if not status["sent"]:  # else the client sees the answer cut short
                        await reply(500, "internal", f"internal error ({type(e).__name__}); see the server log")
                    return
            if status["over"] and not status["sent"]:
                await reply(413, "too_large", f"request body over {limit:,} bytes")
        finally:
            elapsed = time.monotonic() - started
            service = getattr(scope["app"].state, "service", None) if "app" in scope else None
            if service is not None:
                service.metrics.observe(method, endpoint_label(scope), status["code"], elapsed)
            if config is not None and config.access_log:
                log_request(scope, method, status["code"], elapsed)


def endpoint_label(scope: Message) -> str:
    """The template of the route that answered (``/v1/info``, ``/v1/galleries/{gallery}/info``), or
    "unmatched": never the request's own path, so that the metrics' labels stay a fixed set."""
    route = scope.get("route")
    label = getattr(route, "path", None) or "unmatched"
    if id(route) in getattr(scope["app"].state, "mounted_routes", ()):  # a /v1 route, mounted twice
        label = ("/v1/galleries/{gallery}" if scope["path"].startswith(GALLERY_PREFIX) else "/v1") + label
    return label


def log_request(scope: Message, method: str, status: int, seconds: float) -> None:
    """The access log's line for one request: client, method, route template, status, time, the
    calling key's name (never its secret) and the gallery."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    state = scope.get("state") or {}
    key = state.get(CALLER_KEY)
    if key is None and state.get(CHECKED_KEY) is not None:  # an upload refused before its route ran
        info = state[CHECKED_KEY][1]
        key = info.name if info is not None else None
    access_log.info(
        '%s - "%s %s" %d %.1f ms key=%s gallery=%s',
        f"{client[0]}:{client[1]}" if client else "-",
        method,
        path_template(scope),
        status,
        seconds * 1000,
        key or "-",
        gallery_of_path(scope.get("path", "")),
    )


def path_template(scope: Message) -> str:
    """The request's path with no name in it: the template of the route that answered, else (a
    request refused before routing, or no route matched) the path with every segment that is
    not a word of the app's own routes replaced by ``{name}`` (``{gallery}`` after galleries/)."""
    label = endpoint_label(scope)
    if label != "unmatched":
        return label
    words: frozenset[str] = getattr(scope["app"].state, "route_words", frozenset()) if "app" in scope else frozenset()
    parts = scope.get("path", "").split("/")
    shown = []
    for i, part in enumerate(parts):
        if part in words or part == "":
            shown.append(part)
        else:
            shown.append("{gallery}" if i > 0 and parts[i - 1] == "galleries" else "{name}")
    return "/".join(shown)


def route_words(paths: list[str]) -> frozenset[str]:
    """The fixed segments of route templates (``v1``, ``speakers``, ``optout``...): what
    :func:`path_template` may show of a path that matched no route."""
    return frozenset(p for path in paths for p in path.split("/") if p and not p.startswith("{"))


async def discard_body(receive: Any, seconds: float) -> None:
    """Read and drop what is left of a request's body, for at most ``seconds``."""

    async def drain() -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(drain(), seconds)
    except asyncio.TimeoutError:
        pass  # a client still sending after this long gets its answer and a reset


def _url_is_utf8(scope: Message) -> bool:
    """Whether the request's path and query, %-decoded, are valid UTF-8 (as every name in them must be)."""
    for raw in (scope.get("raw_path") or b"", scope.get("query_string") or b""):
        try:
            urllib.parse.unquote_to_bytes(raw.decode("latin-1")).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _is_upload_path(path: str) -> bool:
    """Whether requests to ``path`` send files (multipart uploads), in any gallery."""
    path = route_path(path)
    return path in ("/v1/identify", "/v1/timeline", "/v1/gallery", "/v1/norm") or path.endswith(
        ("/enrollments", "/verify")
    )


# ---- slow clients ---------------------------------------------------------------------------
_TIMEOUT_BODY = json.dumps({"error": {"code": "timeout", "message": "the request was not received in time"}}).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


# AutoHTTPProtocol is httptools' protocol if installed, else h11's: a variable to mypy.
class TimedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with deadlines on what the client sends.

    uvicorn closes a connection idle between requests (``timeout_keep_alive``) but waits for
    ever on one that has begun a request: headers sent a byte every few seconds, or a body
    that stops. Here a request's headers must all arrive within ``header_timeout_s`` of the
    connection or of the request's first byte (a total: trickling does not extend it), and a
    body may pause at most ``body_timeout_s`` between two reads. Past either, the client gets
    408 if no answer has begun, and the connection is closed. A pause that is the server's
    (the app not reading, or still answering an earlier request) never counts.
    """

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S  # set by create_app from the ServeConfig
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._seen_cycle = None  # the request whose headers were last seen complete
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers", "body" or None (waiting on nobody)
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(bool(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow(False)  # a pipelined request may have been parsed just now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        seconds = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _follow(self, got_data: bool) -> None:
        """After the parser has seen what arrived: which deadline, if any, now runs."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle:  # a request's headers are complete
            self._seen_cycle = cycle
            if cycle.more_body:
                self._arm("body")
            else:
                self._disarm()
            return
        if self._phase == "body":
            if cycle is None or not cycle.more_body:
                self._disarm()
            elif got_data:
                self._arm("body")  # an idle timeout: each piece of the body restarts it
            return
        if self._phase is None and got_data:
            self._arm("headers")  # the first bytes of a next request on a kept-alive connection

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport is None or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed already, or handed to another protocol (an upgrade)
        cycle = self.cycle
        if phase == "body" and getattr(self.flow, "read_paused", False):
            self._arm("body")  # the app is not reading yet: the client cannot send, not its fault
            return
        if phase == "headers" and cycle is not None and not cycle.response_complete:
            self._arm("headers")  # a pipelined request waits for the answer to the one before
            return
        if phase == "headers" or cycle is None or not cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)  # nobody else answers this request: say why
        self.transport.close()


class TimedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (the sans-I/O one its ``--ws auto`` picks), with a deadline
    on the client reading what it was sent, once the app is done with the connection.

    When the app returns, uvicorn closes the transport, and asyncio's close first writes out
    what is still buffered: a client that reads nothing (TCP keeps a zero window open for as long
    as the peer answers) would hold the connection, its socket and its buffers for ever, as would
    uvicorn's keepalive, which ends a connection the same way. Here whatever the client has not
    read ``drain_timeout_s`` after the app returned is dropped with the connection (live
    streams: ``stream_idle_s``, the time the app already gave each send, service/stream.py).
    """

    drain_timeout_s = DEFAULT_STREAM_IDLE_S  # set by create_app from the ServeConfig

    async def run_asgi(self) -> None:
        try:
            await super().run_asgi()
        finally:
            # A no-op once the connection has ended, as it has after any close the client read.
            self.loop.call_later(self.drain_timeout_s, self.transport.abort)
