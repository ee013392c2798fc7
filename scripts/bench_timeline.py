#!/usr/bin/env python
"""Speed and memory of ``SpeakerDB.timeline`` on long conversations, per model.

    python scripts/bench_timeline.py ../shared/data/librispeech/test-other                 # GE2E, 10 and 60 min
    python scripts/bench_timeline.py DATA --models ge2e,fp32,bf16 --minutes 10 --long 0    # WavLM too
    python scripts/bench_timeline.py DATA --checkpoint ./wavlm-random --json out.json
    python scripts/bench_timeline.py DATA --models ge2e,ge2e-seg --segmentation segmentation-3.0/pytorch_model.bin

Builds one conversation of ``--minutes`` (and one of ``--long`` minutes, unless 0) with
scripts/make_conversations.py (seed 0, 2-5 speakers, pauses, no overlap), then, in a
fresh child process per model and length: opens a temporary database, enrolls the
conversation set's enrolled speakers (not timed), and times one ``timeline`` call.
Reported: wall time, real-time factor (wall / audio), and the child's peak resident
memory during the call (VmHWM, reset just before it) with what it held before the call
(model and database loaded), so that growth with the recording's length shows. The 60-min/10-min time ratio says whether
cost is linear (6.0).

Models: ``ge2e`` (resemblyzer), ``fp32`` and ``bf16`` (a RANDOM-weight WavLM x-vector
checkpoint of the full size, scripts/make_random_checkpoint.py: it costs what the real
weights cost; its timelines mean nothing). Every figure names the CPU and the load
average at the start and end of each run: timings taken while the machine is shared are
slower than on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kit

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: models are local


def child(model: str, precision: str, wav: str, manifest: str, segmentation: str = "-") -> dict:
    """Runs in its own process: enroll, then time one timeline call."""
    from speakerdb.api import (
        SpeakerDB,  # deferred: the parent process never opens a database
    )
    from speakerdb.timeline import Params

    enroll = json.loads(Path(manifest).read_text())["enroll"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        SpeakerDB(Path(tmp) / "db.sqlite", model=model, precision=precision) as db,
    ):
        for spk, files in enroll.items():
            db.enroll(spk, files)
        before, peak_since = kit.rss_baseline()  # the timeline call's own peak, not enrollment's
        load0 = os.getloadavg()[0]
        started = time.perf_counter()
        [t] = db.timeline([wav], params=Params(segmentation=None if segmentation == "-" else segmentation))
        wall = time.perf_counter() - started
        load1 = os.getloadavg()[0]
        peak = peak_since()
    return {
        "wall_s": round(wall, 2),
        "audio_s": round(t.duration, 1),
        "rtf": round(wall / t.duration, 4),
        "voices": len(t.voices),
        "rss_mib_before": round(before),
        "peak_mib": round(peak),
        "load": [round(load0, 1), round(load1, 1)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__, 'docs/timeline.md, "Speed of the timeline"'),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, nargs="?", help="speaker directories (LibriSpeech test-other)")
    p.add_argument(
        "--models",
        default="ge2e",
        help="comma-separated: ge2e, ge2e-seg (needs --segmentation), fp32, bf16 (default ge2e)",
    )
    p.add_argument("--segmentation", help="segmentation model (pyannote segmentation-3.0 checkpoint) for ge2e-seg")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--long", type=float, default=60.0, help="a second, longer conversation (0: none)")
    p.add_argument("--checkpoint", type=Path, help="full-size random WavLM directory (made if absent)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--child", nargs=5, metavar=("MODEL", "PRECISION", "WAV", "MANIFEST", "SEG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.data is None:
        p.error("DATA is required")

    work = Path(tempfile.mkdtemp(prefix="bench-timeline-"))
    lengths = [args.minutes] + ([args.long] if args.long else [])
    convs = {}
    for minutes in lengths:
        out = work / f"{minutes:g}min"
        subprocess.run(
            [
                sys.executable,
                str(kit.SCRIPTS / "make_conversations.py"),
                str(args.data),
                str(out),
                "--count",
                "1",
                "--minutes",
                str(minutes),
                "--seed",
                "0",
            ],
            check=True,
        )
        convs[minutes] = (str(out / "conv-00.wav"), str(out / "manifest.json"))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "ge2e-seg" in models and not args.segmentation:
        p.error("ge2e-seg needs --segmentation PATH")
    checkpoint = None
    if any(m in ("fp32", "bf16") for m in models):
        checkpoint = kit.checkpoint_in(args.checkpoint or work / "wavlm-random")
    rows = []
    print(f"CPU: {kit.cpu_name()}", file=sys.stderr)
    for m in models:
        model, precision = ("resemblyzer", "fp32") if m in ("ge2e", "ge2e-seg") else (str(checkpoint), m)
        seg = args.segmentation if m == "ge2e-seg" else "-"
        for minutes in lengths:
            wav, manifest = convs[minutes]
            out = subprocess.run(
                [sys.executable, __file__, "--child", model, precision, wav, manifest, seg],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{m} on {minutes:g} min failed")
            row = {"model": m, "minutes": minutes, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"CPU: {kit.cpu_name()}\n")
    print("| model | conversation | wall | RTF | peak RSS during the call (RSS before it) | load avg (start, end) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['minutes']:g} min ({r['audio_s']:.0f} s) | {r['wall_s']:.1f} s | {r['rtf']:.4f} | "
            f"{r['peak_mib']} MiB ({r['rss_mib_before']} MiB) | {r['load'][0]}, {r['load'][1]} |"
        )
    for m in models:
        by = {r["minutes"]: r for r in rows if r["model"] == m}
        if len(by) == 2:
            print(
                f"\n{m}: {args.long:g} min / {args.minutes:g} min time ratio "
                f"{by[args.long]['wall_s'] / by[args.minutes]['wall_s']:.2f} (linear: {args.long / args.minutes:.1f})"
            )
    if args.json:
        args.json.write_text(json.dumps({"cpu": kit.cpu_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
