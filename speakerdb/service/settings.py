"""What one ``speakerdb serve`` runs with: :class:`ServeConfig`, its defaults, and how it
reaches uvicorn's worker processes (standard library only).

uvicorn starts each worker process from an import string, with no arguments: ``serve``
leaves the configuration as JSON in ``$SPEAKERDB_SERVE_CONFIG`` (``config.hand_to_workers``)
and each worker's ``create_app`` reads it back (:meth:`ServeConfig.from_env`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..config import SERVE_CONFIG_ENV, serve_config

CONFIG_ENV = SERVE_CONFIG_ENV
MB = 1_000_000  # bytes
DEFAULT_MAX_UPLOAD_BYTES = 50 * MB  # one request's body
DEFAULT_MAX_FILES = 32  # audio files in one request
# A normalisation cohort is hundreds of short recordings, sent in one request (POST /v1/norm);
# its bytes are still capped by max_upload_bytes.
COHORT_MAX_FILES = 2000
# Seconds are floats written whole, so that `serve --help` shows them as they are written.
DEFAULT_MAX_AUDIO_S: float = 600  # seconds of audio in one file (the CLI allows 4 h; a request should not)
DEFAULT_QUEUE_SIZE = 32  # embedding requests a worker holds, running and waiting
# A connection must send a request's headers within DEFAULT_HEADER_TIMEOUT_S of starting it,
# and a body must not pause for longer than DEFAULT_BODY_TIMEOUT_S: otherwise a client that
# trickles bytes (slowloris) holds a connection, and its memory, for ever (TimedHTTPProtocol).
DEFAULT_HEADER_TIMEOUT_S: float = 10
DEFAULT_BODY_TIMEOUT_S: float = 30
# WebSocket /v1/stream (service/stream.py): live sessions a worker holds at once (one more is
# closed with 1013, try again later), and of them one key's (so that one key, of any gallery,
# cannot keep every other out), the longest session (seconds of audio or of connection,
# whichever is larger), the longest a client may send no audio (a frame without a whole sample
# is none; see STREAM_CLOCK_SLACK for audio that comes too slowly) and, as long, the longest
# one send to it may wait for the client to read (connections.TimedWebSocketProtocol), the
# largest binary frame, and the time a browser has to send its key as the first message.
DEFAULT_MAX_STREAMS = 16
DEFAULT_MAX_STREAMS_PER_KEY = 8
DEFAULT_MAX_STREAM_S: float = 4 * 3600
DEFAULT_STREAM_IDLE_S: float = 30
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # 1 MiB
DEFAULT_STREAM_AUTH_S = 5.0
#: How often a live stream checks its key again (revoked, or a first key created while a stream
#: without one runs, ends it): at most once a second, as it checks its gallery's speakers.
STREAM_KEY_CHECK_S = 1.0
#: A live stream's audio must keep up with the clock, so that a sample now and then cannot hold
#: a place: once its audio received (seconds at its sample rate) falls more than
#: ``stream_idle_s`` behind the time since its first audio, less the time the worker spent
#: feeding it (a busy worker's pace is not the client's), it is closed as idle. That clock runs
#: this fraction slower than real time (1 %): a sound card's drift (parts per million) never
#: trips it, and audio a client lost (a dropped block) is forgiven, 36 s an hour.
STREAM_CLOCK_SLACK = 0.01
#: How often each worker runs `expire` (the retention policy), from its start: once a day.
DEFAULT_EXPIRE_EVERY_S: float = 86_400
#: One line per request (route template, status, time, key, gallery; never the path itself:
#: it holds speaker names, which must not outlive an opt-out in the operator's logs).
DEFAULT_ACCESS_LOG = True


@dataclass
class ServeConfig:
    """Everything a worker needs to build the app (JSON-serialisable: workers are processes).
    ``speakerdb serve``'s options take their defaults from the constants above."""

    db_path: str
    model: str | None = None
    device: str = "cpu"
    precision: str = "fp32"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_audio_s: float = DEFAULT_MAX_AUDIO_S
    queue_size: int = DEFAULT_QUEUE_SIZE
    insecure_no_auth: bool = False
    #: Decided by `serve` when it starts: the database has (or had) a key, so every request
    #: needs one. False only on loopback for a database that never had a key; a worker then
    #: starts requiring keys once one is created, and never stops (auth.KeyCheck).
    require_keys: bool = False
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_key: int = DEFAULT_MAX_STREAMS_PER_KEY
    max_stream_s: float = DEFAULT_MAX_STREAM_S
    stream_idle_s: float = DEFAULT_STREAM_IDLE_S
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    stream_auth_s: float = DEFAULT_STREAM_AUTH_S
    tmp_dir: str | None = None
    #: Where the workers of one `serve --workers N` publish their counters for each other's
    #: /metrics (made by serve(), removed when it returns); None: one worker, nothing shared.
    metrics_dir: str | None = None
    #: Seconds between two runs of the retention policy's `expire` (the first at start).
    expire_every_s: float = DEFAULT_EXPIRE_EVERY_S
    #: Whether each request is logged (``speakerdb.access``, at INFO): by its route's template.
    access_log: bool = DEFAULT_ACCESS_LOG

    def to_env(self) -> str:
        """This configuration as the JSON that :meth:`from_env` reads back."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The configuration :func:`~speakerdb.service.serve.serve` left for this worker process."""
        raw = serve_config()
        if not raw:
            raise RuntimeError(f"${CONFIG_ENV} is not set: start the service with `speakerdb serve`")
        return cls(**json.loads(raw))
