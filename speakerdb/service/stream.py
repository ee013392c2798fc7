"""``WebSocket /v1/stream``: a live session (:meth:`speakerdb.api.SpeakerDB.stream`) over a WebSocket.

The protocol (docs/live.md, "Protocol"):

- query parameters ``sample_rate`` (8000-48000, default 16000), ``encoding`` (``pcm_s16le``
  default, ``f32le``, ``mulaw``, ``alaw``) and an optional ``threshold``; never a key;
- the key as ``Authorization: Bearer KEY``, or (browsers cannot set that header) as the first
  text message ``{"type": "auth", "key": "..."}`` within ``ServeConfig.stream_auth_s``; scope
  read to listen, write to enroll;
- from the client: binary frames of audio, ``{"type": "end"}``, and
  ``{"type": "enroll", "label", "name", "add"}``;
- from the server: the session's events as JSON text (``speech``, ``voice``, ``enrolled``),
  ``error`` events, and after ``end`` the ``timeline`` (what ``timeline --json`` gives for one
  file), then a normal close (1000).

Each frame is fed to the session on a thread of the worker's stream pool, and the next frame is
read only once that feed has returned: audio sent faster than real time waits in the client's
socket, never in this process. Bad input gets an ``error`` event and a close with the code that
fits (1003 text that is not JSON, 1007 audio that is not what ``encoding`` says, 1008 a message
of unknown type or wrong shape, or a refused key, 1009 a frame too large); a worker holding
``max_streams`` sessions, or ``max_streams_per_key`` of the caller's key, closes one more with
1013 (try again later), once the key is known. A session ends with its
connection: a client that goes away frees it at once, and so does one that reads nothing: a
send (an event, the close) that waits ``stream_idle_s`` for the client to take it ends the
stream, and :class:`~.connections.TimedWebSocketProtocol` drops the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any, NoReturn

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .. import errors
from ..config import DEFAULT_GALLERY
from ..results import ErrorEvent
from .auth import Caller, not_this_gallery
from .lanes import GALLERY
from .responses import ApiError, finite
from .settings import STREAM_CLOCK_SLACK, STREAM_KEY_CHECK_S
from .tracebacks import log_error
from .worker import Service, as_caller

log = logging.getLogger("speakerdb.server")

#: What ``encoding`` may be, and the bytes of one sample in each.
ENCODINGS = {"pcm_s16le": 2, "f32le": 4, "mulaw": 1, "alaw": 1}
DEFAULT_ENCODING = "pcm_s16le"
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, DEFAULT_SAMPLE_RATE = 8000, 48000, 16000
#: The longest text message: every message a client sends is a few dozen bytes.
MAX_TEXT_BYTES = 64 * 1024
#: Query parameters that would put a key in the URL, where proxies and logs keep it.
KEY_PARAMETERS = frozenset({"key", "api_key", "apikey", "token", "access_token", "authorization"})

# WebSocket close codes (RFC 6455, 7.4.1).
NORMAL = 1000
UNSUPPORTED_DATA = 1003
GONE = 1006  # never sent: the code /metrics counts a client that vanished under
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL = 1011
TRY_LATER = 1013

router = APIRouter()


class Closing(Exception):
    """End the stream: an ``error`` event (``code``, ``message``), the timeline of what was
    heard when ``timeline``, then a close with ``close_code``; none of them when not ``reading``
    (the client reads nothing: they would wait behind what it left unread)."""

    def __init__(
        self, close_code: int, code: str, message: str, *, timeline: bool = False, reading: bool = True
    ) -> None:
        self.close_code, self.code, self.message, self.timeline = close_code, code, message, timeline
        self.reading = reading
        super().__init__(message)


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Who is speaking now: audio in, events out (docs/live.md)."""
    service: Service = websocket.app.state.service
    # The connection's context (its lane calls copy it): its session and enrollments work in the
    # gallery its URL names, /v1/galleries/{gallery}/stream, or the default's (lanes.py).
    gallery = websocket.path_params.get("gallery", DEFAULT_GALLERY)
    GALLERY.set(gallery)
    await Connection(websocket, service, gallery).run()


class Connection:
    """One WebSocket and, once the caller is known, its live session."""

    def __init__(self, websocket: WebSocket, service: Service, gallery: str = DEFAULT_GALLERY) -> None:
        self.ws, self.service, self.config, self.gallery = websocket, service, service.config, gallery
        self.session: Any = None
        self.caller: Caller | None = None
        self.key_header: str | None = None  # the Authorization the caller was let in with, checked again
        self.key_checked = 0.0  # when (time.monotonic)
        self.bytes_per_sample = 2
        self.sample_rate = DEFAULT_SAMPLE_RATE
        self.counted = False
        self.key_place: tuple[str, str] | None = None  # (gallery, key name) counted in Service.streams_by_key
        self.began = time.monotonic()
        self.idle_until = self.began + self.config.stream_idle_s
        # The clock the audio must keep up with (settings.STREAM_CLOCK_SLACK): it starts at the
        # first audio (before it, a page may be asking for the microphone) and stops while the
        # worker feeds audio to the session and sends its events.
        self.audio_since: float | None = None  # time.monotonic() when the first audio came
        self.feeding_s = 0.0  # seconds spent feeding audio since (and sending its events)
        self.close_code = GONE
        self.auth_allowed = False  # whether the next message may be {"type": "auth"}

    async def run(self) -> None:
        """The whole life of the connection; never raises (a traceback without messages goes to the log only)."""
        await self.ws.accept()
        try:
            await self._serve()
        except Closing as c:
            await self._finish(c)
        except WebSocketDisconnect:
            self.close_code = GONE
        except Exception as e:  # noqa: BLE001 - the client gets one line; the log the traceback
            log_error(log, "unexpected error in WebSocket /v1/stream", e)
            message = f"internal error ({type(e).__name__}); see the server log"
            await self._finish(Closing(INTERNAL, "internal", message))
        finally:
            self._release()

    async def _serve(self) -> None:
        service = self.service
        try:
            service.require_ready()
        except ApiError as e:
            raise Closing(TRY_LATER, e.code, e.message) from None
        sample_rate, encoding, threshold = self._parameters()
        # The key before a place: a connection that never sends one holds none of the worker's
        # --max-streams, which a client without a key could otherwise fill.
        first = await self._authenticate()
        if self.caller is not None and self.caller.key_name is None:
            self._check_origin()
        self._take_place()
        self.session = await self._open(sample_rate, encoding, threshold)
        service.metrics.streams_started += 1
        self.idle_until = time.monotonic() + self.config.stream_idle_s
        if first is not None and await self._message(first):
            return
        while True:
            if await self._message(await self._receive()):
                return

    # ---- set-up -------------------------------------------------------------------------------
    def _take_place(self) -> None:
        """Count this stream among the worker's and its key's, or Closing 1013 when either is full."""
        service, config = self.service, self.config
        if service.streams_open >= config.max_streams:
            held = f"this worker already holds {service.streams_open} live streams (at most {config.max_streams})"
            self._refuse(f"{held}: try again later")
        self._take_key_place()
        service.streams_open += 1  # no await since the checks: no other connection got in between
        self.counted = True

    def _take_key_place(self) -> None:
        """Count this stream among its key's, once its caller has one (Closing 1013 when full)."""
        service, config = self.service, self.config
        assert self.caller is not None
        if self.caller.key_name is None or self.key_place is not None:
            return
        key = (self.gallery, self.caller.key_name)
        if service.streams_by_key[key] >= config.max_streams_per_key:
            held = f"key {key[1]!r} already holds {service.streams_by_key[key]} live streams on this worker"
            self._refuse(f"{held} (at most {config.max_streams_per_key} per key): end one, or try again later")
        service.streams_by_key[key] += 1
        self.key_place = key

    def _refuse(self, message: str) -> NoReturn:
        self.service.metrics.streams_refused += 1
        self.close_code = TRY_LATER
        raise Closing(TRY_LATER, "busy", message)

    def _parameters(self) -> tuple[int, str, float | None]:
        query = self.ws.query_params
        named = sorted(k for k in query if k.lower() in KEY_PARAMETERS)
        if named:
            raise Closing(
                POLICY,
                "invalid_input",
                f"never put a key in the URL ({named[0]}=...): send `Authorization: Bearer KEY` "
                'or the first message {"type": "auth", "key": "..."}',
            )
        try:
            sample_rate = int(query.get("sample_rate", str(DEFAULT_SAMPLE_RATE)))
        except ValueError:
            raise Closing(POLICY, "invalid_input", "sample_rate must be a whole number of Hz") from None
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            allowed = f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
            raise Closing(POLICY, "invalid_input", f"sample_rate must be {allowed}, not {sample_rate}")
        encoding = query.get("encoding", DEFAULT_ENCODING)
        if encoding not in ENCODINGS:
            raise Closing(
                POLICY, "invalid_input", f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding[:40]!r}"
            )
        threshold: float | None = None
        if query.get("threshold") not in (None, ""):
            try:
                threshold = float(query["threshold"])
            except ValueError:
                threshold = math.nan
            if not math.isfinite(threshold):
                raise Closing(POLICY, "invalid_input", "threshold must be a number")
        self.sample_rate, self.bytes_per_sample = sample_rate, ENCODINGS[encoding]
        return sample_rate, encoding, threshold

    async def _authenticate(self) -> dict[str, Any] | None:
        """The caller (``self.caller``), from the header or the first message; returns a first
        message that is not an ``auth`` one, to be handled as any other."""
        keys = self.service.keys
        if keys.insecure_no_auth:
            self.caller = Caller(None, "admin")
            return None
        header = self.ws.headers.get("authorization")
        try:
            self.caller = await self._caller(header)
            # A browser cannot know the service runs without keys: its key, as the first message, is checked.
            self.auth_allowed = header is None
            return None
        except Closing as refused:
            if header is not None or refused.code != "unauthorized":
                raise
        # No header, and this service needs a key: it must come as the first message. The
        # connections waiting for theirs are bounded apart from the sessions (as many).
        service = self.service
        if service.streams_waiting >= self.config.max_streams:
            self._refuse(
                f"this worker already waits for the key of {service.streams_waiting} connections "
                f"(at most {self.config.max_streams}): try again later"
            )
        service.streams_waiting += 1
        try:
            message = await asyncio.wait_for(self._next(), self.config.stream_auth_s)
        except asyncio.TimeoutError:
            raise Closing(
                POLICY,
                "unauthorized",
                "this service needs an API key: send `Authorization: Bearer KEY` or, as the first message "
                f'within {self.config.stream_auth_s:g} s, {{"type": "auth", "key": "..."}}',
            ) from None
        finally:
            service.streams_waiting -= 1
        key = message.get("key") if isinstance(message, dict) and message.get("type") == "auth" else None
        if not isinstance(key, str) or not key.strip() or set(message) != {"type", "key"}:  # (audio is bytes)
            raise Closing(
                POLICY,
                "unauthorized",
                'this service needs an API key: the first message must be {"type": "auth", "key": "..."}',
            )
        self.caller = await self._caller(f"Bearer {key.strip()}")
        return None

    def _check_origin(self) -> None:
        """Without a key, only pages of this service's own origin, under a loopback name, may
        connect: browsers let any page open a WebSocket to any address (no CORS), and a loopback
        service that never had a key would otherwise listen and enroll for whatever site its user
        happens to visit, whether across origins or through a name of the site's own pointed at
        this machine (auth.keyless_refusal). With --insecure-no-auth, any name, but still only
        the service's own pages."""
        refusal = self.service.keys.page_refusal(self.ws.headers.get("host"), self.ws.headers.get("origin"))
        if refusal is not None:
            raise Closing(POLICY, "forbidden", refusal)

    async def _caller(self, header: str | None) -> Caller:
        """Whose key ``header`` carries; it must allow reading (Closing 1008 otherwise)."""
        try:  # PBKDF2 on the first use of a key and one indexed query: off the event loop
            info = await asyncio.get_running_loop().run_in_executor(None, self.service.keys.authenticate, header)
        except ApiError as e:
            raise Closing(TRY_LATER if e.status == 503 else POLICY, e.code, e.message) from None
        self.key_header, self.key_checked = header, time.monotonic()
        if info is None:
            return Caller(None, "admin")
        if info.gallery != self.gallery:  # before its scope: a key learns nothing of other galleries
            raise Closing(POLICY, "gallery_not_found", not_this_gallery(self.gallery).message)
        if not info.allows("read"):
            raise Closing(POLICY, "forbidden", f"key {info.name!r} has scope {info.scope!r}; listening needs 'read'")
        return Caller(info.name, info.scope)

    async def _open(self, sample_rate: int, encoding: str, threshold: float | None) -> Any:
        """A new session of the embedding lane's database, its windows embedded on that lane."""
        service = self.service
        embed_windows = service.counting.embed_windows if service.counting is not None else None
        try:
            return await service.embed_lane.run(
                lambda db: db.stream(
                    sample_rate=sample_rate, encoding=encoding, threshold=threshold, embed_windows=embed_windows
                )
            )
        except errors.SpeakerDBError as e:
            raise Closing(POLICY, e.code, service.scrub(str(e))) from None

    async def _check_key(self, now: bool = False) -> None:
        """The caller's key again, at most once per :data:`STREAM_KEY_CHECK_S` unless ``now``:
        revoking a key reaches its open streams as it does the next request (Closing 1008), and
        so does the first key created while a stream without one runs."""
        if self.service.keys.insecure_no_auth:
            return
        if now or time.monotonic() >= self.key_checked + STREAM_KEY_CHECK_S:
            self.caller = await self._caller(self.key_header)

    # ---- messages ------------------------------------------------------------------------------
    async def _receive(self) -> Any:
        """The next message (bytes, or a JSON object); Closing when a limit of time passes first."""
        now = time.monotonic()
        ends = self.began + self.config.max_stream_s
        wait = min(self.idle_until, ends, self._behind_at()) - now
        if wait <= 0:
            self._time_is_up(now)
        try:
            return await asyncio.wait_for(self._next(), wait)
        except asyncio.TimeoutError:
            self._time_is_up(time.monotonic())
            raise AssertionError("unreachable") from None

    def _behind_at(self) -> float:
        """When the audio received falls more than ``stream_idle_s`` behind the clock, unless more
        comes first (settings.STREAM_CLOCK_SLACK); never before the first audio."""
        if self.audio_since is None or self.session is None:
            return math.inf
        allowed_s = (self.session.seconds_fed + self.config.stream_idle_s) / (1 - STREAM_CLOCK_SLACK)
        return self.audio_since + self.feeding_s + allowed_s

    def _time_is_up(self, now: float) -> None:
        idle_s = self.config.stream_idle_s
        if now >= self.began + self.config.max_stream_s:
            raise Closing(
                POLICY,
                "stream_too_long",
                f"a live stream lasts at most {self.config.max_stream_s:g} s: this one is closed",
                timeline=True,
            )
        if now < self.idle_until and self.audio_since is not None and self.session is not None:
            clock_s = now - self.audio_since - self.feeding_s
            raise Closing(
                POLICY,
                "idle",
                f"the audio fell more than {idle_s:g} s behind real time ({self.session.seconds_fed:.1f} s "
                f"of audio in {clock_s:.1f} s): the stream is closed",
            )
        raise Closing(POLICY, "idle", f"no audio for {idle_s:g} s: the stream is closed")

    async def _next(self) -> Any:
        """The next message as bytes or a JSON object; raises WebSocketDisconnect or Closing."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", GONE))
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            return data
        if text is None:
            raise Closing(UNSUPPORTED_DATA, "invalid_message", "an empty message")
        if len(text) > MAX_TEXT_BYTES:
            size = f"{len(text):,} characters (at most {MAX_TEXT_BYTES:,})"
            raise Closing(TOO_BIG, "too_large", f"a text message of {size}")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            raise Closing(
                UNSUPPORTED_DATA, "invalid_message", "text messages must be JSON objects; audio goes in binary frames"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
            raise Closing(POLICY, "invalid_message", 'a text message must be a JSON object with a "type"')
        return doc

    async def _message(self, message: Any) -> bool:
        """Handle one message; True once the stream has ended normally."""
        if isinstance(message, bytes):
            self.auth_allowed = False
            await self._audio(message)
            return False
        kind = message["type"]
        if kind == "end":
            _fields(message, set())
            await self._check_key(now=True)  # the timeline is for a key still valid
            await self._end()
            return True
        if kind == "enroll":
            await self._enroll(message)
            return False
        if kind == "auth" and self.auth_allowed:
            self.auth_allowed = False
            _fields(message, {"key"})
            if not isinstance(message["key"], str) or not message["key"].strip():
                raise Closing(POLICY, "unauthorized", '"key" must be the API key, a non-empty string')
            self.caller = await self._caller(f"Bearer {message['key'].strip()}")
            # Let in without a key (the database had none yet), its place was counted as keyless.
            self._take_key_place()
            return False
        self.auth_allowed = False
        if kind == "auth":
            raise Closing(
                POLICY,
                "invalid_message",
                "an auth message is taken only as the first message, from a client that sent no Authorization header",
            )
        raise Closing(
            POLICY, "invalid_message", f"unknown message type {kind[:40]!r}: send audio frames, end or enroll"
        )

    async def _audio(self, data: bytes) -> None:
        if len(data) > self.config.max_frame_bytes:
            raise Closing(
                TOO_BIG,
                "too_large",
                f"an audio frame of {len(data):,} bytes (at most {self.config.max_frame_bytes:,}): send smaller frames",
            )
        if not data:  # not a sample of audio: the stream is as idle as before
            return
        began = time.monotonic()
        if self.audio_since is None:
            self.audio_since = began
        await self._check_key()
        # The session's length: the audio fed counts as well as the time connected, so a
        # client sending faster than real time reaches the limit as soon as one in real time.
        left_s = self.config.max_stream_s - max(self.session.seconds_fed, time.monotonic() - self.began)
        allowed = max(0, math.floor(left_s * self.sample_rate)) * self.bytes_per_sample
        over = len(data) > allowed
        if over:
            data = data[:allowed]
        if data:
            events = await self._in_thread(self.session.feed, data, bad_input=INVALID_DATA)
            await self._send_events(events)
            # Both waits count from when the service is ready for more: a busy worker's pace is not the client's.
            ready = time.monotonic()
            self.feeding_s += ready - began
            self.idle_until = ready + self.config.stream_idle_s
        if over:
            self._time_is_up(math.inf)

    async def _enroll(self, message: dict[str, Any]) -> None:
        _fields(message, {"label", "name"}, {"add"})
        label, name, add = message["label"], message["name"], message.get("add", False)
        if not isinstance(label, str) or not label or not isinstance(name, str) or not name:
            raise Closing(POLICY, "invalid_message", 'enroll needs "label" and "name" as non-empty strings')
        if not isinstance(add, bool):
            raise Closing(POLICY, "invalid_message", '"add" must be true or false')
        await self._check_key(now=True)  # a key revoked meanwhile writes nothing
        assert self.caller is not None
        if self.caller.scope not in ("write", "admin"):
            scope = f"key {self.caller.key_name!r} has scope {self.caller.scope!r}"
            await self._send_error("forbidden", f"{scope}; enrolling needs 'write'")
            return
        session, service = self.session, self.service
        # The windows still waiting for the session to judge its noise are embedded here, not
        # inside the enrollment: it runs on the embedding lane, which their embedding waits for.
        await self._send_events(await self._in_thread(session.catch_up))
        try:
            event = await service.embed_lane.run(
                as_caller(lambda db: session.enroll(label, name, add=add), self.caller)
            )
        except errors.SpeakerDBError as e:  # the session goes on: only this enrollment failed
            await self._send_error(e.code, service.scrub(str(e)))
            return
        await self._send_events([event])

    async def _end(self) -> None:
        """``end``: the last events, the timeline, a normal close."""
        await self._send_timeline()
        self.close_code = NORMAL
        await self._close(NORMAL)

    async def _send_timeline(self) -> None:
        """The session's last events (what was still open, made final), then its timeline."""
        session = self.session
        await self._send_events(await self._in_thread(session.finish))
        timeline = await self._in_thread(session.close)
        self.session = None
        await self._send({"type": "timeline", **timeline.to_dict()})

    async def _in_thread(self, fn: Any, *args: Any, bad_input: int = POLICY) -> Any:
        """``fn(*args)`` on the stream pool (a session's work never runs on the event loop)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.service.stream_threads, fn, *args)
        except errors.InvalidInputError as e:
            raise Closing(bad_input, e.code, self.service.scrub(str(e))) from None
        except errors.AudioError as e:
            raise Closing(bad_input, e.code, self.service.scrub(str(e))) from None
        except errors.SpeakerDBError as e:
            raise Closing(INTERNAL, e.code, self.service.scrub(str(e))) from None

    # ---- answers -------------------------------------------------------------------------------
    async def _send_events(self, events: list[Any]) -> None:
        for event in events:
            await self._send(event.to_dict())

    async def _send_error(self, code: str, message: str) -> None:
        at = None if self.session is None else self.session.seconds_fed
        await self._send(ErrorEvent(code, message, at).to_dict())

    async def _send(self, document: dict[str, Any]) -> None:
        """Send one event; Closing (not ``reading``) when the client has not taken it in time."""
        text = json.dumps(finite(document), ensure_ascii=False, allow_nan=False)
        # A send waits while the client leaves the buffers between full: without a deadline, a
        # client sending audio and reading nothing held its place here for ever, checked by no
        # limit. While the stream runs, a send waits no longer than the stream may last.
        now = time.monotonic()
        ends = self.began + self.config.max_stream_s
        until = now + self.config.stream_idle_s
        if now < ends:
            until = min(until, ends)
        try:
            await asyncio.wait_for(self.ws.send_text(text), until - now)
        except asyncio.TimeoutError:
            if time.monotonic() >= ends:
                message = f"a live stream lasts at most {self.config.max_stream_s:g} s: this one is closed"
                raise Closing(POLICY, "stream_too_long", message, reading=False) from None
            message = f"the client took no event for {self.config.stream_idle_s:g} s: the stream is closed"
            raise Closing(POLICY, "not_reading", message, reading=False) from None

    async def _close(self, code: int, reason: str = "") -> None:
        """The close frame, unless the client leaves it unsent for ``stream_idle_s`` (it waits
        behind the events, as they do): then the app is done, and the protocol drops the connection."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.config.stream_idle_s)
        except asyncio.TimeoutError:
            pass

    async def _finish(self, closing: Closing) -> None:
        """The error event, the timeline when asked for, then the close (if the client is still
        there, and reading: one that is not gets nothing more, TimedWebSocketProtocol drops it)."""
        self.close_code = closing.close_code
        if self.ws.application_state != WebSocketState.CONNECTED or self.ws.client_state != WebSocketState.CONNECTED:
            return
        if not closing.reading:
            return
        try:
            await self._send_error(closing.code, closing.message)
            if closing.timeline and self.session is not None:
                try:
                    await self._send_timeline()
                except Closing as failed:  # no timeline after all: its error, then the close
                    if not failed.reading:
                        raise
                    await self._send_error(failed.code, failed.message)
            # A close frame's reason holds at most 123 bytes of UTF-8; the event said it all.
            await self._close(closing.close_code, closing.message.encode()[:120].decode(errors="ignore"))
        except Closing as unread:  # the client stopped reading meanwhile: nothing more reaches it
            self.close_code = unread.close_code
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close_code = GONE  # gone meanwhile: nothing more to say

    def _release(self) -> None:
        """Forget the session (its memory goes with it) and free the connection's slot."""
        self.session = None
        if self.key_place is not None:
            self.service.streams_by_key[self.key_place] -= 1
            if not self.service.streams_by_key[self.key_place]:
                del self.service.streams_by_key[self.key_place]
            self.key_place = None
        if self.counted:
            self.service.streams_open -= 1
            self.counted = False
            self.service.metrics.stream_closed(self.close_code)
        elif self.close_code == TRY_LATER:
            self.service.metrics.stream_closed(TRY_LATER)


def _fields(message: dict[str, Any], required: set[str], optional: frozenset[str] | set[str] = frozenset()) -> None:
    """Closing (1008) unless ``message`` has the ``required`` fields and no others but ``optional``."""
    missing = sorted(required - set(message))
    extra = sorted(set(message) - required - set(optional) - {"type"})
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown field {extra[0][:40]!r}"
        raise Closing(POLICY, "invalid_message", f"{message['type'][:40]} message: {what}")
