#!/usr/bin/env python
"""Benchmark ``speakerdb serve`` against in-process ``SpeakerDB.identify`` and one-shot CLI processes.

    HF_HUB_OFFLINE=1 python scripts/bench_service.py                         # ~8 min on 2 busy cores
    HF_HUB_OFFLINE=1 python scripts/bench_service.py --checkpoint ./wavlm-random --seconds 30 --json out.json
    HF_HUB_OFFLINE=1 python scripts/bench_service.py --workers 1 --skip-cli --skip-cells --interleave 7  # overhead only

The model is a RANDOM-weight WavLM x-vector checkpoint of the full microsoft/wavlm-base-plus-sv
architecture (scripts/make_random_checkpoint.py; made in --checkpoint DIR if that is empty,
else reused): it costs what the real model costs. ``--model resemblyzer`` measures the
pretrained GE2E encoder instead (issue 23's throughput target is stated for it). A database of --speakers speakers is
enrolled once; then, in one run and on one machine:

* **in-process**: ``SpeakerDB.identify([clip])`` in this process, model loaded, median of
  --repeats calls after a warm-up, for each clip length (3 s and 10 s);
* **one-shot CLI**: ``speakerdb identify CLIP --json`` as a new process each time (what
  scripts paid before the service), median of 3;
* **interleaved**: with the 1-worker service up, one in-process call then one service call,
  --interleave times: the service's overhead as a ratio of medians that the machine's
  changing load cannot skew (on a shared machine the only comparison to trust);
* **service**: ``speakerdb serve`` with 1 and 2 workers; for 1, 4 and 16 concurrent clients
  (threads, each with its own :class:`speakerdb.client.Client`, no retries), each clip length:
  requests per second, p50/p95/p99 latency, errors, 503s (counted apart: the queue was
  full, the client was told to retry) and the peak resident memory of each worker process.

* **live streams** (``--streams N``, issue 23): N WebSocket /v1/stream sessions, each sending
  speech (``--speech DIR``: LibriSpeech excerpts) at real-time pace in 100 ms frames, for the
  whole of each service cell, beside the identify clients: how far behind real time their
  events run (event lag: the seconds of audio sent when an event arrives, less its ``at``),
  and how many windows each forward pass of the worker's embedding lane took
  (``speakerdb_stream_windows_total``: windows of several sessions and requests share a call).

Nothing else runs while a side is measured (the service is stopped for the baselines).
The table goes to stdout as Markdown, progress to stderr. Every row names the CPU and the
load average before and after it: on a shared machine, compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

import kit

SR = kit.SAMPLE_RATE
READY_TIMEOUT_S = 600  # seconds: two full-size models loading on a busy machine
load = kit.load_average
log = kit.log
voice = kit.voice
percentile = kit.percentile


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MiB (VmRSS); 0 where it has gone."""
    value = kit.status_mib("VmRSS", pid)
    return 0.0 if math.isnan(value) else value  # NaN: the process exited


def worker_pids(main: int) -> list[int]:
    """The processes that serve: uvicorn's children with --workers > 1, else the main process."""
    try:
        children = [int(p) for p in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
    except OSError:
        children = []
    # multiprocessing's resource tracker is a child too, but small: workers hold a model
    big = [p for p in children if rss_mb(p) > 100]
    return big or [main]


class Service:
    def __init__(self, db: Path, model: str, workers: int, key: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "speakerdb",
                "--db",
                str(db),
                "--model",
                model,
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--queue-size",
                "64",
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.key = key

    def wait_ready(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited with {self.proc.returncode}; see its log")
            try:
                # /metrics counts every worker's readiness, whichever answers (the kernel may
                # give one worker every connection for a while).
                with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
                    ready = re.search(r'^speakerdb_workers\{state="ready"\} (\d+)$', r.read().decode(), re.M)
                if ready and int(ready.group(1)) >= self.workers:
                    return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise SystemExit("the service did not become ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log_file.close()


def run_clients(
    service: Service, clip: Path, n_clients: int, seconds: float, streams: int = 0, speech: np.ndarray | None = None
) -> dict:
    """``n_clients`` threads identifying ``clip`` back to back for ``seconds`` (after one warm-up
    each), beside ``streams`` live sessions sending ``speech`` at real-time pace."""
    from speakerdb.errors import (
        ServiceError,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.service.client import Client

    latencies: list[float] = []
    errors: list[str] = []
    busy = 0
    lock = threading.Lock()
    start_barrier = threading.Barrier(n_clients + 1)
    stop_at = [0.0]
    peak_rss: dict[int, float] = {}
    sampling = [True]

    def sample_memory() -> None:
        while sampling[0]:
            for pid in worker_pids(service.proc.pid):
                peak_rss[pid] = max(peak_rss.get(pid, 0.0), rss_mb(pid))
            time.sleep(0.5)

    def client_loop() -> None:
        nonlocal busy
        client = Client(service.url, service.key, retries=0)
        try:
            client.identify([clip])  # warm-up: a connection, the key checked once
        except Exception as e:
            with lock:
                errors.append(f"warm-up: {type(e).__name__}: {e}")
        start_barrier.wait()
        while time.monotonic() < stop_at[0]:
            t0 = time.monotonic()
            try:
                [answer] = client.identify([clip])
                if answer.error:
                    raise RuntimeError(answer.error)
                with lock:
                    latencies.append(time.monotonic() - t0)
            except ServiceError as e:
                with lock:
                    if e.status == 503:
                        busy += 1
                    else:
                        errors.append(f"{type(e).__name__}: {e}")
                if e.status == 503 and e.retry_after:
                    time.sleep(min(e.retry_after, 5))
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client_loop) for _ in range(n_clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + 3600  # set properly once every client has warmed up
    live = LiveStreams(service, streams, speech) if streams and speech is not None else None
    start_barrier.wait()
    if live is not None:
        live.__enter__()
    began = time.monotonic()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    if live is not None:
        live.__exit__()
        errors += live.errors
    sampling[0] = False
    sampler.join()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "errors": len(errors),
        "busy_503": busy,
        "error_examples": errors[:3],
        "worker_rss_mb": sorted(round(v) for v in peak_rss.values()),
        "streams": streams if live is not None else 0,
        "stream_lag_p50": percentile(live.lags, 50) if live and live.lags else None,
        "stream_lag_p90": percentile(live.lags, 90) if live and live.lags else None,
        "stream_windows": live.windows if live else 0,
        "stream_window_calls": live.calls if live else 0,
    }


def speech_clip(directory: Path, seconds: float) -> np.ndarray:
    """``seconds`` of speech: LibriSpeech excerpts of ``directory`` (speaker folders) end to end."""
    import soundfile as sf  # deferred, as speakerdb: --help stays quick

    parts, total = [], 0
    for path in sorted(directory.rglob("*.flac")):
        x, sr = sf.read(str(path), dtype="float32")
        if sr != SR or x.ndim != 1:
            continue
        parts.append(x)
        total += len(x)
        if total >= seconds * SR:
            break
    if not parts:
        raise SystemExit(f"no 16 kHz mono .flac under {directory}")
    return np.concatenate(parts)[: int(seconds * SR)]


def stream_windows(service: Service) -> tuple[float, float]:
    """(windows, calls) of the service's live sessions so far (/metrics)."""
    with urllib.request.urlopen(service.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    found = dict(re.findall(r'^speakerdb_stream_windows_total\{count="(\w+)"\} (\S+)$', text, re.M))
    return float(found.get("windows", 0)), float(found.get("calls", 0))


class LiveStreams:
    """``n`` live sessions sending ``speech`` at real-time pace until stopped; their event lags."""

    def __init__(self, service: Service, n: int, speech: np.ndarray) -> None:
        self.service, self.n, self.speech = service, n, speech
        self.lags: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._one, args=(k,), daemon=True) for k in range(n)]

    def __enter__(self) -> LiveStreams:
        self.windows_before = stream_windows(self.service)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        windows, calls = stream_windows(self.service)
        self.windows = windows - self.windows_before[0]
        self.calls = calls - self.windows_before[1]

    def _one(self, k: int) -> None:
        from websockets.exceptions import ConnectionClosed  # deferred with speakerdb: --help stays quick
        from websockets.sync.client import connect

        frame = SR // 10  # 100 ms
        data = np.roll(self.speech, k * SR)  # each session its own stretch of the speech
        url = self.service.url.replace("http://", "ws://") + "/v1/stream?encoding=f32le"
        try:
            with connect(url, additional_headers={"Authorization": f"Bearer {self.service.key}"}, max_queue=None) as ws:
                began, sent = time.monotonic(), 0
                while not self._stop.is_set():
                    chunk = data[(sent % len(data)) : (sent % len(data)) + frame]
                    ws.send(chunk.astype("<f4").tobytes())
                    sent += len(chunk)
                    while True:
                        try:
                            event = json.loads(ws.recv(timeout=0))
                        except TimeoutError:
                            break
                        if event.get("type") == "voice":
                            with self._lock:
                                # The audio up to "at" was sent at began + at (real-time pace).
                                self.lags.append(time.monotonic() - began - event["at"])
                        elif event.get("type") == "error":
                            raise RuntimeError(event["message"])
                    wait = began + sent / SR - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                ws.send(json.dumps({"type": "end"}))
                try:
                    while True:
                        ws.recv(timeout=60)
                except ConnectionClosed:
                    pass
        except Exception as e:  # noqa: BLE001 - counted and shown in the report
            with self._lock:
                self.errors.append(f"stream {k}: {type(e).__name__}: {e}")


def interleaved(service: Service, db_path: Path, model: str, clips: dict[float, Path], pairs: int) -> list[dict]:
    """One in-process call, one service call, alternately (after a warm-up of each): the
    ratio of their medians does not depend on how busy the machine was meanwhile."""
    from speakerdb import (
        SpeakerDB,  # deferred: speakerdb pulls in SQLAlchemy; --help stays quick
    )
    from speakerdb.service.client import Client

    rows = []
    client = Client(service.url, service.key, retries=0)
    with SpeakerDB(db_path, model=model) as db:
        for seconds, clip in clips.items():
            log(f"  interleaved: {pairs} pairs of {seconds:g} s calls")
            db.identify([clip])
            client.identify([clip])
            local, remote = [], []
            before = load()
            for _ in range(pairs):
                t0 = time.perf_counter()
                db.identify([clip])
                local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                [answer] = client.identify([clip])
                remote.append(time.perf_counter() - t0)
                assert answer.error is None, answer.error
            for side, times in (
                ("interleaved: in-process SpeakerDB.identify", local),
                ("interleaved: service, 1 worker, 1 client", remote),
            ):
                rows.append(
                    {
                        "side": side,
                        "workers": 1 if "service" in side else "-",
                        "clients": 1,
                        "clip_s": seconds,
                        "requests": len(times),
                        "rps": len(times) / sum(times),
                        "p50": statistics.median(times),
                        "p95": percentile(times, 95),
                        "p99": percentile(times, 99),
                        "errors": 0,
                        "busy_503": 0,
                        "worker_rss_mb": [],
                        "load": (before, load()),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/service.md, "Measured throughput"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, help="random full-size checkpoint directory (made if empty)")
    parser.add_argument(
        "--model", help="a model name instead of the random WavLM checkpoint, e.g. resemblyzer (the GE2E encoder)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per service cell")
    parser.add_argument("--repeats", type=int, default=7, help="in-process identify calls per clip length")
    parser.add_argument("--speakers", type=int, default=20, help="speakers enrolled in the database")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--clip-seconds", default="3,10")
    parser.add_argument(
        "--interleave",
        type=int,
        default=5,
        help="pairs of one in-process call and one service call (1 worker, 1 client), alternated "
        "so that the machine's load hits both sides alike; 0: none",
    )
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        help="per worker count and clip length, N pairs of cells (1 client, then the most clients), "
        "alternated, reported as the median of the pairs' throughput ratios: the comparison a "
        "machine whose load drifts between cells cannot skew; 0: none",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help="live WebSocket sessions sending speech at real-time pace during every service cell (needs --speech)",
    )
    parser.add_argument(
        "--speech",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech" / "test-other",
        help="a folder of 16 kHz .flac speech for the live sessions (LibriSpeech excerpts)",
    )
    parser.add_argument(
        "--speech-clips",
        action="store_true",
        help="identify clips of real speech from --speech instead of a synthetic voice: the VAD "
        "hears speech in them, so identify's voice check embeds their windows too, as with users' recordings",
    )
    parser.add_argument("--skip-cli", action="store_true", help="leave out the one-shot CLI processes")
    parser.add_argument("--skip-cells", action="store_true", help="leave out the concurrent-client cells")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import soundfile as sf  # deferred, as speakerdb below: --help stays quick

    from speakerdb import SpeakerDB

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    model = args.model or str(kit.checkpoint_in(args.checkpoint or work / "wavlm-random"))
    clip_lengths = [float(x) for x in args.clip_seconds.split(",")]
    clips = {}
    for seconds in clip_lengths:
        clips[seconds] = work / f"probe-{seconds:g}s.wav"
        probe = speech_clip(args.speech, seconds) if args.speech_clips else voice(160.0, seconds, seed=99)
        sf.write(str(clips[seconds]), probe, SR, subtype="PCM_16")
    db_path = work / "bench.sqlite"
    log(f"enrolling {args.speakers} speakers (3 s each)")
    from speakerdb.audio import decode as audio  # deferred with SpeakerDB above

    with SpeakerDB(db_path, model=model) as db:
        for i in range(args.speakers):
            db.enroll(f"s{i:03d}", [audio.Audio(f"s{i}.wav", voice(90 + 9 * i, 3.0, seed=i))])
        key = db.create_key("bench", "read").key

    cpu = kit.cpu_name()
    rows: list[dict] = []
    speech = speech_clip(args.speech, 120.0) if args.streams else None

    # ---- in-process: the model loaded, one call at a time ----------------------------------
    log("in-process SpeakerDB.identify")
    with SpeakerDB(db_path, model=model) as db:
        for seconds, clip in clips.items():
            db.identify([clip])  # warm-up
            before = load()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                db.identify([clip])
                times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "side": "in-process SpeakerDB.identify",
                    "workers": "-",
                    "clients": 1,
                    "clip_s": seconds,
                    "requests": len(times),
                    "rps": len(times) / sum(times),
                    "p50": statistics.median(times),
                    "p95": percentile(times, 95),
                    "p99": percentile(times, 99),
                    "errors": 0,
                    "busy_503": 0,
                    "worker_rss_mb": [round(rss_mb(os.getpid()))],
                    "load": (before, load()),
                }
            )

    # ---- one-shot CLI processes ------------------------------------------------------------
    log("one-shot `speakerdb identify` processes")
    for seconds, clip in ({} if args.skip_cli else clips).items():
        before = load()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "speakerdb", "--db", str(db_path), "identify", str(clip), "--json"],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - t0)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
        rows.append(
            {
                "side": "one-shot `speakerdb identify` process",
                "workers": "-",
                "clients": 1,
                "clip_s": seconds,
                "requests": 3,
                "rps": 3 / sum(times),
                "p50": statistics.median(times),
                "p95": percentile(times, 95),
                "p99": percentile(times, 99),
                "errors": 0,
                "busy_503": 0,
                "worker_rss_mb": [],
                "load": (before, load()),
            }
        )

    # ---- the service -----------------------------------------------------------------------
    for workers in [int(x) for x in args.workers.split(",")]:
        service = Service(db_path, model, workers, key, work / f"serve-{workers}.log")
        try:
            ready_s = service.wait_ready()
            log(f"service with {workers} worker(s) ready after {ready_s:.1f} s")
            if workers == 1 and args.interleave:
                rows += interleaved(service, db_path, model, clips, args.interleave)
            most = max(int(x) for x in args.clients.split(","))
            for seconds, clip in (clips if args.paired else {}).items():
                for k in range(args.paired):
                    for n_clients in (1, most):
                        before = load()
                        log(
                            f"  pair {k + 1}/{args.paired}: {workers} worker(s), {n_clients} client(s), "
                            f"{seconds:g} s clips"
                        )
                        result = run_clients(service, clip, n_clients, args.seconds, args.streams, speech)
                        rows.append(
                            {
                                "side": "paired",
                                "workers": workers,
                                "clients": n_clients,
                                "clip_s": seconds,
                                "pair": k,
                                **result,
                                "load": (before, load()),
                                "ready_s": ready_s,
                            }
                        )
            for seconds, clip in ({} if args.skip_cells else clips).items():
                for n_clients in [int(x) for x in args.clients.split(",")]:
                    before = load()
                    log(f"  {workers} worker(s), {n_clients} client(s), {seconds:g} s clips")
                    result = run_clients(service, clip, n_clients, args.seconds, args.streams, speech)
                    rows.append(
                        {
                            "side": "service",
                            "workers": workers,
                            "clients": n_clients,
                            "clip_s": seconds,
                            **result,
                            "load": (before, load()),
                            "ready_s": ready_s,
                        }
                    )
        finally:
            service.stop()

    # ---- report ----------------------------------------------------------------------------
    print(
        f"\nCPU: {cpu}; torch threads: default (SPEAKERDB_THREADS={os.environ.get('SPEAKERDB_THREADS', 'unset')}); "
        f"{args.speakers} speakers; service cells of {args.seconds:g} s; "
        f"model: {args.model or 'full-size random WavLM checkpoint'}.\n"
    )
    print(
        "| side | workers | clients | clip | requests | req/s | p50 s | p95 s | p99 s | errors | 503s "
        "| RSS per worker MB | load 1-min before/after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['side']} | {r['workers']} | {r['clients']} | {r['clip_s']:g} s | {r['requests']} | "
            f"{r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['busy_503']} | "
            f"{', '.join(map(str, r['worker_rss_mb'])) or '-'} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    for seconds in clip_lengths:
        pair = {r["side"]: r["p50"] for r in rows if r["side"].startswith("interleaved") and r["clip_s"] == seconds}
        if len(pair) == 2:
            a, b = pair["interleaved: in-process SpeakerDB.identify"], pair["interleaved: service, 1 worker, 1 client"]
            print(f"- {seconds:g} s clip, interleaved: service p50 {b:.2f} s = {b / a:.2f} x in-process p50 {a:.2f} s")
    inproc = {r["clip_s"]: r["p50"] for r in rows if r["side"].startswith("in-process")}
    one = {(r["clip_s"]): r for r in rows if r["side"] == "service" and r["workers"] == 1 and r["clients"] == 1}
    print()
    for seconds in clip_lengths:
        if seconds in one and seconds in inproc:
            print(
                f"- {seconds:g} s clip, 1 worker, 1 client: service p50 {one[seconds]['p50']:.2f} s = "
                f"{one[seconds]['p50'] / inproc[seconds]:.2f} x in-process ({inproc[seconds]:.2f} s)"
            )
    for workers in [int(x) for x in args.workers.split(",")]:
        for seconds in clip_lengths:
            cells = {
                r["clients"]: r
                for r in rows
                if r["side"] == "service" and r["workers"] == workers and r["clip_s"] == seconds
            }
            if 1 in cells and 16 in cells:
                print(
                    f"- {workers} worker(s), {seconds:g} s: throughput at 16 clients = "
                    f"{cells[16]['rps'] / cells[1]['rps']:.2f} x that at 1 client"
                )
    for workers in [int(x) for x in args.workers.split(",")]:
        for seconds in clip_lengths:
            paired = [r for r in rows if r["side"] == "paired" and r["workers"] == workers and r["clip_s"] == seconds]
            by_pair: dict[int, dict[int, float]] = {}
            for r in paired:
                by_pair.setdefault(r["pair"], {})[r["clients"]] = r["rps"]
            ratios = sorted(p[max(p)] / p[1] for p in by_pair.values() if 1 in p and len(p) == 2)
            if ratios:
                print(
                    f"- {workers} worker(s), {seconds:g} s, {len(ratios)} alternated pairs: throughput at "
                    f"{max(int(x) for x in args.clients.split(','))} clients = {statistics.median(ratios):.2f} x "
                    f"that at 1 client (median; pairs {', '.join(f'{x:.2f}' for x in ratios)})"
                )
    for r in rows:
        if r.get("streams"):
            lag = (
                f"event lag p50 {r['stream_lag_p50']:.2f} s, p90 {r['stream_lag_p90']:.2f} s"
                if r["stream_lag_p50"] is not None
                else "no voice events"
            )
            per_call = r["stream_windows"] / r["stream_window_calls"] if r["stream_window_calls"] else 0.0
            print(
                f"- {r['side']}, {r['workers']} worker(s), {r['clients']} identify client(s) + {r['streams']} live "
                f"streams: {lag}; {r['stream_windows']:.0f} windows in {r['stream_window_calls']:.0f} calls "
                f"({per_call:.1f} per call)"
            )
    errors = [e for r in rows for e in r.get("error_examples", [])]
    if errors:
        print("\nerrors seen: " + "; ".join(errors[:5]))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
