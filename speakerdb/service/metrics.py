"""``/metrics``: one worker's counters and histograms, and the Prometheus text of all workers.

With ``serve --workers N`` any worker may take a scrape: each publishes its counters as a
JSON file in the shared ``ServeConfig.metrics_dir`` (:func:`publish_metrics`), and the worker
that answers sums its own with those of the other running workers
(:func:`other_workers_metrics`). Label values come from fixed sets only (route templates,
known methods, valid statuses), so no request can add a series to every scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..storage import atomic
from .lanes import IdentifyBatches

log = logging.getLogger("speakerdb.server")

METRICS_DIR_PREFIX = "speakerdb-metrics-"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds between two publications of a worker's counters for the other workers' /metrics.
METRICS_PUBLISH_S = 1.0
#: The methods /metrics names; any other (HTTP allows made-up ones, of any length) counts as
#: "other", so that no request can add a label value, and with it a series, to every scrape.
#: The WebSocket close codes /metrics counts live sessions by (any other counts as 0).
STREAM_CLOSE_CODES = frozenset({1000, 1003, 1006, 1007, 1008, 1009, 1011, 1013})
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
        self.streams_started = 0  # live sessions begun (WebSocket /v1/stream, authenticated)
        self.streams_refused = 0  # connections closed with 1013: the worker held --max-streams
        self.stream_closes: dict[int, int] = {}  # sessions ended, by WebSocket close code

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

    def state(
        self,
        audio_seconds: float,
        queue_depth: int,
        ready: bool,
        batches: IdentifyBatches | None = None,
        inflight: tuple[int, ...] = (0, 0),
    ) -> dict[str, Any]:
        """This worker's figures as JSON-able data (what it publishes and what render() sums)."""
        return {
            "pid": os.getpid(),
            "requests": [[m, r, s, n] for (m, r, s), n in sorted(self.requests.items())],
            "latency": [[m, r, list(h)] for (m, r), h in sorted(self.latency.items())],
            "busy": self.rejected_busy,
            "audio_seconds": audio_seconds,
            "queue_depth": queue_depth,
            "ready": bool(ready),
            "identify_requests": batches.requests if batches else 0,
            "identify_calls": batches.calls if batches else 0,
            "files_done": inflight[0],
            "files_total": inflight[1],
            "streams_started": self.streams_started,
            "streams_refused": self.streams_refused,
            "stream_closes": [[c, n] for c, n in sorted(self.stream_closes.items())],
        }

    def stream_closed(self, code: int) -> None:
        """Count a live session that ended with WebSocket close ``code`` (1006: the client vanished)."""
        code = code if code in STREAM_CLOSE_CODES else 0
        self.stream_closes[code] = self.stream_closes.get(code, 0) + 1

    @staticmethod
    def render(states: list[dict[str, Any]], queue_size: int) -> str:
        """The Prometheus text of the workers ``states`` together (the answering worker's first)."""
        requests: dict[tuple[str, str, int], int] = {}
        latency: dict[tuple[str, str], list[float]] = {}
        for st in states:
            for m, r, s, n in st["requests"]:
                requests[(m, r, int(s))] = requests.get((m, r, int(s)), 0) + int(n)
            for m, r, h in st["latency"]:
                summed = latency.setdefault((m, r), [0.0] * len(h))
                for i, v in enumerate(h):
                    summed[i] += v
        lines = [
            "# HELP speakerdb_requests_total HTTP requests answered, by endpoint and status.",
            "# TYPE speakerdb_requests_total counter",
        ]
        for (method, route, status), n in sorted(requests.items()):
            lines.append(f'speakerdb_requests_total{{method="{method}",endpoint="{route}",status="{status}"}} {n}')
        lines += [
            "# HELP speakerdb_request_seconds Time to answer a request.",
            "# TYPE speakerdb_request_seconds histogram",
        ]
        for (method, route), h in sorted(latency.items()):
            labels = f'method="{method}",endpoint="{route}"'
            for bound, n in zip(LATENCY_BUCKETS_S, h):
                lines.append(f'speakerdb_request_seconds_bucket{{{labels},le="{bound:g}"}} {int(n)}')
            lines.append(f'speakerdb_request_seconds_bucket{{{labels},le="+Inf"}} {int(h[-1])}')
            lines.append(f"speakerdb_request_seconds_sum{{{labels}}} {h[-2]:.6f}")
            lines.append(f"speakerdb_request_seconds_count{{{labels}}} {int(h[-1])}")

        def total(field: str) -> float:
            return sum(st.get(field, 0) for st in states)  # .get: a worker of an older version

        closes: dict[int, int] = {}
        for st in states:
            for c, n in st.get("stream_closes", []):
                closes[int(c)] = closes.get(int(c), 0) + int(n)

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
            (
                "# HELP speakerdb_identify_batched_total Identify requests, and the facade calls that answered them "
                "(several requests waiting together share one call)."
            ),
            "# TYPE speakerdb_identify_batched_total counter",
            f'speakerdb_identify_batched_total{{count="requests"}} {int(total("identify_requests"))}',
            f'speakerdb_identify_batched_total{{count="calls"}} {int(total("identify_calls"))}',
            (
                "# HELP speakerdb_inflight_files Files of the embedding requests running now (identify, enroll, "
                "timeline), in all workers: in all, and done so far."
            ),
            "# TYPE speakerdb_inflight_files gauge",
            f'speakerdb_inflight_files{{state="total"}} {sum(int(st.get("files_total", 0)) for st in states)}',
            f'speakerdb_inflight_files{{state="done"}} {sum(int(st.get("files_done", 0)) for st in states)}',
            "# HELP speakerdb_streams_open Live sessions (WebSocket /v1/stream) open now, in all workers.",
            "# TYPE speakerdb_streams_open gauge",
            f"speakerdb_streams_open {int(total('streams_open'))}",
            "# HELP speakerdb_streams_total Live sessions begun, and connections refused (1013) at --max-streams.",
            "# TYPE speakerdb_streams_total counter",
            f'speakerdb_streams_total{{outcome="started"}} {int(total("streams_started"))}',
            f'speakerdb_streams_total{{outcome="refused"}} {int(total("streams_refused"))}',
            "# HELP speakerdb_stream_closes_total Live sessions ended, by WebSocket close code (1006: client gone).",
            "# TYPE speakerdb_stream_closes_total counter",
            *(f'speakerdb_stream_closes_total{{code="{c}"}} {n}' for c, n in sorted(closes.items())),
            (
                "# HELP speakerdb_stream_windows_total Live sessions' windows embedded, and the forward-pass "
                "calls that embedded them (windows of several sessions and requests share a call)."
            ),
            "# TYPE speakerdb_stream_windows_total counter",
            f'speakerdb_stream_windows_total{{count="windows"}} {int(total("windows_embedded"))}',
            f'speakerdb_stream_windows_total{{count="calls"}} {int(total("window_passes"))}',
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


def scrape(own: dict[str, Any], metrics_dir: str | None, queue_size: int) -> str:
    """The Prometheus text of this worker's state ``own``, with every other running worker's
    when the workers share ``metrics_dir``."""
    states = [own]
    if metrics_dir:
        states += other_workers_metrics(Path(metrics_dir))
    return Metrics.render(states, queue_size)


async def publish_forever(metrics_dir: str, state: Callable[[], dict[str, Any]]) -> None:
    """Publish ``state()`` for the other workers every METRICS_PUBLISH_S (when it changed)."""
    directory, last = Path(metrics_dir), None
    while True:
        current = state()
        if current != last:
            try:
                publish_metrics(directory, current)
                last = current
            except OSError as e:  # a full disk must not stop the service, only its sums
                log.warning("worker %d cannot publish its metrics in %s: %s", os.getpid(), directory, e)
        await asyncio.sleep(METRICS_PUBLISH_S)


def unpublish(metrics_dir: str | None) -> None:
    """Remove this worker's published state (it stops; the others no longer count it)."""
    if metrics_dir:
        with contextlib.suppress(OSError):
            (Path(metrics_dir) / f"{os.getpid()}.json").unlink()
