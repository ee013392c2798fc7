"""Starting ``speakerdb serve``: uvicorn with its worker processes, each building the app
(:func:`~.app.create_app`) from the configuration this process leaves them.

The app is named to uvicorn by its import string: each worker process imports and builds its own.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.config
import uvicorn.logging

from ..config import NAMES_SOMEONE_ATTR, hand_to_workers
from .connections import ACCESS_LOGGER
from .metrics import METRICS_DIR_PREFIX
from .settings import ServeConfig
from .tracebacks import describe
from .uploads import sweep_stale

__all__ = ["ServeConfig", "is_loopback", "log_config", "serve"]

#: What uvicorn imports in each worker process: the app factory, the HTTP and WebSocket protocols.
APP_FACTORY = "speakerdb.service.app:create_app"
HTTP_PROTOCOL = "speakerdb.service.connections:TimedHTTPProtocol"
WS_PROTOCOL = "speakerdb.service.connections:TimedWebSocketProtocol"
WS_MAX_SIZE_MARGIN = 64 * 1024  # bytes: the text messages, whatever --max-frame-kb says


def is_loopback(host: str) -> bool:
    """Whether ``host`` accepts connections only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LeaveOutNames(logging.Filter):
    """Drops the library's records that name a speaker or a client's file (``config.NAMES_SOMEONE``):
    what they say is in the answer the caller got, and in the operator's log a name would
    outlive the person's opt-out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, NAMES_SOMEONE_ATTR, False)


class MessageFreeFormatter(uvicorn.logging.DefaultFormatter):
    """uvicorn's formatter, with a record's exception written by :func:`.tracebacks.describe`:
    whatever logs one (uvicorn itself, for an error that escaped the app), no message of it
    reaches the log."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return describe(ei[1]) if isinstance(ei[1], BaseException) else ""

    def format(self, record: logging.LogRecord) -> str:
        # logging reuses a record's exc_text once any handler has formatted it: another
        # handler's (a program's own, with messages) would be written as it is.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


def log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging configuration (each worker process applies it), plus the service's:
    the access log (:data:`~.connections.ACCESS_LOGGER`, replacing uvicorn's, which wrote
    each request's path and query), the library's records, less those that name someone, and
    tracebacks without messages (:class:`MessageFreeFormatter`)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    level = log_level.upper()
    config.setdefault("filters", {})["leave_out_names"] = {"()": f"{__name__}.LeaveOutNames"}
    config["formatters"]["default"]["()"] = f"{__name__}.MessageFreeFormatter"  # uvicorn's and ours
    config["handlers"]["speakerdb"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "filters": ["leave_out_names"],
    }
    config["handlers"]["speakerdb_access"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",  # where uvicorn's access log went
    }
    # Replaces the CLI's handler in this process, so one worker logs as several do.
    config["loggers"]["speakerdb"] = {"handlers": ["speakerdb"], "level": level, "propagate": False}
    config["loggers"][ACCESS_LOGGER] = {"handlers": ["speakerdb_access"], "level": level, "propagate": False}
    return config


def serve(
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    log_level: str = "info",
) -> None:
    """Run uvicorn until SIGTERM or SIGINT (requests in flight finish first)."""
    shared = None
    threads_per_worker = None
    if workers > 1:
        # Any worker may take a scrape: they publish their counters to each other.
        sweep_stale(Path(tempfile.gettempdir()), METRICS_DIR_PREFIX)  # left by a serve killed with SIGKILL
        shared = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")  # 0700, apart from the uploads
        config = dataclasses.replace(config, metrics_dir=shared)
        # Each worker's torch would otherwise start a thread per core: N workers then run
        # N x cores threads on the cores, and 16 clients on 2 workers got 0.55-0.62 x the
        # throughput of 1 client (2-core Zen 4). Share the cores out; SPEAKERDB_THREADS wins.
        threads_per_worker = max(1, (os.cpu_count() or 1) // workers)
    hand_to_workers(config.to_env(), threads_per_worker)  # worker processes build their app from it
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_keyfile=ssl_keyfile,
            ssl_certfile=ssl_certfile,
            log_level=log_level,
            log_config=log_config(log_level),
            access_log=False,  # ours (connections.log_request) names routes, never paths
            timeout_graceful_shutdown=None,
            server_header=False,
            http=HTTP_PROTOCOL,
            ws=WS_PROTOCOL,
            # A WebSocket message past this is closed with 1009 by uvicorn itself, before the app
            # reads it; up to it, the app refuses a frame over --max-frame-kb with an error event.
            ws_max_size=2 * config.max_frame_bytes + WS_MAX_SIZE_MARGIN,
        )
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
