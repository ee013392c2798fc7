"""``speakerdb serve``: the :class:`~speakerdb.api.SpeakerDB` facade over HTTP (FastAPI + uvicorn).

Every endpoint calls the facade and answers the JSON that the matching CLI command prints
with ``--json``; nothing here decides anything about speakers. What this module adds is
what a service needs around the facade:

- **lanes**: each worker process keeps two :class:`SpeakerDB` objects, each used by one
  thread only. The *embedding lane* holds the model (loaded once, at start-up) and runs
  identify, timeline, verify and enroll; the *admin lane* runs everything else, so a listing never
  waits behind a 10 s embedding. Both see every write acknowledged by any process at their
  next call (``IndexKeeper.snapshot``).
- **batches**: identify requests that wait for the embedding lane together are answered
  by one facade call (:class:`IdentifyBatches`): short clips of equal length then share a
  forward pass (``pipeline.embed_clips``), which is where a busy worker gains throughput.
- **limits**: request body size (413), files per request (413), audio duration (400, per
  file for identify), and a bounded number of embedding requests per worker (running and
  waiting): beyond it, 503 with ``Retry-After`` at once, instead of a queue that grows.
- **keys**: ``Authorization: Bearer KEY`` with scopes read < write < admin (keys.py);
  401 without a valid key, 403 when its scope is too small.
- **uploads** are written to a private directory (0700, files 0600, never through links)
  only as long as the request runs, removed on every path (directories left by a killed
  worker are removed at the next start); logs hold no audio and no embeddings.
- **errors** are always ``{"error": {"code", "message"}}``, never a stack trace.
- ``/metrics`` in the Prometheus text format, summed over the worker processes.

The app is built by :func:`create_app` from a :class:`ServeConfig`; uvicorn's worker
processes rebuild it from the JSON in ``$SPEAKERDB_SERVE_CONFIG`` (see :func:`serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .. import __version__, errors
from ..storage import atomic, store
from ..audio import decode as audio
from ..config import SERVE_CONFIG_ENV, hand_to_workers, serve_config
from ..api import INDEX_SUFFIX, SpeakerDB
from ..storage.keys import SCOPES, KeyInfo

log = logging.getLogger("speakerdb.server")

CONFIG_ENV = SERVE_CONFIG_ENV
MB = 1_000_000  # bytes
DEFAULT_MAX_UPLOAD_BYTES = 50 * MB  # one request's body
DEFAULT_MAX_FILES = 32  # audio files in one request
DEFAULT_MAX_AUDIO_S = 600.0  # seconds of audio in one file (the CLI allows 4 h; a request should not)
DEFAULT_QUEUE_SIZE = 32  # embedding requests a worker holds, running and waiting
COPY_CHUNK = 1 << 20  # bytes copied from an upload at a time
# An answer given before the request's body was read (401, 413, 415) stays open this long while
# the rest of the body is read and thrown away. Closing at once, with unread bytes, makes the
# kernel reset the connection, and a client still sending (urllib, any ``Connection: close``
# client) then reports "connection reset" instead of the answer. nginx's lingering close.
LINGER_S = 10.0
# A connection must send a request's headers within DEFAULT_HEADER_TIMEOUT_S of starting it,
# and a body must not pause for longer than DEFAULT_BODY_TIMEOUT_S: otherwise a client that
# trickles bytes (slowloris) holds a connection, and its memory, for ever (_TimedHTTPProtocol).
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
UPLOAD_DIR_PREFIX = "speakerdb-upload-"
METRICS_DIR_PREFIX = "speakerdb-metrics-"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ServeConfig:
    """Everything a worker needs to build the app (JSON-serialisable: workers are processes)."""

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
    #: starts requiring keys once one is created, and never stops (Service.keys_required).
    require_keys: bool = False
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    tmp_dir: str | None = None
    #: Where the workers of one `serve --workers N` publish their counters for each other's
    #: /metrics (made by serve(), removed when it returns); None: one worker, nothing shared.
    metrics_dir: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        raw = serve_config()
        if not raw:
            raise RuntimeError(f"${CONFIG_ENV} is not set: start the service with `speakerdb serve`")
        return cls(**json.loads(raw))


# ---- errors -------------------------------------------------------------------------------
#: Library errors as (HTTP status, code). Checked in order: subclasses before their bases.
ERROR_STATUS: list[tuple[type[BaseException], int, str]] = [
    (errors.AudioError, 400, "bad_audio"),
    (errors.GalleryError, 400, "bad_gallery"),
    (errors.EnrollmentRefusedError, 422, "enrollment_refused"),
    (errors.InvalidInputError, 422, "invalid_input"),
    (errors.SpeakerNotFoundError, 404, "speaker_not_found"),
    (errors.KeyNotFoundError, 404, "key_not_found"),
    (errors.SpeakerExistsError, 409, "speaker_exists"),
    (errors.KeyExistsError, 409, "key_exists"),
    (errors.ConflictError, 409, "conflict"),
    (errors.EmptyDatabaseError, 409, "no_speakers"),
    (errors.ModelMismatchError, 409, "model_mismatch"),
    (errors.ModelLoadError, 503, "model_unavailable"),
    (errors.DatabaseBusyError, 503, "database_busy"),  # another writer holds the lock: retry later
    (errors.DatabaseError, 500, "database_error"),
    (errors.SpeakerDBError, 400, "failed"),
]


class ApiError(Exception):
    """An answer other than success, raised anywhere in a request."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(message)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _from_library(e: errors.SpeakerDBError, names: dict[str, str]) -> ApiError:
    """A library error as an answer; private upload paths in its message become the client's names."""
    message = str(e)
    for private, given in names.items():
        message = message.replace(private, given)
    for kind, status, code in ERROR_STATUS:
        if isinstance(e, kind):
            return ApiError(status, code, message)
    return ApiError(400, "failed", message)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (as the CLI's --json)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def ok(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_finite(document), status_code=status, headers=headers)


# ---- uploads ------------------------------------------------------------------------------
class UploadedFile(os.PathLike):
    """A file a client sent, kept in a private temporary file for the request.

    ``os.fspath()`` is the private path (what decoders open); ``str()`` is the name the
    client gave, which is how the facade labels the file in answers and in the database
    (the CLI's label is the path as typed, the client sends the same).
    """

    def __init__(self, private: str, given: str) -> None:
        self.private, self.given = private, given

    def __fspath__(self) -> str:
        return self.private

    def __str__(self) -> str:
        return self.given

    def __repr__(self) -> str:
        return f"UploadedFile({self.given!r})"


MAX_LABEL_CHARS = 255  # characters of a client's file name kept as the label


def _label(filename: str | None, index: int) -> str:
    """The client's file name as a label: at most MAX_LABEL_CHARS, control characters escaped."""
    if not filename:
        return f"upload-{index + 1}"
    name = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in filename)
    return name[:MAX_LABEL_CHARS]


class UploadDir:
    """This worker's private directory for uploads: ``<tmp>/speakerdb-upload-<pid>-XXXX``, 0700."""

    def __init__(self, parent: str | None) -> None:
        parent_dir = Path(parent or tempfile.gettempdir())
        _sweep_stale(parent_dir)
        self.path = Path(tempfile.mkdtemp(prefix=f"{UPLOAD_DIR_PREFIX}{os.getpid()}-", dir=parent_dir))
        self._n = 0
        self._lock = threading.Lock()

    def new_path(self, suffix: str) -> Path:
        """A fresh name in this directory (nothing is created)."""
        with self._lock:
            self._n += 1
            return self.path / f"{self._n}{suffix}"

    async def save(self, uploads: list[UploadFile]) -> list[UploadedFile]:
        """Copy each upload into a new 0600 file (O_EXCL, O_NOFOLLOW); the caller removes them."""
        saved: list[UploadedFile] = []
        try:
            for i, upload in enumerate(uploads):
                path = self.new_path(".upload")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                saved.append(UploadedFile(str(path), _label(upload.filename, i)))
                with os.fdopen(fd, "wb") as out:
                    while chunk := await upload.read(COPY_CHUNK):
                        out.write(chunk)
        except BaseException:
            self.remove(saved)
            raise
        return saved

    @staticmethod
    def remove(files: list[UploadedFile]) -> None:
        for f in files:
            try:
                os.unlink(f.private)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _sweep_stale(parent: Path, prefix: str = UPLOAD_DIR_PREFIX) -> None:
    """Remove ``<prefix><pid>-*`` directories of processes that no longer run (killed with SIGKILL)."""
    for d in parent.glob(f"{prefix}*"):
        m = re.match(rf"{re.escape(prefix)}(\d+)-", d.name)
        try:
            info = d.lstat()
        except OSError:
            continue
        if not m or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


# ---- lanes --------------------------------------------------------------------------------
class CountingEmbedder:
    """The loaded model, counting the seconds of audio it embeds (for /metrics)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def embed(self, waveforms):
        out = self._inner.embed(waveforms)
        self.seconds += sum(len(w) for w in waveforms) / audio.SAMPLE_RATE
        return out

    def __getattr__(self, name: str) -> Any:  # model_id, dim, name_or_path, default_threshold...
        return getattr(self._inner, name)


class Lane:
    """One thread and the SpeakerDB only it uses: calls run one at a time, in order."""

    def __init__(self, name: str, open_db: Callable[[], SpeakerDB]) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"speakerdb-{name}")
        self.db: SpeakerDB | None = None
        self._open_db = open_db
        self.pending = 0  # calls admitted and not finished (the running one included)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.db is None:
            self.db = self._open_db()
        return fn(self.db, *args, **kwargs)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(db, *args, **kwargs)`` on this lane's thread."""
        self.pending += 1
        try:
            ctx = contextvars.copy_context()
            call = functools.partial(ctx.run, self._call, fn, *args, **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        finally:
            self.pending -= 1
        # After the answer, on this lane's thread: save the index file if it lags far behind
        # this worker's index (a header read when it does not), so no request waits for it.
        try:
            self.executor.submit(self._maintain)
        except RuntimeError:
            pass  # shutting down: close() saves what is owed
        return result

    def _maintain(self) -> None:
        if self.db is not None:
            self.db.indexer.maintain()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self.db is not None:
            self.db.close()


class _Waiting:
    """One identify request in :class:`IdentifyBatches`: its files and, once run, its answer."""

    def __init__(self, files: list[UploadedFile], top_k: int, threshold: float | None) -> None:
        self.files, self.key = files, (top_k, threshold)
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class IdentifyBatches:
    """Identify requests waiting for the embedding lane, answered several at a time.

    Each request is registered here, then queues its own job on the lane as before (so
    the queue bound and 503s count requests, as documented). The first of those jobs to
    run takes every registered request with the same ``top_k`` and threshold, up to
    ``max_files`` files, into one ``SpeakerDB.identify`` call, and hands each its slice of
    the answer; the later jobs find theirs ready and return at once. One request alone
    runs exactly as before. What is shared is only work: one index snapshot, and one
    forward pass for clips of equal length (pipeline.embed_clips); every file still gets its
    own answer or its own error, and an error that concerns the whole call (no speakers
    enrolled) is what each request would have got alone.
    """

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self.calls = 0  # facade calls made (tests and /metrics compare it with requests)
        self.requests = 0

    def add(self, files: list[UploadedFile], top_k: int, threshold: float | None) -> _Waiting:
        entry = _Waiting(files, top_k, threshold)
        with self._lock:
            self._waiting.append(entry)
        return entry

    def discard(self, entry: _Waiting) -> None:
        """Forget a request that will not run (cancelled before its turn)."""
        with self._lock:
            if entry in self._waiting:
                self._waiting.remove(entry)

    def run(self, db: SpeakerDB, entry: _Waiting) -> Any:
        """On the lane's thread: ``entry``'s answer, computing it (with others') if not done yet."""
        if not entry.done:
            with self._lock:
                batch, n_files = [entry], len(entry.files)
                for other in self._waiting:
                    if other is not entry and other.key == entry.key and n_files + len(other.files) <= self.max_files:
                        batch.append(other)
                        n_files += len(other.files)
                for member in batch:
                    if member in self._waiting:  # ``entry`` is not when its request was cancelled
                        self._waiting.remove(member)
            top_k, threshold = entry.key
            try:
                results = db.identify([f for member in batch for f in member.files], top_k=top_k, threshold=threshold)
            except BaseException as e:  # noqa: BLE001 - handed to every request of the call
                for member in batch:
                    member.error, member.done = e, True
            else:
                start = 0
                for member in batch:
                    member.result, member.done = results[start : start + len(member.files)], True
                    start += len(member.files)
            self.calls += 1
            self.requests += len(batch)
        if entry.error is not None:
            raise entry.error
        return entry.result


#: Seconds between two publications of a worker's counters for the other workers' /metrics.
METRICS_PUBLISH_S = 1.0
#: The methods /metrics names; any other (HTTP allows made-up ones, of any length) counts as
#: "other", so that no request can add a label value, and with it a series, to every scrape.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method_label(method: str) -> str:
    return method if method in METRIC_METHODS else "other"


def _status_label(status: int) -> int:
    return status if isinstance(status, int) and 100 <= status <= 599 else 0


class Metrics:
    """Counters and histograms of one worker process, and the Prometheus text of several.

    With ``serve --workers N`` any worker may take a scrape: each publishes its counters as
    a JSON file in the shared ``ServeConfig.metrics_dir`` every METRICS_PUBLISH_S, and the
    worker that answers sums its own (live) with those of the other running workers, so a
    scrape sees the whole service (at most METRICS_PUBLISH_S behind for the others).
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}  # per bucket counts, then sum, count
        self.rejected_busy = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answer. ``route`` must be a route's template (or "unmatched"), never the
        request's path; the method and status are mapped to a fixed set here."""
        method, status = _method_label(method), _status_label(status)
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.setdefault((method, route), [0.0] * (len(LATENCY_BUCKETS_S) + 2))
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                h[i] += 1
        h[-2] += seconds
        h[-1] += 1

    def state(self, audio_seconds: float, queue_depth: int, ready: bool,
              batches: "IdentifyBatches | None" = None) -> dict[str, Any]:
        """This worker's figures as JSON-able data (what it publishes and what render() sums)."""
        return {
            "pid": os.getpid(),
            "requests": [[m, r, s, n] for (m, r, s), n in sorted(self.requests.items())],
            "latency": [[m, r, list(h)] for (m, r), h in sorted(self.latency.items())],
            "busy": self.rejected_busy, "audio_seconds": audio_seconds, "queue_depth": queue_depth,
            "ready": bool(ready), "identify_requests": batches.requests if batches else 0,
            "identify_calls": batches.calls if batches else 0,
        }

    @staticmethod
    def render(states: list[dict[str, Any]], queue_size: int) -> str:
        """The Prometheus text of the workers ``states`` together (the answering worker's first)."""
        requests: dict[tuple[str, str, int], int] = {}
        latency: dict[tuple[str, str], list[float]] = {}
        for st in states:
            for m, r, s, n in st["requests"]:
                requests[(m, r, int(s))] = requests.get((m, r, int(s)), 0) + int(n)
            for m, r, h in st["latency"]:
                total = latency.setdefault((m, r), [0.0] * len(h))
                for i, v in enumerate(h):
                    total[i] += v
        lines = [
            "# HELP speakerdb_requests_total HTTP requests answered, by endpoint and status.",
            "# TYPE speakerdb_requests_total counter",
        ]
        for (method, route, status), n in sorted(requests.items()):
            lines.append(f'speakerdb_requests_total{{method="{method}",endpoint="{route}",status="{status}"}} {n}')
        lines += ["# HELP speakerdb_request_seconds Time to answer a request.",
                  "# TYPE speakerdb_request_seconds histogram"]
        for (method, route), h in sorted(latency.items()):
            labels = f'method="{method}",endpoint="{route}"'
            for bound, n in zip(LATENCY_BUCKETS_S, h):
                lines.append(f'speakerdb_request_seconds_bucket{{{labels},le="{bound:g}"}} {int(n)}')
            lines.append(f'speakerdb_request_seconds_bucket{{{labels},le="+Inf"}} {int(h[-1])}')
            lines.append(f"speakerdb_request_seconds_sum{{{labels}}} {h[-2]:.6f}")
            lines.append(f"speakerdb_request_seconds_count{{{labels}}} {int(h[-1])}")

        def total(field: str) -> float:
            return sum(st[field] for st in states)

        lines += [
            "# HELP speakerdb_audio_seconds_total Seconds of audio embedded.",
            "# TYPE speakerdb_audio_seconds_total counter",
            f"speakerdb_audio_seconds_total {total('audio_seconds'):.3f}",
            "# HELP speakerdb_queue_depth Embedding requests running or waiting, in all workers.",
            "# TYPE speakerdb_queue_depth gauge",
            f"speakerdb_queue_depth {int(total('queue_depth'))}",
            "# HELP speakerdb_queue_size Embedding requests a worker holds before answering 503.",
            "# TYPE speakerdb_queue_size gauge",
            f"speakerdb_queue_size {queue_size}",
            "# HELP speakerdb_busy_rejections_total Requests answered 503 because the queue was full.",
            "# TYPE speakerdb_busy_rejections_total counter",
            f"speakerdb_busy_rejections_total {int(total('busy'))}",
            "# HELP speakerdb_identify_batched_total Identify requests, and the facade calls that answered them "
            "(several requests waiting together share one call).",
            "# TYPE speakerdb_identify_batched_total counter",
            f'speakerdb_identify_batched_total{{count="requests"}} {int(total("identify_requests"))}',
            f'speakerdb_identify_batched_total{{count="calls"}} {int(total("identify_calls"))}',
            "# HELP speakerdb_workers Worker processes counted in this scrape, and those with the model loaded.",
            "# TYPE speakerdb_workers gauge",
            f'speakerdb_workers{{state="running"}} {len(states)}',
            f'speakerdb_workers{{state="ready"}} {sum(bool(st["ready"]) for st in states)}',
            "# HELP speakerdb_ready Whether the worker that answered has the model loaded (1) or not (0).",
            "# TYPE speakerdb_ready gauge",
            f"speakerdb_ready {int(states[0]['ready'])}",
            "# HELP speakerdb_worker_pid The worker process that answered this scrape.",
            "# TYPE speakerdb_worker_pid gauge",
            f"speakerdb_worker_pid {states[0]['pid']}",
        ]
        return "\n".join(lines) + "\n"


def publish_metrics(directory: Path, state: dict[str, Any]) -> None:
    """Write this worker's ``state`` as ``<pid>.json`` in ``directory`` (a new file renamed over the old)."""
    with atomic.replace(directory / f"{state['pid']}.json") as f:  # its temporary name does not end in .json
        f.write(json.dumps(state).encode())


def other_workers_metrics(directory: Path) -> list[dict[str, Any]]:
    """The published states of the other workers that still run (files of dead ones are removed)."""
    out = []
    for path in directory.glob("*.json"):
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        except PermissionError:
            pass
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # replaced or removed meanwhile: left out of this scrape
    return out


class Service:
    """What one worker process holds: the configuration, the two lanes, uploads and metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.counting: CountingEmbedder | None = None
        self.embed_lane = Lane("embed", self._open_embedding_db)
        self.admin_lane = Lane("admin", lambda: SpeakerDB(config.db_path, model=config.model, device=config.device,
                                                          precision=config.precision, max_audio_s=config.max_audio_s))
        self.uploads = UploadDir(config.tmp_dir)
        self.identify_batches = IdentifyBatches(config.max_files)
        self.metrics = Metrics()
        self.ready = False
        self.model_id: str | None = None
        self.load_error: str | None = None
        self.job_seconds = 1.0  # running mean of an embedding request's time (for Retry-After)
        # Whether a request needs a key. Set at start and only ever turned on: revoking keys
        # while the service runs must never open it (a database whose keys are all revoked
        # refuses every request instead).
        self.keys_required = config.require_keys and not config.insecure_no_auth
        # Server-side paths (database, index, uploads) as clients may see them in messages;
        # completed once the database is open (_learn_database).
        self.private_names = _longest_first({
            config.db_path: "the service's database", store.display_url(config.db_path): "the service's database",
            config.db_path + INDEX_SUFFIX: "the service's index file",
            str(self.uploads.path): "the service's upload directory"})

    def _open_embedding_db(self) -> SpeakerDB:
        c = self.config
        probe = SpeakerDB(c.db_path, model=c.model, device=c.device, precision=c.precision, max_audio_s=c.max_audio_s)
        try:
            loaded = probe.embedder  # the database's own model unless --model: the facade decides
        finally:
            probe.close()
        self.counting = CountingEmbedder(loaded)
        return SpeakerDB(c.db_path, device=c.device, precision=c.precision, embedder=self.counting,
                         max_audio_s=c.max_audio_s)

    async def start(self) -> None:
        """Load the model in the background: /healthz answers at once, /readyz once it is loaded."""
        try:
            self.model_id = (await self.embed_lane.run(lambda db: db.embedder)).model_id
            await self.admin_lane.run(self._learn_database)
            self.ready = True
            log.info("speakerdb worker %d ready: model %s", os.getpid(), self.model_id)
        except errors.SpeakerDBError as e:
            self.load_error = self.scrub(str(e))  # clients read it in 503s; the log keeps the paths
            log.error("speakerdb worker %d cannot serve: %s", os.getpid(), e)
        except Exception as e:  # a model that fails in an unforeseen way: say so, keep /healthz up
            self.load_error = self.scrub(f"{type(e).__name__}: {e}")
            log.error("speakerdb worker %d cannot load the model: %s: %s", os.getpid(), type(e).__name__, e)

    def scrub(self, message: str) -> str:
        """``message`` with the server's own paths replaced by what they are."""
        for private, shown in self.private_names.items():
            message = message.replace(private, shown)
        return message

    def _learn_database(self, db: SpeakerDB) -> None:
        """On the admin lane at start: what messages must not show, and whether keys exist."""
        self.private_names = _longest_first({
            **self.private_names, str(db.target): "the service's database", str(db.db_path): "the service's database",
            str(db.index_path): "the service's index file"})
        self._keys_exist(db)  # a worker restarted by uvicorn after a key was created requires keys

    def _keys_exist(self, db: SpeakerDB) -> bool:
        """Whether requests need a key from now on (see keys_required); never turns back off."""
        if not self.keys_required and not self.config.insecure_no_auth and db.has_keys(include_revoked=True):
            self.keys_required = True
            log.warning("speakerdb worker %d: the database now has API keys: every request needs one",
                        os.getpid())
        return self.keys_required

    def metrics_state(self) -> dict[str, Any]:
        seconds = self.counting.seconds if self.counting is not None else 0.0
        return self.metrics.state(seconds, self.embed_lane.pending, self.ready, self.identify_batches)

    def metrics_text(self) -> str:
        """This worker's figures, with every other running worker's when there are several."""
        states = [self.metrics_state()]
        if self.config.metrics_dir:
            states += other_workers_metrics(Path(self.config.metrics_dir))
        return Metrics.render(states, self.config.queue_size)

    async def publish_metrics_forever(self) -> None:
        """Publish this worker's counters for the others every METRICS_PUBLISH_S (several workers only)."""
        if not self.config.metrics_dir:
            return
        directory, last = Path(self.config.metrics_dir), None
        while True:
            state = self.metrics_state()
            if state != last:
                try:
                    publish_metrics(directory, state)
                    last = state
                except OSError as e:  # a full disk must not stop the service, only its sums
                    log.warning("worker %d cannot publish its metrics in %s: %s", os.getpid(), directory, e)
            await asyncio.sleep(METRICS_PUBLISH_S)

    def close(self) -> None:
        self.embed_lane.close()
        self.admin_lane.close()
        self.uploads.close()
        if self.config.metrics_dir:
            with contextlib.suppress(OSError):
                (Path(self.config.metrics_dir) / f"{os.getpid()}.json").unlink()

    # ---- calls ------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.load_error is not None:  # not a wait: an operator must act (the log says the same)
            raise ApiError(503, "model_unavailable", f"this worker cannot serve: {self.load_error}")
        if not self.ready:
            raise ApiError(503, "not_ready", "the model is still loading: retry shortly", {"Retry-After": "5"})

    async def embed(self, fn: Callable[..., Any], *args: Any, names: dict[str, str] | None = None, **kw: Any) -> Any:
        """Run an embedding call on the embedding lane, or answer 503 at once if it is full."""
        self.require_ready()
        lane = self.embed_lane
        if lane.pending >= self.config.queue_size:
            self.metrics.rejected_busy += 1
            wait = max(1, math.ceil(self.job_seconds * lane.pending))
            raise ApiError(503, "busy", f"{lane.pending} embedding requests are already running or waiting "
                           f"in this worker (at most {self.config.queue_size}): retry in {wait} s",
                           {"Retry-After": str(wait)})
        started = time.monotonic()
        try:
            return await lane.run(fn, *args, **kw)
        except errors.SpeakerDBError as e:
            raise _from_library(e, {**(names or {}), **self.private_names}) from None
        finally:
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.monotonic() - started)

    async def admin(self, fn: Callable[..., Any], *args: Any, names: dict[str, str] | None = None, **kw: Any) -> Any:
        self.require_ready()
        try:
            return await self.admin_lane.run(fn, *args, **kw)
        except errors.SpeakerDBError as e:
            raise _from_library(e, {**(names or {}), **self.private_names}) from None

    def authenticate(self, header: str | None) -> KeyInfo | None:
        """The caller's key; None when the service runs without keys (loopback and the database
        never had one, or --insecure-no-auth). Runs on any thread: only reads the store
        (thread-safe engine)."""
        if self.config.insecure_no_auth:
            return None
        db = self.admin_lane.db
        if db is None:
            raise ApiError(503, "not_ready", self.load_error or "the service is starting: retry shortly",
                           {"Retry-After": "5"})
        scheme, _, key = (header or "").partition(" ")
        if not header:
            if not self._keys_exist(db):
                return None  # loopback only: serve refuses other hosts while the database never had a key
            raise ApiError(401, "unauthorized", "this service needs an API key: send `Authorization: Bearer KEY`",
                           {"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send the key as `Authorization: Bearer KEY`",
                           {"WWW-Authenticate": "Bearer"})
        info = db.authenticate(key.strip())
        if info is None:
            raise ApiError(401, "unauthorized", "the API key is not valid (unknown, revoked or mistyped)",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return info


def _longest_first(names: dict[str, str]) -> dict[str, str]:
    """``names`` longest key first, so that a path that begins with another (the index file
    beside the database) is replaced whole; empty keys dropped."""
    return {k: names[k] for k in sorted(names, key=len, reverse=True) if k}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name (None without keys) and scope."""

    key_name: str | None
    scope: str


def require(scope: str):
    """A FastAPI dependency: the caller's key must have ``scope`` (read < write < admin)."""
    assert scope in SCOPES

    async def dependency(request: Request) -> Caller:
        service: Service = request.app.state.service
        header = request.headers.get("authorization")
        if service.config.insecure_no_auth:
            return Caller(None, "admin")
        checked = getattr(request.state, "speakerdb_key", None)  # uploads: the middleware checked it first
        if checked is not None and checked[0] == header:
            info = checked[1]
        else:  # PBKDF2 on the first use of a key and one indexed query: off the event loop
            info = await asyncio.get_running_loop().run_in_executor(None, service.authenticate, header)
        if info is None:
            return Caller(None, "admin")
        if not info.allows(scope):
            raise ApiError(403, "forbidden", f"key {info.name!r} has scope {info.scope!r}; this needs {scope!r}")
        return Caller(info.name, info.scope)

    return dependency


# ---- request and response shapes (for the OpenAPI page) ----------------------------------------
class RenameBody(BaseModel):
    name: str = Field(..., description="The speaker's new name.", examples=["alicia"])


class ThresholdBody(BaseModel):
    threshold: float = Field(..., description="Cosine score in [0, 1].", examples=[0.8])


class KeyBody(BaseModel):
    name: str = Field(..., examples=["callcentre-1"])
    scope: str = Field("read", description="read, write or admin", examples=["read"])


def _example(doc: Any, status: int = 200) -> dict[int, Any]:
    return {status: {"content": {"application/json": {"example": doc}}}}


EXAMPLE_IDENTIFY = [
    {"file": "call-0042.wav", "speaker": "alice", "score": 0.91,
     "candidates": [{"speaker": "alice", "score": 0.91}, {"speaker": "bob", "score": 0.42}]},
    {"file": "noise.wav", "error": "is silent (peak below -80 dBFS)"},
]
EXAMPLE_ENROLL = {"speaker": "alice", "created": True,
                  "added": [{"source": "alice1.flac", "duration_s": 9.8, "audio_sha256": "5f1c...",
                             "created_at": "2026-11-30T18:00:00Z"}],
                  "skipped": [], "n_utterances": 1, "warnings": []}
EXAMPLE_TIMELINE = [
    {"file": "meeting.wav", "duration": 12.0,
     "segments": [{"start": 0.31, "end": 5.2, "label": "alice", "speaker": "alice", "score": 0.83, "raw_score": 0.83},
                  {"start": 5.9, "end": 11.6, "label": "unknown-1", "speaker": None, "score": 0.41,
                   "raw_score": 0.41}],
     "voices": [{"label": "unknown-1", "speaker": None, "seconds": 5.7, "score": 0.41, "raw_score": 0.41},
                {"label": "alice", "speaker": "alice", "seconds": 4.89, "score": 0.83, "raw_score": 0.83}],
     "notes": []},
]
EXAMPLE_VERIFY = {"file": "claim.wav", "speaker": "alice", "score": 0.88, "threshold": 0.86, "accepted": True}
EXAMPLE_SPEAKER = {"name": "alice", "n_utterances": 2, "total_duration_s": 19.6, "created_at": "2026-11-30T18:00:00Z",
                   "updated_at": "2026-11-30T18:05:00Z", "metadata": {"team": "sales"}}
EXAMPLE_ERROR = {"error": {"code": "speaker_not_found", "message": "no speaker named 'zoe' (see `speakerdb list`)"}}

AUDIO_PARTS = "Audio files (WAV, FLAC, OGG, MP3, anything FFmpeg decodes) as multipart parts."


#: Fields of ``speakerdb info`` that name places on the server: left out of GET /v1/info.
SERVER_ONLY_INFO = ("db_path", "index_path")


def _form_json(text: str | None, what: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(422, "invalid_input", f"{what} must be JSON, not {text[:80]!r}") from None
    except RecursionError:  # nesting thousands deep exhausts the parser's stack: bad input, not a 500
        raise ApiError(422, "invalid_input", f"{what} is nested more than {store.MAX_METADATA_DEPTH} levels deep") \
            from None


def _check_count(service: Service, files: list[UploadFile]) -> None:
    if len(files) > service.config.max_files:
        raise ApiError(413, "too_many_files",
                       f"{len(files)} files in one request, at most {service.config.max_files} are accepted")


# ---- the app ------------------------------------------------------------------------------
def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app of one worker (uvicorn calls this with no argument in each worker process)."""
    config = config or ServeConfig.from_env()
    store.APPLICATION = store.APPLICATION or "speakerdb serve"  # how its PostgreSQL sessions are named
    if config.insecure_no_auth:
        log.warning("speakerdb worker %d: --insecure-no-auth: every request is allowed everything, "
                    "without a key", os.getpid())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(config)
        app.state.service = service
        loader = asyncio.create_task(service.start())
        publisher = asyncio.create_task(service.publish_metrics_forever())
        try:
            yield
        finally:
            loader.cancel()
            publisher.cancel()
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(
        title="speakerdb",
        version=__version__,
        lifespan=lifespan,
        description="Speaker enrollment, identification and verification. Answers are the JSON that the "
        "`speakerdb` CLI prints with `--json`. Send `Authorization: Bearer KEY` (`speakerdb keys create`). "
        "Errors are `{\"error\": {\"code\", \"message\"}}`.",
    )
    app.state.config = config
    # This process's connections (uvicorn makes them once the app is built).
    TimedHTTPProtocol.header_timeout_s, TimedHTTPProtocol.body_timeout_s = config.header_timeout_s, config.body_timeout_s
    _install_handlers(app)

    @app.get("/healthz", tags=["service"], responses=_example({"status": "ok"}))
    async def healthz() -> dict[str, str]:
        """Answers 200 as soon as the process runs (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses=_example({"status": "ready", "model": "microsoft/wavlm-base-plus-sv"}))
    async def readyz(request: Request):
        """200 once the model is loaded (readiness); 503 while it loads or if it cannot be loaded."""
        service: Service = request.app.state.service
        service.require_ready()
        return {"status": "ready", "model": service.model_id, "pid": os.getpid()}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests by endpoint and status, latency histograms, seconds of
        audio embedded, queue depth, summed over every worker of the service (the others'
        figures at most a second old); `speakerdb_worker_pid` names the worker that answered."""
        service: Service = request.app.state.service
        text = await asyncio.get_running_loop().run_in_executor(None, service.metrics_text)  # reads files
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/identify", tags=["speakers"], responses=_example(EXAMPLE_IDENTIFY))
    async def identify(request: Request, files: list[UploadFile] = File(..., description=AUDIO_PARTS),
                       top_k: int = Form(5, ge=1, description="Candidates per file."),
                       threshold: float | None = Form(None, description="Override the threshold for this call [-1, 1]."),
                       caller: Caller = Depends(require("read"))):
        """Name the speaker of each file (`speakerdb identify --json`): one answer per file, in order,
        or `{"file", "error"}` for a file that could not be used.

        `curl -H "Authorization: Bearer $KEY" -F files=@call.wav http://127.0.0.1:8000/v1/identify`
        """
        service: Service = request.app.state.service
        _check_count(service, files)
        saved = await service.uploads.save(files)
        entry = service.identify_batches.add(saved, top_k, threshold)
        try:
            results = await service.embed(service.identify_batches.run, entry, names=_names(saved))
        finally:
            service.identify_batches.discard(entry)
            service.uploads.remove(saved)
        return ok([r.to_dict() for r in results])

    @app.post("/v1/speakers/{name}/enrollments", tags=["speakers"], responses=_example(EXAMPLE_ENROLL, 201))
    async def enroll(request: Request, name: str, files: list[UploadFile] = File(..., description=AUDIO_PARTS),
                     metadata: str | None = Form(None, description='JSON object, e.g. {"team": "sales"}'),
                     new: bool = Form(False, description="Refuse if the speaker exists."),
                     strict: bool = Form(False, description="Refuse doubtful clips instead of warning."),
                     caller: Caller = Depends(require("write"))):
        """Enroll speaker `name` from the files, or add them to it (`speakerdb enroll --json`).
        201 when the speaker was created, 200 when added to.

        `curl -H "Authorization: Bearer $KEY" -F files=@alice1.flac -F files=@alice2.flac
        -F 'metadata={"team":"sales"}' http://127.0.0.1:8000/v1/speakers/alice/enrollments`
        """
        service: Service = request.app.state.service
        _check_count(service, files)
        meta = _form_json(metadata, "metadata")
        saved = await service.uploads.save(files)

        def call(db: SpeakerDB):
            with store.audited(caller.key_name, "enroll", store.normalize_name(name),
                               {"files": len(saved), "new": new}):
                return db.enroll(name, saved, new=new, metadata=meta, strict=strict)

        try:
            result = await service.embed(call, names=_names(saved))
        finally:
            service.uploads.remove(saved)
        return ok(result.to_dict(), 201 if result.created else 200)

    @app.post("/v1/speakers/{name}/verify", tags=["speakers"], responses=_example(EXAMPLE_VERIFY))
    async def verify(request: Request, name: str, file: UploadFile = File(..., description="One audio file."),
                     threshold: float | None = Form(None, description="Override the threshold for this call."),
                     caller: Caller = Depends(require("read"))):
        """Is `file` spoken by `name`? (`speakerdb verify --json`)

        `curl -H "Authorization: Bearer $KEY" -F file=@claim.wav http://127.0.0.1:8000/v1/speakers/alice/verify`
        """
        service: Service = request.app.state.service
        saved = await service.uploads.save([file])
        try:
            result = await service.embed(lambda db: db.verify(name, saved[0], threshold=threshold),
                                         names=_names(saved))
        finally:
            service.uploads.remove(saved)
        return ok(result.to_dict())

    @app.post("/v1/timeline", tags=["speakers"], responses=_example(EXAMPLE_TIMELINE))
    async def timeline(request: Request, files: list[UploadFile] = File(..., description=AUDIO_PARTS),
                       threshold: float | None = Form(None, description="Override the threshold for this call."),
                       window: float = Form(1.5, description="Window length, seconds (0.5-30)."),
                       hop: float = Form(0.5, description="Window hop, seconds (0.05 to the window)."),
                       min_segment: float = Form(1.0, description="Shorter segments join their neighbour, seconds."),
                       caller: Caller = Depends(require("read"))):
        """Who speaks when in each file (`speakerdb timeline --json`): segments named from the
        enrolled speakers or unknown-1, unknown-2..., or `{"file", "error"}` for a file that
        could not be used. Recordings longer than the service's `--max-audio-s` are refused.

        `curl -H "Authorization: Bearer $KEY" -F files=@meeting.wav http://127.0.0.1:8000/v1/timeline`
        """
        from ..timeline import Params

        service: Service = request.app.state.service
        _check_count(service, files)
        try:
            params = Params(window_s=window, hop_s=hop, min_segment_s=min_segment).check()
        except errors.SpeakerDBError as e:  # before anything is uploaded
            raise _from_library(e, {}) from None
        saved = await service.uploads.save(files)
        try:
            results = await service.embed(lambda db: db.timeline(saved, threshold=threshold, params=params),
                                          names=_names(saved))
        finally:
            service.uploads.remove(saved)
        return ok([t.to_dict() for t in results])

    @app.get("/v1/speakers", tags=["speakers"], responses=_example([EXAMPLE_SPEAKER]))
    async def list_speakers(request: Request, caller: Caller = Depends(require("read"))):
        """Every enrolled speaker (`speakerdb list --json`)."""
        speakers = await request.app.state.service.admin(lambda db: db.list())
        return ok([{k: v for k, v in s.to_dict().items() if k != "utterances"} for s in speakers])

    @app.get("/v1/speakers/{name}", tags=["speakers"],
             responses={**_example({**EXAMPLE_SPEAKER, "utterances": EXAMPLE_ENROLL["added"]}),
                        **_example(EXAMPLE_ERROR, 404)})
    async def show(request: Request, name: str, caller: Caller = Depends(require("read"))):
        """One speaker with its utterances (`speakerdb show --json`)."""
        info = await request.app.state.service.admin(lambda db: db.show(name))
        return ok(info.to_dict())

    @app.patch("/v1/speakers/{name}", tags=["speakers"], responses=_example({"old": "alice", "new": "alicia"}))
    async def rename(request: Request, name: str, body: RenameBody, caller: Caller = Depends(require("write"))):
        """Rename a speaker (`speakerdb rename --json`).

        `curl -X PATCH -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json'
        -d '{"name": "alicia"}' http://127.0.0.1:8000/v1/speakers/alice`
        """
        def call(db: SpeakerDB):
            with store.audited(caller.key_name, "rename", store.normalize_name(name), {"new": body.name}):
                db.rename(name, body.name)

        await request.app.state.service.admin(call)
        return ok({"old": name, "new": body.name})

    @app.delete("/v1/speakers/{name}", tags=["speakers"], responses=_example({"removed": ["bob"], "utterances": 2}))
    async def remove(request: Request, name: str, caller: Caller = Depends(require("write"))):
        """Delete a speaker, its utterances and embeddings (`speakerdb remove --yes --json`)."""
        def call(db: SpeakerDB):
            with store.audited(caller.key_name, "remove", store.normalize_name(name)):
                return db.remove(name)

        n = await request.app.state.service.admin(call)
        return ok({"removed": [name], "utterances": n})

    @app.get("/v1/info", tags=["database"],
             responses=_example({"model_id": "microsoft/wavlm-base-plus-sv", "dim": 512, "threshold": 0.86, "n_speakers": 2, "n_utterances": 3,
                                 "schema_revision": "0003", "generation": 5}))
    async def info(request: Request, caller: Caller = Depends(require("read"))):
        """The database: model, dimension, threshold, counts (`speakerdb info --json` without the
        server's paths, which are no client's business)."""
        document = (await request.app.state.service.admin(lambda db: db.info())).to_dict()
        return ok({k: v for k, v in document.items() if k not in SERVER_ONLY_INFO})

    @app.get("/v1/threshold", tags=["database"], responses=_example({"threshold": 0.86}))
    async def get_threshold(request: Request, caller: Caller = Depends(require("read"))):
        """The decision threshold (`speakerdb threshold --json`)."""
        return ok({"threshold": await request.app.state.service.admin(lambda db: db.threshold)})

    @app.put("/v1/threshold", tags=["database"], responses=_example({"threshold": 0.8}))
    async def put_threshold(request: Request, body: ThresholdBody, caller: Caller = Depends(require("admin"))):
        """Store a new decision threshold in [0, 1] (`speakerdb threshold VALUE --json`)."""
        def call(db: SpeakerDB):
            with store.audited(caller.key_name, "threshold", None, {"threshold": body.threshold}):
                db.set_threshold(body.threshold)
            return db.threshold

        return ok({"threshold": await request.app.state.service.admin(call)})

    @app.get("/v1/gallery", tags=["galleries"], response_class=StreamingResponse,
             responses={200: {"content": {"application/zip": {}},
                              "description": "A gallery file (docs/gallery-format.md): metadata and embeddings."}})
    async def export(request: Request, speaker: list[str] | None = Query(None, description="Only these speakers."),
                     caller: Caller = Depends(require("admin"))):
        """Export speakers to a gallery file, streamed (`speakerdb export`). The file is written to a
        private temporary file that is unlinked before the first byte is sent.

        `curl -H "Authorization: Bearer $KEY" -o site-a.gallery http://127.0.0.1:8000/v1/gallery`
        """
        service: Service = request.app.state.service
        path = service.uploads.new_path(".gallery")

        def call(db: SpeakerDB):
            summary = db.export(path, speaker or None)
            f = open(path, "rb")
            os.unlink(path)  # the open descriptor keeps the data until the stream ends; no name on disk
            return summary, f

        try:
            summary, f = await service.admin(call)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        def chunks():
            with f:
                while chunk := f.read(COPY_CHUNK):
                    yield chunk

        headers = {"Content-Disposition": 'attachment; filename="speakerdb.gallery"',
                   "Content-Length": str(summary.size_bytes),
                   "X-Speakerdb-Speakers": str(summary.n_speakers),
                   "X-Speakerdb-Utterances": str(summary.n_utterances)}
        return StreamingResponse(chunks(), media_type="application/zip", headers=headers)

    @app.post("/v1/gallery", tags=["galleries"],
              responses=_example({"path": "site-a.gallery", "dry_run": False, "created": ["alice"], "merged": [],
                                  "replaced": [], "skipped": [], "utterances_added": 2}))
    async def import_gallery(request: Request, file: UploadFile = File(..., description="A gallery file."),
                             on_conflict: str = Form("fail", description="fail, skip, replace or merge"),
                             dry_run: bool = Form(False, description="Report what would happen; write nothing."),
                             caller: Caller = Depends(require("write"))):
        """Import a gallery file, all of it or nothing (`speakerdb import --json`).

        `curl -H "Authorization: Bearer $KEY" -F file=@site-a.gallery -F on_conflict=merge
        http://127.0.0.1:8000/v1/gallery`
        """
        service: Service = request.app.state.service
        saved = await service.uploads.save([file])

        def call(db: SpeakerDB):
            with store.audited(caller.key_name, "import", None, {"file": saved[0].given, "on_conflict": on_conflict}):
                return db.import_gallery(saved[0], on_conflict=on_conflict, dry_run=dry_run)

        try:
            summary = await service.admin(call, names=_names(saved))
        finally:
            service.uploads.remove(saved)
        return ok(summary.to_dict())

    @app.get("/v1/keys", tags=["keys"],
             responses=_example([{"name": "ops", "scope": "admin", "created_at": "2026-11-30T18:00:00Z",
                                  "revoked_at": None, "active": True}]))
    async def list_keys(request: Request, caller: Caller = Depends(require("admin"))):
        """Every API key, revoked ones included (never their secrets)."""
        return ok([k.to_dict() for k in await request.app.state.service.admin(lambda db: db.list_keys())])

    @app.post("/v1/keys", tags=["keys"], status_code=201,
              responses=_example({"name": "callcentre-1", "key": "sdb_...", "scope": "read"}, 201))
    async def create_key(request: Request, body: KeyBody, caller: Caller = Depends(require("admin"))):
        """Create a key; its secret is in this answer only."""
        new = await request.app.state.service.admin(lambda db: db.create_key(body.name, body.scope,
                                                                             actor=caller.key_name))
        return ok(new.to_dict(), 201)

    @app.delete("/v1/keys/{name}", tags=["keys"],
                responses=_example({"name": "callcentre-1", "scope": "read", "created_at": "2026-11-30T18:00:00Z",
                                    "revoked_at": "2026-11-30T19:00:00Z", "active": False}))
    async def revoke_key(request: Request, name: str, caller: Caller = Depends(require("admin"))):
        """Revoke a key: refused from the next request on, by every worker."""
        info = await request.app.state.service.admin(lambda db: db.revoke_key(name, actor=caller.key_name))
        return ok(info.to_dict())

    @app.get("/v1/audit", tags=["keys"],
             responses=_example([{"time": "2026-11-30T18:00:00Z", "key_name": "ops", "operation": "enroll",
                                  "speaker": "alice", "detail": {"files": 2, "new": False}}]))
    async def audit_log(request: Request, limit: int = Query(100, ge=1, le=100_000), speaker: str | None = None,
                        caller: Caller = Depends(require("admin"))):
        """The newest changes made through the service or to keys, oldest first (`speakerdb audit --json`)."""
        entries = await request.app.state.service.admin(lambda db: db.audit(limit, speaker))
        return ok([e.to_dict() for e in entries])

    return app


def _names(saved: list[UploadedFile]) -> dict[str, str]:
    return {f.private: f.given for f in saved}


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_fields", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # The traceback goes to the server's log (no audio, no embeddings in it); the client
        # gets one line.
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(e).__name__}); see the server log")

    app.add_middleware(_Guard)


class _TooLarge(Exception):
    pass


class _Guard:
    """Outermost layer: body size limit (413 before reading, or as soon as a chunked body passes
    it), Content-Type of uploads (415), and the request metrics."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config: ServeConfig = scope["app"].state.config if "app" in scope else None
        limit = config.max_upload_bytes if config else DEFAULT_MAX_UPLOAD_BYTES
        started = time.monotonic()
        status = {"code": 500, "sent": False, "over": False}

        async def send_direct(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        async def send_tracked(message) -> None:
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
            await send_direct({"type": "http.response.start", "status": response.status_code,
                               "headers": response.raw_headers})
            await send_direct({"type": "http.response.body", "body": response.body, "more_body": True})
            await _discard_body(receive, LINGER_S)
            await send_direct({"type": "http.response.body", "body": b"", "more_body": False})
        try:
            if not _url_is_utf8(scope):
                # uvicorn decodes the path with errors="replace": %FF and %FE would both become
                # U+FFFD and so name the same speaker. A name is text; these bytes are not.
                await reply(400, "invalid_input", "the URL is not valid UTF-8 once %-decoded")
                return
            if declared > limit:
                await reply(413, "too_large", f"request body of {declared:,} bytes, at most {limit:,} are accepted")
                return
            ctype = headers.get("content-type", "")
            if method == "POST" and _is_upload_path(scope["path"]) and not ctype.startswith("multipart/form-data"):
                await reply(415, "unsupported_media_type", "send audio as multipart/form-data parts "
                            f"(got Content-Type {ctype or 'none'!r})")
                return
            service = getattr(scope["app"].state, "service", None) if "app" in scope else None
            if method == "POST" and _is_upload_path(scope["path"]) and service is not None:
                # The key before the body: a caller without a valid key is refused before it can
                # make this worker read (and store) up to --max-upload-mb. The route checks the
                # scope (403) as before; this only answers 401 early.
                try:
                    info = await asyncio.get_running_loop().run_in_executor(None, service.authenticate,
                                                                            headers.get("authorization"))
                    # The route's scope check reuses it (request.state) instead of a second query.
                    scope.setdefault("state", {})["speakerdb_key"] = (headers.get("authorization"), info)
                except ApiError as e:
                    if e.status == 401:
                        await reply(e.status, e.code, e.message, e.headers)
                        return
            if method in ("PUT", "PATCH") and not ctype.startswith("application/json"):
                await reply(415, "unsupported_media_type", f"send a JSON body (got Content-Type {ctype or 'none'!r})")
                return
            received = 0

            async def receive_limited():
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
            if status["over"] and not status["sent"]:
                await reply(413, "too_large", f"request body over {limit:,} bytes")
        finally:
            route = scope.get("route")
            service = getattr(scope["app"].state, "service", None) if "app" in scope else None
            if service is not None:
                service.metrics.observe(method, getattr(route, "path", "unmatched"), status["code"],
                                        time.monotonic() - started)


async def _discard_body(receive, seconds: float) -> None:
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


def _url_is_utf8(scope) -> bool:
    """Whether the request's path and query, %-decoded, are valid UTF-8 (as every name in them must be)."""
    for raw in (scope.get("raw_path") or b"", scope.get("query_string") or b""):
        try:
            urllib.parse.unquote_to_bytes(raw.decode("latin-1")).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _is_upload_path(path: str) -> bool:
    return path in ("/v1/identify", "/v1/timeline", "/v1/gallery") or path.endswith(("/enrollments", "/verify"))


# ---- slow clients ---------------------------------------------------------------------------
_TIMEOUT_BODY = json.dumps({"error": {"code": "timeout", "message": "the request was not received in time"}}).encode()
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


class TimedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]  (httptools if installed, else h11)
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

    def connection_made(self, transport) -> None:  # type: ignore[override]
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


# ---- starting it ----------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` accepts connections only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          ssl_keyfile: str | None = None, ssl_certfile: str | None = None, log_level: str = "info") -> None:
    """Run uvicorn until SIGTERM or SIGINT (requests in flight finish first)."""
    import uvicorn

    shared = None
    threads_per_worker = None
    if workers > 1:
        # Any worker may take a scrape: they publish their counters to each other.
        _sweep_stale(Path(tempfile.gettempdir()), METRICS_DIR_PREFIX)  # left by a serve killed with SIGKILL
        shared = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")  # 0700, apart from the uploads
        config = dataclasses.replace(config, metrics_dir=shared)
        # Each worker's torch would otherwise start a thread per core: N workers then run
        # N x cores threads on the cores, and 16 clients on 2 workers got 0.55-0.62 x the
        # throughput of 1 client (2-core Zen 4). Share the cores out; SPEAKERDB_THREADS wins.
        threads_per_worker = max(1, (os.cpu_count() or 1) // workers)
    hand_to_workers(config.to_env(), threads_per_worker)  # worker processes build their app from it
    try:
        uvicorn.run("speakerdb.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                    ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, log_level=log_level,
                    timeout_graceful_shutdown=None, server_header=False,
                    http="speakerdb.service.app:TimedHTTPProtocol")
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
