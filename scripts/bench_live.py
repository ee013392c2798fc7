#!/usr/bin/env python
"""Live sessions (``SpeakerDB.stream``) at real-time pace: naming latency, revisions, DER, streams, memory.

    python scripts/make_conversations.py ../shared/data/librispeech/test-other convs/ --count 4 --minutes 3
    python scripts/bench_live.py convs/                                    # GE2E: every section
    python scripts/bench_live.py convs/ --sections latency,streams --streams 1,4,8,12
    python scripts/bench_live.py convs/ --sections compute --checkpoint ./wavlm-random   # full-size WavLM
    python scripts/bench_live.py convs-10db/ --sections accuracy                          # as fast as it goes

Enrolls the manifest's speakers in a temporary database (``--model``, default GE2E), then:

* ``latency``: each conversation is fed in 20 ms frames at real-time pace (the feeding thread
  sleeps between frames, as audio arrives from a microphone or a call) into one session. For
  every turn of an enrolled speaker (the reference RTTM), the latency is the wall time from
  the moment the turn's first audio was fed to the first ``voice`` event naming that speaker
  over the turn: median and p90 (turns never named counted apart). Also the share
  of provisional ``voice`` events whose label the final events over the same span changed,
  and the diarization error rate (pyannote, collars 0 and 0.5 s) of the session's final
  timeline (``close()``), of its final events, and of the offline ``timeline`` of the same file.
* ``accuracy``: each conversation fed in 20 ms frames as fast as the session takes them (no
  pacing: the events are those of real time, only sooner): the diarization error rate (collar
  0.25 s, as ``scripts/eval_timeline.py``) of the session's final timeline, of its final events
  and of the offline ``timeline``; the conversations whose number of voices each got right;
  and how many sessions judged themselves noisy (their noise taken out).
* ``streams``: N sessions in N threads of this process, each feeding its own stretch of
  ``--stream-s`` seconds of a conversation at real-time pace, for each N of ``--streams``;
  the naming latency over all their turns, and the most streams with p90 <= 3 s. Latency
  medians and p90s are over the turns that were named; turns never named are counted apart
  (and in a p90 that counts them as infinitely late). The latency section also gives the CPU
  seconds one stream costs per second of audio, from which the streams an idle 2-core machine
  holds are estimated (2 / that), beside the streams measured on the shared machine.
* ``memory``: one session fed ``--memory-minutes`` of conversation (looped) as fast as it takes
  it, with the real VAD and a stand-in embedder of the model's dimension (microseconds per
  window: the session's own memory, not the model's, is what grows or not); Python heap
  (tracemalloc) and resident memory every 10 minutes of audio.
* ``unbroken``: one session fed ``--unbroken-minutes`` of speech that never pauses (three-talker
  babble: the conversations cut to their speech, dealt into three streams and summed, looped),
  which Silero hears as one region from start to end, as fast as it takes it, with the real VAD
  and the stand-in embedder: the CPU seconds each minute of audio costs, the window vectors held
  and the resident memory at every minute, and the peak resident memory (the session's work per
  second of audio must not grow with the length of an open region); then the CPU seconds of
  ``finish()`` and of ``close()`` (the final timeline: the held windows assembled once).
* ``compute``: the time to embed the windows of one block (1 and 8 windows of 1.5 s) with
  ``--checkpoint``, a full-size WavLM x-vector checkpoint (RANDOM weights from
  scripts/make_random_checkpoint.py cost what real weights cost; its names mean nothing) in
  fp32 and bf16, and the real-time streams that compute allows on this machine.

The machine is shared with other work: the load average is printed beside every section, and
the concurrency figures are pessimistic when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

import kit

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: models are local

from speakerdb import live, timeline  # noqa: E402
from speakerdb.api import SpeakerDB  # noqa: E402
from speakerdb.audio import decode as audio  # noqa: E402
from speakerdb.live import LiveSession  # noqa: E402
from speakerdb.results import SpeechEvent, VoiceEvent  # noqa: E402

SR = audio.SAMPLE_RATE
FRAME_S = 0.02  # s: one frame of a call or a WebSocket client
P90_LIMIT_S = 3.0  # s: the p90 latency target, also the concurrency criterion


def feed_paced(session: Any, x: np.ndarray, realtime: bool = True) -> tuple[list[tuple[float, Any]], float]:
    """Feed ``x`` (16 kHz float32) in 20 ms frames, paced at real time; (wall s since start, event) of
    every event, and how far behind real time the feeding ended (s)."""
    frame = int(FRAME_S * SR)
    out: list[tuple[float, Any]] = []
    start = time.monotonic()
    for i in range(0, len(x), frame):
        if realtime:
            time.sleep(max(0.0, start + i / SR - time.monotonic()))
        for e in session.feed(x[i : i + frame]):
            out.append((time.monotonic() - start, e))
    for e in session.finish():
        out.append((time.monotonic() - start, e))
    return out, (time.monotonic() - start) - len(x) / SR


def turn_latencies(
    events: list[tuple[float, Any]], turns: list[tuple[float, float, str]], enrolled: set[str]
) -> list[float]:
    """Per turn of an enrolled speaker: wall seconds from its start to the first event naming it over it."""
    out = []
    for a, b, spk in turns:
        if spk not in enrolled:
            continue
        hits = [w for w, e in events if isinstance(e, VoiceEvent) and e.label == spk and e.start < b and e.end > a]
        out.append(min(hits) - a if hits else float("inf"))
    return out


def changed_share(events: list[tuple[float, Any]]) -> tuple[int, int]:
    """(provisional events whose label the final events over their span changed, provisional events)."""
    finals = [e for _, e in events if isinstance(e, VoiceEvent) and e.final]
    changed = total = 0
    for _, e in events:
        if not isinstance(e, VoiceEvent) or e.final:
            continue
        overlap: dict[str, float] = {}
        for f in finals:
            d = min(e.end, f.end) - max(e.start, f.start)
            if d > 0:
                overlap[f.label] = overlap.get(f.label, 0.0) + d
        if not overlap:
            continue
        total += 1
        changed += max(overlap, key=lambda k: overlap[k]) != e.label
    return changed, total


def der(refs: dict[str, list], hyps: dict[str, list], collar: float) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(segments: list, uri: str) -> Annotation:
        ann = Annotation(uri=uri)
        for i, (a, b, lab) in enumerate(segments):
            if b > a:
                ann[Segment(a, b), i] = lab
        return ann

    metric = DiarizationErrorRate(collar=collar)
    for uri, ref in refs.items():
        metric(annotation(ref, uri), annotation(hyps.get(uri, []), uri))
    return 100 * abs(metric)


def latency_stats(lat: list[float]) -> dict[str, Any]:
    """Median and p90 over the turns that were named, the turns never named, and p90 counting those as late."""
    named = [v for v in lat if v != float("inf")]
    return {
        "turns": len(lat),
        "never_named": len(lat) - len(named),
        "latency_median_s": round(pct(named, 50), 3),
        "latency_p90_s": round(pct(named, 90), 3),
        "latency_p90_s_never_named_as_late": pct(lat, 90),
    }


def pct(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank, so that turns never named (inf) count as the latest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, int(np.ceil(q / 100 * len(ordered))) - 1)]


def fmt_s(v: float) -> str:
    return "never" if v == float("inf") else f"{v:.2f} s"


def section_latency(db: SpeakerDB, convs: list[dict], root: Path, enrolled: set[str]) -> dict:
    kit.log(f"latency: {len(convs)} conversations at real-time pace (load {kit.load_average():.1f})")
    load0 = kit.load_average()
    lat: list[float] = []
    changed = total = 0
    refs: dict[str, list] = {}
    offline: dict[str, list] = {}
    final_tl: dict[str, list] = {}
    final_ev: dict[str, list] = {}
    equal = 0
    behind = []
    cpu_s = 0.0
    for c in convs:
        uri = Path(c["file"]).stem
        path = root / c["file"]
        refs[uri] = timeline.read_rttm(root / c["rttm"]).get(uri, [])
        x = audio.load(path).samples
        session = db.stream()
        cpu0 = time.process_time()
        events, late = feed_paced(session, x)
        t = session.close()
        cpu_s += time.process_time() - cpu0
        behind.append(late)
        [off] = db.timeline([path])
        offline[uri] = [(s.start, s.end, s.label) for s in off.segments]
        final_tl[uri] = [(s.start, s.end, s.label) for s in t.segments]
        final_ev[uri] = [(e.start, e.end, e.label) for _, e in events if isinstance(e, VoiceEvent) and e.final]
        equal += final_tl[uri] == offline[uri]
        lat += turn_latencies(events, refs[uri], enrolled)
        ch, tot = changed_share(events)
        changed, total = changed + ch, total + tot
        kit.log(f"  {uri}: {len(x) / SR:.0f} s, ended {late:+.2f} s behind real time, named turns so far {len(lat)}")
    audio_s = sum(c["duration"] for c in convs)
    return {
        "conversations": len(convs),
        "audio_s": round(audio_s, 1),
        **latency_stats(lat),
        # CPU seconds (all of this process's threads) per second of audio streamed: what one
        # stream costs, whatever else shares the machine; 2 cores / this = streams an idle machine holds.
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4),
        "streams_idle_2_cores_estimate": round(2 / max(cpu_s / audio_s, 1e-9), 1),
        "provisional_changed": f"{changed}/{total}",
        "provisional_changed_pct": round(100 * changed / max(total, 1), 1),
        "final_equals_offline": f"{equal}/{len(convs)}",
        "der": {
            f"collar {collar:g}": {
                "offline timeline": round(der(refs, offline, collar), 2),
                "live final timeline": round(der(refs, final_tl, collar), 2),
                "live final events": round(der(refs, final_ev, collar), 2),
            }
            for collar in (0.0, 0.5)
        },
        "ended_behind_s_max": round(max(behind), 2),
        "load": [round(load0, 1), round(kit.load_average(), 1)],
    }


def _stream_runner(
    db: SpeakerDB,
    pieces: list[tuple[np.ndarray, list]],
    enrolled: set[str],
    results: list[tuple[list[float], float] | None],
    errors: list[BaseException],
) -> Any:
    """The body of stream thread ``k``: its own session over piece ``k`` at real-time pace."""

    def run(k: int) -> None:
        try:
            x, turns = pieces[k % len(pieces)]
            session = db.stream()
            events, late = feed_paced(session, x)
            session.close()
            results[k] = (turn_latencies(events, turns, enrolled), late)
        except BaseException as e:  # reported after the join
            errors.append(e)

    return run


def section_accuracy(db: SpeakerDB, convs: list[dict], root: Path) -> dict:
    kit.log(f"accuracy: {len(convs)} conversations as fast as they go (load {kit.load_average():.1f})")
    load0 = kit.load_average()
    refs: dict[str, list] = {}
    found: dict[str, dict[str, list]] = {"offline timeline": {}, "live final timeline": {}, "live final events": {}}
    noisy = 0
    for c in convs:
        uri = Path(c["file"]).stem
        path = root / c["file"]
        refs[uri] = timeline.read_rttm(root / c["rttm"]).get(uri, [])
        session = db.stream()
        events, _ = feed_paced(session, audio.load(path).samples, realtime=False)
        t = session.close()
        noisy += any(n.startswith("noisy recording") for n in t.notes)
        [off] = db.timeline([path])
        found["offline timeline"][uri] = [(s.start, s.end, s.label) for s in off.segments]
        found["live final timeline"][uri] = [(s.start, s.end, s.label) for s in t.segments]
        found["live final events"][uri] = [
            (e.start, e.end, e.label) for _, e in events if isinstance(e, VoiceEvent) and e.final
        ]
    voices = {uri: len({lab for _, _, lab in ref}) for uri, ref in refs.items()}
    return {
        "conversations": len(convs),
        "sessions_judged_noisy": noisy,
        **{
            what: {
                "der_collar_0.25": round(der(refs, hyps, 0.25), 2),
                "voices_exact": sum(len({lab for _, _, lab in hyps[uri]}) == n for uri, n in voices.items()),
            }
            for what, hyps in found.items()
        },
        "load": [round(load0, 1), round(kit.load_average(), 1)],
    }


def section_streams(
    db: SpeakerDB, convs: list[dict], root: Path, enrolled: set[str], levels: list[int], stream_s: float
) -> dict:
    pieces = []  # (samples, turns) stretches of stream_s seconds, from every conversation in turn
    for c in convs:
        uri = Path(c["file"]).stem
        x = audio.load(root / c["file"]).samples
        ref = timeline.read_rttm(root / c["rttm"]).get(uri, [])
        for a in np.arange(0, len(x) / SR - stream_s + 1e-9, stream_s):
            turns = [(s - a, e - a, k) for s, e, k in ref if s >= a and e <= a + stream_s]
            pieces.append((x[int(a * SR) : int((a + stream_s) * SR)], turns))
    embedder = db.embedder  # loaded before the clocks start
    kit.log(f"streams: model {embedder.model_id}")
    rows = []
    for n in levels:
        load0 = kit.load_average()
        kit.log(f"streams: {n} concurrent sessions of {stream_s:g} s at real-time pace (load {load0:.1f})")
        results: list[tuple[list[float], float] | None] = [None] * n
        errors: list[BaseException] = []
        run = _stream_runner(db, pieces, enrolled, results, errors)
        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        lat = [v for r in results if r is not None for v in r[0]]
        late = max(r[1] for r in results if r is not None)
        rows.append(
            {
                "streams": n,
                **latency_stats(lat),
                "ended_behind_s_max": round(late, 2),
                "load": [round(load0, 1), round(kit.load_average(), 1)],
            }
        )
        kit.log(f"  {n} streams: p90 {fmt_s(rows[-1]['latency_p90_s'])}, behind at the end {late:+.1f} s")
    held = [r["streams"] for r in rows if r["latency_p90_s"] <= P90_LIMIT_S]
    return {"stream_s": stream_s, "rows": rows, "most_streams_p90_le_3s": max(held) if held else 0}


class StandInEmbedder:
    """Microseconds per window, unit vectors of ``dim`` from the window's coarse spectrum."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, windows: list[np.ndarray]) -> np.ndarray:
        out = np.stack([np.resize(np.abs(np.fft.rfft(w[:4096]))[1 : self.dim + 1], self.dim) for w in windows])
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def section_memory(db: SpeakerDB, convs: list[dict], root: Path, minutes: float, max_held_s: float) -> dict:
    load0 = kit.load_average()
    kit.log(f"memory: {minutes:g} min of conversation into one session (load {load0:.1f})")
    dim = db.embedder.dim
    gallery = timeline.database_gallery(db.store, db._cohorts, dim, None)
    session = LiveSession(StandInEmbedder(dim), gallery, max_held_s=max_held_s)
    xs = [audio.load(root / c["file"]).samples for c in convs]
    frame = int(FRAME_S * SR)
    rows = []
    tracemalloc.start()
    fed, k, next_mark = 0.0, 0, 10.0
    started = time.perf_counter()
    while fed < minutes * 60:
        x = xs[k % len(xs)]
        k += 1
        for i in range(0, len(x), frame):
            session.feed(x[i : i + frame])
            fed += frame / SR
            if fed >= next_mark * 60:
                rows.append(
                    {
                        "minutes": round(fed / 60),
                        "heap_mib": round(tracemalloc.get_traced_memory()[0] / 2**20, 2),
                        "rss_mib": round(kit.status_mib("VmRSS"), 1),
                        "held_windows": len(session._vectors),
                    }
                )
                kit.log(f"  {rows[-1]}")
                next_mark += 10
            if fed >= minutes * 60:
                break
    tracemalloc.stop()
    session.close()
    return {
        "rows": rows,
        "dim": dim,
        "max_held_s": max_held_s,
        "run_s": round(time.perf_counter() - started, 1),
        "load": [round(load0, 1), round(kit.load_average(), 1)],
    }


def babble(convs: list[dict], root: Path, talkers: int = 3) -> np.ndarray:
    """Speech that never pauses: each conversation cut to its Silero speech regions, the pieces
    dealt into ``talkers`` streams of equal loudness, summed (where one talker pauses, another
    speaks)."""
    from speakerdb.audio import vad

    detector = vad.load()
    pieces = []
    for c in convs:
        x = audio.load(root / c["file"]).samples
        found = vad.regions(vad.probabilities([x], detector), duration_s=len(x) / SR)
        pieces += [x[int(r.start * SR) : int(r.end * SR)] for r in found]
    streams = [
        np.concatenate([p / max(float(np.sqrt(np.mean(p**2))), 1e-9) for p in pieces[k::talkers]])
        for k in range(talkers)
    ]
    n = min(len(s) for s in streams)
    return (0.05 * sum(s[:n] for s in streams)).astype(np.float32)


def section_unbroken(db: SpeakerDB, convs: list[dict], root: Path, minutes: float, max_held_s: float) -> dict:
    load0 = kit.load_average()
    x = babble(convs, root)
    kit.log(f"unbroken: {minutes:g} min of babble ({len(x) / SR / 60:.1f} min, looped) into one session")
    dim = db.embedder.dim
    gallery = timeline.database_gallery(db.store, db._cohorts, dim, None)
    session = LiveSession(StandInEmbedder(dim), gallery, max_held_s=max_held_s)
    frame = int(FRAME_S * SR)
    per_minute = int(60 * SR)
    rows = []
    speech_events = 0
    _, peak = kit.rss_baseline()
    for m in range(int(minutes)):
        cpu0 = time.process_time()
        for i in range(m * per_minute, (m + 1) * per_minute, frame):
            k = i % len(x)
            events = session.feed(x[k : min(k + frame, len(x))])
            speech_events += sum(isinstance(e, SpeechEvent) for e in events)
        rows.append(
            {
                "minute": m + 1,
                "cpu_s": round(time.process_time() - cpu0, 3),
                # Window vectors the session holds: of settled regions and of the region still open.
                "held_windows": len(session._vectors) + len(session._open),
                "rss_mib": round(kit.status_mib("VmRSS"), 1),
            }
        )
        kit.log(f"  {rows[-1]}")
    cpu0 = time.process_time()
    session.finish()
    finish_s = time.process_time() - cpu0
    held = len(session._vectors)  # the windows close() assembles (none past the cap: its final segments)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    final = session.close()
    close_s, close_wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    kit.log(f"  finish {finish_s:.3f} CPU s; close {close_s:.3f} CPU s ({close_wall_s:.3f} s wall, {held} windows)")
    return {
        "rows": rows,
        "speech_events": speech_events,  # 1: the VAD heard one region, never a pause
        "finish_cpu_s": round(finish_s, 3),
        # The final timeline: the held windows re-assembled (clustered, named, smoothed) once.
        "close_cpu_s": round(close_s, 3),
        "close_wall_s": round(close_wall_s, 3),
        "close_windows": held,
        "final_segments": len(final.segments),
        "peak_rss_mib": round(peak(), 1),
        "dim": dim,
        "max_held_s": max_held_s,
        "load": [round(load0, 1), round(kit.load_average(), 1)],
    }


def section_compute(checkpoint: Path) -> dict:
    from speakerdb.embedding.models import load_embedder

    rng = np.random.default_rng(0)
    rows = []
    for precision in ("fp32", "bf16"):
        emb = load_embedder(str(checkpoint), precision=precision)
        load0 = kit.load_average()
        for n in (1, 8):
            windows = [rng.standard_normal(int(1.5 * SR)).astype(np.float32) * 0.1 for _ in range(n)]
            emb.embed(windows)  # warm-up
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                emb.embed(windows)
                times.append(time.perf_counter() - t0)
            per_window = statistics.median(times) / n
            # A stream in speech needs one window per hop (0.5 s): 2 windows per second.
            rows.append(
                {
                    "precision": precision,
                    "batch": n,
                    "ms_per_window": round(1e3 * per_window, 1),
                    "realtime_streams_in_speech": round(1 / (2 * per_window), 1),
                    "load": round(load0, 1),
                }
            )
            kit.log(f"  compute {rows[-1]}")
        del emb
    return {"checkpoint": str(checkpoint), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/live.md, "Measured"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("conversations", type=Path, help="directory written by make_conversations.py")
    p.add_argument("--model", default="resemblyzer")
    p.add_argument(
        "--sections", default="latency,streams,memory", help="latency, accuracy, streams, memory, unbroken, compute"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    p.add_argument("--streams", default="1,4,8,12,16", help="concurrent sessions to try")
    p.add_argument("--stream-s", type=float, default=60.0, help="seconds each concurrent session streams")
    p.add_argument("--memory-minutes", type=float, default=60.0)
    p.add_argument("--unbroken-minutes", type=float, default=31.0)
    p.add_argument(
        "--max-held-s",
        type=float,
        default=live.DEFAULT_MAX_HELD_S,
        help="seconds of speech whose window vectors the memory and unbroken sections' sessions keep",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="full-size WavLM checkpoint (compute section)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))

    manifest = json.loads((args.conversations / "manifest.json").read_text())
    convs = manifest["conversations"][: args.limit]
    enrolled = set(manifest["enroll"])
    result: dict[str, Any] = {"cpu": kit.cpu_name(), "model": args.model, "load_start": round(kit.load_average(), 1)}
    with tempfile.TemporaryDirectory() as tmp:
        with SpeakerDB(Path(tmp) / "db.sqlite", model=args.model) as db:
            if sections & {"latency", "accuracy", "streams", "memory", "unbroken"}:
                for spk, files in manifest["enroll"].items():
                    db.enroll(spk, files)
            if "latency" in sections:
                result["latency"] = section_latency(db, convs, args.conversations, enrolled)
            if "accuracy" in sections:
                result["accuracy"] = section_accuracy(db, convs, args.conversations)
            if "streams" in sections:
                levels = [int(n) for n in args.streams.split(",")]
                result["streams"] = section_streams(db, convs, args.conversations, enrolled, levels, args.stream_s)
            if "memory" in sections:
                result["memory"] = section_memory(db, convs, args.conversations, args.memory_minutes, args.max_held_s)
            if "unbroken" in sections:
                result["unbroken"] = section_unbroken(
                    db, convs, args.conversations, args.unbroken_minutes, args.max_held_s
                )
        if "compute" in sections:
            checkpoint = kit.checkpoint_in(args.checkpoint or Path(tmp) / "wavlm-full")  # built if absent
            result["compute"] = section_compute(checkpoint)
    result["load_end"] = round(kit.load_average(), 1)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
