#!/usr/bin/env python
"""CPU seconds of the timeline's short-run merge (``timeline.merge_short``) on one unbroken turn,
here and, with --against, in another checkout, and whether both give the same labels.

    python scripts/bench_merge_short.py --windows 3600,7200,36000 --against ../before

A turn as a live session smooths it when it ends (and as the offline timeline smooths one long
region): one row per window of a hop's frames (0.5 s), the speaker's voice scoring ~0.70 and
two others ~0.62 (cosine, sd 0.08), through Viterbi with the default switch penalty, which
leaves about one short run every four windows; runs under a second are merged. 3,600 windows
are 30 minutes of speech. Each checkout runs in a process of its own, the checkouts taking
turns; each size is timed ``--repeats`` times and the least CPU time is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import kit

HOP_S = 0.5  # s: the default hop, one window per hop
MIN_SEGMENT_S = 1.0  # s: the default shortest segment
SWITCH_PENALTY = 0.5  # the default


def turn(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(Viterbi path, scores, frames per row, min_frames) of an unbroken turn of ``n`` windows."""
    from speakerdb import timeline

    rng = np.random.default_rng(seed)
    frames = HOP_S / timeline.FRAME_S
    scores = rng.normal([0.70, 0.62, 0.62], 0.08, (n, 3)) * frames
    path = timeline.viterbi(scores, SWITCH_PENALTY)
    return path, scores, np.full(n, int(frames)), int(round(MIN_SEGMENT_S / timeline.FRAME_S))


def measure(sizes: list[int], repeats: int) -> dict[str, dict[str, object]]:
    """For each size: the least CPU seconds of ``repeats`` calls, the runs before and after, the labels' sha256."""
    from speakerdb import timeline

    out: dict[str, dict[str, object]] = {}
    for n in sizes:
        path, scores, lengths, min_frames = turn(n)
        cpu = []
        for _ in range(repeats):
            t = time.process_time()
            labels = timeline.merge_short(path, scores, min_frames, lengths)
            cpu.append(time.process_time() - t)
        out[str(n)] = {
            "cpu_s": min(cpu),
            "runs_before": len(timeline.runs(path)),
            "runs_after": len(timeline.runs(labels)),
            "sha256": hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest(),
        }
    return out


def run_in(checkout: Path, sizes: list[int], repeats: int) -> dict[str, dict[str, object]]:
    """:func:`measure` in a process that imports speakerdb from ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    args = [sys.executable, __file__, "--worker", "--windows", ",".join(map(str, sizes)), "--repeats", str(repeats)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=checkout)
    return json.loads(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(
        description=kit.describe(__doc__ or "", "docs/timeline.md (Speed of the timeline: smoothing a long turn)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--windows", default="3600,7200,36000", help="turn lengths in windows, comma-separated")
    p.add_argument("--against", type=Path, help="another checkout (its repository root) to time the same way")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [int(w) for w in args.windows.split(",")]
    if args.worker:
        print(json.dumps(measure(sizes, args.repeats)))
        return
    here = Path(__file__).resolve().parent.parent
    checkouts = {"this checkout": here, **({"--against": args.against} if args.against else {})}
    kit.log(f"{kit.cpu_name()}; load average {kit.load_average():.2f}")
    results = {}
    for n in sizes:  # one size at a time, the checkouts taking turns
        for name, root in checkouts.items():
            kit.log(f"{name}: {n} windows")
            results.setdefault(name, {}).update(run_in(root, [n], args.repeats))
    rows = []
    for n in map(str, sizes):
        mine = results["this checkout"][n]
        row = [
            f"{int(n):,} ({round(int(n) * HOP_S / 60, 1):g} min)",
            f"{mine['runs_before']:,} -> {mine['runs_after']:,}",
        ]
        if args.against:
            other = results["--against"][n]
            row += [f"{other['cpu_s']:.3f}", "yes" if other["sha256"] == mine["sha256"] else "**no**"]
        rows.append([*row, f"{mine['cpu_s']:.4f}"])
    header = ["windows", "runs before -> after merging"]
    header += ["--against CPU s", "same labels"] if args.against else []
    kit.print_table(
        f"merge_short, least CPU seconds of {args.repeats}; {kit.cpu_name()}; load {kit.load_average():.2f}",
        [*header, "this checkout CPU s"],
        rows,
    )


if __name__ == "__main__":
    main()
