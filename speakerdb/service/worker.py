"""What one worker process of ``speakerdb serve`` holds: the configuration, the two lanes and
their facades, the uploads, the metrics and the key check (:class:`Service`).

Every facade call of a request goes through :meth:`Service.embed` or :meth:`Service.admin`:
the queue bound (503 with ``Retry-After`` at once, instead of a queue that grows), library
errors made answers with the server's paths hidden, and the caller's changes recorded in the
audit log by the facade (``SpeakerDB.audited_as``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import errors
from ..api import INDEX_SUFFIX, SpeakerDB
from ..results import ExpireSummary
from ..storage.urls import display_url
from . import metrics
from .auth import Caller, KeyCheck
from .lanes import CountingEmbedder, IdentifyBatches, Lane
from .responses import ApiError, from_library
from .settings import ServeConfig
from .tracebacks import log_error
from .uploads import UploadDir

log = logging.getLogger("speakerdb.server")


class Service:
    """What one worker process holds: the configuration, the two lanes, uploads and metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.counting: CountingEmbedder | None = None
        self.embed_lane = Lane("embed", self._open_embedding_db)
        self.admin_lane = Lane("admin", lambda: self._open_db(model=config.model))
        self.uploads = UploadDir(config.tmp_dir)
        self.identify_batches = IdentifyBatches(config.max_files)
        self.metrics = metrics.Metrics()
        self.keys = KeyCheck(config, self.admin_lane, lambda: self.load_error)
        self.ready = False
        self.model_id: str | None = None
        self.load_error: str | None = None
        self.job_seconds = 1.0  # running mean of an embedding request's time (for Retry-After)
        #: [files done, files in all] of the embedding call running now on this worker's lane
        #: ([0, 0] when none): /metrics shows how far a long request has got.
        self.inflight = [0, 0]
        # Live sessions (WebSocket /v1/stream): each feeds on a thread of this pool while its
        # connection waits (the backpressure that keeps a fast sender's audio out of memory).
        self.streams_open = 0
        # Of them, each key's ((gallery, key name): count); and the connections still waiting for
        # a browser's key, which hold no session and no place of a session (stream.py).
        self.streams_by_key: Counter[tuple[str, str]] = Counter()
        self.streams_waiting = 0
        self.stream_threads = ThreadPoolExecutor(
            max_workers=max(1, config.max_streams), thread_name_prefix="speakerdb-stream"
        )
        # Server-side paths (database, index, uploads) as clients may see them in messages;
        # completed once the database is open (_learn_database).
        self.private_names = _longest_first(
            {
                **_database_names(config.db_path, display_url(config.db_path)),
                config.db_path + INDEX_SUFFIX: "the service's index file",
                str(self.uploads.path): "the service's upload directory",
            }
        )

    def _open_db(self, **kw: Any) -> SpeakerDB:
        c = self.config
        return SpeakerDB(c.db_path, device=c.device, precision=c.precision, max_audio_s=c.max_audio_s, **kw)

    def _open_embedding_db(self) -> SpeakerDB:
        probe = self._open_db(model=self.config.model)
        try:
            loaded = probe.embedder  # the database's own model unless --model: the facade decides
        finally:
            probe.close()
        self.counting = CountingEmbedder(loaded, self.embed_lane.executor.submit)
        return self._open_db(embedder=self.counting)

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
        except Exception as e:  # noqa: BLE001 - a model that fails in an unforeseen way: say so, keep /healthz up
            self.load_error = self.scrub(f"{type(e).__name__}: {e}")
            log.error("speakerdb worker %d cannot load the model: %s: %s", os.getpid(), type(e).__name__, e)

    def scrub(self, message: str) -> str:
        """``message`` with the server's own paths replaced by what they are."""
        for private, shown in self.private_names.items():
            message = message.replace(private, shown)
        return message

    def _learn_database(self, db: SpeakerDB) -> None:
        """On the admin lane at start: what messages must not show, and whether keys exist."""
        self.private_names = _longest_first(
            {
                **self.private_names,
                **_database_names(str(db.target), str(db.db_path)),
                str(db.index_path): "the service's index file",
            }
        )
        self.keys.keys_exist(db)  # a worker restarted by uvicorn after a key was created requires keys

    def metrics_state(self) -> dict[str, Any]:
        """This worker's figures, as it publishes them for the others."""
        seconds = self.counting.seconds if self.counting is not None else 0.0
        state = self.metrics.state(
            seconds, self.embed_lane.pending, self.ready, self.identify_batches, inflight=(*self.inflight,)
        )
        state["streams_open"] = self.streams_open
        state["window_passes"] = self.counting.window_passes if self.counting is not None else 0
        state["windows_embedded"] = self.counting.windows_embedded if self.counting is not None else 0
        return state

    def metrics_text(self) -> str:
        """This worker's figures, with every other running worker's when there are several."""
        return metrics.scrape(self.metrics_state(), self.config.metrics_dir, self.config.queue_size)

    async def expire_forever(self) -> None:
        """Run the retention policy (``SpeakerDB.expire``) once the worker is ready, then every
        ``expire_every_s``; what decisions noted as last_seen is written first. A failure is
        logged and tried again at the next turn: it never stops the service."""
        while True:
            if self.ready:
                try:
                    lane = self.embed_lane  # every gallery's last_seen, on the lane's own thread
                    await asyncio.get_running_loop().run_in_executor(lane.executor, _flush_seen, lane)
                    done = await self.admin_lane.run(_expire_every_gallery)
                    for gallery, summary in done.items():
                        if summary.expired:
                            log.warning(
                                "speakerdb worker %d: expired %d speaker(s) of gallery %s not seen since %s "
                                "(retention policy)",
                                os.getpid(),
                                len(summary.expired),
                                gallery,
                                summary.to_dict()["cutoff"],
                            )
                except Exception as e:  # noqa: BLE001 - a busy or unreachable database: the next turn retries
                    log_error(log, f"speakerdb worker {os.getpid()}: expire failed", e)
                await asyncio.sleep(self.config.expire_every_s)
            else:
                await asyncio.sleep(min(1.0, self.config.expire_every_s))

    async def publish_metrics_forever(self) -> None:
        """Publish this worker's counters for the others (several workers only)."""
        if self.config.metrics_dir:
            await metrics.publish_forever(self.config.metrics_dir, self.metrics_state)

    def close(self) -> None:
        """Finish the lanes' calls, close their databases, remove the uploads and published metrics."""
        self.stream_threads.shutdown(wait=True, cancel_futures=True)
        self.embed_lane.close()
        self.admin_lane.close()
        self.uploads.close()
        metrics.unpublish(self.config.metrics_dir)

    # ---- calls ------------------------------------------------------------------------------
    def require_ready(self) -> None:
        """Answer 503 unless the model is loaded."""
        if self.load_error is not None:  # not a wait: an operator must act (the log says the same)
            raise ApiError(503, "model_unavailable", f"this worker cannot serve: {self.load_error}")
        if not self.ready:
            raise ApiError(503, "not_ready", "the model is still loading: retry shortly", {"Retry-After": "5"})

    async def embed(
        self,
        fn: Callable[..., Any],
        *args: Any,
        caller: Caller | None = None,
        names: dict[str, str] | None = None,
        files: int = 0,
        **kw: Any,
    ) -> Any:
        """Run ``fn(db, *args, **kw)`` on the embedding lane, or answer 503 at once if it is full.

        ``caller``: whose changes these are (the facade records them in the audit log);
        ``names``: private paths and what messages call them instead; ``files``: the call
        works through that many files and takes ``progress=`` (the library's callback),
        which /metrics follows (:meth:`tracked`).
        """
        self.require_ready()
        lane = self.embed_lane
        if lane.pending >= self.config.queue_size:
            self.metrics.rejected_busy += 1
            wait = max(1, math.ceil(self.job_seconds * lane.pending))
            raise ApiError(
                503,
                "busy",
                f"{lane.pending} embedding requests are already running or waiting "
                f"in this worker (at most {self.config.queue_size}): retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        started = time.monotonic()
        try:
            return await lane.run(self.tracked(as_caller(fn, caller), files), *args, **kw)
        except errors.SpeakerDBError as e:
            raise from_library(e, {**(names or {}), **self.private_names}) from None
        finally:
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.monotonic() - started)

    def tracked(self, fn: Callable[..., Any], files: int) -> Callable[..., Any]:
        """``fn`` given ``progress=`` that keeps :attr:`inflight` (files done, in all) while it
        runs on the lane's thread; reset when it returns. ``files`` 0: ``fn`` unchanged."""
        if not files:
            return fn

        def update(done: int, total: int, seconds: float) -> None:
            self.inflight = [done, total]

        def call(db: SpeakerDB, *args: Any, **kw: Any) -> Any:
            self.inflight = [0, files]
            try:
                return fn(db, *args, progress=update, **kw)
            finally:
                self.inflight = [0, 0]

        return call

    async def admin(
        self,
        fn: Callable[..., Any],
        *args: Any,
        caller: Caller | None = None,
        names: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        """Run ``fn(db, *args, **kw)`` on the admin lane (``caller`` and ``names`` as for :meth:`embed`)."""
        self.require_ready()
        try:
            return await self.admin_lane.run(as_caller(fn, caller), *args, **kw)
        except errors.SpeakerDBError as e:
            raise from_library(e, {**(names or {}), **self.private_names}) from None


def as_caller(fn: Callable[..., Any], caller: Caller | None) -> Callable[..., Any]:
    """``fn`` run inside ``db.audited_as(caller's key)``: the changes it makes are recorded."""
    if caller is None:
        return fn

    def call(db: SpeakerDB, *args: Any, **kw: Any) -> Any:
        with db.audited_as(caller.key_name):
            return fn(db, *args, **kw)

    return call


def _flush_seen(lane: Lane) -> None:
    """Write the last_seen that a lane's database and its galleries' views noted (on its thread)."""
    for db in [lane.db, *lane.views.values()]:
        if db is not None:
            db.flush_seen()


#: What a client reads for the service's database wherever a message names its path.
DATABASE_SHOWN = "the service's database"


def _database_names(*paths: str) -> dict[str, str]:
    """The database's ``paths`` as a client sees them; also after the word "database" that
    the library's messages put before a path, which would read "database the service's database"."""
    return {name: DATABASE_SHOWN for path in paths for name in (f"database {path}", path)}


def _longest_first(names: dict[str, str]) -> dict[str, str]:
    """``names`` longest key first, so that a path that begins with another (the index file
    beside the database) is replaced whole; empty keys dropped."""
    return {k: names[k] for k in sorted(names, key=len, reverse=True) if k}


def _expire_every_gallery(db: SpeakerDB) -> dict[str, ExpireSummary]:
    """The service's own retention run: its records are the service's (no key), not those of
    the operating-system user that started it."""
    with db.audited_as(None):
        return db.expire_every_gallery()
